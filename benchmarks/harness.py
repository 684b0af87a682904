"""The benchmark harness: for each (spec, dataset) of a suite, train with the suite's recipe,
evaluate top-1/top-5, count params/MACs/BOPs/OPs, time the torch backend on the training
device and the ONNX export on CPU, and append one record to <results>/runs.jsonl.

It reproduces the comparison tables of DeiT (Touvron et al. 2020), ViT for small-size
datasets (Lee et al. 2021) and BinaryViT (Le & Li 2023) for any set of specs.

Each step is one function of (run, graph, ...) -> figures, so a step can be reused alone:
    count_figures, train_and_evaluate, torch_speed, onnx_cpu_speed.
`run_suite` sequences them: finished runs (same config and spec text) are skipped, an
interrupted run resumes from its run folder, a missing dataset is reported once and its
runs are left out while the rest of the suite goes on.

Several processes may run a suite into one results folder at once (shards, or the same
command started twice): each run is done under its run folder's lock, so a second process
waits for a run in progress (saying which process holds it), then finds its record and skips
it; every record is written exactly once.
"""
from __future__ import annotations

import datetime
import json
import os
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import vitgraph
from vitgraph.diagnostics import UserError
from vitgraph.fileio import folder_lock, remove_stale_temps, write_atomic
from vitgraph.ir import Graph

from .results import ResultStore, conditions
from .suite import Measure, Run, Suite, shard

Log = Callable[[str], None]


@dataclass(frozen=True)
class Planned:
    """A run with its compiled graph and the digest that identifies its result."""

    run: Run
    graph: Graph
    digest: str


@dataclass
class Outcome:
    """What a call of run_suite did."""

    planned: list[Planned] = field(default_factory=list)         # this shard's runs, done or not
    done: list[dict[str, Any]] = field(default_factory=list)      # records written now
    skipped: list[Planned] = field(default_factory=list)          # already in the results
    failed: list[dict[str, Any]] = field(default_factory=list)    # records of runs that raised a UserError
    missing: dict[str, UserError] = field(default_factory=dict)   # dataset -> why it could not be loaded
    left_out: list[Planned] = field(default_factory=list)         # runs of missing datasets


def compile_run(run: Run) -> Graph:
    """The graph the run trains, compiled as the training API compiles it: the recipe's [spec]
    values the spec declares, then the suite's overrides (classes as the suite sets them)."""
    from vitgraph.train.loop import compile_for
    from vitgraph.train.recipes import load_recipe

    recipe = load_recipe(run.recipe, run.recipe_overrides)
    declared = vitgraph.compile(run.spec_path)
    classes = int(run.overrides.get("classes", declared.classes))
    return compile_for(run.spec_path, classes, recipe, run.overrides)[0]


def plan(runs: tuple[Run, ...] | list[Run]) -> list[Planned]:
    """Compile every run: a suite that does not compile fails before anything trains."""
    planned = []
    for run in runs:
        graph = compile_run(run)
        planned.append(Planned(run, graph, run.digest(graph.spec.hash)))
    return planned


def resolve_device(run: Run, asked: str | None) -> str:
    """The command line's device if given, else the suite's, else cuda when present."""
    if asked or run.device:
        return str(asked or run.device)
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# -- the steps ------------------------------------------------------------------------
def count_figures(graph: Graph) -> dict[str, float]:
    """Params (all, binary, full precision), MACs, BOPs and OPs = MACs + BOPs/64."""
    return vitgraph.count(graph).total.as_dict()


def spread(samples: list[float]) -> dict[str, float]:
    """Median and spread (quartiles, extremes) of repeated measurements."""
    import numpy as np

    q = np.percentile(samples, [0, 25, 50, 75, 100])
    return {"median": float(q[2]), "q1": float(q[1]), "q3": float(q[3]), "min": float(q[0]), "max": float(q[4]),
            "n": len(samples)}


def time_calls(fn: Callable[[], Any], warmup: int, repeats: int, device: str = "cpu") -> list[float]:
    """Seconds per call of `fn`, after `warmup` untimed calls; CUDA calls are timed with events."""
    import torch

    for _ in range(warmup):
        fn()
    cuda = device.startswith("cuda")
    times = []
    for _ in range(repeats):
        if cuda:
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(begin.elapsed_time(end) / 1000)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return times


