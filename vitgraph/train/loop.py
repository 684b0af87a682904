"""The training loop: a spec, a dataset and a recipe in; a run folder and final metrics out.

    from vitgraph.train import run, evaluate
    result = run("specs/vit.vg", "digits", "digits", epochs=30, out="runs/digits")
    result["top1"], result["top5"], result["train_img_per_s"]
    evaluate("specs/vit.vg", "runs/digits/best.pt", "digits")   # {"top1", "top5", "loss", "images"}

run(spec, dataset="digits", recipe=None, *, epochs=None, batch_size=None, overrides=None,
    spec_overrides=None, out=None, resume=False, seed=0, device=None, data_root=None,
    weights=None, teacher=None, teacher_weights=None, teacher_overrides=None, distill=None,
    bf16=False, compile=False, workers=4, data_mode="auto", download=True, progress=True,
    threads=None) -> dict
  recipe: a name (default: the dataset's, see DEFAULT_RECIPES) or a .toml path; overrides:
  recipe keys {"lr": "3e-4", "spec.drop_path": "0.2"}; spec_overrides: spec parameters
  {"image": "16"} (they win over the recipe's [spec] table; `classes` defaults to the
  dataset's class count). Returns {"top1", "top5", "best_top1", "best_epoch", "ema_top1",
  "ema_top5" (with EMA), "train_img_per_s", "train_time_s", "epochs", "params", "run_dir",
  "spec_hash", ...}, also written to <run_dir>/results.json.

The run folder holds config.json (everything resolved), metrics.csv (one row per epoch),
last.pt and best.pt (written atomically: a temporary file, then os.replace). A checkpoint
holds the model, optimizer, scheduler, EMA, epoch, best accuracy, metric history, recipe and
spec text and hash. `resume=True` continues from last.pt, so a crash, Ctrl-C or kill loses at
most the epoch in progress. The random streams (augmentation generator, numpy generator for
per-batch Mixup/CutMix draws, torch's global generator for stochastic depth) are re-seeded
from (seed, rank, epoch) at the start of every epoch and the data order depends only on
(seed, epoch), so a resumed run continues exactly as an uninterrupted one and a fixed seed
reproduces a run. A NaN or infinite loss stops the run with a UserError before anything is
saved, leaving the last good checkpoint.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import platform
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

import vitgraph

from ..backends.torch_backend import checkpoint_dict, load_weights, read_checkpoint, save_atomic
from ..data.datasets import Dataset, load_dataset
from ..data.formats import Arrays
from ..data.pipeline import Augmenter, MemoryLoader, StreamLoader
from ..diagnostics import UserError
from ..fileio import folder_lock, remove_stale_temps, write_atomic
from ..ir import Graph
from .distributed import Context, setup
from .finetune import load_pretrained
from .losses import training_loss
from .optim import EMA, build_optimizer, build_scheduler
from .recipes import Recipe, load_recipe

DEFAULT_RECIPES = {"digits": "digits", "cifar10": "small-datasets", "cifar100": "small-datasets",
                   "svhn": "small-datasets", "tiny-imagenet": "small-datasets", "imagenet": "deit"}
LOG_EVERY = 10  # steps between progress-bar updates (and NaN checks)


def default_recipe(dataset: str) -> str:
    return DEFAULT_RECIPES.get(dataset, "small-datasets")


# --- building the pieces -----------------------------------------------------------------------

def compile_for(spec: str, classes: int, recipe: Recipe | None,
                spec_overrides: Mapping[str, Any] | None) -> tuple[Graph, list[str]]:
    """Compile `spec` for a dataset with `classes` classes: `classes` (when the spec declares it
    and the user did not set it), then the recipe's [spec] values the spec declares, then the
    user's overrides. Returns the graph and notes on recipe values the spec does not declare."""
    declared = vitgraph.compile(spec).spec.params
    user = dict(spec_overrides or {})
    params: dict[str, Any] = {}
    notes: list[str] = []
    if "classes" in declared:
        params["classes"] = classes
    for key, value in (recipe.spec if recipe else {}).items():
        if key in declared:
            params[key] = value
        else:
            notes.append(f"recipe sets {key} = {value}, which {spec} does not declare: ignored")
    params.update(user)
    graph = vitgraph.compile(spec, **params)
    if graph.classes != classes:
        raise UserError(f"{spec} predicts {graph.classes} classes but the dataset has {classes}",
                        hint="drop --set classes=..., or use a spec with a `classes` parameter")
    return graph, notes


