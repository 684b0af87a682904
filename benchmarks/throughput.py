"""Training and inference throughput (img/s) of the torch backend, side by side with timm's
implementation of the same architecture, in one run on one machine.

    python -m vitgraph.benchmarks.throughput --device cuda            # DeiT-Ti/S @224 b256, CIFAR ViT @32 b512
    python -m vitgraph.benchmarks.throughput --device cpu --models vit --batch 16 --repeats 3

Models: deit_tiny and deit_small (DeiT, Touvron et al. 2020; timm deit_*_patch16_224) and
the CIFAR ViT of "Vision Transformer for Small-Size Datasets" (specs/vit.vg; timm's
VisionTransformer configured alike). Every figure is under bf16 autocast (unless --dtype
fp32), eager and torch.compile: a training step is forward + cross-entropy + backward +
AdamW step (fused on CUDA, for both implementations); inference is a forward in
inference mode. All implementations and modes of a model are built side by side and timed
interleaved: after --warmup untimed repeats each, every round times one repeat of --iters
steps of each, in a rotated order (CUDA events on GPU); the JSON keeps the median and spread
with the device, threads, library versions, git commit and spec hash, and a markdown
table is written beside it under benchmarks/results/throughput_<device>_<model>.{json,md}.
"""
from __future__ import annotations

import argparse
import gc
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import vitgraph
from vitgraph.benchmarks.harness import spread, time_calls
from vitgraph.benchmarks.results import conditions
from vitgraph.ir import Graph

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


@dataclass(frozen=True)
class Model:
    spec: str                              # file in specs/
    overrides: dict[str, Any]              # --set for the spec
    gpu_batch: int
    cpu_batch: int
    timm: Callable[[Any], Any]             # timm module -> the same architecture, untrained


def _timm_cifar_vit(timm: Any) -> Any:
    import torch.nn as nn

    # specs/vit.vg: patch 4, dim 192, depth 9, 12 heads x 16, MLP x2, no qkv bias, LayerNorm eps 1e-5
    return timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=4, num_classes=10, embed_dim=192, depth=9, num_heads=12, mlp_ratio=2.0,
        qkv_bias=False, norm_layer=nn.LayerNorm, drop_path_rate=0.1)


MODELS: dict[str, Model] = {
    "deit_tiny": Model("deit_tiny", {}, 256, 8,
                       lambda timm: timm.create_model("deit_tiny_patch16_224", pretrained=False, drop_path_rate=0.1)),
    "deit_small": Model("deit_small", {}, 256, 4,
                        lambda timm: timm.create_model("deit_small_patch16_224", pretrained=False, drop_path_rate=0.1)),
    "vit": Model("vit", {}, 512, 32, _timm_cifar_vit),
}


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def import_timm() -> tuple[Any, str | None]:
    try:
        import timm
    except ImportError as e:
        return None, f"timm is not importable here ({e}); its columns are skipped"
    return timm, None


def _steps(model: Any, x: Any, y: Any, dtype: Any, device: str) -> tuple[Callable[[], Any], Callable[[], Any]]:
    """A training step (forward, cross-entropy, backward, AdamW; returns the loss) and an
    inference forward (returns the logits)."""
    import torch
    import torch.nn.functional as F

    kind = "cuda" if device.startswith("cuda") else "cpu"
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=kind == "cuda")  # the same for timm

    def train() -> Any:
        with torch.autocast(kind, dtype=dtype, enabled=dtype != torch.float32):
            out = model(x)
            logits = (out[0] + out[1]) / 2 if isinstance(out, tuple) else out  # DeiT's two heads in training
            loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    def infer() -> Any:
        with torch.inference_mode(), torch.autocast(kind, dtype=dtype, enabled=dtype != torch.float32):
            return model(x)

    return train, infer


@dataclass
class Entrant:
    """One implementation in one mode on the device, with its two steps on a fixed batch."""

    impl: str
    mode: str
    module: Any                            # the nn.Module itself (its train/eval flag is set per phase)
    train: Callable[[], Any]               # one training step -> loss
    infer: Callable[[], Any]               # one inference forward -> logits
    params: int
    x: Any                                 # the batch both steps use: images (B, C, H, W), labels (B,)
    y: Any