def torch_speed(graph: Graph, device: str, measure: Measure) -> dict[str, Any]:
    """Images per second of the torch backend on `device` at batch `measure.batch`, in float32
    eager mode as the recipes train: a training step (forward, cross-entropy, backward, AdamW
    step) and an inference forward (eval mode); benchmarks/throughput.py does the timing."""
    import argparse

    import torch

    from .throughput import measure as throughput

    timing = argparse.Namespace(iters=1, warmup=measure.warmup, repeats=measure.repeats, compile_mode=None)
    figures = throughput(vitgraph.to_torch(graph), "eager", measure.batch, graph.image, graph.classes, device,
                         torch.float32, timing)
    if device.startswith("cuda"):
        torch.cuda.empty_cache()  # give the measured model's memory back before training
    return {"device": device, "batch": measure.batch, "dtype": "fp32", "threads": torch.get_num_threads(),
            **figures}


def onnx_cpu_speed(graph: Graph, checkpoint: Path, measure: Measure) -> dict[str, Any]:
    """The trained weights exported to ONNX (binary specs deployed as binary: 1-bit
    weights, integer matmuls) and run by onnxruntime on the CPU: batch-1 latency (ms),
    batch-`measure.batch` throughput (img/s), and which form was measured."""
    import numpy as np

    from vitgraph.backends.onnx_backend import form, make_session
    from vitgraph.backends.torch_backend import read_checkpoint

    session = make_session(vitgraph.to_onnx(graph, read_checkpoint(checkpoint)["model"]))
    name = session.get_inputs()[0].name
    rng = np.random.default_rng(0)
    one = rng.standard_normal((1, *graph.image), dtype=np.float32)               # (1, C, H, W)
    many = rng.standard_normal((measure.batch, *graph.image), dtype=np.float32)  # (B, C, H, W)
    latency = time_calls(lambda: session.run(None, {name: one}), measure.warmup, measure.repeats * 5)
    batch = time_calls(lambda: session.run(None, {name: many}), measure.warmup, measure.repeats)
    options = session.get_session_options()
    return {"batch": measure.batch, "threads": options.intra_op_num_threads, "form": form(session),
            "latency_ms": spread([1000 * t for t in latency]),
            "throughput_img_s": spread([measure.batch / t for t in batch])}


@dataclass(frozen=True)
class Teacher:
    spec: str                       # a .vg path
    weights: str
    overrides: Mapping[str, Any]


def find_teacher(p: Planned, suite_plan: list[Planned], store: ResultStore) -> Teacher | None:
    """The run's teacher when its recipe distils: the given weights, or the last weights of the
    suite's own run of the teacher spec on the same dataset, once that run has finished training
    (its run folder holds results.json; it may have run on another shard)."""
    from vitgraph.train.recipes import load_recipe

    run = p.run
    distill = run.distill or load_recipe(run.recipe, run.recipe_overrides).distill
    if distill == "none" or not run.teacher:
        return None
    spec = run.teacher if run.teacher.endswith(".vg") else str(Path(run.spec_path).parent / f"{run.teacher}.vg")
    if run.teacher_weights:
        return Teacher(spec, run.teacher_weights, run.teacher_overrides)
    wanted = f"{Path(spec).stem}@{run.dataset}"
    own = next((q for q in suite_plan if q.run.id == wanted and q.run.seed == run.seed), None)
    if own is None:
        raise UserError(f"{run.id} distils from {wanted}, which is not a run of suite '{run.suite}'",
                        hint="add the teacher spec to the suite, or give teacher_weights")
    folder = store.run_folder(own.run.id, own.digest)
    if not (folder / "results.json").is_file():
        raise UserError(f"{run.id} distils from {wanted}, which has not finished training in {folder}",
                        hint=f"run {wanted} first (it comes earlier in the suite), or give teacher_weights")
    overrides = {k: v for k, v in own.run.overrides.items() if k != "classes"}
    return Teacher(spec, str(folder / "last.pt"), {**overrides, **run.teacher_overrides})


