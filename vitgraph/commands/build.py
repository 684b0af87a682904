"""`vitgraph build SPEC --backend torch|onnx [-o OUT] [--weights CKPT] [--set k=v]`.

The backend modules do the work (`build_command(graph, args) -> int` in
backends/torch_backend.py and backends/onnx_backend.py)."""
from __future__ import annotations

import argparse
import importlib

from .. import compile
from ..cli import parse_overrides
from ..fileio import check_output_file, check_output_folder


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", metavar="SPEC")
    p.add_argument("--backend", choices=["torch", "onnx"], default="torch")
    p.add_argument("-o", "--output", metavar="OUT", help="output file (default: <model>.pt / <model>.onnx)")
    p.add_argument("--weights", metavar="CKPT", help="a vitgraph or DeiT/timm-style checkpoint to load")
    p.add_argument("--set", nargs="+", metavar="KEY=VALUE", help="override spec parameters")
    p.add_argument("--model", help="which model of the file (default: the file's own)")
    p.add_argument("--standard-ops", action="store_true",
                   help="onnx: only standard ONNX ops (default: onnxruntime's fused Attention/BiasGelu kernels)")


def run(args: argparse.Namespace) -> int:
    if args.output:
        check_output_file(args.output)
    else:  # the backend names the file after the model, here
        check_output_folder(".")
    graph = compile(args.spec, args.model, **parse_overrides(args.set))
    backend = importlib.import_module(f"vitgraph.backends.{args.backend}_backend")
    return int(backend.build_command(graph, args) or 0)
