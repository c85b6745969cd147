"""The report's Tables 1–3 as plain data (rows of strings), Markdown and CSV.

Rendering to the terminal (rich) and to HTML reuses :func:`table1`, :func:`table2` and :func:`table3`, so the
numbers in every output come from the same rows.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import Any

from ..backbones.placeholder import PLACEHOLDER_NOTE, is_placeholder

__all__ = [
    "display_name",
    "markdown_table",
    "placeholder_notes",
    "placeholder_summary",
    "reading_notes",
    "stand_in_groups",
    "table1",
    "table2",
    "table3",
    "tables_markdown",
    "to_csv",
]

MODALITY_NAMES = {"em": "EM", "mri": "MRI", "histology": "Histology", "nuclei": "Nuclei"}
_WORDS = {"vit": "ViT", "cnx": "CNX", "sat": "SAT", "7b": "7B", "plus": "Plus"}

Table = tuple[list[str], list[list[str]]]


def display_name(model_id: str) -> str:
    """The report's spelling of a model id: ``"cnx-tiny"`` → ``"CNX-Tiny"``, ``"vit-large"`` → ``"ViT-Large"``."""
    return "-".join(_WORDS.get(p, p.capitalize()) for p in str(model_id).split("-"))


def _mod(m: str) -> str:
    return MODALITY_NAMES.get(m, m)


def _weights_tag(rec: dict[str, Any]) -> str:
    return f"{display_name(rec['backbone'])} [{rec['weights']}]"


def _head(rec: dict[str, Any]) -> str:
    return "majority†" if rec.get("head") == "majority" else str(rec.get("head", ""))


def table1(results: dict[str, Any]) -> Table:
    """Segmentation per modality: Modality | Model | Head | Accuracy | F1 score | Pixel Dice.

    Accuracy and F1 are patch-level (the report's); Pixel Dice scores the same patch predictions painted onto
    their pixels against the pixel mask (see :func:`reading_notes`).
    """
    rows = []
    seen: set[str] = set()
    for m in dict.fromkeys(r["modality"] for r in results["segmentation"]):
        for r in (r for r in results["segmentation"] if r["modality"] == m):
            f1 = f"{r['f1']:.3f}" + ("*" if r.get("note") else "")
            dice = f"{r['pixel_dice']:.3f}" if r.get("pixel_dice") is not None else "—"
            rows.append([_mod(m) if m not in seen else "", _weights_tag(r), _head(r), f"{r['accuracy']:.3f}", f1,
                         dice])
            seen.add(m)
    return ["Modality", "Model", "Head", "Accuracy", "F1 score", "Pixel Dice"], rows


def table2(results: dict[str, Any]) -> Table:
    """Cross-modality grid: one row per (train modality, backbone), one column per test modality, acc/F1."""
    grid = results["crossmodal"]
    tests = list(dict.fromkeys(r["test"] for r in grid))
    rows = []
    for tr in dict.fromkeys(r["train"] for r in grid):
        for bb in dict.fromkeys(r["backbone"] for r in grid):
            cells = {r["test"]: r for r in grid if r["train"] == tr and r["backbone"] == bb}
            row = [f"{_mod(tr)} ({display_name(bb)})"]
            for te in tests:
                c = cells[te]
                row.append(f"{c['accuracy']:.3f}/{c['f1']:.3f}" + ("*" if c.get("note") else ""))
            rows.append(row)
    return ["Train → Test", *(_mod(t) for t in tests)], rows


def table3(results: dict[str, Any]) -> Table:
    """Registration: mean absolute shift error (patches), one row per modality, one column per backbone."""
    reg = results["registration"]
    bbs = list(dict.fromkeys(r["backbone"] for r in reg))
    rows = []
    for m in dict.fromkeys(r["modality"] for r in reg):
        by = {r["backbone"]: r for r in reg if r["modality"] == m}
        rows.append([_mod(m), *(f"{by[b]['mean_error']:.2f}" for b in bbs)])
    return ["Modality", *(display_name(b) for b in bbs)], rows


def _score_cells(results: dict[str, Any], name: str) -> dict[tuple[str, ...], str]:
    """Every score of backbone ``name`` as the tables print it, keyed by where it is printed."""
    cells: dict[tuple[str, ...], str] = {}
    for r in results.get("segmentation", []):
        if r.get("backbone") == name:
            cells[("segmentation", r["modality"], "accuracy")] = f"{r['accuracy']:.3f}"
            cells[("segmentation", r["modality"], "f1")] = f"{r['f1']:.3f}"
            if r.get("pixel_dice") is not None:
                cells[("segmentation", r["modality"], "pixel_dice")] = f"{r['pixel_dice']:.3f}"
    for r in results.get("crossmodal", []):
        if r.get("backbone") == name and r.get("train") != r.get("test"):  # the diagonal is Table 1's
            cells[("crossmodal", r["train"], r["test"])] = f"{r['accuracy']:.3f}/{r['f1']:.3f}"
    for r in results.get("registration", []):
        if r.get("backbone") == name:
            cells[("registration", r["modality"])] = f"{r['mean_error']:.2f}"
    return cells


