"""``neuros-cv bench --suite real``: the real-data suite's progress, tables and atomic output."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..experiments.real_suite import RealSuiteConfig, real_suite_steps, run_real_suite
from ..output import atomic_output_dir, check_output_dir, dumps_json
from ..report.html import write_html
from ..report.provenance import provenance
from ..report.real_tables import real_markdown, real_tables
from ..report.tables import to_csv
from ._progress import progress_callback

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["run_real", "write_real_outputs"]

SCHEMA = "neuros-cv/bench-real/1"


def _config(args: argparse.Namespace) -> RealSuiteConfig:
    ignored = [f"--{k}" for k in ("weights", "protocol") if getattr(args, k, None) is not None]
    if ignored:
        raise ValueError(f"{', '.join(ignored)} applies to --suite report; the real suite takes --backbones "
                         "NAME[@WEIGHTS] (e.g. vit-small@random filterbank), --seed and --config real.toml")
    data: dict = {}
    if getattr(args, "config", None) is not None:
        path = Path(args.config)
        if not path.is_file():
            raise FileNotFoundError(f"--config {path}: no such file (the real suite reads a TOML file of "
                                    "RealSuiteConfig keys; see docs/segmentation.md)")
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"--config {path}: invalid TOML: {e}") from None
    over = {"backbones": getattr(args, "backbones", None), "seed": getattr(args, "seed", None)}
    config = RealSuiteConfig.from_dict({**data, **{k: v for k, v in over.items() if v is not None}})
    if getattr(args, "sparse", False):
        if config.pixel is None:
            raise ValueError("--sparse trains the pixel rows from scribbles, but the config turns them off "
                             "(pixel = false); remove that line or drop --sparse")
        config = dataclasses.replace(config, pixel=dataclasses.replace(config.pixel, sparse=True))
    if getattr(args, "full", False):
        if config.pixel is None:
            raise ValueError("--full runs the whole pixel protocol, but the config turns the pixel rows off "
                             "(pixel = false); remove that line or drop --full")
        config = dataclasses.replace(config, pixel=config.pixel.full())
    return config


def write_real_outputs(folder, config: RealSuiteConfig, results: dict, timings: dict) -> None:
    """results.json, tables.md, segmentation.csv, crossmodal.csv, pixel.csv (with pixel rows) and report.html
    into ``folder``."""
    doc = {"schema": SCHEMA, "config": config.to_dict(), **results, "provenance": provenance(timings)}
    (folder / "results.json").write_text(dumps_json(doc), encoding="utf-8")
    (folder / "tables.md").write_text(real_markdown(results), encoding="utf-8")
    rows = [{"dataset": r["dataset"], "backbone": r["spec"], "weights": r["weights"], "class": c,
             "dice": v["dice"], "dice_ci_low": v["dice_ci"][0], "dice_ci_high": v["dice_ci"][1], "iou": v["iou"],
             "n_test_pixels": v["n_pixels"]} for r in results["segmentation"] for c, v in r["classes"].items()]
    cols = ["dataset", "backbone", "weights", "class", "dice", "dice_ci_low", "dice_ci_high", "iou", "n_test_pixels"]
    (folder / "segmentation.csv").write_text(to_csv(rows, cols), encoding="utf-8")
    (folder / "crossmodal.csv").write_text(
        to_csv(results["crossmodal"], ["train", "test", "spec", "weights", "dice", "dice_ci", "accuracy"]),
        encoding="utf-8")
    if results.get("pixel"):
        prow = [{"dataset": r["dataset"], "method": r["method"], "labels": r["labels"], "class": c,
                 "dice": v["dice"], "dice_ci_low": v["dice_ci"][0], "dice_ci_high": v["dice_ci"][1],
                 "dice_vs_dense": (r.get("dice_vs_dense") or {}).get(c),
                 "object_f1": (r.get("objects") or {}).get(c, {}).get("f1"),
                 "fit_seconds": r["fit_seconds"], "predict_seconds": r["predict_seconds"]}
                for r in results["pixel"] for c, v in r["classes"].items()]
        (folder / "pixel.csv").write_text(to_csv(prow, list(prow[0])), encoding="utf-8")
    write_html(folder / "report.html", doc, title="neurOS cv real-data benchmark report")


def run_real(args: argparse.Namespace) -> int:
    """Run the real suite from CLI arguments (``--backbones``, ``--seed``, ``--out``, ``--overwrite``)."""
    config = _config(args)
    inputs = [c for c in (getattr(args, "config", None),) if c and Path(c).expanduser().exists()]  # a TOML file
    out = check_output_dir(args.out, args.overwrite, inputs)  # fail before computing anything
    with progress_callback(real_suite_steps(config), f"bench[{config.name}]") as tick:
        results, timings = run_real_suite(config, progress=tick)
    console = Console()
    console.print("Weights used: " + ", ".join(f"{b['spec']} = {b['weights']}" for b in results["backbones"]))
    for s in results["skipped"]:
        console.print(f"Skipped {escape(s['backbone'])}: {escape(s['reason'])}", soft_wrap=True)
    for caption, (header, rows) in real_tables(results):
        t = Table(title=caption, title_justify="left")
        for h in header:
            t.add_column(escape(h))
        for r in rows:
            t.add_row(*(escape(c) for c in r))
        console.print(t)
    for note in results["notes"]:
        console.print(f"* {escape(note)}", soft_wrap=True)
    with atomic_output_dir(out, overwrite=args.overwrite, inputs=inputs, command="bench --suite real") as tmp:
        write_real_outputs(tmp, config, results, timings)
    console.print(f"Wrote results.json, tables.md and CSVs to {out}")
    return 0