def train_and_evaluate(p: Planned, folder: Path, chosen: Budget, device: str, teacher: Teacher | None,
                       data_root: str | None, download: bool, progress: bool) -> dict[str, Any]:
    """Train with the run's recipe into `folder` (resuming what is there) and evaluate on the
    test split: the last epoch's top-1/top-5 (%), not the best one, so no test-set selection."""
    from vitgraph import train

    result = _finished(folder, p.graph.spec.hash)
    if result is None:
        run = p.run
        result = train.run(run.spec_path, run.dataset, run.recipe, epochs=chosen.epochs,
                           overrides=run.recipe_overrides, spec_overrides=run.overrides, out=folder,
                           resume=(folder / "last.pt").is_file(), seed=run.seed, device=device,
                           data_root=data_root, download=download, progress=progress, distill=run.distill,
                           teacher=teacher and teacher.spec, teacher_weights=teacher and teacher.weights,
                           teacher_overrides=teacher and teacher.overrides, max_steps=chosen.max_steps,
                           minutes=run.minutes, subset=run.subset)
    if result["spec_hash"] != p.graph.spec.hash:
        raise UserError(f"{p.run.id}: trained spec hash {result['spec_hash']} differs from the planned "
                        f"{p.graph.spec.hash}", hint="the recipe or the spec changed while the suite ran")
    keep = ("top1", "top5", "ema_top1", "ema_top5", "best_top1", "best_epoch", "epochs", "steps", "stopped_by",
            "train_img_per_s", "world_size")
    return {**{k: result[k] for k in keep if k in result}, "train_seconds": result.get("train_time_s")}


def _finished(folder: Path, spec_hash: str) -> dict[str, Any] | None:
    """The training result in a run folder that already finished training (a run killed after
    training but before its record was written), else None. The folder is the run's digest's,
    so a result there was trained to this run's budget."""
    path = folder / "results.json"
    if not path.is_file():
        return None
    result = json.loads(path.read_text())
    return result if result.get("spec_hash") == spec_hash else None


@dataclass(frozen=True)
class Budget:
    """How long a run trains: epochs (the recipe's schedule length) and, optionally, steps."""

    epochs: int
    max_steps: int | None = None