def stand_in_groups(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Backbones that ran one and the same stand-in, and how many of their printed scores are identical.

    Backbones are grouped by the ``stand_in`` of their ``describe()`` record (every placeholder backbone has
    the same one: a random projection of the same patch pixels), so two model ids on the placeholder are
    recognised from the records, whatever their names. Only groups of two or more are returned, each as
    ``{"stand_in", "backbones", "identical", "compared", "note"}``.
    """
    groups: dict[str, list[str]] = {}
    for b in results.get("backbones", []):
        if b.get("stand_in"):
            groups.setdefault(str(b["stand_in"]), []).append(str(b.get("name")))
    out = []
    for stand_in, names in groups.items():
        names = list(dict.fromkeys(names))
        if len(names) < 2:
            continue
        cells = [_score_cells(results, n) for n in names]
        keys = sorted(set.intersection(*(set(c) for c in cells)))
        same = sum(len({c[k] for c in cells}) == 1 for k in keys)
        shown = " and ".join([", ".join(display_name(n) for n in names[:-1]), display_name(names[-1])])
        note = (
            f"{shown} are one and the same stand-in, not {len(names)} models: each ran the placeholder "
            f"({stand_in}; only the projection's random seed and width differ). {same} of their {len(keys)} "
            "printed scores are identical; the others differ only through that random draw. Read their rows as "
            "one baseline."
        )
        out.append({"stand_in": stand_in, "backbones": names, "identical": same, "compared": len(keys),
                    "note": note})
    return out


def placeholder_notes(results: dict[str, Any]) -> list[str]:
    """What the placeholder is (when a backbone ran it) and which backbones are one and the same stand-in."""
    names = [display_name(str(b.get("name"))) for b in results.get("backbones", []) if is_placeholder(b)]
    if not names:
        return []
    head = f"{', '.join(names)}: weights = placeholder, not DINOv3. {PLACEHOLDER_NOTE}"
    return [head, *(g["note"] for g in stand_in_groups(results))]


def placeholder_summary(results: dict[str, Any]) -> dict[str, Any] | None:
    """``results.json``'s ``placeholder`` entry: what it is, who ran it, which backbones are one stand-in."""
    names = [str(b.get("name")) for b in results.get("backbones", []) if is_placeholder(b)]
    if not names:
        return None
    return {"note": PLACEHOLDER_NOTE, "backbones": names, "same_stand_in": stand_in_groups(results)}


def reading_notes(results: dict[str, Any]) -> list[str]:
    """How to read Tables 1–3: patch-level majority labels, the pixel Dice beside them, the majority head, the
    registration search."""
    notes = []
    seg = results.get("segmentation", [])
    if seg:
        rules = {r.get("label_rule", "majority") for r in seg}
        label = (
            "labelled foreground when more than half of its pixels are foreground (label_rule = \"majority\")"
            if rules == {"majority"}
            else f"labelled by the suite's label_rule ({', '.join(sorted(map(str, rules)))})"
        )
        notes.append(
            f"Accuracy and F1 score (Tables 1 and 2) are patch-level, as in the report: each 16×16 patch is one "
            f"sample, {label}, and the head predicts one label per patch. An object that covers no patch by "
            "more than half (most histology nuclei) therefore has no foreground patch and is not scored. Pixel "
            "Dice scores the same patch predictions painted onto their pixels against the pixel mask, so it "
            "counts every nucleus: a high patch F1 beside a low pixel Dice means the few large objects are found "
            "and the small ones are not looked for."
        )
    if any(r.get("head") == "majority" for r in [*seg, *results.get("crossmodal", [])]):
        notes.append(
            "† Head \"majority\": the training set had a single class (no foreground patch under the majority "
            "rule), so no classifier can be fitted; the report's fallback then predicts that class — "
            "background — for every patch. Its scores say nothing about the features."
        )
    need = {r.get("min_overlap_patches") for r in results.get("registration", [])} - {None}
    if need:
        notes.append(
            "Table 3: the shift estimate maximises the mean patch similarity along a diagonal (the report's "
            f"estimate_translation) over the shifts that keep at least {', '.join(map(str, sorted(need)))} "
            "patches overlapping (min_overlap of the suite, a fraction of the grid): a shift where only a "
            "corner patch overlaps is noise, not evidence."
        )
    return notes


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured Markdown table; numeric columns right-aligned."""
    align = ["---:" if rows and all(_numeric(r[i]) for r in rows) else "---" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _numeric(cell: str) -> bool:
    return cell.replace(".", "", 1).replace("/", "").replace("*", "").replace(".", "").replace("-", "").isdigit()


def tables_markdown(results: dict[str, Any], title: str = "neurOS cv benchmark") -> str:
    """All three tables with captions, the weights each backbone used, and the notes behind starred cells."""
    used = ", ".join(f"{display_name(b['name'])} = {b['weights']}" for b in results["backbones"])
    parts = [f"# {title}", "", f"Weights used: {used}", ""]
    placeholder = placeholder_notes(results)
    if placeholder:
        parts += [f"> **Placeholder.** {placeholder[0]}", ""]
    for caption, table in (
        ("**Table 1:** Segmentation performance per modality.", table1),
        ("**Table 2:** Cross-modality segmentation results (accuracy/F1).", table2),
        ("**Table 3:** Mean absolute shift error (in patches) for registration.", table3),
    ):
        parts += [caption, "", markdown_table(*table(results)), ""]
    if placeholder[1:]:
        parts += ["Same stand-in:", ""] + [f"- {n}" for n in placeholder[1:]] + [""]
    reading = reading_notes(results)
    if reading:
        parts += ["How to read the tables:", ""] + [f"- {n}" for n in reading] + [""]
    if results.get("notes"):
        parts += ["Notes (cells marked *):", ""] + [f"- {n}" for n in results["notes"]] + [""]
    return "\n".join(parts)


def to_csv(records: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """Records as CSV text with the given columns (lists are joined with ';')."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in records:
        w.writerow([";".join(map(str, v)) if isinstance(v, (list, tuple)) else ("" if v is None else v)
                    for v in (r.get(c) for c in columns)])
    return buf.getvalue()
