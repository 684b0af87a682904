"""`vitgraph check SPEC...`: parse, lower and check each spec; print a one-line summary."""
from __future__ import annotations

import argparse

from .. import compile, count
from ..cli import parse_overrides


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("specs", nargs="+", metavar="SPEC", help=".vg files")
    p.add_argument("--set", action="extend", nargs="+", metavar="KEY=VALUE", help="override spec parameters")
    p.add_argument("--model", help="which model of the file (default: the file's own)")


def run(args: argparse.Namespace) -> int:
    overrides = parse_overrides(args.set)
    for path in args.specs:
        graph = compile(path, args.model, **overrides)
        t = count(graph).total
        bops = f", {t.bops / 1e9:.2f}G BOPs" if t.bops else ""
        print(f"ok  {path}: {graph.name}, {len(graph)} nodes, {t.params / 1e6:.2f}M params, "
              f"{t.macs / 1e9:.3f}G MACs{bops}, {t.ops / 1e9:.3f}G OPs")
    return 0
