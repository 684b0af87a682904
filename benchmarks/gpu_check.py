"""Every GPU claim of vitgraph measured by one command on one GPU, within 10 minutes, offline:

    python -m vitgraph.benchmarks.datapack                   # once, beside ../shared: .gpu-check/cifar10.pack
    python -m vitgraph.benchmarks.gpu_check OUTDIR           # on the GPU machine (reads .gpu-check/cifar10.pack)
    python -m vitgraph.benchmarks.gpu_check OUTDIR --dry-run # the same script on the CPU at tiny sizes (in the tests)

Sections, in this order; the JSON and markdown under OUTDIR are rewritten after each, so a run
killed part-way keeps what it measured:

1. environment: GPU, capability, memory, driver, CUDA, cuDNN, NCCL, torch, triton, timm, python,
   git commit (where .git travelled) and a digest of the package's sources (where it did not).
2. specs: every spec in specs/ built by the torch backend, compiled with torch.compile, one bf16
   training step (forward, cross-entropy, backward, fused AdamW); the models of section 4 (ours
   and timm's) at its batch, with an inference forward compared with eager. These run in
   parallel worker processes before anything is timed (compilation is CPU-bound) and leave
   inductor's on-disk caches warm for section 4, which compiles the same graphs again.
3. ddp: one DistributedDataParallel step through torchrun on one process with NCCL: an
   all-reduce, DDP's gradients against a single-process copy, a compiled DDP step.
   (Sections 2 and 3 run side by side: benchmarks/gpu_workers.py.)
4. throughput: training and inference img/s of the torch backend and of timm (CIFAR ViT at
   32 px batch 512, DeiT-Ti and DeiT-S at 224 px batch 256; bf16; eager and compiled; all
   interleaved in one process, benchmarks/throughput.py) as ratios to timm eager. Where the goal
   (training >= 2x timm eager, on deit_tiny and vit) is missed or cannot be judged, torch.profiler's
   top kernels of our training steps say where the time goes.
5. cifar10: vit and sl_vit trained on CIFAR-10 (the packed JPEGs, unpacked and decoded here) for
   the same training-time budget with the small-datasets recipe (augmentation on the GPU, bf16;
   the epochs fitted to the budget from a one-epoch probe, warm-up kept at 10% of them); test
   top-1 and times. Goal: sl_vit >= vit.

`--minutes` bounds the whole run (default 8.5, so that with the installs it fits a 10-minute
command), shared out among the sections asked for (--sections): checks 32%, throughput 30%
(compiled variants whose compilation would not fit are left out, and said so), CIFAR-10 38%;
a section that ends early leaves its time to the next.
Without timm the script says so and runs everything else. Exit status: 0 when every check ran
(missed goals are findings, not failures); 1 when one failed, or the pack is missing or corrupt;
2 for bad arguments, or no GPU without --dry-run.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

import vitgraph
from vitgraph.diagnostics import UserError
from vitgraph.fileio import write_atomic

from . import datapack
from . import gpu_workers as W
from .results import conditions

ROOT = Path(__file__).resolve().parents[1]
SPECS_DIR = ROOT / "specs"
SECTIONS = ("specs", "ddp", "throughput", "cifar10")
GOAL_RATIO = 2.0                       # torch backend training img/s over timm eager's
GOAL_MODELS = ("vit", "deit_tiny")     # the small models whose headroom is launches and memory traffic
SHARES = {"checks": 0.32, "throughput": 0.30, "cifar10": 0.38}  # of --minutes, among the sections asked for
END_MARGIN_S = 15.0                    # kept free at the end for writing the results
CIFAR_MODELS = ("vit", "sl_vit")
CIFAR_RECIPE = "small-datasets"
PARITY_FLAG = 0.05                     # compiled vs eager logits: max |diff| / max |eager| worth a look
TOP_KERNELS = 12


@dataclass(frozen=True)
class Plan:
    """Sizes and settings of one run: GPU (the real check) or DRY_RUN (CPU, tiny, quick)."""

    device: str
    minutes: float
    check_specs: tuple[str, ...]       # spec names to check; () = every spec in specs/
    check_batch: int                   # batch of a spec check (the throughput models use theirs)
    compile_backend: str
    compile_first_only: bool           # compile only the first check (Dynamo on a CPU is slow)
    workers: int                       # parallel check processes; 0 = from the CPU count
    throughput_models: tuple[str, ...]
    throughput_batch: int | None       # None: each model's GPU batch
    modes: tuple[str, ...]
    warmup: int
    repeats: int
    iters: int
    profile_steps: int
    ddp_batch: int
    ddp_compile: bool
    cifar_per_folder: int | None       # images unpacked per class folder; None = all
    cifar_recipe_set: tuple[tuple[str, str], ...]
    cifar_min_s: float                 # each model's training budget: at least this,
    cifar_max_s: float                 # at most this


GPU = Plan(device="cuda", minutes=8.5, check_specs=(), check_batch=32, compile_backend="inductor",
           compile_first_only=False, workers=0, throughput_models=("vit", "deit_tiny", "deit_small"),
           throughput_batch=None, modes=("eager", "compiled"), warmup=3, repeats=10, iters=5, profile_steps=5,
           ddp_batch=128, ddp_compile=True, cifar_per_folder=None, cifar_recipe_set=(), cifar_min_s=20.0,
           cifar_max_s=180.0)
DRY_RUN = Plan(device="cpu", minutes=10.0, check_specs=("vit", "deit_tiny_distilled", "pit"), check_batch=2,
               compile_backend="eager", compile_first_only=True, workers=1, throughput_models=("vit",),
               throughput_batch=2, modes=("eager",), warmup=1, repeats=2, iters=1, profile_steps=2, ddp_batch=4,
               ddp_compile=False, cifar_per_folder=2, cifar_recipe_set=(("batch_size", "16"),), cifar_min_s=0.5,
               cifar_max_s=2.0)


# -- the record ------------------------------------------------------------------------------
class Report:
    """The run's record, written as JSON and markdown under OUTDIR after every section."""

    def __init__(self, outdir: Path, stem: str, record: dict[str, Any]) -> None:
        self.json_path = outdir / f"{stem}.json"
        self.md_path = outdir / f"{stem}.md"
        self.record = record

    def save(self) -> None:
        """The JSON first (it holds every figure), then the markdown. A run gets one chance on a
        GPU machine, so a fault in judging or rendering is written down instead of raised."""
        try:
            self.record["goals"] = goals(self.record)
        except Exception as e:  # noqa: BLE001 - see the docstring
            self.record["goals"] = [{"goal": "all", "measured": "-", "verdict": f"not judged ({e!r})"}]
        text = json.dumps(self.record, indent=2, sort_keys=True, default=str) + "\n"
        write_atomic(self.json_path, lambda tmp: tmp.write_text(text))
        try:
            table = markdown(self.record)
        except Exception as e:  # noqa: BLE001 - see the docstring
            table = f"# GPU check\n\nNot rendered ({e!r}); {self.json_path.name} has the figures.\n"
        write_atomic(self.md_path, lambda tmp: tmp.write_text(table))


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def source_digest(root: Path = ROOT) -> str:
    """SHA-256 (16 hex digits) of the package's sources and specs: it names the code where .git
    did not travel (a GPU machine gets the working tree only); recompute it on a checkout to match
    (`python -c "from vitgraph.benchmarks.gpu_check import source_digest; print(source_digest())"`)."""
    digest = hashlib.sha256()
    files = [p for p in [root / "pyproject.toml"] if p.is_file()] + sorted(
        p for d in ("vitgraph", "backends", "benchmarks", "specs") for p in (root / d).rglob("*")
        if p.suffix in (".py", ".vg", ".lark", ".toml") and p.is_file())
    for p in files:
        digest.update(p.relative_to(root).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def _version(name: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _driver() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.strip().splitlines()[0] if out.strip() else None


def environment(device: str) -> dict[str, Any]:
    """Where the figures come from: the machine, the libraries and the code."""
    import torch

    env = conditions(device)
    env["versions"].update(timm=_version("timm"), triton=_version("triton"))
    env.update(source_digest=source_digest(), date=time.strftime("%Y-%m-%d %H:%M:%S %z"))
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(0)
        nccl = torch.cuda.nccl.version()
        env["cuda"] = {"name": props.name, "capability": f"{props.major}.{props.minor}",
                       "memory_gib": round(props.total_memory / 2**30, 1),
                       "multiprocessors": props.multi_processor_count, "driver": _driver(),
                       "cuda_runtime": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
                       "nccl": ".".join(map(str, nccl)) if isinstance(nccl, tuple) else str(nccl)}
    return env


# -- sections 2 and 3: compiled steps of every spec and the DDP step, in child processes --------
def check_jobs(plan: Plan, timm_present: bool) -> list[dict[str, Any]]:
    """One job per spec (and per timm model that section 4 compiles). The throughput models run
    at their throughput batch with an inference forward too, so that section 4 finds their
    graphs compiled; they come first."""
    from .throughput import MODELS

    names = plan.check_specs or tuple(sorted(p.stem for p in SPECS_DIR.glob("*.vg")))
    jobs = []
    for i, name in enumerate(names):
        timed = name in plan.throughput_models
        jobs.append({"id": f"vitgraph-{name}", "impl": "vitgraph", "model": name, "timed": timed, "infer": timed,
                     "batch": (plan.throughput_batch or MODELS[name].gpu_batch) if timed else plan.check_batch,
                     "compile": not plan.compile_first_only or i == 0,
                     "size": len(vitgraph.compile(SPECS_DIR / f"{name}.vg"))})
    if timm_present and "compiled" in plan.modes:
        size = {j["model"]: j["size"] for j in jobs}
        jobs += [{"id": f"timm-{name}", "impl": "timm", "model": name, "timed": True, "infer": True, "compile": True,
                  "batch": plan.throughput_batch or MODELS[name].gpu_batch, "size": size.get(name, 0)}
                 for name in plan.throughput_models]
    return jobs


def deal(jobs: list[dict[str, Any]], slots: int) -> list[list[dict[str, Any]]]:
    """Jobs to at most `slots` workers: the timed ones first, then the largest graphs (compile time
    grows with the graph), each to the least loaded worker."""
    lists: list[list[dict[str, Any]]] = [[] for _ in range(max(1, min(slots, len(jobs))))]
    load = [0] * len(lists)
    for job in sorted(jobs, key=lambda j: (not j["timed"], -j["size"])):
        i = load.index(min(load))
        lists[i].append(job)
        load[i] += job["size"]
    return lists


def checks_section(plan: Plan, sections: set[str], timm_present: bool, work: Path, deadline: float,
                   report: Report) -> None:
    """Sections 2 and 3, side by side: each worker and torchrun is watched by a thread."""
    jobs = check_jobs(plan, timm_present) if "specs" in sections else []
    lists = deal(jobs, plan.workers or max(1, min(8, (os.cpu_count() or 2) // 2))) if jobs else []
    env = W.child_env(plan.device, len(lists) + ("ddp" in sections))
    (work / "results").mkdir()
    settings = {"device": plan.device, "compile_backend": plan.compile_backend, "results": str(work / "results"),
                "threads": int(env.get("OMP_NUM_THREADS", "0"))}
    out: dict[str, Any] = {}
    threads = [threading.Thread(target=lambda i=i, js=js: out.update(W.run_checks(js, settings, work, i, env,
                                                                                   deadline)), daemon=True)
               for i, js in enumerate(lists)]
    if "ddp" in sections:
        ddp = {"device": plan.device, "batch": plan.ddp_batch, "compile": plan.ddp_compile,
               "compile_backend": plan.compile_backend, "result": str(work / "ddp.json")}
        threads.append(threading.Thread(target=lambda: out.update(ddp=W.run_ddp(ddp, work, env, deadline)),
                                        daemon=True))
    print(f"  {len(jobs)} model checks in {len(lists)} worker(s)" + (", a DDP step" if "ddp" in sections else ""),
          flush=True)
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if "ddp" in sections:
        report.record["ddp"] = out.pop("ddp")
    if jobs:
        report.record["specs"] = {"workers": len(lists), "compile_backend": plan.compile_backend,
                                  "rows": [{"job": j["id"], **out[j["id"]]} for j in jobs]}


# -- section 4: throughput against timm --------------------------------------------------------
def compiled_skip(model: str, plan: Plan, record: dict[str, Any], deadline: float) -> tuple[set[str], list[str]]:
    """The implementations whose compiled entrant of `model` is left out of section 4, and why:
    its compile check failed or was not run, or compiling (which took the check's time with
    cold caches, section 4 finding them warm) would not fit in the time left."""
    if "compiled" not in plan.modes:
        return {"vitgraph", "timm"}, []
    specs = record.get("specs")
    if specs is None:
        return set(), []  # not checked first: compile here and see
    checks = {r["impl"]: r for r in specs["rows"] if r["model"] == model and r["mode"] == "compiled"}
    skip = {impl for impl in ("vitgraph", "timm") if checks.get(impl, {}).get("status") != "ok"}
    why = [f"{model}: {impl} compiled left out: its compile check " + ("did not pass" if impl in checks else
           "was not run") for impl in sorted(skip)]
    estimate = sum(r["first_train_step_s"] + r["first_inference_s"] for i, r in checks.items() if i not in skip)
    left = deadline - time.monotonic()
    if estimate and estimate * 0.5 + 30 > left:
        why.append(f"{model}: compiled mode left out: compiling took {estimate:.0f} s in the checks and "
                   f"{left:.0f} s are left for this section")
        skip = {"vitgraph", "timm"}
    return skip, why


def profile_steps(step: Callable[[], Any], steps: int, device: str) -> dict[str, Any]:
    """torch.profiler over `steps` warm training steps: the top kernels by device time (CPU ops by
    self CPU time on a CPU), per step, and how busy the device was (kernel time / wall time)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    cuda = device.startswith("cuda")
    step()
    W.sync(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        W.sync(device)
        wall = time.perf_counter() - t0
    kind, attr = (DeviceType.CUDA, "self_device_time_total") if cuda else (DeviceType.CPU, "self_cpu_time_total")
    events = [e for e in prof.key_averages() if e.device_type == kind and getattr(e, attr) > 0]
    busy_us = sum(getattr(e, attr) for e in events)
    events.sort(key=lambda e: getattr(e, attr), reverse=True)
    top = [{"name": e.key[:120], "calls_per_step": round(e.count / steps, 1),
            "ms_per_step": round(getattr(e, attr) / 1e3 / steps, 3), "share": round(getattr(e, attr) / busy_us, 3)}
           for e in events[:TOP_KERNELS]]
    return {"what": "CUDA kernels" if cuda else "CPU ops", "steps": steps,
            "wall_ms_per_step": round(wall * 1e3 / steps, 3), "busy_ms_per_step": round(busy_us / 1e3 / steps, 3),
            "busy_fraction": round(busy_us / 1e6 / wall, 3),
            "calls_per_step": round(sum(e.count for e in events) / steps, 1), "top": top}


def profile_training(e: Any, steps: int, device: str) -> dict[str, Any]:
    """profile_steps of an entrant's training step (throughput.Entrant), in training mode."""
    e.module.train(True)
    return profile_steps(e.train, steps, device)


def train_ratio(rows: list[dict[str, Any]], model: str) -> dict[str, Any] | None:
    """Our best training img/s (eager or compiled) over timm eager's on `model`, or None without timm."""
    ours = [r for r in rows if r["model"] == model and r["impl"] == "vitgraph"]
    base = [r for r in rows if r["model"] == model and r["impl"] == "timm" and r["mode"] == "eager"]
    if not ours or not base:
        return None
    best = max(ours, key=lambda r: r["train_img_s"]["median"])
    return {"ratio": best["train_img_s"]["median"] / base[0]["train_img_s"]["median"], "mode": best["mode"]}


def throughput_section(plan: Plan, timm: Any, timm_note: str | None, deadline: float, report: Report) -> None:
    from . import throughput as T

    args = argparse.Namespace(batch=plan.throughput_batch, dtype="bf16", warmup=plan.warmup, repeats=plan.repeats,
                              iters=plan.iters, compile_mode=None, compile_backend=plan.compile_backend,
                              modes=list(plan.modes))
    section: dict[str, Any] = {"dtype": "bf16", "warmup": plan.warmup, "repeats": plan.repeats, "iters": plan.iters,
                               "timm_note": timm_note, "rows": [], "notes": [], "profiles": {}, "failed": {}}
    report.record["throughput"] = section
    for name in plan.throughput_models:
        left_out, why = compiled_skip(name, plan, report.record, deadline)
        section["notes"] += why
        for line in why:
            print(f"  note: {line}", flush=True)
        skip = frozenset((impl, "compiled") for impl in left_out)
        contestants: list[Any] = []
        try:
            graph, batch, contestants = T.entrants(name, plan.device, timm, args, skip)
            rows = T.rows(name, graph, batch, contestants, args, plan.device)
            section["rows"] += rows
            ratio = train_ratio(rows, name)
            if ratio is None or ratio["ratio"] < GOAL_RATIO:
                section["profiles"][name] = {f"{e.impl} {e.mode}": profile_training(e, plan.profile_steps,
                                                                                     plan.device)
                                             for e in contestants if e.impl == "vitgraph"}
        except Exception as e:  # noqa: BLE001 - one model's failure must not cost the others' figures
            section["failed"][name] = W.failure(e)
            print(f"  {name}: failed: {section['failed'][name]['error']}", flush=True)
        finally:
            T.release(contestants, plan.device)
        report.save()


# -- section 5: CIFAR-10, vit vs sl_vit at equal time ---------------------------------------------
def _history(run_dir: Path) -> list[dict[str, float]]:
    """Per-epoch test top-1 and epoch time from a run folder's metrics.csv."""
    with open(run_dir / "metrics.csv", newline="") as f:
        return [{"epoch": int(float(r["epoch"])), "top1": round(float(r["top1"]), 2),
                 "epoch_time_s": round(float(r["epoch_time_s"]), 2)} for r in csv.DictReader(f)]


def cifar_section(plan: Plan, pack: Path, work: Path, deadline: float, report: Report) -> None:
    from vitgraph import train

    t0 = time.monotonic()
    os.environ["VITGRAPH_CACHE"] = str(work / "cache")  # the decoded arrays stay in the work folder
    root = datapack.unpack(pack, work / "data", plan.cifar_per_folder)
    train_images = sum(1 for p in (root / "train").rglob("*") if p.is_file())
    base = dict(plan.cifar_recipe_set)
    repeats = train.load_recipe(CIFAR_RECIPE, base).repeats
    section: dict[str, Any] = {"recipe": CIFAR_RECIPE, "recipe_set": base, "train_images": train_images,
                               "images_per_epoch": train_images * repeats, "bf16": True, "compile": False,
                               "unpack_s": round(time.monotonic() - t0, 1), "models": {}}
    report.record["cifar10"] = section
    common = dict(device=plan.device, data_root=str(work / "data"), download=False, progress=False, bf16=True, seed=0)
    for name in CIFAR_MODELS:  # the probe: one pass over the data, no warm-up, to measure img/s
        t = time.monotonic()
        probe = train.run(str(SPECS_DIR / f"{name}.vg"), "cifar10", CIFAR_RECIPE, epochs=1,
                          overrides={**base, "repeats": 1, "warmup_epochs": 0}, out=str(work / f"probe-{name}"),
                          **common)
        section["models"][name] = {"probe_img_s": round(probe["train_img_per_s"], 1),
                                   "probe_s": round(time.monotonic() - t, 1)}
    per_model = min(plan.cifar_max_s, (deadline - time.monotonic()) / len(CIFAR_MODELS) - 10)
    section["budget_s"] = round(max(plan.cifar_min_s, per_model), 1)
    report.save()
    for name in CIFAR_MODELS:
        m = section["models"][name]
        epochs = max(1, int(section["budget_s"] * m["probe_img_s"] // section["images_per_epoch"]))
        sets = {**base, "warmup_epochs": round(epochs / 10, 2)}  # the recipe's 10 of 100 epochs, kept in proportion
        print(f"  cifar10: {name}: {epochs} epoch(s) in a {section['budget_s']:.0f} s budget", flush=True)
        result = train.run(str(SPECS_DIR / f"{name}.vg"), "cifar10", CIFAR_RECIPE, epochs=epochs, overrides=sets,
                           out=str(work / f"run-{name}"), **common)
        m.update({k: result[k] for k in ("top1", "top5", "best_top1", "best_epoch", "epochs", "params")},
                 recipe_set=sets, train_img_s=round(result["train_img_per_s"], 1),
                 train_time_s=round(result["train_time_s"], 1), wall_time_s=round(result["wall_time_s"], 1),
                 spec_hash=result["spec_hash"], history=_history(Path(result["run_dir"])))
        report.save()


# -- goals and markdown ----------------------------------------------------------------------------
def goals(record: dict[str, Any]) -> list[dict[str, str]]:
    """Each goal of the issue with its figure and verdict: met, NOT met, or not measured (why)."""
    out = []
    tp = record.get("throughput")
    for model in GOAL_MODELS:
        goal = f"{model}: torch backend training >= {GOAL_RATIO:g}x timm eager img/s"
        r = train_ratio(tp["rows"], model) if tp else None
        if r is None:
            why = "timm absent" if tp and tp.get("timm_note") else "throughput not run" if not tp else "no figures"
            out.append({"goal": goal, "measured": "-", "verdict": f"not measured ({why})"})
        else:
            out.append({"goal": goal, "measured": f"{r['ratio']:.2f}x ({r['mode']})",
                        "verdict": "met" if r["ratio"] >= GOAL_RATIO else "NOT met"})
    cifar = (record.get("cifar10") or {}).get("models", {})
    goal = "CIFAR-10 at equal time: sl_vit top-1 >= vit top-1"
    if all("top1" in cifar.get(m, {}) for m in CIFAR_MODELS):
        a, b = cifar["sl_vit"]["top1"], cifar["vit"]["top1"]
        out.append({"goal": goal, "measured": f"{a:.2f}% vs {b:.2f}%", "verdict": "met" if a >= b else "NOT met"})
    else:
        out.append({"goal": goal, "measured": "-",
                    "verdict": "not measured" + ("" if "cifar10" in record else " (not run)")})
    specs = record.get("specs")
    if specs:
        ok = sum(r["status"] == "ok" for r in specs["rows"])
        out.append({"goal": "every spec: a compiled bf16 training step", "measured":
                    f"{ok}/{len(specs['rows'])} ok", "verdict": "met" if ok == len(specs["rows"]) else "NOT met"})
    if record.get("ddp"):
        out.append({"goal": "one DDP step through torchrun", "measured": record["ddp"].get("backend") or "-",
                    "verdict": "met" if record["ddp"]["status"] == "ok" else "NOT met"})
    return out


def _f(value: Any, fmt: str = "{:.2f}") -> str:
    return "-" if value is None else fmt.format(value)


def _specs_md(specs: dict[str, Any]) -> list[str]:
    workers = f"{specs['workers']} worker process" + ("es" if specs["workers"] != 1 else "")
    lines = [f"## Every spec: one bf16 training step ({workers}, torch.compile backend {specs['compile_backend']})", "",
             "The timed models (section 4's, at its batch) also run one inference forward, compiled against eager.",
             "",
             "| model | impl | batch | mode | status | loss | first train step (s) | first inference (s) | graphs | "
             "graph breaks | compiled vs eager | peak GiB | params without grad |",
             "|---|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in specs["rows"]:
        diff = r.get("max_rel_diff_vs_eager")
        flag = " (look)" if diff is not None and diff > PARITY_FLAG else ""
        status = r["status"] + (f": {r['error']}" if r.get("error") else "")
        lines.append(f"| {r['model']} | {r['impl']} | {r['batch']} | {r.get('mode', '-')} | {status} | "
                     f"{_f(r.get('loss'), '{:.3f}')} | {_f(r.get('first_train_step_s'), '{}')} | "
                     f"{_f(r.get('first_inference_s'), '{}')} | {_f(r.get('graphs'), '{}')} | "
                     f"{_f(r.get('graph_breaks'), '{}')} | {_f(diff, '{:.1e}')}{flag} | "
                     f"{_f(r.get('peak_gib'), '{}')} | {_f(r.get('params_without_grad'), '{}')} |")
    return lines + [""]


def _ddp_md(d: dict[str, Any]) -> list[str]:
    lines = ["## DDP through torchrun, one process", "", f"{d.get('launcher', 'torchrun')}: **{d['status']}**" +
             (f" ({d['error']})" if d.get("error") else "") + ".", ""]
    if d["status"] == "ok":
        lines += [f"Backend {d['backend']}" + (f" (NCCL {d['nccl']})" if d.get("nccl") else "") +
                  f", world size {d['world_size']}; all-reduce ok; loss {d['loss']:.4f} (single-process copy "
                  f"{d['single_process_loss']:.4f}); gradients vs the copy: max relative difference "
                  f"{d['grad_max_rel_diff']:.1e}; fused AdamW: {d['fused_adamw']}" +
                  (f"; compiled DDP step loss {d['compiled_loss']:.4f} in {d['compiled_step_s']} s"
                   if "compiled_loss" in d else "") + f"; {d['seconds']} s in all.", ""]
    return lines


def _throughput_md(tp: dict[str, Any]) -> list[str]:
    from .throughput import table

    lines = ["## Throughput: torch backend vs timm", "",
             f"{tp['dtype']} autocast; img/s median (quartiles) of {tp['repeats']} interleaved rounds of {tp['iters']} "
             f"steps after {tp['warmup']} warm-up repeats; a training step is forward, cross-entropy, backward and "
             "AdamW (fused on CUDA; the same for both implementations); inference is a forward in inference mode.",
             ""]
    remarks = [f"Note: {n}." for n in ([tp["timm_note"]] if tp.get("timm_note") else []) + tp["notes"]]
    remarks += [f"Failed: {m}: {f['error']}" for m, f in tp["failed"].items()]
    lines += [*remarks, ""] * bool(remarks) + table(tp["rows"]) + [""]
    for model, profiles in tp["profiles"].items():
        for entrant, p in profiles.items():
            lines += [f"### Where the time goes: {model}, {entrant} training step ({p['steps']} profiled steps)", "",
                      f"{p['wall_ms_per_step']} ms wall per step, {p['busy_ms_per_step']} ms of {p['what']} "
                      f"({p['busy_fraction']:.0%} busy), {p['calls_per_step']:.0f} {p['what']} per step "
                      "(the profiler adds its own overhead to the wall time).", "",
                      "| name | calls/step | ms/step | share |", "|---|---:|---:|---:|"]
            lines += [f"| `{k['name']}` | {k['calls_per_step']} | {k['ms_per_step']} | {k['share']:.1%} |"
                      for k in p["top"]] + [""]
    return lines


def _cifar_md(c: dict[str, Any]) -> list[str]:
    lines = ["## CIFAR-10: vit vs sl_vit at equal training time", "",
             f"Recipe {c['recipe']} (augmentation on the device, bf16, eager) with "
             f"{' '.join(f'{k}={v}' for k, v in c['recipe_set'].items()) or 'no'} changes but the epochs and a "
             f"warm-up of 10% of them; {c['train_images']:,} training images, "
             f"{c['images_per_epoch']:,} per epoch (repeated augmentation); a budget of "
             f"{_f(c.get('budget_s'), '{}')} s of training each, fitted in whole epochs from a one-pass probe. "
             "Test top-1 of the last epoch; one seed.", "",
             "| model | probe img/s | epochs | train time (s) | wall time (s) | img/s | top-1 | top-5 "
             "| best top-1 (epoch) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, m in c["models"].items():
        lines.append(f"| {name} | {m['probe_img_s']:,.0f} | {m.get('epochs', '-')} | "
                     f"{_f(m.get('train_time_s'), '{}')} | {_f(m.get('wall_time_s'), '{}')} | "
                     f"{_f(m.get('train_img_s'), '{:,.0f}')} | "
                     f"{_f(m.get('top1'))} | {_f(m.get('top5'))} | {_f(m.get('best_top1'))} "
                     f"({m.get('best_epoch', '-')}) |")
    return lines + [""]


def markdown(record: dict[str, Any]) -> str:
    env = record["environment"]
    gpu = env.get("cuda")
    where = (f"{gpu['name']} (compute {gpu['capability']}, {gpu['memory_gib']} GiB, {gpu['multiprocessors']} SMs), "
             f"driver {gpu['driver']}, CUDA {gpu['cuda_runtime']}, cuDNN {gpu['cudnn']}, NCCL {gpu['nccl']}") if gpu \
        else f"{env['cpu']} (dry run: tiny sizes, no figure here is a GPU figure)"
    v = env["versions"]
    lines = [f"# GPU check: {gpu['name'] if gpu else 'dry run on the CPU'}", "", f"{where}; {env['cpu_count']} CPUs, "
             f"load {env['load_avg_1min']}. torch {v.get('torch')}, triton {v.get('triton')}, timm {v.get('timm')}, "
             f"python {v.get('python')}; commit {env.get('git_commit') or 'unknown (no .git)'}, source digest "
             f"{env['source_digest']}; {env['date']}; {_f(record.get('seconds'), '{}')} s in all.", "",
             "## Goals", "", "| goal | measured | verdict |", "|---|---|---|"]
    lines += [f"| {g['goal']} | {g['measured']} | {g['verdict']} |" for g in record.get("goals", [])] + [""]
    if record.get("dry_run"):
        lines += ["A dry run: its verdicts show that the script works, not whether the goals are met.", ""]
    for key, render in (("specs", _specs_md), ("ddp", _ddp_md), ("throughput", _throughput_md), ("cifar10", _cifar_md)):
        if key in record:
            lines += render(record[key])
    for name, failure in record.get("failed_sections", {}).items():
        lines += [f"## {name}: failed", "", f"{failure['error']}", ""]
    return "\n".join(lines)


# -- the command -------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m vitgraph.benchmarks.gpu_check", description=__doc__.split("\n\n")[0])
    p.add_argument("outdir", nargs="?", type=Path, help="folder for the JSON and markdown results")
    p.add_argument("--dry-run", action="store_true", help="run everything on the CPU at tiny sizes (a rehearsal)")
    p.add_argument("--pack", type=Path, default=datapack.DEFAULT_PACK,
                   help=f"the packed CIFAR-10 (default {datapack.DEFAULT_PACK})")
    p.add_argument("--minutes", type=float, help="wall-clock budget of the whole run (default 8.5; dry run 10)")
    p.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS),
                   help="what to run (default all)")
    p.add_argument("--workers", type=int, help="parallel check processes (default: half the CPUs, at most 8)")
    return p.parse_args(argv)


def preflight(args: argparse.Namespace, plan: Plan) -> None:
    """Bad input stops the run before anything is measured: one message, nothing written."""
    import torch

    if args.outdir is None:
        raise UserError("give the folder to write the results in: python -m vitgraph.benchmarks.gpu_check OUTDIR",
                        status=2)
    if plan.device == "cuda" and not torch.cuda.is_available():
        raise UserError("torch sees no GPU here", hint="run it on a GPU machine, or rehearse it with --dry-run",
                        status=2)
    if plan.minutes <= 0 or plan.workers < 0:
        raise UserError("--minutes must be positive and --workers not negative", status=2)
    if "cifar10" in args.sections:
        datapack.read_index(args.pack)
    try:
        args.outdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create {args.outdir}: {e.strerror or e}", status=2) from None


def deadlines(start: float, seconds: float, wanted: set[str]) -> dict[str, float]:
    """When each asked-for step must end: the run's seconds shared out by SHARES among them, in order
    (a step that ends early leaves its time to the next)."""
    asked = [name for name in SHARES if (name == "checks" and {"specs", "ddp"} & wanted) or name in wanted]
    total = sum(SHARES[name] for name in asked)
    ends, used = {}, 0.0
    for name in asked:
        used += SHARES[name] / total
        ends[name] = start + seconds * used
    return ends


def run(args: argparse.Namespace) -> int:
    import torch

    from .throughput import import_timm

    plan = DRY_RUN if args.dry_run else GPU
    plan = replace(plan, minutes=args.minutes if args.minutes is not None else plan.minutes,
                   workers=args.workers if args.workers is not None else plan.workers)
    preflight(args, plan)
    start = time.monotonic()
    total = plan.minutes * 60
    W.configure_torch()
    timm, timm_note = import_timm()
    env = environment(plan.device)
    kind = "dry-run" if args.dry_run else "cuda"
    stem = f"gpu_check_{kind}_{slug(env['cuda']['name'] if 'cuda' in env else env['cpu'])}"
    report = Report(args.outdir, stem, {"benchmark": "gpu_check", "dry_run": args.dry_run, "environment": env,
                                        "plan": asdict(plan), "sections": list(args.sections),
                                        "failed_sections": {}, "section_seconds": {}})
    gpu = env.get("cuda")
    where = f"{gpu['name']}, driver {gpu['driver']}, CUDA {gpu['cuda_runtime']}" if gpu else env["cpu"]
    print(f"{stem}: {where}, torch {torch.__version__}, timm {env['versions']['timm'] or 'absent'}; "
          f"a {total / 60:.1f}-minute budget", flush=True)
    if timm_note:
        print(f"note: {timm_note}", flush=True)
    report.save()
    with tempfile.TemporaryDirectory(prefix="vitgraph-gpu-check-") as tmp:
        work = Path(tmp)
        wanted = set(args.sections)
        ends = deadlines(start, total - END_MARGIN_S, wanted)
        steps: list[tuple[str, Callable[[], None]]] = [
            ("checks", lambda: checks_section(plan, wanted, timm is not None, work, ends["checks"], report)),
            ("throughput", lambda: throughput_section(plan, timm, timm_note, ends["throughput"], report)),
            ("cifar10", lambda: cifar_section(plan, args.pack, work, ends["cifar10"], report))]
        for name, step in steps:
            if name not in ends:
                continue
            began = time.monotonic()
            print(f"{name} ({began - start:.0f} s in)", flush=True)
            try:
                step()
            except Exception as e:  # noqa: BLE001 - a broken section must not cost the others
                report.record["failed_sections"][name] = W.failure(e)
                print(f"{name}: failed: {report.record['failed_sections'][name]['error']}", flush=True)
            report.record["section_seconds"][name] = round(time.monotonic() - began, 1)
            report.record["seconds"] = round(time.monotonic() - start, 1)
            report.save()
    print(markdown(report.record))
    print(f"wrote {report.json_path} and {report.md_path.name}", flush=True)
    return 1 if failures(report.record) else 0


def failures(record: dict[str, Any]) -> list[str]:
    """What did not work: failed sections, spec checks, models and the DDP step."""
    out = list(record["failed_sections"])
    out += [r["job"] for r in record.get("specs", {}).get("rows", []) if r["status"] != "ok"]
    out += list(record.get("throughput", {}).get("failed", {}))
    if record.get("ddp", {}).get("status", "ok") != "ok":
        out.append("ddp")
    return out


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see vitgraph/cli.py: idle threads sleep on a shared CPU
    args = parse_args(argv)
    try:
        return run(args)
    except UserError as e:
        print(e.text(), file=sys.stderr)
        return e.status
    except KeyboardInterrupt:
        print("interrupted; the results written so far are kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
