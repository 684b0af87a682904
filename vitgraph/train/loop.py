"""The training loop: a spec, a dataset and a recipe in; a run folder and final metrics out.

    from vitgraph.train import run, evaluate
    result = run("specs/vit.vg", "digits", "digits", epochs=30, out="runs/digits")
    result["top1"], result["top5"], result["train_img_per_s"]
    evaluate("specs/vit.vg", "runs/digits/best.pt", "digits")   # {"top1", "top5", "loss", "images"}

run(spec, dataset="digits", recipe=None, *, epochs=None, batch_size=None, overrides=None,
    spec_overrides=None, out=None, resume=False, seed=0, device=None, data_root=None,
    weights=None, teacher=None, teacher_weights=None, teacher_overrides=None, distill=None,
    bf16=False, compile=False, workers=4, data_mode="auto", download=True, progress=True,
    threads=None, max_steps=None, minutes=None, subset=None) -> dict
  recipe: a name (default: the dataset's, see DEFAULT_RECIPES) or a .toml path; overrides:
  recipe keys {"lr": "3e-4", "spec.drop_path": "0.2"}; spec_overrides: spec parameters
  {"image": "16"} (they win over the recipe's [spec] table; `classes` defaults to the
  dataset's class count). Returns {"top1", "top5", "best_top1", "best_epoch", "ema_top1",
  "ema_top5" (with EMA), "train_img_per_s", "train_time_s", "epochs", "params", "run_dir",
  "spec_hash", ...}, also written to <run_dir>/results.json.
  max_steps: stop after this many optimiser steps in all, inside an epoch if need be (the
  learning-rate schedule ends there); minutes: stop at the first step after this much wall-clock
  training time in this call (the figures then depend on the machine's speed); subset: train on
  a stratified, seeded (by `seed`) subset of this many training images (the test split stays whole).

The run folder holds config.json (everything resolved), metrics.csv (one row per epoch),
last.pt and best.pt (written atomically: a temporary file, then os.replace). A checkpoint
describes itself: the model, optimizer, scheduler, EMA, epoch, steps, best accuracy, metric
history, recipe, seed, spec text, parameters, overrides and hash, the dataset's name, class
names and normalisation, and a training summary, so `vitgraph build/eval/predict --weights
CKPT` need nothing restated. `resume=True` continues from last.pt, so a crash, Ctrl-C or kill
loses at most the epoch in progress (an epoch cut short by max_steps or minutes counts as done). The random streams (augmentation generator, numpy generator for
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
from ..checkpoints import checkpoint_graph, spec_info
from ..data.datasets import Dataset, load_dataset, load_subset
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


@dataclasses.dataclass(frozen=True)
class Limits:
    """Where a run may stop before the recipe's last epoch, and on how much of the data it trains."""

    max_steps: int | None = None   # optimiser steps in all; the learning-rate schedule ends there
    minutes: float | None = None   # wall-clock training minutes in this call, checked after every step
    subset: int | None = None      # a stratified, seeded subset of this many training images

    def __post_init__(self) -> None:
        for name in ("max_steps", "minutes", "subset"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise UserError(f"--{name.replace('_', '-')} {value}: expected a number above 0", status=2)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --- building the pieces -----------------------------------------------------------------------

def compile_for(spec: str, classes: int, recipe: Recipe | None,
                spec_overrides: Mapping[str, Any] | None,
                defaults: Mapping[str, Any] | None = None) -> tuple[Graph, list[str]]:
    """Compile `spec` for a dataset with `classes` classes: `classes` (when the spec declares it
    and the user did not set it), then the recipe's [spec] values the spec declares, then the
    `defaults` it declares (the parameters a starting checkpoint was trained with: the model
    being continued wins over the recipe's values for fresh models), then the user's overrides.
    Returns the graph and notes on recipe values the spec does not declare."""
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
    params.update({k: v for k, v in (defaults or {}).items() if k in declared and k != "classes"})
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


def _load_data(dataset: str, data_root: str | None, download: bool, mode: str, ctx: Context,
               subset: int | None = None, seed: int = 0) -> Dataset:
    """Rank 0 loads first (downloading or building caches), then the others. With `subset`, the
    training split is cut to a stratified sample before any image file is decoded."""
    def load(fetch: bool) -> Dataset:
        if subset:
            return load_subset(dataset, subset, seed, data_root, fetch, mode)
        return load_dataset(dataset, data_root, fetch, mode)

    if ctx.main:
        ds = load(download)
    ctx.barrier()
    if not ctx.main:
        ds = load(False)
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
                epoch: int, epochs: int, progress: bool, limit: int | None = None,
                deadline: float | None = None) -> dict[str, float]:
    """One epoch, or its first `limit` steps, or the steps before `deadline` (time.perf_counter()):
    the figures of the steps done, with "steps" (how many) and "cut" (1.0 when stopped early)."""
    from tqdm import tqdm

    s.model.train()
    total = len(loader) if limit is None else min(len(loader), limit)
    done, cut = 0, False
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
        done = i + 1
        if done % LOG_EVERY == 0 or done == total:
            _check_finite(bad, epoch, i)
            loss_sum, hits = sums.tolist()
            rate = seen * ctx.world / (time.perf_counter() - start)
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{100 * hits / seen:.1f}", img_s=f"{rate:.0f}",
                            refresh=False)
        bar.update(1)
        if done == total:
            break
        if _out_of_time(deadline, ctx, done):
            cut = True
            break
    bar.close()
    cut = cut or done < len(loader)
    if ctx.device.type == "cuda":
        torch.cuda.synchronize(ctx.device)
    elapsed = time.perf_counter() - start
    _check_finite(bad, epoch, done - 1)
    loss_sum, hits, n = ctx.all_sum(torch.cat([sums, sums.new_tensor([seen])])).tolist()
    return {"train_loss": loss_sum / max(n, 1), "train_acc": 100 * hits / max(n, 1),
            "train_img_per_s": n / elapsed, "epoch_time_s": elapsed, "steps": done, "cut": float(cut)}


