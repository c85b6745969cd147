"""``neuros-cv bench``: run a benchmark suite, print the report's tables, write results atomically."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..backbones.placeholder import is_placeholder, placeholder_notice
from ..experiments.examples import collect_examples
from ..experiments.pipeline import FeatureStore
from ..experiments.suite import SuiteConfig, builtin_suites, load_suite, run_suite, suite_steps
from ..output import atomic_output_dir, check_output_dir, dumps_json
from ..report.figures import report_figures, save_figures
from ..report.html import write_html
from ..report.provenance import provenance
from ..report.tables import (
    placeholder_notes,
    placeholder_summary,
    reading_notes,
    table1,
    table2,
    table3,
    tables_markdown,
    to_csv,
)
from ._progress import progress_callback

SCHEMA = "neuros-cv/bench/1"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="run a benchmark suite (default: the report's three experiments)",
        description=(
            "Reproduce the report's experiments — segmentation per modality (Table 1), cross-modality "
            "transfer (Table 2) and patch-shift registration (Table 3) — print the tables and write "
            "results.json, tables.md, CSVs, figures/*.png and a self-contained report.html into --out. Every "
            "table names the weights each backbone used. --config reads a suite from a TOML file (or a built-in "
            "suite by name); the other options override its keys."
        ),
    )
    p.add_argument(
        "--config",
        metavar="SUITE",
        help=f"suite TOML file, or a built-in suite: {', '.join(builtin_suites())} (default: report)",
    )
    p.add_argument("--backbones", nargs="+", metavar="NAME", help="backbones to compare (default: cnx-tiny vit-large)")
    p.add_argument(
        "--weights",
        choices=("auto", "pretrained", "random", "placeholder"),
        help="DINOv3 weights: pretrained when present else placeholder (auto, the default), or force one",
    )
    p.add_argument("--seed", type=int, help="random seed for data and heads (default 0)")
    p.add_argument("--protocol", choices=("report", "random"), help="synthetic-data protocol (default: report)")
    p.add_argument("--out", default="results/bench", help="output folder (default: results/bench)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument(
        "--suite",
        choices=("report", "real"),
        default="report",
        help="report: the report's synthetic experiments (default); real: pixel Dice per class on real EM, MRI "
        "and nuclei with CIs, filterbank baseline, transfer, report-vs-better protocol (--backbones NAME[@WEIGHTS]; "
        "--config FILE.toml of RealSuiteConfig keys)",
    )
    p.add_argument("--sparse", action="store_true",
                   help="--suite real: also train the pixel rows from simulated scribbles (~1 %% of pixels) and "
                   "report how close they get to dense training")
    p.add_argument("--full", action="store_true",
                   help="--suite real: the whole pixel protocol past the 10-minute budget (all 8 EM training "
                   "sections, whole 1024² test sections, the conv decoder head as one more row)")
    p.set_defaults(func=run)


def _config(args: argparse.Namespace) -> SuiteConfig:
    overrides = {
        k: v
        for k, v in {
            "backbones": args.backbones,
            "weights": args.weights,
            "seed": args.seed,
            "protocol": args.protocol,
        }.items()
        if v is not None
    }
    return load_suite(args.config or "report", **overrides)


def _rich(title: str, table: tuple[list[str], list[list[str]]]) -> Table:
    header, rows = table
    t = Table(title=title, title_justify="left")
    for i, h in enumerate(header):
        t.add_column(h, justify="right" if i and rows and rows[0][i][:1].isdigit() else "left")
    for r in rows:
        t.add_row(*(escape(c) for c in r))
    return t


def write_outputs(folder, config: SuiteConfig, results: dict, timings: dict, figures: dict | None = None) -> None:
    """Write results.json, tables.md, one CSV per experiment, figures/*.png and report.html into ``folder``."""
    doc = {
        "schema": SCHEMA,
        "config": config.to_dict(),
        "backbones": results["backbones"],
        "results": {k: results[k] for k in ("segmentation", "crossmodal", "registration")},
        "notes": results["notes"],
        "placeholder": placeholder_summary(results),
        "reading_notes": reading_notes(results),
        "provenance": provenance(timings),
    }
    (folder / "results.json").write_text(dumps_json(doc), encoding="utf-8")
    (folder / "tables.md").write_text(tables_markdown(results), encoding="utf-8")
    base = ["backbone", "weights"]
    score = ["head", "accuracy", "f1", "pixel_dice", "n_train_patches", "n_train_positive"]
    score += ["n_test_patches", "n_test_positive", "note"]
    (folder / "segmentation.csv").write_text(to_csv(results["segmentation"], [*base, "modality", *score]))
    (folder / "crossmodal.csv").write_text(to_csv(results["crossmodal"], [*base, "train", "test", *score]))
    reg_rows = [
        {"backbone": r["backbone"], "weights": r["weights"], "modality": r["modality"],
         "min_overlap_patches": r.get("min_overlap_patches"), **s}
        for r in results["registration"]
        for s in r["shifts"]
    ]
    reg_cols = [*base, "modality", "min_overlap_patches", "true", "estimated", "error"]
    (folder / "registration.csv").write_text(to_csv(reg_rows, reg_cols))
    if figures is not None:
        save_figures(figures, folder / "figures")
        write_html(folder / "report.html", doc, figures)


def run(args: argparse.Namespace) -> int:
    if getattr(args, "suite", "report") == "real":
        from ._bench_real import run_real

        return run_real(args)
    if getattr(args, "sparse", False):
        raise ValueError("--sparse trains the pixel rows of --suite real from scribbles; add --suite real")
    if getattr(args, "full", False):
        raise ValueError("--full runs the whole pixel protocol of --suite real; add --suite real")
    config = _config(args)
    inputs = [args.config] if args.config and Path(args.config).expanduser().exists() else []  # a TOML file
    out = check_output_dir(args.out, args.overwrite, inputs)  # fail before computing anything
    store = FeatureStore()
    with progress_callback(suite_steps(config), f"bench[{config.name}]") as tick:
        results, timings = run_suite(config, progress=tick, store=store)
    t0 = time.perf_counter()
    figures = report_figures(results, collect_examples(config, store))
    timings["figures"] = time.perf_counter() - t0
    console = Console()
    console.print("Weights used: " + ", ".join(f"{b['name']} = {b['weights']}" for b in results["backbones"]))
    for b in results["backbones"]:
        if is_placeholder(b):
            console.print(escape(placeholder_notice(b["name"])), soft_wrap=True)
    console.print(_rich("Table 1: Segmentation performance per modality.", table1(results)))
    console.print(_rich("Table 2: Cross-modality segmentation results (accuracy/F1).", table2(results)))
    console.print(_rich("Table 3: Mean absolute shift error (in patches) for registration.", table3(results)))
    for note in [*placeholder_notes(results)[1:], *reading_notes(results)]:
        console.print(escape(note), soft_wrap=True)
    for note in results["notes"]:
        console.print(f"* {note}", soft_wrap=True)
    with atomic_output_dir(out, overwrite=args.overwrite, inputs=inputs, command="bench") as tmp:
        write_outputs(tmp, config, results, timings, figures)
    console.print(f"Wrote results.json, tables.md, CSVs, figures/ and report.html to {out}")
    return 0