def prepare(module: Any, impl: str, mode: str, batch: int, image: tuple[int, int, int], classes: int,
            device: str, dtype: Any, compile_mode: str | None, compile_backend: str = "inductor") -> Entrant:
    """Move `module` to the device, compile it if `mode` is "compiled", and give it a random batch."""
    import torch

    module = module.to(device)
    run = torch.compile(module, mode=compile_mode, backend=compile_backend) if mode == "compiled" else module
    x = torch.randn(batch, *image, device=device)  # (B, C, H, W)
    y = torch.randint(0, classes, (batch,), device=device)
    train, infer = _steps(run, x, y, dtype, device)
    return Entrant(impl, mode, module, train, infer, sum(p.numel() for p in module.parameters()), x, y)


def _repeat(e: Entrant, phase: str, iters: int) -> Callable[[], None]:
    """`iters` steps of one phase; the module is put in training or eval mode once, before them."""
    step = e.train if phase == "train" else e.infer

    def run() -> None:
        e.module.train(phase == "train")
        for _ in range(iters):
            step()

    return run


def time_interleaved(entrants: list[Entrant], phase: str, iters: int, warmup: int, repeats: int,
                     device: str) -> list[list[float]]:
    """Seconds per repeat of `iters` steps, for each entrant: all are warmed up (compiled) first,
    then each round times every entrant once, in an order rotated by one each round, so that
    drift (clocks, heat, other processes) falls on all alike."""
    calls = [_repeat(e, phase, iters) for e in entrants]
    for call in calls:
        time_calls(call, warmup, 0, device)
    times: list[list[float]] = [[] for _ in entrants]
    for r in range(repeats):
        for i in range(len(calls)):
            j = (i + r) % len(calls)
            times[j] += time_calls(calls[j], 0, 1, device)
    return times


def figures(entrants: list[Entrant], batch: int, args: argparse.Namespace, device: str) -> list[dict[str, Any]]:
    """train_img_s and infer_img_s (median and spread) of every entrant, timed interleaved."""
    out: list[dict[str, Any]] = [{} for _ in entrants]
    for phase in ("train", "infer"):
        times = time_interleaved(entrants, phase, args.iters, args.warmup, args.repeats, device)
        for row, t in zip(out, times):
            row[f"{phase}_img_s"] = spread([batch * args.iters / s for s in t])
    return out


def measure(module: Any, mode: str, batch: int, image: tuple[int, int, int], classes: int, device: str,
            dtype: Any, args: argparse.Namespace) -> dict[str, Any]:
    """img/s of one model in one mode: training (module in train mode) and inference (eval)."""
    entrant = prepare(module, "vitgraph", mode, batch, image, classes, device, dtype, args.compile_mode)
    return figures([entrant], batch, args, device)[0]


def entrants(name: str, device: str, timm: Any, args: argparse.Namespace,
             skip: frozenset[tuple[str, str]] = frozenset()) -> tuple[Graph, int, list[Entrant]]:
    """The model's graph, its batch on this device, and an entrant per implementation and mode
    (vitgraph, then timm when given; each built from seed 0) but the (impl, mode) pairs in `skip`."""
    import torch

    cfg = MODELS[name]
    graph = vitgraph.compile(ROOT / "specs" / f"{cfg.spec}.vg", **cfg.overrides)
    batch = args.batch or (cfg.gpu_batch if device.startswith("cuda") else cfg.cpu_batch)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    builders: list[tuple[str, Callable[[], Any]]] = [("vitgraph", lambda: vitgraph.to_torch(graph))]
    if timm is not None:
        builders.append(("timm", lambda: cfg.timm(timm)))
    out = []
    for impl, build in builders:
        for mode in args.modes:
            if (impl, mode) in skip:
                continue
            torch.manual_seed(0)
            out.append(prepare(build(), impl, mode, batch, graph.image, graph.classes, device, dtype,
                               args.compile_mode, args.compile_backend))
    return graph, batch, out


def release(entrants: list[Entrant], device: str) -> None:
    """Drop the entrants (emptied in place) and what they hold on the device, and forget the
    compiled code, so the next model starts clean."""
    import torch

    entrants.clear()
    gc.collect()
    torch._dynamo.reset()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def rows(name: str, graph: Graph, batch: int, contestants: list[Entrant], args: argparse.Namespace,
         device: str) -> list[dict[str, Any]]:
    """One table row per entrant: its conditions and its img/s."""
    print(f"  {name:10s} {' '.join(f'{e.impl}/{e.mode}' for e in contestants)} batch {batch} ...", file=sys.stderr,
          flush=True)
    measured = figures(contestants, batch, args, device)
    return [{"model": name, "impl": e.impl, "mode": e.mode, "batch": batch, "image": list(graph.image),
             "params": e.params, "spec_hash": graph.spec.hash, **m} for e, m in zip(contestants, measured)]