def _out_of_time(deadline: float | None, ctx: Context, done: int) -> bool:
    """Whether the wall-clock budget is spent: after every step in one process; every LOG_EVERY
    steps across processes, which must agree (any rank late stops them all)."""
    if deadline is None:
        return False
    if ctx.world == 1:
        return time.perf_counter() >= deadline
    if done % LOG_EVERY:
        return False
    late = torch.tensor([float(time.perf_counter() >= deadline)], device=ctx.device)
    return bool(ctx.all_sum(late).item() > 0)


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

def _run_dir(out: str | os.PathLike[str] | None, model: str, dataset: str, recipe: Recipe, seed: int) -> Path:
    if out:
        return Path(out)
    return Path("runs") / f"{model}-{Path(dataset).name}-{recipe.name}-s{seed}"


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


def _checkpoint(s: "Session", epoch: int, best: dict[str, float], history: list[dict[str, float]]
                ) -> dict[str, Any]:
    """Everything to resume the run, and everything a reader needs to use the weights without
    restating anything: the spec (checkpoint_dict), the dataset, the recipe and a summary."""
    st = s.step
    ck = checkpoint_dict(s.model, s.graph)
    ck.update(optimizer=st.optimizer.state_dict(), scheduler=st.scheduler.state_dict(),
              ema=st.ema.state_dict() if st.ema is not None else None, epoch=epoch, steps=s.steps,
              best=dict(best), history=history, recipe=s.recipe.to_dict(), seed=s.seed,
              limits=s.limits.as_dict(), overrides=dict(s.spec_overrides),
              dataset={**_dataset_info(s.ds), "argument": s.dataset_arg, "data_root": s.data_root},
              summary=_summary(s, history, best))
    return ck


def _dataset_info(ds: Dataset) -> dict[str, Any]:
    """What inference needs of the training data: class names and the normalisation."""
    return {"name": ds.name, "class_names": list(ds.classes), "mean": list(ds.mean), "std": list(ds.std),
            "train_images": len(ds.train), "test_images": len(ds.test)}


def _summary(s: "Session", history: list[dict[str, float]], best: dict[str, float]) -> dict[str, Any]:
    """The training so far in a few figures (what `vitgraph build` and `predict` report)."""
    last = history[-1] if history else {}
    return {"trained": bool(history), "dataset": s.ds.name, "epochs": len(history), "steps": s.steps,
            "top1": last.get("top1"), "top5": last.get("top5"), "best_top1": best.get("top1"),
            "best_epoch": best.get("epoch"), "recipe": s.recipe.name, "seed": s.seed}


def _resume(path: Path, model: nn.Module, graph: Graph, optimizer: torch.optim.Optimizer, scheduler: Any,
            ema: EMA | None, recipe: Recipe, seed: int, subset: int | None
            ) -> tuple[int, int, dict[str, float], list[dict[str, float]]]:
    """(epochs done, steps done, best, history) of the checkpoint, its state loaded."""
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
    if (ck.get("limits") or {}).get("subset") != subset:
        diffs.append(f"subset: {(ck.get('limits') or {}).get('subset')!r} -> {subset!r}")
    if diffs:
        raise UserError(f"{path} was trained with other settings ({', '.join(diffs)})",
                        hint="resume with the same --recipe, --recipe-set and --seed values")
    model.load_state_dict(ck["model"])
    optimizer.load_state_dict(ck["optimizer"])
    scheduler.load_state_dict(ck["scheduler"])
    if ema is not None and ck.get("ema") is not None:
        ema.load_state_dict(ck["ema"])
    steps = int(ck.get("steps", scheduler.last_epoch))
    return int(ck["epoch"]), steps, dict(ck["best"]), list(ck["history"])