def build_teacher(spec: str, weights: str | None, classes: int, image: tuple[int, int, int],
                  overrides: Mapping[str, Any] | None, device: torch.device) -> tuple[nn.Module, Graph]:
    """The teacher: another spec compiled for the dataset (its `image` set to the student's when
    it has one) with its checkpoint loaded, frozen, in eval mode."""
    if not weights:
        raise UserError("a teacher needs its weights: add --teacher-weights CKPT",
                        hint="train the teacher first with `vitgraph train`, or use a DeiT/timm checkpoint")
    declared = vitgraph.compile(spec).spec.params
    params: dict[str, Any] = {"image": image[1]} if "image" in declared and image[1] == image[2] else {}
    params.update(overrides or {})
    graph, _ = compile_for(spec, classes, None, params)
    module = vitgraph.to_torch(graph)
    load_weights(module, graph, weights)
    module.to(device).eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module, graph


def make_loaders(ds: Dataset, recipe: Recipe, graph: Graph, ctx: Context, seed: int,
                 workers: int) -> tuple[MemoryLoader, MemoryLoader]:
    """Train and test loaders for this rank (batch = recipe.batch_size / world)."""
    if recipe.batch_size % ctx.world:
        raise UserError(f"batch size {recipe.batch_size} does not split over {ctx.world} processes")
    per_rank = recipe.batch_size // ctx.world
    size = graph.image[1:]
    common = dict(seed=seed, rank=ctx.rank, world=ctx.world)
    if isinstance(ds.train, Arrays):
        train = MemoryLoader(ds.train, ctx.device, per_rank, True, repeats=recipe.repeats,
                             truncate=recipe.repeats_truncate, **common)
    else:
        train = StreamLoader(ds.train, ctx.device, per_rank, True, size, workers, recipe.crop == "rrc",
                             recipe.rrc_scale_min, recipe.eval_crop_pct, repeats=recipe.repeats,
                             truncate=recipe.repeats_truncate, **common)
    if isinstance(ds.test, Arrays):
        test = MemoryLoader(ds.test, ctx.device, per_rank, False, **common)
    else:
        test = StreamLoader(ds.test, ctx.device, per_rank, False, size, workers, crop_pct=recipe.eval_crop_pct,
                            **common)
    return train, test


def _load_data(dataset: str, data_root: str | None, download: bool, mode: str, ctx: Context) -> Dataset:
    """Rank 0 loads first (downloading or building caches), then the others."""
    if ctx.main:
        ds = load_dataset(dataset, data_root, download, mode)
    ctx.barrier()
    if not ctx.main:
        ds = load_dataset(dataset, data_root, False, mode)
    return ds


def _seed_epoch(seed: int, rank: int, epoch: int, gen: torch.Generator) -> np.random.Generator:
    """Re-seed every random stream of one rank for one epoch (see the module docstring)."""
    base = (seed * 1_000_003 + epoch) * 1_009 + rank
    torch.manual_seed(base + 1)
    gen.manual_seed(base + 2)
    return np.random.default_rng([seed, rank, epoch])


# --- one epoch ---------------------------------------------------------------------------------

@dataclasses.dataclass
class Step:
    """What one training step needs besides the batch."""

    model: nn.Module  # what runs the forward pass (DDP-wrapped and/or compiled)
    raw: nn.Module  # the model itself (for EMA and checkpoints)
    optimizer: torch.optim.Optimizer
    scheduler: Any
    recipe: Recipe
    aug: Augmenter
    ema: EMA | None
    teacher: nn.Module | None
    teacher_size: tuple[int, int] | None
    autocast: Any