def bench_model(name: str, device: str, timm: Any, args: argparse.Namespace) -> list[dict[str, Any]]:
    graph, batch, contestants = entrants(name, device, timm, args)
    try:
        return rows(name, graph, batch, contestants, args, device)
    finally:
        release(contestants, device)


def _cell(s: dict[str, float]) -> str:
    return f"{s['median']:,.0f} ({s['q1']:,.0f}–{s['q3']:,.0f})"


def markdown(record: dict[str, Any]) -> str:
    c = record["conditions"]
    where = c["gpu"] or c["cpu"]
    lines = [f"# Throughput on {where}", "",
             f"{record['dtype']} autocast; img/s median (quartiles) of {record['repeats']} repeats x "
             f"{record['iters']} steps after {record['warmup']} warm-up; torch {c['versions'].get('torch')}, "
             f"{c['torch_threads']} threads, commit {c['git_commit']}, load {c['load_avg_1min']}.", ""]
    if record.get("timm_note"):
        lines += [f"Note: {record['timm_note']}.", ""]
    if not c["gpu"]:
        lines += ["CPU figures only: the GPU comparison with timm (batch 256 at 224 px, 512 at 32 px) is owed until "
                  "`python -m vitgraph.benchmarks.throughput --device cuda` runs on a GPU machine with timm.", ""]
    return "\n".join(lines + table(record["rows"])) + "\n"


def table(rows: list[dict[str, Any]]) -> list[str]:
    """Markdown table lines: every row's img/s and its ratio to timm eager on the same model."""
    lines = ["| model | impl | mode | batch | params | train img/s | infer img/s | train vs timm eager |"
             " infer vs timm eager |", "|---|---|---|---|---|---|---|---|---|"]
    base = {r["model"]: r for r in rows if r["impl"] == "timm" and r["mode"] == "eager"}
    for r in rows:
        b = base.get(r["model"])
        ratio = [f"{r[k]['median'] / b[k]['median']:.2f}x" if b else "–" for k in ("train_img_s", "infer_img_s")]
        lines.append(f"| {r['model']} | {r['impl']} | {r['mode']} | {r['batch']} | {r['params'] / 1e6:.2f}M | "
                     f"{_cell(r['train_img_s'])} | {_cell(r['infer_img_s'])} | {ratio[0]} | {ratio[1]} |")
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m vitgraph.benchmarks.throughput", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default cuda)")
    p.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    p.add_argument("--modes", nargs="+", choices=["eager", "compiled"], default=["eager", "compiled"])
    p.add_argument("--batch", type=int, help="override every model's batch (default: 256/512 on GPU, small on CPU)")
    p.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    p.add_argument("--warmup", type=int, default=5, help="untimed repeats before timing (compilation happens here)")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--iters", type=int, default=10, help="steps per timed repeat")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--compile-mode", default=None, help="torch.compile mode (default: torch's default)")
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend (default inductor)")
    p.add_argument("--no-timm", action="store_true", help="do not run timm even if importable")
    p.add_argument("--out", type=Path, default=RESULTS, help="results folder (default benchmarks/results)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    import torch

    args = parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no GPU; use --device cpu", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.backends.cudnn.benchmark = True  # the conv patch embedding picks its fastest kernel, for both impls
    timm, timm_note = (None, "timm not run (--no-timm)") if args.no_timm else import_timm()
    if timm_note:
        print(f"note: {timm_note}", file=sys.stderr)
    rows = []
    for name in args.models:
        rows += bench_model(name, args.device, timm, args)
    cond = conditions(args.device)
    record = {"benchmark": "throughput", "conditions": cond, "dtype": args.dtype, "warmup": args.warmup,
              "repeats": args.repeats, "iters": args.iters, "compile_mode": args.compile_mode,
              "timm_version": getattr(timm, "__version__", None), "timm_note": timm_note, "rows": rows}
    kind = "cuda" if args.device.startswith("cuda") else "cpu"
    stem = f"throughput_{kind}_{slug(cond['gpu'] or cond['cpu'])}"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    table = markdown(record)
    (args.out / f"{stem}.md").write_text(table)
    print(table)
    print(f"wrote {args.out / (stem + '.json')} and .md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
