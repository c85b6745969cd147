"""The real-data suite's tables (``neuros-cv bench --suite real``): Dice per class per backbone, cross-modality
transfer and the report-vs-better protocol comparison, from the ``results`` that
:func:`neuros.plugins.cv.experiments.real_suite.run_real_suite` returns (plain records; no computation here)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .tables import display_name, markdown_table

__all__ = ["pixel_table", "real_markdown", "real_tables"]


def _ci(value: float, ci: list[float]) -> str:
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def _label(rec: Mapping[str, Any]) -> str:
    return f"{display_name(rec['backbone'])} [{rec['weights']}]"


def _labels_cell(rec: Mapping[str, Any], cname: str) -> str:
    if rec["labels"] != "scribbles":
        return "dense"
    cell = f"scribbles ({100 * rec['labelled_fraction']:.1f} % of pixels)"
    rel = (rec.get("dice_vs_dense") or {}).get(cname)
    return cell + (f", {rel:.2f} × dense" if rel is not None else "")


def _objects_cell(rec: Mapping[str, Any], cname: str) -> str:
    o = (rec.get("objects") or {}).get(cname)
    if o is None:
        return ""
    return f"{o['f1']:.3f} / {o['precision']:.3f} / {o['recall']:.3f} (IoU {o['mean_matched_iou']:.2f})"


def pixel_table(results: Mapping[str, Any]) -> tuple[str, tuple[list[str], list[list[str]]]] | None:
    """The pixel rows (full resolution): Dice per class per method with the ilastik recipe as a named
    baseline, object scores, and fit/predict seconds; ``None`` when the results have no pixel rows."""
    rows_in = results.get("pixel") or []
    if not rows_in:
        return None
    rows = []
    for r in rows_in:
        for cname, v in r["classes"].items():
            rows.append([r["dataset"].upper() if r["dataset"] != "nuclei" else "Nuclei", cname, r["method"],
                         _labels_cell(r, cname), _ci(v["dice"], v["dice_ci"]), _objects_cell(r, cname),
                         f"{r['fit_seconds']:.1f}", f"{r['predict_seconds']:.1f}"])
    return ("Real data at full resolution, pixel rows: pixel Dice per class [95% CI over test images]; objects "
            "matched at IoU ≥ 0.5 (F1 / precision / recall, mean matched IoU); the ilastik recipe is the baseline"
            + ("; (control) rows run the DINOv3 pixel path with the weights their name gives (random: no learned "
               "features)." if any(r.get("kind") == "control" for r in rows_in) else "."),
            (["Dataset", "Class", "Method", "Labels", "Dice", "Objects F1 / P / R", "Fit (s)", "Predict (s)"], rows))


def real_tables(results: Mapping[str, Any]) -> list[tuple[str, tuple[list[str], list[list[str]]]]]:
    """The real suite's tables as ``(caption, (header, rows))``: Dice per class per backbone (filterbank column
    beside every DINOv3 column), cross-modality transfer, and report-vs-better protocol.

    Parameters
    ----------
    results : mapping
        ``run_real_suite``'s results (or a ``results.json`` of ``bench --suite real``): ``segmentation``
        records, optional ``crossmodal``, ``protocols`` and ``pixel`` records (the last table,
        :func:`pixel_table`).

    Returns
    -------
    list of (str, (list of str, list of list of str))
        One ``(caption, (header, rows))`` per table, cells already formatted (``"0.812 [0.790, 0.831]"``).
    """
    out = []
    seg = results["segmentation"]
    specs = list(dict.fromkeys(r["spec"] for r in seg))
    labels = {r["spec"]: _label(r) for r in seg}
    rows = []
    for d in dict.fromkeys(r["dataset"] for r in seg):
        by = {r["spec"]: r for r in seg if r["dataset"] == d}
        for cname in next(iter(by.values()))["classes"]:
            rows.append([d.upper() if d != "nuclei" else "Nuclei", cname,
                         *(_ci(by[s]["classes"][cname]["dice"], by[s]["classes"][cname]["dice_ci"]) for s in specs)])
    out.append(("Real data: pixel Dice per class [95% bootstrap CI over test images].",
                (["Dataset", "Class", *(labels[s] for s in specs)], rows)))
    if results.get("crossmodal"):
        cm = results["crossmodal"]
        rows = []
        for tr in dict.fromkeys(r["train"] for r in cm):
            for te in dict.fromkeys(r["test"] for r in cm):
                by = {r["spec"]: r for r in cm if r["train"] == tr and r["test"] == te}
                rows.append([f"{tr} → {te}", *(_ci(by[s]["dice"], by[s]["dice_ci"]) for s in specs)])
        out.append(("Real data, cross-modality transfer: foreground pixel Dice [95% CI] (train → test).",
                    (["Train → Test", *(labels[s] for s in specs)], rows)))
    if results.get("protocols"):
        rows = []
        for r in results["protocols"]:
            rep = r["report"]
            rows.append([r["modality"], labels.get(r["spec"], r["spec"]),
                         f"{rep['accuracy']:.3f}/{rep['f1']:.3f}" + ("*" if rep.get("note") else ""),
                         _ci(r["better"]["dice"], r["better"]["dice_ci"])])
        out.append(("Synthetic data, report protocol (patch accuracy/F1, majority labels, unweighted head) vs "
                    "better protocol (random placement, balanced head, pixel Dice [95% CI]).",
                    (["Modality", "Model", "Report acc/F1 (patch)", "Better Dice (pixel)"], rows)))
    pixel = pixel_table(results)
    if pixel is not None:
        out.append(pixel)
    return out


def real_markdown(results: Mapping[str, Any], title: str = "neurOS cv real-data benchmark") -> str:
    """All real-suite tables with captions, the weights used, dataset notes and skipped backbones.

    Parameters
    ----------
    results : mapping
        As for :func:`real_tables`, plus ``backbones``, ``datasets``, ``skipped`` and ``notes``.
    title : str
        The document's first heading.

    Returns
    -------
    str
        A Markdown document (``tables.md``), ending in a newline.
    """
    used = ", ".join(f"{b['spec']} = {b['weights']}" for b in results["backbones"])
    parts = [f"# {title}", "", f"Weights used: {used}", ""]
    for caption, (header, rows) in real_tables(results):
        parts += [f"**{caption}**", "", markdown_table(header, rows), ""]
    parts += ["Data:", ""]
    for d, info in results["datasets"].items():
        parts.append(f"- {d}: {info['source']}; {info['n_train']} train / {info['n_test']} test images "
                     f"({'; '.join(info['train'] + info['test'])})")
    for d, info in (results.get("pixel_datasets") or {}).items():
        parts.append(f"- {d}, pixel rows: {'; '.join(info['notes'])}")
    for s in [*results.get("skipped", []), *results.get("pixel_skipped", [])]:
        parts.append(f"- skipped backbone {s['backbone']}: {s['reason']}")
    if results.get("notes"):
        parts += ["", "Notes (cells marked *):", ""] + [f"- {n}" for n in results["notes"]]
    return "\n".join(parts) + "\n"