def train_step(s: Step, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimiser step on an augmented batch; returns (loss, #correct) as device tensors."""
    r = s.recipe
    with s.autocast():
        out = s.model(x)
        teacher_logits = None
        if s.teacher is not None:
            with torch.no_grad():
                tx = x if s.teacher_size is None else torch.nn.functional.interpolate(
                    x, size=s.teacher_size, mode="bilinear", align_corners=False)
                teacher_logits = s.teacher(tx).float()
    loss = training_loss(out, t, r.loss, r.distill, teacher_logits, r.distill_alpha, r.distill_tau)
    s.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if r.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(s.model.parameters(), r.grad_clip)
    s.optimizer.step()
    s.scheduler.step()
    if s.ema is not None:
        s.ema.update(s.raw)
    logits = (out[0] + out[1]) / 2 if isinstance(out, tuple) else out
    correct = (logits.argmax(-1) == t.argmax(-1)).sum()
    return loss.detach(), correct


def train_epoch(s: Step, loader: MemoryLoader, ctx: Context, gen: torch.Generator, rng: np.random.Generator,
                epoch: int, epochs: int, progress: bool) -> dict[str, float]:
    from tqdm import tqdm

    s.model.train()
    total = len(loader)
    bar = tqdm(total=total, desc=f"epoch {epoch + 1}/{epochs}", unit="batch", leave=False, dynamic_ncols=True,
               disable=not (progress and ctx.main))
    sums = torch.zeros(2, device=ctx.device, dtype=torch.float64)  # loss * n, correct (summed on the device)
    seen = 0  # images, counted on the host
    bad = torch.zeros((), device=ctx.device, dtype=torch.bool)
    start = time.perf_counter()
    for i, (images, labels) in enumerate(loader):
        x, t = s.aug.train_batch(images, labels, gen, rng, presized=loader.presized)
        loss, correct = train_step(s, x, t)
        bad |= ~torch.isfinite(loss)
        sums[0] += loss.double() * len(x)
        sums[1] += correct
        seen += len(x)
        if (i + 1) % LOG_EVERY == 0 or i + 1 == total:
            _check_finite(bad, epoch, i)
            loss_sum, hits = sums.tolist()
            rate = seen * ctx.world / (time.perf_counter() - start)
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{100 * hits / seen:.1f}", img_s=f"{rate:.0f}",
                            refresh=False)
        bar.update(1)
    bar.close()
    if ctx.device.type == "cuda":
        torch.cuda.synchronize(ctx.device)
    elapsed = time.perf_counter() - start
    _check_finite(bad, epoch, total - 1)
    loss_sum, hits, n = ctx.all_sum(torch.cat([sums, sums.new_tensor([seen])])).tolist()
    return {"train_loss": loss_sum / max(n, 1), "train_acc": 100 * hits / max(n, 1),
            "train_img_per_s": n / elapsed, "epoch_time_s": elapsed}


def _check_finite(bad: torch.Tensor, epoch: int, step: int) -> None:
    if bool(bad):
        raise UserError(f"the loss became NaN or infinite in epoch {epoch + 1} (by step {step + 1}); training "
                        "stopped and the last good checkpoint was kept",
                        hint="lower the learning rate (--recipe-set lr=...), set grad_clip, or try without --bf16; "
                             "continue from the checkpoint with --resume")


@torch.no_grad()
def evaluate_model(model: nn.Module, loader: MemoryLoader, aug: Augmenter, ctx: Context,
                   autocast: Any = nullcontext) -> dict[str, float]:
    """Top-1 / top-5 accuracy (%) and mean cross-entropy over a split (all ranks summed)."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(3, device=ctx.device, dtype=torch.float64)  # top1, top5, loss
    seen = 0
    for images, labels in loader:
        x = aug.eval_batch(images, presized=loader.presized)
        with autocast():
            logits = model(x).float()
        top = logits.topk(min(5, logits.shape[-1]), dim=-1).indices  # (B, k)
        hit = top == labels[:, None]
        loss = torch.nn.functional.cross_entropy(logits, labels, reduction="sum")
        sums += torch.stack([hit[:, 0].sum().double(), hit.any(-1).sum().double(), loss.double()])
        seen += len(labels)
    model.train(was_training)
    top1, top5, loss, n = ctx.all_sum(torch.cat([sums, sums.new_tensor([seen])])).tolist()
    return {"top1": 100 * top1 / max(n, 1), "top5": 100 * top5 / max(n, 1), "loss": loss / max(n, 1), "images": int(n)}


def _wrap(model: nn.Module, ctx: Context, compile_model: bool) -> nn.Module:
    """What runs the forward pass: DDP (with SyncBatchNorm on GPUs) across processes, compiled if asked."""
    fwd = model
    if ctx.world > 1:
        cuda = ctx.device.type == "cuda"
        if cuda and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            fwd = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        fwd = nn.parallel.DistributedDataParallel(fwd, device_ids=[ctx.device.index] if cuda else None)
    return torch.compile(fwd) if compile_model else fwd


def _test_metrics(model: nn.Module, ema: EMA | None, loader: MemoryLoader, aug: Augmenter, ctx: Context,
                  autocast: Any) -> dict[str, float]:
    """Test top-1/top-5/loss of the model, and top-1/top-5 of its EMA when there is one."""
    row = evaluate_model(model, loader, aug, ctx, autocast)
    row.pop("images")
    if ema is not None:
        averaged = evaluate_model(ema.module, loader, aug, ctx, autocast)
        row.update(ema_top1=averaged["top1"], ema_top5=averaged["top5"])
    return row


# --- the run folder ----------------------------------------------------------------------------

def _run_dir(out: str | os.PathLike[str] | None, graph: Graph, dataset: str, recipe: Recipe, seed: int) -> Path:
    if out:
        return Path(out)
    return Path("runs") / f"{graph.name}-{Path(dataset).name}-{recipe.name}-s{seed}"


def _claim_run_dir(run_dir: Path, ctx: Context) -> list[str]:
    """Lock the run folder until the run ends (another process training into it is told which
    process holds it) and remove the temporary files of writes killed there; returns notes."""
    ctx.held.enter_context(folder_lock(run_dir))
    return [f"removed {path.name}, left by a write that was killed" for path in remove_stale_temps(run_dir)]


def _write_text_atomic(path: Path, text: str) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(text))


def _write_csv(path: Path, history: list[dict[str, float]]) -> None:
    buf = io.StringIO()
    if history:
        writer = csv.DictWriter(buf, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
    _write_text_atomic(path, buf.getvalue())


def _config(spec: str, graph: Graph, ds: Dataset, recipe: Recipe, ctx: Context, seed: int, steps: int,
            notes: list[str], extra: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "spec": {"path": str(spec), "model": graph.name, "params": graph.spec.params, "hash": graph.spec.hash,
                 "input": list(graph.image), "classes": graph.classes},
        "dataset": {"name": ds.name, "source": ds.source, "train": len(ds.train), "test": len(ds.test),
                    "classes": ds.num_classes, "class_names": list(ds.classes), "in_memory": ds.in_memory,
                    "image_size": ds.image_size,
                    "mean": ds.mean, "std": ds.std},
        "recipe": recipe.to_dict(), "effective_lr": recipe.effective_lr(), "seed": seed,
        "world_size": ctx.world, "batch_per_process": recipe.batch_size // ctx.world, "steps_per_epoch": steps,
        "device": str(ctx.device), "torch": torch.__version__, "python": platform.python_version(),
        "vitgraph": vitgraph.__version__, "notes": notes, **extra,
    }


def _checkpoint(model: nn.Module, graph: Graph, optimizer: torch.optim.Optimizer, scheduler: Any,
                ema: EMA | None, epoch: int, best: dict[str, float], history: list[dict[str, float]],
                recipe: Recipe, seed: int) -> dict[str, Any]:
    ck = checkpoint_dict(model, graph)
    ck.update(optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
              ema=ema.state_dict() if ema is not None else None, epoch=epoch, best=dict(best),
              history=history, recipe=recipe.to_dict(), seed=seed)
    return ck


def _resume(path: Path, model: nn.Module, graph: Graph, optimizer: torch.optim.Optimizer, scheduler: Any,
            ema: EMA | None, recipe: Recipe, seed: int) -> tuple[int, dict[str, float], list[dict[str, float]]]:
    ck = read_checkpoint(path)
    if ck.get("spec", {}).get("hash") != graph.spec.hash:
        raise UserError(f"{path} was written for another spec or other spec parameters "
                        f"(hash {str(ck.get('spec', {}).get('hash'))[:12]}, now {graph.spec.hash[:12]})",
                        hint="resume with the same SPEC and --set values, or start a new run with another --out")
    saved = ck.get("recipe", {})
    changed = [k for k, v in recipe.to_dict().items() if k != "epochs" and saved.get(k) != v]
    diffs = [f"{k}: {saved.get(k)!r} -> {getattr(recipe, k)!r}" for k in changed[:6]]
    if ck.get("seed") != seed:
        diffs.append(f"seed: {ck.get('seed')!r} -> {seed}")
    if diffs:
        raise UserError(f"{path} was trained with other settings ({', '.join(diffs)})",
                        hint="resume with the same --recipe, --recipe-set and --seed values")
    model.load_state_dict(ck["model"])
    optimizer.load_state_dict(ck["optimizer"])
    scheduler.load_state_dict(ck["scheduler"])
    if ema is not None and ck.get("ema") is not None:
        ema.load_state_dict(ck["ema"])
    return int(ck["epoch"]), dict(ck["best"]), list(ck["history"])


# --- the entry points --------------------------------------------------------------------------

def run(spec: str, dataset: str = "digits", recipe: str | None = None, *, epochs: int | None = None,
        batch_size: int | None = None, overrides: Mapping[str, Any] | None = None,
        spec_overrides: Mapping[str, Any] | None = None, out: str | os.PathLike[str] | None = None,
        resume: bool = False, seed: int = 0, device: str | None = None, data_root: str | None = None,
        weights: str | None = None, teacher: str | None = None, teacher_weights: str | None = None,
        teacher_overrides: Mapping[str, Any] | None = None, distill: str | None = None, bf16: bool = False,
        compile: bool = False, workers: int = 4, data_mode: str = "auto", download: bool = True,
        progress: bool = True, threads: int | None = None) -> dict[str, Any]:
    """Train `spec` on `dataset` with `recipe`; see the module docstring for every argument."""
    if threads:
        torch.set_num_threads(threads)
    ctx = setup(device)
    try:
        return _run(ctx, spec, dataset, recipe, epochs, batch_size, overrides, spec_overrides, out, resume, seed,
                    data_root, weights, teacher, teacher_weights, teacher_overrides, distill, bf16, compile, workers,
                    data_mode, download, progress)
    finally:
        ctx.close()


def _recipe_overrides(overrides: Mapping[str, Any] | None, epochs: int | None, batch_size: int | None,
                      distill: str | None) -> dict[str, Any]:
    out = dict(overrides or {})
    for key, value in (("epochs", epochs), ("batch_size", batch_size), ("distill", distill)):
        if value is not None:
            out[key] = value
    return out


@dataclasses.dataclass
class Session:
    """Everything one run holds between epochs."""

    ctx: Context
    recipe: Recipe
    graph: Graph
    ds: Dataset
    model: nn.Module
    step: Step
    train_loader: MemoryLoader
    test_loader: MemoryLoader
    run_dir: Path
    seed: int
    progress: bool


def _run(ctx: Context, spec: str, dataset: str, recipe_name: str | None, epochs: int | None,
         batch_size: int | None, overrides: Mapping[str, Any] | None, spec_overrides: Mapping[str, Any] | None,
         out: str | os.PathLike[str] | None, resume: bool, seed: int, data_root: str | None, weights: str | None,
         teacher_spec: str | None, teacher_weights: str | None, teacher_overrides: Mapping[str, Any] | None,
         distill: str | None, bf16: bool, compile_model: bool, workers: int, data_mode: str, download: bool,
         progress: bool) -> dict[str, Any]:
    recipe = load_recipe(recipe_name or default_recipe(dataset),
                         _recipe_overrides(overrides, epochs, batch_size, distill))
    if recipe.distill != "none" and not teacher_spec:
        raise UserError(f"recipe {recipe.name} distils (distill = {recipe.distill}) but no teacher was given",
                        hint="add --teacher SPEC --teacher-weights CKPT, or --distill none")
    ds = _load_data(dataset, data_root, download, data_mode, ctx)
    graph, notes = compile_for(spec, ds.num_classes, recipe, spec_overrides)
    torch.manual_seed(seed)  # the same initial weights on every rank
    model = vitgraph.to_torch(graph).to(ctx.device)
    if weights:
        notes += load_pretrained(model, graph, weights)
    teacher, teacher_size = None, None
    if recipe.distill != "none":
        teacher, tgraph = build_teacher(teacher_spec, teacher_weights, ds.num_classes, graph.image,
                                        teacher_overrides, ctx.device)
        teacher_size = None if tgraph.image[1:] == graph.image[1:] else tgraph.image[1:]
    train_loader, test_loader = make_loaders(ds, recipe, graph, ctx, seed, workers)
    optimizer = build_optimizer(model, recipe, recipe.effective_lr())
    scheduler = build_scheduler(optimizer, recipe, recipe.effective_lr(), len(train_loader), recipe.epochs)
    ema = EMA(model, recipe.ema_decay) if recipe.ema_decay > 0 else None
    run_dir = _run_dir(out, graph, dataset, recipe, seed)
    if ctx.main:
        notes += _claim_run_dir(run_dir, ctx)
    start, best, history = 0, {"top1": -1.0, "epoch": 0}, []
    if resume and (run_dir / "last.pt").is_file():
        start, best, history = _resume(run_dir / "last.pt", model, graph, optimizer, scheduler, ema, recipe, seed)
        notes.append(f"resumed from {run_dir / 'last.pt'} after epoch {start}")
    elif resume:
        notes.append(f"--resume: no checkpoint in {run_dir}, starting afresh")
    elif (run_dir / "last.pt").is_file():
        raise UserError(f"{run_dir} already holds a run ({run_dir / 'last.pt'})",
                        hint="continue it with --resume, or choose another folder with --out")
    aug = Augmenter(recipe, ds.name, graph.image[1:], graph.image[0], ds.num_classes, ds.mean, ds.std, ctx.device)
    autocast = (lambda: torch.autocast(ctx.device.type, dtype=torch.bfloat16)) if bf16 else nullcontext
    step = Step(_wrap(model, ctx, compile_model), model, optimizer, scheduler, recipe, aug, ema, teacher,
                teacher_size, autocast)
    session = Session(ctx, recipe, graph, ds, model, step, train_loader, test_loader, run_dir, seed, progress)
    if ctx.main:
        extra = {"params": sum(p.numel() for p in model.parameters()), "weights": weights, "bf16": bf16,
                 "compile": compile_model,
                 "teacher": {"spec": teacher_spec, "weights": teacher_weights} if teacher else None}
        run_dir.mkdir(parents=True, exist_ok=True)
        config = _config(spec, graph, ds, recipe, ctx, seed, len(train_loader), notes, extra)
        _write_text_atomic(run_dir / "config.json", json.dumps(config, indent=2))
        for note in notes:
            print(f"note: {note}")
    started = time.perf_counter()
    try:
        best = _epochs(session, start, best, history)
    except KeyboardInterrupt:
        if ctx.main and (run_dir / "last.pt").is_file():
            print(f"interrupted; continue with --resume (checkpoint {run_dir / 'last.pt'})")
        raise
    return _results(session, history, best, time.perf_counter() - started)


def _epochs(s: Session, start: int, best: dict[str, float], history: list[dict[str, float]]) -> dict[str, float]:
    """Train, test and checkpoint epochs start+1 .. recipe.epochs; `history` grows in place.
    Returns the best test top-1 and its epoch."""
    ctx, st, epochs = s.ctx, s.step, s.recipe.epochs
    gen = torch.Generator(ctx.device)
    for epoch in range(start, epochs):
        rng = _seed_epoch(s.seed, ctx.rank, epoch, gen)
        s.train_loader.epoch = epoch
        row: dict[str, float] = {"epoch": epoch + 1, "lr": st.optimizer.param_groups[0]["lr"]}
        row.update(train_epoch(st, s.train_loader, ctx, gen, rng, epoch, epochs, s.progress))
        row.update(_test_metrics(s.model, st.ema, s.test_loader, st.aug, ctx, st.autocast))
        history.append(row)
        improved = row["top1"] > best["top1"]
        if improved:
            best = {"top1": row["top1"], "epoch": epoch + 1}
        if ctx.main:
            ck = _checkpoint(s.model, s.graph, st.optimizer, st.scheduler, st.ema, epoch + 1, best, history,
                             s.recipe, s.seed)
            save_atomic(ck, s.run_dir / "last.pt")
            if improved:
                save_atomic(ck, s.run_dir / "best.pt")
            _write_csv(s.run_dir / "metrics.csv", history)
            print(f"epoch {epoch + 1}/{epochs}: loss {row['train_loss']:.4f}  train acc {row['train_acc']:.1f}%  "
                  f"test top-1 {row['top1']:.2f}%  top-5 {row['top5']:.2f}%  "
                  f"{row['train_img_per_s']:.0f} img/s  {row['epoch_time_s']:.1f}s", flush=True)
        ctx.barrier()
    return best


def _results(s: Session, history: list[dict[str, float]], best: dict[str, float], elapsed: float) -> dict[str, Any]:
    if not history:
        raise UserError(f"nothing to train: the run in {s.run_dir} already finished {s.recipe.epochs} epochs",
                        hint="raise --epochs to train further")
    final = history[-1]
    keys = ("top1", "top5", "loss", "train_loss", "train_acc", "ema_top1", "ema_top5")
    result: dict[str, Any] = {k: final[k] for k in keys if k in final}
    result.update(best_top1=best["top1"], best_epoch=best["epoch"], epochs=len(history),
                  train_img_per_s=float(np.median([h["train_img_per_s"] for h in history])),
                  train_time_s=sum(h["epoch_time_s"] for h in history), wall_time_s=elapsed,
                  params=sum(p.numel() for p in s.model.parameters()), run_dir=str(s.run_dir), spec=s.graph.name,
                  spec_hash=s.graph.spec.hash, dataset=s.ds.name, recipe=s.recipe.name, world_size=s.ctx.world)
    if s.ctx.main:
        _write_text_atomic(s.run_dir / "results.json", json.dumps(result, indent=2))
    return result


def evaluate(spec: str, weights: str, dataset: str = "digits", *, spec_overrides: Mapping[str, Any] | None = None,
             recipe: str | None = None, device: str | None = None, data_root: str | None = None,
             batch_size: int = 256, workers: int = 4, data_mode: str = "auto", download: bool = True,
             ema: bool = False) -> dict[str, float]:
    """Top-1 / top-5 (%) of a checkpoint on a dataset's test split: {"top1", "top5", "loss", "images"}.
    The spec is compiled as for training (classes from the dataset); the recipe (default: the
    dataset's) gives the evaluation crop. `ema=True` evaluates the checkpoint's EMA weights."""
    ctx = setup(device)
    try:
        rec = load_recipe(recipe or default_recipe(dataset), {"batch_size": batch_size * ctx.world})
        ds = _load_data(dataset, data_root, download, data_mode, ctx)
        graph, _ = compile_for(spec, ds.num_classes, rec, spec_overrides)
        model = vitgraph.to_torch(graph)
        source: Any = weights
        if ema:
            ck = read_checkpoint(weights)
            if not ck.get("ema"):
                raise UserError(f"{weights} holds no EMA weights")
            source = {"model": ck["ema"]}
        load_weights(model, graph, source)
        model.to(ctx.device)
        _, test = make_loaders(ds, rec, graph, ctx, 0, workers)
        aug = Augmenter(rec, ds.name, graph.image[1:], graph.image[0], ds.num_classes, ds.mean, ds.std,
                                    ctx.device)
        return evaluate_model(model, test, aug, ctx)
    finally:
        ctx.close()