def budget(p: Planned, folder: Path, train_img_s: float | None, train_images: int) -> Budget:
    """The run's budget: the suite's epochs and steps or, for a budget in minutes, the optimiser
    steps the measured training throughput fits in it (at least 1; no more than the epochs or
    steps if given too), so the learning-rate schedule ends with the time. Training also stops
    when the minutes are spent, inside an epoch if need be. The choice is kept in the run folder
    so a resumed run trains to the same schedule."""
    run = p.run
    from vitgraph.train.recipes import load_recipe

    recipe = load_recipe(run.recipe, run.recipe_overrides)
    images = min(train_images, run.subset or train_images)
    per_epoch = max(1, images * (1 if recipe.repeats_truncate else recipe.repeats) // recipe.batch_size)
    epochs = run.epochs or recipe.epochs
    if run.minutes is None:
        steps = run.max_steps
        return Budget(epochs if steps is None else min(epochs, -(-steps // per_epoch)), steps)
    kept = folder / "budget.json"
    chosen = _kept_budget(kept)
    if chosen is not None:
        return chosen
    if not train_img_s:
        raise UserError(f"{run.id}: a budget in minutes needs the training throughput",
                        hint="enable measure.torch_throughput or give the budget in epochs or steps")
    steps = max(1, int(run.minutes * 60 * train_img_s // recipe.batch_size))
    steps = min(steps, epochs * per_epoch, run.max_steps or steps)
    chosen = Budget(-(-steps // per_epoch), steps)
    text = json.dumps({"epochs": chosen.epochs, "max_steps": steps, "minutes": run.minutes,
                       "train_img_s": train_img_s, "steps_per_epoch": per_epoch})
    write_atomic(kept, lambda tmp: tmp.write_text(text))
    return chosen


def _kept_budget(path: Path) -> Budget | None:
    """The budget kept in budget.json, or None when there is none or it is unreadable (a file
    torn, or written by an older version in epochs only, is chosen again)."""
    try:
        saved = json.loads(path.read_text())
        chosen = Budget(saved["epochs"], saved["max_steps"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    whole = all(isinstance(v, int) and v >= 1 for v in (chosen.epochs, chosen.max_steps))
    return chosen if whole else None


# -- sequencing -----------------------------------------------------------------------
@dataclass(frozen=True)
class Options:
    """How run_suite runs, as opposed to what (the suite)."""

    device: str | None = None          # default: the suite's, else cuda when present
    data_root: str | None = None
    download: bool = True
    shard: tuple[int, int] | None = None
    force: bool = False                # rerun finished runs
    progress: bool = True              # per-batch progress bars while training
    threads: int | None = None         # torch CPU threads (default: torch's)


def main_process() -> bool:
    """Rank 0 of a torchrun launch (or a plain process): the one that measures and writes."""
    return int(os.environ.get("RANK", "0")) == 0


def join_processes(device: str) -> None:
    """Under torchrun, create the process group once for the whole suite: every run's training
    then shares it (creating and destroying one per run is fragile), and ranks other than 0 wait
    in the next run's first collective while rank 0 measures and writes."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")


def select(suite: Suite, store: ResultStore, opts: Options) -> tuple[list[Planned], list[Planned], list[Planned]]:
    """(the whole suite compiled, this shard's runs to do, this shard's runs already done)."""
    everything = plan(suite.runs)
    mine = shard(everything, *opts.shard) if opts.shard else everything
    done = set() if opts.force else store.completed()
    return everything, [p for p in mine if p.digest not in done], [p for p in mine if p.digest in done]


def run_suite(suite: Suite, store: ResultStore, opts: Options, log: Log = print) -> Outcome:
    """Run what is left of (this shard of) a suite, dataset by dataset; see the module docstring."""
    if opts.threads:
        import torch

        torch.set_num_threads(opts.threads)
    everything, todo, done = select(suite, store, opts)
    outcome = Outcome(planned=[p for p in everything if p in todo or p in done], skipped=list(done))
    if main_process():
        remove_stale_temps(store.folder)  # a report write killed mid-way
    if todo:
        join_processes(resolve_device(todo[0].run, opts.device))
    if done:
        log(f"{len(done)} run(s) already in {store.path}: " + ", ".join(p.run.id for p in done))
    for dataset in dict.fromkeys(p.run.dataset for p in todo):
        runs = [p for p in todo if p.run.dataset == dataset]
        try:
            train_images = dataset_size(dataset, opts)
        except UserError as e:  # reported once for all its runs; the other datasets go on
            outcome.missing[dataset] = e
            outcome.left_out += runs
            log(f"error: dataset {dataset}: {e.message}" + (f"\nhint: {e.hint}" if e.hint else "")
                + f"\nleft out: {', '.join(p.run.id for p in runs)}")
            continue
        for p in runs:
            number = len(outcome.done) + len(outcome.failed) + 1
            log(f"[{number}/{len(todo) - len(outcome.left_out)}] {p.run.id} seed {p.run.seed} "
                f"({' '.join(f'{k}={v}' for k, v in p.run.overrides.items())}) -> {store.run_folder(p.run.id, p.digest)}")
            with claim(p, store, opts, log) as mine:
                if not mine:
                    log(f"    finished meanwhile by another process: its record is in {store.path}")
                    outcome.skipped.append(p)
                    continue
                record = execute(p, everything, store, opts, train_images, log)
            (outcome.done if record["status"] == "ok" else outcome.failed).append(record)
    return outcome


@contextmanager
def claim(p: Planned, store: ResultStore, opts: Options, log: Log) -> Iterator[bool]:
    """Hold the run's folder lock while the run is done (rank 0; when another process holds it,
    say which and wait), and yield whether the run is still to do: another process may have
    finished it meanwhile. Every process of a torchrun launch gets rank 0's answer."""
    main = main_process()
    folder = store.run_folder(p.run.id, p.digest)
    with folder_lock(folder, on_wait=lambda text: log(f"    {text}")) if main else nullcontext():
        todo = (opts.force or p.digest not in store.completed()) if main else None
        yield bool(_from_rank0(todo))


def dataset_size(name: str, opts: Options) -> int:
    """The number of training images; raises the data layer's UserError (what is missing and
    how to get it) when the dataset cannot be found or fetched. Image folders are only listed
    here (the runs decode what they train on)."""
    from vitgraph.data.datasets import load_dataset

    return len(load_dataset(name, opts.data_root, opts.download, "stream").train)


def execute(p: Planned, everything: list[Planned], store: ResultStore, opts: Options, train_images: int,
            log: Log) -> dict[str, Any]:
    """All steps of one run; a UserError (bad recipe, missing teacher, NaN loss) fails this run only."""
    started = time.time()
    device = resolve_device(p.run, opts.device)
    folder = store.run_folder(p.run.id, p.digest)
    measure = p.run.measure
    main = main_process()
    figures: dict[str, Any] = {"counts": count_figures(p.graph)}
    try:
        if measure.torch_throughput and main:
            log(f"    timing torch training and inference at batch {measure.batch} on {device}")
            figures["torch"] = torch_speed(p.graph, device, measure)
        decision = _decide(p, everything, store, folder, figures, train_images) if main else None
        chosen, teacher = _agree(decision)
        metrics = train_and_evaluate(p, folder, chosen, device, teacher, opts.data_root, opts.download,
                                     opts.progress)
        metrics["run_dir"] = str(folder.relative_to(store.folder))
        figures["metrics"] = metrics
        if measure.onnx_cpu and main:
            log("    timing the trained weights exported to ONNX, in onnxruntime on the CPU")
            figures["onnx_cpu"] = onnx_cpu_speed(p.graph, folder / "last.pt", measure)
    except UserError as e:
        log(f"error: {p.run.id}: {e.message}" + (f"\nhint: {e.hint}" if e.hint else ""))
        record = _record(p, "failed", device, started, error=e.message, hint=e.hint, **figures)
    else:
        record = _record(p, "ok", device, started, **figures)
        log(_summary(record))
    if main:
        _save(store, record, folder)
    return record


def _save(store: ResultStore, record: dict[str, Any], folder: Path) -> None:
    """Append the record; when that fails (a full disk), one error saying what is kept."""
    try:
        store.append(record)
    except UserError as e:
        raise UserError(f"{record['run']}: the record could not be saved: {e.message}",
                        hint=f"free space and run the same command again: the training kept in {folder} "
                             "is not repeated") from None


Decision = tuple[Budget, "Teacher | None"] | tuple[str, str | None]


def _decide(p: Planned, everything: list[Planned], store: ResultStore, folder: Path, figures: Mapping[str, Any],
            train_images: int) -> Decision:
    """Rank 0's choice of the budget and the teacher, or the error that fails the run."""
    try:
        train_img_s = figures.get("torch", {}).get("train_img_s", {}).get("median")
        return budget(p, folder, train_img_s, train_images), find_teacher(p, everything, store)
    except UserError as e:
        return e.message, e.hint


def _agree(decision: Decision | None) -> tuple[Budget, Teacher | None]:
    """Every process of a torchrun launch acts on rank 0's decision (the others did not measure,
    and may look at the run folders before rank 0 has written them)."""
    decision = _from_rank0(decision)
    assert decision is not None
    if isinstance(decision[0], str):
        raise UserError(decision[0], hint=decision[1])
    return decision  # type: ignore[return-value]


def _from_rank0(value: Any) -> Any:
    """Rank 0's `value` on every process of a torchrun launch (the value itself otherwise)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        value = box[0]
    return value


def _summary(record: Mapping[str, Any]) -> str:
    m, c = record["metrics"], record["counts"]
    parts = [f"top-1 {m['top1']:.2f}%", f"top-5 {m['top5']:.2f}%", f"{m['epochs']} epochs ({m.get('steps')} steps)",
             f"{c['params'] / 1e6:.2f}M params", f"{c['ops'] / 1e9:.3f}G OPs"]
    if "torch" in record:
        parts.append(f"train {record['torch']['train_img_s']['median']:.0f} / infer "
                     f"{record['torch']['infer_img_s']['median']:.0f} img/s ({record['torch']['device']})")
    if "onnx_cpu" in record:
        parts.append(f"ONNX CPU {record['onnx_cpu']['latency_ms']['median']:.2f} ms")
    return "    " + ", ".join(parts)


def _record(p: Planned, status: str, device: str, started: float, **figures: Any) -> dict[str, Any]:
    run = p.run
    return {
        "suite": run.suite, "run": run.id, "digest": p.digest, "status": status,
        "spec": run.spec, "spec_path": run.spec_path, "model": p.graph.name, "spec_hash": p.graph.spec.hash,
        "spec_params": p.graph.spec.params, "dataset": run.dataset, **run.config(),
        "started": _iso(started), "finished": _iso(time.time()), "seconds": round(time.time() - started, 2),
        **figures, "conditions": conditions(device),
    }


def _iso(t: float) -> str:
    return datetime.datetime.fromtimestamp(t).isoformat(timespec="seconds")
