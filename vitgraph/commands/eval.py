"""`vitgraph eval [SPEC] --weights CKPT [--dataset D] [--set k=v] [--ema]`: top-1 and top-5 of a
checkpoint on a dataset's test split (vitgraph.train.evaluate). A vitgraph checkpoint carries
its spec, parameters, dataset and recipe, so `vitgraph eval --weights RUN/best.pt` needs nothing
else; DeiT/timm checkpoints need SPEC (and --dataset)."""
from __future__ import annotations

import argparse

from ..cli import parse_overrides, require_files
from .train import add_data_arguments


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", metavar="SPEC", nargs="?", help="a .vg file (optional for a vitgraph checkpoint)")
    p.add_argument("--weights", metavar="CKPT", required=True, help="a vitgraph, DeiT or timm checkpoint")
    add_data_arguments(p)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--ema", action="store_true", help="evaluate the checkpoint's EMA weights")


def run(args: argparse.Namespace) -> int:
    from ..train import evaluate

    require_files(spec=args.spec, weights=args.weights)
    m = evaluate(args.spec, args.weights, args.dataset, spec_overrides=parse_overrides(args.set), recipe=args.recipe,
                 device=args.device, data_root=args.data_root, batch_size=args.batch_size, workers=args.workers,
                 data_mode=args.data_mode, download=not args.no_download, ema=args.ema)
    print(f"{m['dataset']}: top-1 {m['top1']:.2f}%  top-5 {m['top5']:.2f}%  loss {m['loss']:.4f}  "
          f"({m['images']} images)")
    return 0
