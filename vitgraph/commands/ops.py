"""`vitgraph ops SPEC [--by block|stage] [--json]`: params, MACs, BOPs and OPs per block
or stage and in total (convention: one MAC = 1, attention matmuls included,
OPs = MACs + BOPs/64), plus the float and bit-packed weight sizes."""
from __future__ import annotations

import argparse
import json

from .. import compile, count
from ..cli import parse_overrides
from ..counting import weight_bytes_by
from ..ops import Counts


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", metavar="SPEC")
    p.add_argument("--by", choices=["block", "stage"], default="block", help="rows per block or per stage")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--set", action="extend", nargs="+", metavar="KEY=VALUE", help="override spec parameters")
    p.add_argument("--model", help="which model of the file (default: the file's own)")


def _fmt(v: float, unit: float, digits: int = 3) -> str:
    return f"{v / unit:,.{digits}f}" if v else "-"


def table(rows: dict[str, Counts], total: Counts, sizes: dict[str, tuple[int, int]]) -> str:
    """One line per row: counts and the weights' size as float32 and deployed (1 bit per
    binary weight), like Larq's model summary."""
    head = (f"{'':24s} {'params (M)':>11s} {'MACs (M)':>11s} {'BOPs (M)':>11s} {'OPs (M)':>11s} "
            f"{'fp32 (MiB)':>11s} {'1-bit (MiB)':>11s}")
    lines = [head, "-" * len(head)]
    for name, c in list(rows.items()) + [("total", total)]:
        if name == "total":
            lines.append("-" * len(head))
        fp, packed = sizes[name]
        lines.append(f"{name:24s} {_fmt(c.params, 1e6):>11s} {_fmt(c.macs, 1e6, 1):>11s} "
                     f"{_fmt(c.bops, 1e6, 1):>11s} {_fmt(c.ops, 1e6, 1):>11s} {_fmt(fp, 2**20, 2):>11s} "
                     f"{_fmt(packed, 2**20, 2):>11s}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    graph = compile(args.spec, args.model, **parse_overrides(args.set))
    report = count(graph)
    rows = report.by_group if args.by == "block" else report.by_stage
    sizes = weight_bytes_by(graph, lambda node: node.group if args.by == "block" else node.stage)
    fp_bytes, packed = sum(v[0] for v in sizes.values()), sum(v[1] for v in sizes.values())
    sizes["total"] = (fp_bytes, packed)
    if args.json:
        out = {"model": graph.name, "spec_hash": graph.spec.hash, "params": graph.spec.params,
               "total": report.total.as_dict(), "rows": {k: v.as_dict() for k, v in rows.items()},
               "weight_bytes": {"float32": fp_bytes, "packed": packed},
               "rows_weight_bytes": {k: {"float32": v[0], "packed": v[1]} for k, v in sizes.items() if k in rows}}
        print(json.dumps(out, indent=2))
        return 0
    print(f"{graph.name}  ({' '.join(f'{k}={v}' for k, v in graph.spec.params.items())})")
    print(table(rows, report.total, sizes))
    t = report.total
    smaller = f"{fp_bytes / packed:.1f}x smaller; " if t.binary_params else ""
    print(f"weights: {fp_bytes / 2**20:.2f} MiB as float32, {packed / 2**20:.2f} MiB bit-packed as deployed "
          f"({smaller}{t.binary_params / 1e6:.2f}M binary, {t.fp_params / 1e6:.2f}M full-precision params)")
    return 0