# --- the entry points --------------------------------------------------------------------------

def run(spec: str, dataset: str = "digits", recipe: str | None = None, *, epochs: int | None = None,
        batch_size: int | None = None, overrides: Mapping[str, Any] | None = None,
        spec_overrides: Mapping[str, Any] | None = None, out: str | os.PathLike[str] | None = None,
        resume: bool = False, seed: int = 0, device: str | None = None, data_root: str | None = None,
        weights: str | None = None, teacher: str | None = None, teacher_weights: str | None = None,
        teacher_overrides: Mapping[str, Any] | None = None, distill: str | None = None, bf16: bool = False,
        compile: bool = False, workers: int = 4, data_mode: str = "auto", download: bool = True,
        progress: bool = True, threads: int | None = None, max_steps: int | None = None,
        minutes: float | None = None, subset: int | None = None) -> dict[str, Any]:
    """Train `spec` on `dataset` with `recipe`; see the module docstring for every argument."""
    limits = Limits(max_steps, minutes, subset)
    if threads:
        torch.set_num_threads(threads)
    ctx = setup(device)
    try:
        return _run(ctx, spec, dataset, recipe, epochs, batch_size, overrides, spec_overrides, out, resume, seed,
                    data_root, weights, teacher, teacher_weights, teacher_overrides, distill, bf16, compile, workers,
                    data_mode, download, progress, limits)
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
    limits: Limits
    spec_overrides: Mapping[str, Any]
    dataset_arg: str  # the dataset as named to run(): a name, or a folder's path
    steps: int = 0  # optimiser steps done so far, resumed ones included
    stopped_by: str | None = None  # "max_steps" or "minutes" when a limit ended the run inside an epoch
    data_root: str | None = None  # --data-root as given (eval of the checkpoint looks there again)


