"""``neuros-cv backbones``: list the backbone registry."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from ..backbones.base import backbone_info, list_backbones


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("backbones", help="list available backbones", description="List every registered backbone.")
    p.add_argument("--family", help="only this family (dinov3, classical, …)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    names = list_backbones(args.family)
    if not names:
        raise ValueError(f"no backbones in family {args.family!r}")
    t = Table(title="neurOS cv backbones")
    for col in ("id", "family", "hub id", "feature dim", "params (M)", "stride", "summary"):
        t.add_column(col)
    for n in names:
        i = backbone_info(n)
        t.add_row(
            n, i["family"], str(i.get("hub_id", "-")), str(i.get("feature_dim", "-")),
            str(i.get("params_m", "-")), str(i.get("patch_size", "-")), i["summary"],
        )
    Console(width=200).print(t)
    return 0
