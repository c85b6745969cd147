"""``neuros-cv backbones``: list the backbone registry, and which DINOv3 weights this machine has."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..backbones.base import backbone_info, list_backbones
from ..backbones.weights import WEIGHTS_ENV


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "backbones",
        help="list available backbones and whether their weights are on this machine",
        description=(
            "List every registered backbone: id, hub id, feature dimension, parameter count, patch stride and "
            f"whether pretrained weights are available here ({WEIGHTS_ENV} folders or the Hugging Face cache; "
            "no network). Local DINOv3 folders and hub ids are accepted wherever an id is, too."
        ),
    )
    p.add_argument("--family", help="only this family (dinov3, classical, …)")
    p.set_defaults(func=run)


def _weights_here(name: str, family: str) -> str:
    if family != "dinov3":
        return "n/a"
    from ..backbones.dinov3 import weights_available

    found = weights_available(name)
    return f"yes: {found}" if found else "no (auto → placeholder)"


def run(args: argparse.Namespace) -> int:
    names = list_backbones(args.family)
    if not names:
        raise ValueError(f"no backbones in family {args.family!r}")
    t = Table(title="neurOS cv backbones")
    for col in ("id", "family", "hub id", "feature dim", "params (M)", "stride", "pretrained weights here", "summary"):
        t.add_column(col)
    for n in names:
        i = backbone_info(n)
        t.add_row(
            n, i["family"], str(i.get("hub_id", "-")), str(i.get("feature_dim", "-")),
            str(i.get("params_m", "-")), str(i.get("patch_size", "-")), escape(_weights_here(n, i["family"])),
            i["summary"],
        )
    Console(width=240).print(t)
    return 0
