"""`vitgraph show SPEC [--format text|dot|svg|png] [-o FILE] [--expand]`: the printed IR, or a
drawing of the graph coloured by precision and annotated with shapes and counts, in columns
by stage with each run of identical blocks drawn once (`--expand` draws every block)."""
from __future__ import annotations

import argparse
from pathlib import Path

from .. import compile, format_graph
from ..cli import parse_overrides
from ..diagnostics import UserError
from ..fileio import check_output_file, write_atomic


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", metavar="SPEC")
    p.add_argument("--format", choices=["text", "dot", "svg", "png"], default="text")
    p.add_argument("-o", "--output", metavar="FILE", help="where to write (default: stdout for text/dot, "
                                                          "<model>.<format> for images)")
    p.add_argument("--set", action="extend", nargs="+", metavar="KEY=VALUE", help="override spec parameters")
    p.add_argument("--model", help="which model of the file (default: the file's own)")
    p.add_argument("--expand", action="store_true", help="svg/png: draw every block, not each run of identical "
                                                         "blocks once")


def run(args: argparse.Namespace) -> int:
    from ..draw import render_image, to_dot

    if args.output:
        _check_output(Path(args.output))
    graph = compile(args.spec, args.model, **parse_overrides(args.set))
    if args.format in ("text", "dot"):
        text = format_graph(graph) if args.format == "text" else to_dot(graph)
        if args.output:
            write_atomic(args.output, lambda tmp: tmp.write_text(text))
        else:
            print(text, end="")
        return 0
    out = Path(args.output or f"{graph.name}.{args.format}")
    if out.suffix.lstrip(".") != args.format:
        raise UserError(f"output '{out}' does not end in .{args.format}", status=2)
    render_image(graph, out, expand=args.expand)
    print(f"wrote {out}")
    return 0


def _check_output(out: Path) -> None:
    """-o names a file in a folder that exists and accepts it (checked before any work)."""
    check_output_file(out)
    if not out.parent.is_dir():
        raise UserError(f"cannot write '{out}': folder '{out.parent}' does not exist", status=2)
