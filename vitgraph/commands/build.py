"""`vitgraph build [SPEC] --backend torch|onnx [-o OUT] [--weights CKPT] [--set k=v]`.

With `--weights` of a vitgraph checkpoint (a run's best.pt or last.pt, or a .safetensors
export), SPEC and --set are optional: the checkpoint holds the spec text and the parameters it
was trained with (vitgraph/checkpoints.py); given anyway, SPEC is compiled with the stored
parameters as defaults and --set wins. The backend modules do the work
(`build_command(graph, args) -> int` in backends/torch_backend.py and backends/onnx_backend.py);
`-o NAME.safetensors` with the torch backend writes safetensors with the description in its
metadata."""
from __future__ import annotations

import argparse
import importlib

from .. import compile
from ..cli import parse_overrides, require_files
from ..fileio import check_output_file, check_output_folder


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", metavar="SPEC", nargs="?", help="a .vg file (optional with --weights of a vitgraph run)")
    p.add_argument("--backend", choices=["torch", "onnx"], default="torch")
    p.add_argument("-o", "--output", metavar="OUT", help="output file (default: <model>.pt / <model>.onnx; "
                                                         "torch: .safetensors writes safetensors)")
    p.add_argument("--weights", metavar="CKPT", help="a vitgraph (.pt, .safetensors) or DeiT/timm checkpoint to load")
    p.add_argument("--set", action="extend", nargs="+", metavar="KEY=VALUE", help="override spec parameters")
    p.add_argument("--model", help="which model of the file (default: the file's own)")
    p.add_argument("--standard-ops", action="store_true",
                   help="onnx: only standard ONNX ops (default: onnxruntime's fused Attention/BiasGelu kernels)")
    p.add_argument("--float-binary", action="store_true",
                   help="onnx: binary layers as float32 +-scale weights and float matmuls (default for binary "
                        "specs: 1-bit weights and integer matmuls)")


def run(args: argparse.Namespace) -> int:
    require_files(spec=args.spec, weights=args.weights)
    if args.output:
        check_output_file(args.output)
    else:  # the backend names the file after the model, here
        check_output_folder(".")
    overrides = parse_overrides(args.set)
    graph = None
    if args.weights:
        from ..backends.torch_backend import read_checkpoint
        from ..checkpoints import checkpoint_graph

        graph = checkpoint_graph(args.spec, read_checkpoint(args.weights), args.weights, overrides, args.model)
    elif args.spec is None:
        from ..diagnostics import UserError

        raise UserError("nothing to build: give a SPEC, or --weights CKPT of a vitgraph run", status=2)
    graph = graph or compile(args.spec, args.model, **overrides)
    backend = importlib.import_module(f"vitgraph.backends.{args.backend}_backend")
    return int(backend.build_command(graph, args) or 0)
