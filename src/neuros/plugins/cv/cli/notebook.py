"""``neuros-cv notebook``: write the report's notebook (``dino_advanced_experiments.ipynb``)."""

from __future__ import annotations

import argparse

from ..experiments.suite import builtin_suites, load_suite
from ..output import check_output_file
from ..report.notebook import DEFAULT_NAME, build_notebook, execute_notebook, write_notebook


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "notebook",
        help="write the report's Jupyter notebook (every step with the public API)",
        description=(
            "Generate a Jupyter notebook that walks through the report step by step with the public API — "
            "suite config, backbones and weights, data, features, segmentation, registration, the whole suite, "
            "Tables 1–3 (the same as `neuros-cv bench`), figures and the HTML report — with explanations "
            "between the code cells. An existing --out is refused unless --overwrite."
        ),
    )
    p.add_argument("--out", default=DEFAULT_NAME, help=f"notebook file to write (default: {DEFAULT_NAME})")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument(
        "--config",
        metavar="SUITE",
        default="report",
        help=f"suite TOML file, or a built-in suite: {', '.join(builtin_suites())} (default: report)",
    )
    p.add_argument("--seed", type=int, help="override the suite's seed")
    p.add_argument(
        "--execute", action="store_true", help="run the notebook (nbclient, offline) and save it with its outputs"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_output_file(args.out, args.overwrite)  # fail before generating or executing anything
    overrides = {"seed": args.seed} if args.seed is not None else {}
    load_suite(args.config, **overrides)  # a bad suite fails now, with the key's name, not in the notebook
    nb = build_notebook(args.config, overrides)
    if args.execute:
        nb = execute_notebook(nb)
    path = write_notebook(args.out, nb, overwrite=args.overwrite)
    print(f"Wrote {path} ({len(nb.cells)} cells{', executed' if args.execute else ''})")
    return 0
