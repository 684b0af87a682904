"""`vitgraph train SPEC --dataset D --recipe R [--epochs N] [--max-steps N] [--minutes M] [--subset N]
[--set k=v] [--recipe-set k=v] [--out DIR] [--resume] [--seed S] [--data-root P] [--device cpu|cuda]
[--batch-size B] [--weights CKPT] [--teacher SPEC --teacher-weights CKPT --distill soft|hard|kd]
[--bf16] [--compile]`.

Runs vitgraph.train.run (see vitgraph/train/loop.py). With `--weights` of a vitgraph run, SPEC
may be left out: the checkpoint's spec and parameters are used (the dataset sets `classes`).
Every input file is checked before anything loads. Under `torchrun --nproc_per_node=N -m
vitgraph.cli train ...` (or `torchrun $(which vitgraph) train ...`) the same command trains with
DistributedDataParallel. torch is imported only when the command runs."""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator

from ..cli import parse_overrides, require_files
from ..diagnostics import UserError
from ..fileio import check_output_folder

def add_data_arguments(p: argparse.ArgumentParser) -> None:
    """Flags shared by train and eval: where the data is and how it is read."""
    p.add_argument("--dataset",
                   help="digits (the default, shipped), cifar10, cifar100, svhn, tiny-imagenet, imagenet, "
                        "or the path of an image-folder tree (eval: default the checkpoint's)")
    p.add_argument("--data-root", metavar="P", help="where datasets are looked for (default: $VITGRAPH_DATA "
                                                      "or ~/.cache/vitgraph/data); decoded image folders are "
                                                      "cached under $VITGRAPH_CACHE (~/.cache/vitgraph/arrays)")
    p.add_argument("--no-download", action="store_true", help="never download a missing dataset")
    p.add_argument("--data-mode", choices=["auto", "memory", "stream"], default="auto",
                   help="hold decoded images on the device (memory) or stream files through workers")
    p.add_argument("--workers", type=int, default=4, help="DataLoader workers when streaming (default 4)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--set", action="extend", nargs="+", metavar="KEY=VALUE", help="override spec parameters (e.g. image=16 patch=4)")
    p.add_argument("--recipe", metavar="R", help="recipe name or .toml path (default: the dataset's)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", metavar="SPEC", nargs="?", help="a .vg file (optional with --weights of a vitgraph run)")
    add_data_arguments(p)
    p.add_argument("--recipe-set", action="extend", nargs="+", metavar="KEY=VALUE",
                   help="override recipe values (e.g. lr=3e-4 mixup_alpha=0 spec.drop_path=0.2)")
    p.add_argument("--epochs", type=int, help="number of epochs (recipe key epochs)")
    p.add_argument("--max-steps", type=int, metavar="N", help="stop after N optimiser steps, inside an epoch if need "
                                                              "be (the learning-rate schedule ends there)")
    p.add_argument("--minutes", type=float, metavar="M", help="stop at the first step after M minutes of training "
                                                              "(a wall-clock cap: figures then depend on the machine)")
    p.add_argument("--subset", type=int, metavar="N", help="train on N training images, stratified by class and "
                                                           "seeded by --seed (the test split stays whole)")
    p.add_argument("--batch-size", type=int, help="global batch size (recipe key batch_size)")
    p.add_argument("--out", metavar="DIR", help="run folder (default: runs/<model>-<dataset>-<recipe>-s<seed>)")
    p.add_argument("--resume", action="store_true", help="continue the run in the run folder from last.pt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--weights", metavar="CKPT", help="start from a checkpoint (vitgraph, DeiT or timm); the "
                                                     "position embedding is resampled and the head replaced as needed")
    p.add_argument("--teacher", metavar="SPEC", help="teacher spec for distillation")
    p.add_argument("--teacher-weights", metavar="CKPT", help="the teacher's checkpoint")
    p.add_argument("--teacher-set", action="extend", nargs="+", metavar="KEY=VALUE", help="override the teacher spec's parameters")
    p.add_argument("--distill", choices=["none", "soft", "hard", "kd"],
                   help="DeiT soft/hard distillation through the distill token, or BinaryViT's KD-only loss")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    require_files(spec=args.spec, weights=args.weights, teacher=args.teacher, teacher_weights=args.teacher_weights)
    with spec_of(args) as spec:
        return _train(args, spec)


@contextlib.contextmanager
def spec_of(args: argparse.Namespace) -> Iterator[str]:
    """SPEC, or the spec text a vitgraph checkpoint given as --weights carries, written to a
    temporary folder for the run's duration (the run's own checkpoints store the text again)."""
    if args.spec or not args.weights:
        if not args.spec:
            raise UserError("nothing to train: give a SPEC, or --weights CKPT of a vitgraph run", status=2)
        yield args.spec
        return
    from ..backends.torch_backend import read_checkpoint
    from ..checkpoints import spec_info, write_sources

    info = spec_info(read_checkpoint(args.weights))
    if info is None:
        raise UserError(f"{args.weights} is not a vitgraph checkpoint (it does not say which spec it holds)",
                        hint="name the spec: vitgraph train SPEC --weights CKPT", status=2)
    with tempfile.TemporaryDirectory(prefix="vitgraph-spec-") as folder:
        yield str(write_sources(info, Path(folder)))


def _train(args: argparse.Namespace, spec: str) -> int:
    from ..train import run as train_run

    check_output_folder(args.out or "runs")
    result = train_run(
        spec, args.dataset or "digits", args.recipe, epochs=args.epochs, batch_size=args.batch_size,
        overrides=parse_overrides(args.recipe_set), spec_overrides=parse_overrides(args.set), out=args.out,
        resume=args.resume, seed=args.seed, device=args.device, data_root=args.data_root, weights=args.weights,
        teacher=args.teacher, teacher_weights=args.teacher_weights, teacher_overrides=parse_overrides(args.teacher_set),
        distill=args.distill, bf16=args.bf16, compile=args.compile, workers=args.workers, data_mode=args.data_mode,
        download=not args.no_download, progress=not args.quiet, threads=args.threads, max_steps=args.max_steps,
        minutes=args.minutes, subset=args.subset)
    if result.get("world_size", 1) == 1 or _is_rank0():
        shown = {k: result[k] for k in ("top1", "top5", "best_top1", "best_epoch", "ema_top1", "epochs", "steps",
                                        "stopped_by", "train_img_per_s", "train_time_s", "run_dir") if k in result}
        print(json.dumps(shown, indent=2))
    return 0


def _is_rank0() -> bool:
    return os.environ.get("RANK", "0") == "0"