def _run(ctx: Context, spec: str, dataset: str, recipe_name: str | None, epochs: int | None,
         batch_size: int | None, overrides: Mapping[str, Any] | None, spec_overrides: Mapping[str, Any] | None,
         out: str | os.PathLike[str] | None, resume: bool, seed: int, data_root: str | None, weights: str | None,
         teacher_spec: str | None, teacher_weights: str | None, teacher_overrides: Mapping[str, Any] | None,
         distill: str | None, bf16: bool, compile_model: bool, workers: int, data_mode: str, download: bool,
         progress: bool, limits: Limits) -> dict[str, Any]:
    recipe = load_recipe(recipe_name or default_recipe(dataset),
                         _recipe_overrides(overrides, epochs, batch_size, distill))
    if recipe.distill != "none" and not teacher_spec:
        raise UserError(f"recipe {recipe.name} distils (distill = {recipe.distill}) but no teacher was given",
                        hint="add --teacher SPEC --teacher-weights CKPT, or --distill none")
    run_dir = _run_dir(out, vitgraph.compile(spec).name, dataset, recipe, seed)
    claimed = _claim_run_dir(run_dir, ctx) if ctx.main else []
    if (run_dir / "last.pt").is_file() and not resume:
        raise UserError(f"{run_dir} already holds a run ({run_dir / 'last.pt'})",
                        hint="continue it with --resume, or choose another folder with --out")
    if ctx.main:
        print(f"run folder: {run_dir}", flush=True)
    start_from = read_checkpoint(weights) if weights else None  # read (and checked) before the data loads
    stored = (spec_info(start_from) or {}).get("params")
    ds = _load_data(dataset, data_root, download, data_mode, ctx, limits.subset, seed)
    graph, notes = compile_for(spec, ds.num_classes, recipe, spec_overrides, stored)
    notes = claimed + notes
    torch.manual_seed(seed)  # the same initial weights on every rank
    model = vitgraph.to_torch(graph).to(ctx.device)
    if start_from is not None:
        notes += load_pretrained(model, graph, start_from, str(weights))
    teacher, teacher_size = None, None
    if recipe.distill != "none":
        teacher, tgraph = build_teacher(teacher_spec, teacher_weights, ds.num_classes, graph.image,
                                        teacher_overrides, ctx.device)
        teacher_size = None if tgraph.image[1:] == graph.image[1:] else tgraph.image[1:]
    train_loader, test_loader = make_loaders(ds, recipe, graph, ctx, seed, workers)
    optimizer = build_optimizer(model, recipe, recipe.effective_lr())
    scheduler = build_scheduler(optimizer, recipe, recipe.effective_lr(), len(train_loader), recipe.epochs,
                                limits.max_steps)
    ema = EMA(model, recipe.ema_decay) if recipe.ema_decay > 0 else None
    start, steps, best, history = 0, 0, {"top1": -1.0, "epoch": 0}, []
    if resume and (run_dir / "last.pt").is_file():
        start, steps, best, history = _resume(run_dir / "last.pt", model, graph, optimizer, scheduler, ema, recipe,
                                              seed, limits.subset)
        notes.append(f"resumed from {run_dir / 'last.pt'} after epoch {start} ({steps} steps)")
    elif resume:
        notes.append(f"--resume: no checkpoint in {run_dir}, starting afresh")
    aug = Augmenter(recipe, ds.name, graph.image[1:], graph.image[0], ds.num_classes, ds.mean, ds.std, ctx.device)
    autocast = (lambda: torch.autocast(ctx.device.type, dtype=torch.bfloat16)) if bf16 else nullcontext
    step = Step(_wrap(model, ctx, compile_model), model, optimizer, scheduler, recipe, aug, ema, teacher,
                teacher_size, autocast)
    session = Session(ctx, recipe, graph, ds, model, step, train_loader, test_loader, run_dir, seed, progress,
                      limits, dict(spec_overrides or {}), dataset, steps, data_root=data_root)
    if ctx.main:
        extra = {"params": sum(p.numel() for p in model.parameters()), "weights": weights, "bf16": bf16,
                 "compile": compile_model, "limits": limits.as_dict(),
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
            print(f"interrupted; continue with the same command and --resume (checkpoint {run_dir / 'last.pt'})")
        elif ctx.main:
            print("interrupted before the first epoch ended: no checkpoint yet, nothing to resume")
        raise
    return _results(session, history, best, time.perf_counter() - started)


def _epochs(s: Session, start: int, best: dict[str, float], history: list[dict[str, float]]) -> dict[str, float]:
    """Train, test and checkpoint epochs start+1 .. recipe.epochs, or until the step or time
    limit (inside an epoch); `history` grows in place. Returns the best test top-1 and its epoch."""
    ctx, st, limits = s.ctx, s.step, s.limits
    per_epoch = len(s.train_loader)
    epochs = s.recipe.epochs
    if limits.max_steps is not None:
        epochs = min(epochs, -(-limits.max_steps // per_epoch))
    deadline = None if limits.minutes is None else time.perf_counter() + 60 * limits.minutes
    gen = torch.Generator(ctx.device)
    for epoch in range(start, epochs):
        left = None if limits.max_steps is None else limits.max_steps - s.steps
        if left is not None and left <= 0:
            break
        rng = _seed_epoch(s.seed, ctx.rank, epoch, gen)
        s.train_loader.epoch = epoch
        row: dict[str, float] = {"epoch": epoch + 1, "lr": st.optimizer.param_groups[0]["lr"]}
        row.update(train_epoch(st, s.train_loader, ctx, gen, rng, epoch, epochs, s.progress, left, deadline))
        s.steps += int(row["steps"])
        row["steps"] = s.steps  # cumulative, in metrics.csv
        row.update(_test_metrics(s.model, st.ema, s.test_loader, st.aug, ctx, st.autocast))
        history.append(row)
        improved = row["top1"] > best["top1"]
        if improved:
            best = {"top1": row["top1"], "epoch": epoch + 1}
        if ctx.main:
            ck = _checkpoint(s, epoch + 1, best, history)
            save_atomic(ck, s.run_dir / "last.pt")
            if improved:
                save_atomic(ck, s.run_dir / "best.pt")
            _write_csv(s.run_dir / "metrics.csv", history)
            print(f"epoch {epoch + 1}/{epochs}: loss {row['train_loss']:.4f}  train acc {row['train_acc']:.1f}%  "
                  f"test top-1 {row['top1']:.2f}%  top-5 {row['top5']:.2f}%  "
                  f"{row['train_img_per_s']:.0f} img/s  {row['epoch_time_s']:.1f}s", flush=True)
        ctx.barrier()
        if row["cut"]:
            s.stopped_by = "max_steps" if limits.max_steps is not None and s.steps >= limits.max_steps else "minutes"
            if ctx.main:
                print(f"stopped inside epoch {epoch + 1}, after {s.steps} steps in all: {_stop_reason(s)}",
                      flush=True)
            break
    return best


def _stop_reason(s: Session) -> str:
    if s.stopped_by == "max_steps":
        return f"--max-steps {s.limits.max_steps}"
    return f"--minutes {s.limits.minutes:g} of training time spent"


def _results(s: Session, history: list[dict[str, float]], best: dict[str, float], elapsed: float) -> dict[str, Any]:
    if not history:
        raise UserError(f"nothing to train: the run in {s.run_dir} already finished {s.recipe.epochs} epochs",
                        hint="raise --epochs to train further")
    final = history[-1]
    keys = ("top1", "top5", "loss", "train_loss", "train_acc", "ema_top1", "ema_top5")
    result: dict[str, Any] = {k: final[k] for k in keys if k in final}
    result.update(best_top1=best["top1"], best_epoch=best["epoch"], epochs=len(history), steps=s.steps,
                  stopped_by=s.stopped_by,
                  train_img_per_s=float(np.median([h["train_img_per_s"] for h in history])),
                  train_time_s=sum(h["epoch_time_s"] for h in history), wall_time_s=elapsed,
                  params=sum(p.numel() for p in s.model.parameters()), run_dir=str(s.run_dir), spec=s.graph.name,
                  spec_hash=s.graph.spec.hash, dataset=s.ds.name, recipe=s.recipe.name, world_size=s.ctx.world,
                  **{k: v for k, v in s.limits.as_dict().items() if v is not None})
    if s.ctx.main:
        _write_text_atomic(s.run_dir / "results.json", json.dumps(result, indent=2))
    return result


def evaluate(spec: str | None, weights: str, dataset: str | None = None, *,
             spec_overrides: Mapping[str, Any] | None = None, recipe: str | None = None, device: str | None = None,
             data_root: str | None = None, batch_size: int = 256, workers: int = 4, data_mode: str = "auto",
             download: bool = True, ema: bool = False) -> dict[str, Any]:
    """Top-1 / top-5 (%) of a checkpoint on a dataset's test split: {"top1", "top5", "loss", "images",
    "dataset"}.
    A vitgraph checkpoint says the rest: without `spec`, its stored spec and parameters; without
    `dataset`, the dataset it was trained on (and the --data-root it was trained with); without
    `recipe`, its training recipe (for the evaluation crop). Other checkpoints (DeiT, timm) need `spec`; it is compiled as for training
    (classes from the dataset), with the dataset's recipe. `ema=True` evaluates the EMA weights."""
    ck = read_checkpoint(weights)
    saved = ck.get("dataset") if isinstance(ck.get("dataset"), Mapping) else {}
    if not dataset:  # the dataset it was trained on, where it was found then
        dataset = saved.get("argument") or saved.get("name") or "digits"
        data_root = data_root or saved.get("data_root")
    ctx = setup(device)
    try:
        rec = _eval_recipe(ck, recipe, dataset, batch_size * ctx.world)
        ds = _load_data(dataset, data_root, download, data_mode, ctx)
        graph = checkpoint_graph(spec, ck, weights, dict(spec_overrides or {})) \
            or compile_for(str(spec), ds.num_classes, rec, spec_overrides)[0]
        if graph.classes != ds.num_classes:
            raise UserError(f"{weights} predicts {graph.classes} classes but {ds.name} has {ds.num_classes}",
                            hint="evaluate on the dataset it was trained on (the default), or pass --dataset")
        model = vitgraph.to_torch(graph)
        source: Any = ck
        if ema:
            if not ck.get("ema"):
                raise UserError(f"{weights} holds no EMA weights")
            source = {"model": ck["ema"]}
        load_weights(model, graph, source, weights)
        model.to(ctx.device)
        _, test = make_loaders(ds, rec, graph, ctx, 0, workers)
        aug = Augmenter(rec, ds.name, graph.image[1:], graph.image[0], ds.num_classes, ds.mean, ds.std, ctx.device)
        return {**evaluate_model(model, test, aug, ctx), "dataset": ds.name}
    finally:
        ctx.close()


def _eval_recipe(ck: Mapping[str, Any], name: str | None, dataset: str, batch_size: int) -> Recipe:
    """The recipe that says how to evaluate: the one named, else the checkpoint's own, else the
    dataset's default; at the evaluation batch size."""
    saved = ck.get("recipe")
    if name or not isinstance(saved, Mapping):
        return load_recipe(name or default_recipe(dataset), {"batch_size": batch_size})
    known = {f.name for f in dataclasses.fields(Recipe)}
    return dataclasses.replace(Recipe(**{k: v for k, v in saved.items() if k in known}), batch_size=batch_size)
