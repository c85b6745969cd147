"""The report's Tables 1–3 as plain data (rows of strings), Markdown and CSV.

Rendering to the terminal (rich) and to HTML reuses :func:`table1`, :func:`table2` and :func:`table3`, so the
numbers in every output come from the same rows.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import Any

__all__ = ["display_name", "markdown_table", "table1", "table2", "table3", "tables_markdown", "to_csv"]

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


def table1(results: dict[str, Any]) -> Table:
    """Segmentation per modality: Modality | Model | Accuracy | F1 score."""
    rows = []
    seen: set[str] = set()
    for m in dict.fromkeys(r["modality"] for r in results["segmentation"]):
        for r in (r for r in results["segmentation"] if r["modality"] == m):
            f1 = f"{r['f1']:.3f}" + ("*" if r.get("note") else "")
            rows.append([_mod(m) if m not in seen else "", _weights_tag(r), f"{r['accuracy']:.3f}", f1])
            seen.add(m)
    return ["Modality", "Model", "Accuracy", "F1 score"], rows


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
    for caption, table in (
        ("**Table 1:** Segmentation performance per modality.", table1),
        ("**Table 2:** Cross-modality segmentation results (accuracy/F1).", table2),
        ("**Table 3:** Mean absolute shift error (in patches) for registration.", table3),
    ):
        parts += [caption, "", markdown_table(*table(results)), ""]
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
