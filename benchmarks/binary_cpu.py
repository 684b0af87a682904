"""Binary models deployed as binary, on this CPU (issue 14). binaryvit and
binary_deit_small, with deit_small as the full-precision reference, at their spec sizes
(224 px, 1000 classes), each run as

  onnx fp32-folded   vitgraph.to_onnx(binary=False): binary weights folded to float32
                     +-scale, float matmuls (the export before the binary deployment);
  onnx deployed      vitgraph.to_onnx(): 1-bit weights, integer matmuls, the binary
                     passes (binary specs only; deit_small has nothing binary);
  torch eager        the torch backend's module, inference_mode;

at batch 1 (latency) and batch 16 (throughput), with 1 and 2 threads, timed in one
process: for each thread count and batch, `--runs` runs of interleaved rounds in which
every entrant of every model makes one call, in an order rotated every round, so that
the load of the other processes on this shared machine falls on all alike. Each figure
is the median over a run's rounds; the table shows the median over runs and every run's
value. Also: the file size and bits per parameter of each ONNX model, its peak memory
(each entrant loaded and run once at each batch in a child process: peak resident set
above the child's own after imports), and where the time goes (onnxruntime's profiler:
the top node types by share of kernel time), and the step ladder: the first binary
model exported with the binary passes added one at a time (backends/onnx_passes/:
fast_prelu, repeat_shortcut, sink_shifts, binary_matmul, pack_binary), timed interleaved
with the most threads. All entrants get the same weights (the spec's initialisation,
seed 0) and images; their outputs are compared before timing.

    python -m vitgraph.benchmarks.binary_cpu [--specs binaryvit binary_deit_small deit_small]
        [--threads 1 2] [--batch 1 16] [--runs 3] [--rounds 15 3] [--set image=... patch=...]
        [--no-memory] [--no-ladder] [--out benchmarks/results]

Writes binary_cpu_<cpu>.json and .md under --out.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from vitgraph.benchmarks.results import cpu_info, git_commit, library_versions

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SPECS = ("binaryvit", "binary_deit_small", "deit_small")
FP32, DEPLOYED, EAGER = "onnx fp32-folded", "onnx deployed", "torch eager"
TOP_NODE_TYPES = 6


@dataclass(frozen=True)
class Entrant:
    """One way of running one model: an ONNX file (fp32-folded or deployed) or torch eager."""

    model: str                 # the graph's name
    system: str
    path: Path | None          # the ONNX file; None for torch eager
    params: int
    overrides: tuple[tuple[str, Any], ...]
    spec: str                  # a spec name under specs/ or a .vg file

    @property
    def name(self) -> str:
        return f"{self.model} / {self.system}"


def spec_path(spec: str) -> Path:
    """A spec name under specs/, or a .vg file."""
    return Path(spec) if spec.endswith(".vg") else ROOT / "specs" / f"{spec}.vg"


def prepare(specs: list[str], overrides: dict[str, Any], folder: Path) -> list[Entrant]:
    """Export every model's ONNX files into `folder` (same weights for all entrants)."""
    import onnx
    import torch

    import vitgraph
    from vitgraph.backends.onnx_backend import has_binary_weights

    out = []
    for spec in specs:
        graph = vitgraph.compile(spec_path(spec), **overrides)
        state = vitgraph.to_torch(graph, generator=torch.Generator().manual_seed(0)).state_dict()
        params, frozen = vitgraph.count(graph).total.params, tuple(sorted(overrides.items()))
        forms = [(FP32, False)] + ([(DEPLOYED, True)] if has_binary_weights(graph) else [])
        for system, binary in forms:
            path = folder / f"{graph.name}_{'deployed' if binary else 'fp32'}.onnx"
            onnx.save(vitgraph.to_onnx(graph, state, binary=binary), path)
            out.append(Entrant(graph.name, system, path, params, frozen, spec))
        out.append(Entrant(graph.name, EAGER, None, params, frozen, spec))
    return out


def load(entrant: Entrant, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    """images -> logits for an entrant, with `threads` intra-op threads."""
    import torch

    import vitgraph
    from vitgraph.backends.onnx_backend import make_session

    if entrant.path is not None:
        session = make_session(entrant.path, threads)
        return lambda x: session.run(None, {"input": x})[0]
    torch.set_num_threads(threads)
    graph = vitgraph.compile(spec_path(entrant.spec), **dict(entrant.overrides))
    module = vitgraph.to_torch(graph, generator=torch.Generator().manual_seed(0)).eval()

    def eager(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(x)).numpy()

    return eager


def interleaved(calls: dict[str, Callable[[], Any]], rounds: int) -> dict[str, dict[str, list[float]]]:
    """Wall-clock and process CPU seconds of each call, `rounds` rounds of one call each
    in an order rotated every round (a short pause before each call lets the previous
    entrant's worker threads go idle)."""
    names = list(calls)
    times: dict[str, dict[str, list[float]]] = {n: {"wall": [], "cpu": []} for n in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            time.sleep(0.01)
            w0, c0 = time.perf_counter(), time.process_time()
            calls[name]()
            times[name]["cpu"].append(time.process_time() - c0)
            times[name]["wall"].append(time.perf_counter() - w0)
    return times


def images(image: tuple[int, int, int], batch: int) -> np.ndarray:
    return np.random.default_rng(batch).standard_normal((batch, *image), dtype=np.float32)


def agreement(fns: dict[Entrant, Callable[[np.ndarray], np.ndarray]],
              image_of: dict[str, tuple[int, int, int]]) -> dict[str, Any]:
    """Per model, each entrant's max |logits - torch eager's| / max |torch eager's| and
    whether the top-1 classes agree, on two images."""
    xs = {m: images(image, 2) for m, image in image_of.items()}
    out: dict[str, Any] = {}
    eager = {e.model: fn(xs[e.model]) for e, fn in fns.items() if e.system == EAGER}
    for e, fn in fns.items():
        if e.system != EAGER:
            got, want = fn(xs[e.model]), eager[e.model]
            out[e.name] = {"relative_diff": float(np.abs(got - want).max() / np.abs(want).max()),
                           "same_top1": bool((got.argmax(1) == want.argmax(1)).all())}
    return out


def profile(entrant: Entrant, threads: int, batch: int, image: tuple[int, int, int], runs: int = 3
            ) -> list[tuple[str, float]]:
    """onnxruntime's profiler over `runs` calls: the node types by share of kernel time."""
    import onnxruntime as ort

    from vitgraph.backends.onnx_backend import SLOW_FUSIONS

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.enable_profiling = True
    with tempfile.TemporaryDirectory() as tmp:
        opts.profile_file_prefix = str(Path(tmp) / "profile")
        session = ort.InferenceSession(str(entrant.path), opts, providers=["CPUExecutionProvider"],
                                       disabled_optimizers=list(SLOW_FUSIONS))
        x = images(image, batch)
        for _ in range(runs):
            session.run(None, {"input": x})
        events = json.loads(Path(session.end_profiling()).read_text())
    by_type: dict[str, float] = defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            by_type[e["args"]["op_name"]] += e["dur"]
    total = sum(by_type.values()) or 1.0
    return [(k, v / total) for k, v in sorted(by_type.items(), key=lambda kv: -kv[1])]


def peak_memory(entrant: Entrant, threads: int, batch: int) -> float:
    """MiB of peak resident memory that loading and running the entrant once at `batch`
    adds to a fresh process (its own baseline after imports), measured in a child."""
    spec = json.dumps({"model": entrant.model, "system": entrant.system,
                       "path": None if entrant.path is None else str(entrant.path), "params": entrant.params,
                       "overrides": list(entrant.overrides), "spec": entrant.spec, "threads": threads,
                       "batch": batch})
    done = subprocess.run([sys.executable, "-m", "vitgraph.benchmarks.binary_cpu", "--child", spec],
                          capture_output=True, text=True, timeout=900, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _child(spec: str) -> int:
    """Load one entrant, run it once, print the peak RSS above the baseline (MiB)."""
    import onnxruntime  # noqa: F401 - imported before the baseline, as by the parent
    import torch  # noqa: F401

    import vitgraph

    s = json.loads(spec)
    e = Entrant(s["model"], s["system"], None if s["path"] is None else Path(s["path"]), s["params"],
                tuple((k, v) for k, v in s["overrides"]), s["spec"])
    image = vitgraph.compile(spec_path(e.spec), **dict(e.overrides)).image
    x = images(image, s["batch"])
    base = _status_kib("VmRSS")
    load(e, s["threads"])(x)
    print((_status_kib("VmHWM") - base) / 1024)
    return 0


def measure(entrants: list[Entrant], threads: int, batch: int, runs: int, rounds: int,
            image_of: dict[str, tuple[int, int, int]]) -> dict[str, Any]:
    """Every entrant timed interleaved with all the others: per run, the median seconds
    per call (wall and process CPU)."""
    fns = {e: load(e, threads) for e in entrants}
    xs = {m: images(image, batch) for m, image in image_of.items()}
    calls = {e.name: (lambda fn=fn, x=xs[e.model]: fn(x)) for e, fn in fns.items()}
    for call in calls.values():  # warm-up
        call()
    load_before = os.getloadavg()
    per_run = []
    for _ in range(runs):
        t = interleaved(calls, rounds)
        per_run.append({n: {"wall": float(np.median(v["wall"])), "cpu": float(np.median(v["cpu"]))}
                        for n, v in t.items()})
    return {"threads": threads, "batch": batch, "rounds": rounds, "runs": per_run,
            "load_average": {"before": list(load_before), "after": list(os.getloadavg())}}


def ladder(spec: str, overrides: dict[str, Any], folder: Path, threads: int, batches: list[int],
           rounds: list[int]) -> list[dict[str, Any]]:
    """The model exported with the binary passes added one at a time, each step timed
    interleaved with the others: per batch, the median seconds per call."""
    import onnx
    import torch

    import vitgraph
    from vitgraph.backends.onnx_passes import BINARY, pass_names

    graph = vitgraph.compile(spec_path(spec), **overrides)
    state = vitgraph.to_torch(graph, generator=torch.Generator().manual_seed(0)).state_dict()
    base = pass_names(fused=True, binary=False)
    steps = {"fp32-folded": base}
    for i, name in enumerate(BINARY, 1):
        steps[f"+ {name}"] = base[:2] + BINARY[:i] + base[2:]
    entrants = []
    for k, names in steps.items():
        path = folder / f"ladder_{len(entrants)}.onnx"
        onnx.save(vitgraph.to_onnx(graph, state, passes=names), path)
        entrants.append(Entrant(graph.name, k, path, 0, tuple(sorted(overrides.items())), spec))
    out = []
    for batch, n in zip(batches, rounds):
        fns = {e.system: load(e, threads) for e in entrants}
        x = images(graph.image, batch)
        for fn in fns.values():
            fn(x)
        t = interleaved({k: (lambda fn=fn: fn(x)) for k, fn in fns.items()}, n)
        out.append({"batch": batch, "threads": threads, "rounds": n,
                    "seconds": {k: float(np.median(v["wall"])) for k, v in t.items()}})
    return out


def speedups(block: dict[str, Any], model: str) -> list[float]:
    """Per run: the fp32-folded ONNX's median time / the deployed one's (> 1: deployed faster)."""
    return [r[f"{model} / {FP32}"]["wall"] / r[f"{model} / {DEPLOYED}"]["wall"] for r in block["runs"]]


# -- reporting --------------------------------------------------------------------------------
def _cell(values: list[float], fmt: str) -> str:
    return f"{format(float(np.median(values)), fmt)} ({', '.join(format(v, fmt) for v in values)})"


def tables(data: dict[str, Any]) -> list[str]:
    entrants = data["entrants"]
    lines = []
    for block in data["timings"]:
        t, b = block["threads"], block["batch"]
        load = block["load_average"]
        lines += [f"### {t} thread{'s' if t > 1 else ''}, batch {b}", "",
                  f"Load average (1 min) {load['before'][0]:.2f} before, {load['after'][0]:.2f} after; "
                  f"{len(block['runs'])} runs of {block['rounds']} interleaved rounds.", "",
                  "| model | system | " + ("latency p50 (ms)" if b == 1 else "img/s") +
                  " (median of runs; each run) | deployed vs fp32-folded | file (MB) | bits/param | "
                  f"peak memory (MiB) |", "|---|---|---:|---:|---:|---:|---:|"]
        for e in entrants:
            secs = [r[e["name"]]["wall"] for r in block["runs"]]
            figure = _cell([1e3 * s for s in secs], ".1f") if b == 1 else _cell([b / s for s in secs], ".1f")
            ratio = _cell(speedups(block, e["model"]), ".2f") + "x" if e["system"] == DEPLOYED else "-"
            size = f"{e['bytes'] / 1e6:.1f}" if e["bytes"] else "-"
            bits = f"{8 * e['bytes'] / e['params']:.2f}" if e["bytes"] else "-"
            mem = e.get("peak_memory_mib", {}).get(str(b))
            lines.append(f"| {e['model']} | {e['system']} | {figure} | {ratio} | {size} | {bits} | "
                         f"{'-' if mem is None else f'{mem:.0f}'} |")
        lines.append("")
    return lines


def ladder_table(data: dict[str, Any]) -> list[str]:
    if not data.get("ladder"):
        return []
    blocks = data["ladder"]
    lines = ["## Step by step", "",
             f"{data['ladder_model']} exported with the binary passes added one at a time, {blocks[0]['threads']} "
             "threads, interleaved (one run): median time per call, and the fp32-folded export's / the step's.", "",
             "| step | " + " | ".join(f"batch {b['batch']} (ms) | vs fp32-folded" for b in blocks) + " |",
             "|---|" + "---:|---:|" * len(blocks)]
    for step in blocks[0]["seconds"]:
        cells = [f"{1e3 * b['seconds'][step]:.1f} | {b['seconds']['fp32-folded'] / b['seconds'][step]:.2f}x"
                 for b in blocks]
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    return lines + [""]


def profiles(data: dict[str, Any]) -> list[str]:
    lines = ["## Where the time goes", "",
             f"onnxruntime's profiler, {data['profile_threads']} threads, 3 calls: the top node types by share of "
             "kernel time.", "", "| model | system | batch | top node types |", "|---|---|---:|---|"]
    for p in data["profiles"]:
        top = ", ".join(f"{k} {100 * v:.0f}%" for k, v in p["top"][:TOP_NODE_TYPES])
        lines.append(f"| {p['model']} | {p['system']} | {p['batch']} | {top} |")
    return lines + [""]


def goals(data: dict[str, Any]) -> list[str]:
    """The issue's done-when figures, as measured."""
    sizes = {(e["model"], e["system"]): e["bytes"] for e in data["entrants"] if e["bytes"]}
    out = []
    if ("binaryvit", DEPLOYED) in sizes:
        mb = sizes["binaryvit", DEPLOYED] / 1e6
        out.append(f"binaryvit deployed: {mb:.2f} MB (fp32-folded {sizes['binaryvit', FP32] / 1e6:.1f} MB) "
                   f"[goal <= 10 MB: {'met' if mb <= 10 else 'NOT met'}]")
    if ("binary_deit_small", DEPLOYED) in sizes:
        ratio = sizes["binary_deit_small", FP32] / sizes["binary_deit_small", DEPLOYED]
        out.append(f"binary_deit_small deployed: 1/{ratio:.1f} of fp32-folded "
                   f"[goal <= 1/8: {'met' if ratio >= 8 else 'NOT met'}]")
    for block in data["timings"]:
        if any(e["model"] == "binaryvit" and e["system"] == DEPLOYED for e in data["entrants"]):
            s = speedups(block, "binaryvit")
            m = float(np.median(s))
            out.append(f"binaryvit deployed vs fp32-folded, {block['threads']} thread(s), batch {block['batch']}: "
                       f"{m:.2f}x (runs {', '.join(f'{v:.2f}' for v in s)}) [goal >= 1.5: "
                       f"{'met' if m >= 1.5 else 'NOT met'}]")
    return out


def markdown(data: dict[str, Any]) -> str:
    env = data["environment"]
    lines = [f"# Binary deployment on the CPU: {env['cpu']}", "",
             f"CPU {env['cpu']} (family/model/stepping {env.get('cpu_family_model_stepping', '?')}; "
             f"{env.get('cpu_vector_flags', '')}), {env['logical_cpus']} logical CPUs shared with other processes "
             f"(load averages below; at the start: {env['load_at_start'][0]:.2f}). torch {env['torch']}, "
             f"onnxruntime {env['onnxruntime']}, onnx {env['onnx']}, python {env['python']}; vitgraph commit "
             f"{env['git_commit']}; {env['date']}; {data['seconds']:.0f} s.",
             f"Models at {', '.join(f'{m} {i[1]} px' for m, i in data['images'].items())}; the spec's "
             "initialisation (seed 0) for every entrant. Wall-clock time; latency = batch 1, throughput = batch "
             "/ median seconds per call. `deployed vs fp32-folded` = the fp32-folded ONNX's time / the deployed "
             "one's. Peak memory: the resident set that loading and running the entrant once adds to a fresh "
             "process (in a child), at that batch.", "",
             "## Goals (issue 14)", ""] + [f"- {g}" for g in goals(data)] + ["", "## Agreement with torch eager", "",
                                                                              "| entrant | max rel. diff | same top-1 |",
                                                                              "|---|---:|---|"]
    for name, a in data["agreement"].items():
        lines.append(f"| {name} | {a['relative_diff']:.1e} | {a['same_top1']} |")
    lines += ["", "## Timings", ""] + tables(data) + ladder_table(data) + profiles(data)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vitgraph.benchmarks.binary_cpu",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--specs", nargs="+", default=list(DEFAULT_SPECS), help="spec names under specs/, or .vg files")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts (default 1 2)")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 16], help="batch sizes (default 1 16)")
    p.add_argument("--runs", type=int, default=3, help="interleaved runs per thread count and batch (default 3)")
    p.add_argument("--rounds", type=int, nargs="+", default=[15, 3],
                   help="rounds per run, one per batch size (default 15 3)")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="spec overrides for every model")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory children")
    p.add_argument("--no-ladder", action="store_true", help="skip the step ladder of the binary passes")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="results folder")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return _child(args.child)
    if len(args.rounds) != len(args.batch):
        p.error(f"--rounds needs one value per batch size ({len(args.batch)})")
    from vitgraph.cli import parse_overrides

    overrides = parse_overrides(args.set)
    t0 = time.time()
    env = {**cpu_info(), "logical_cpus": os.cpu_count(), **library_versions(), "git_commit": git_commit() or "unknown",
           "date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "load_at_start": list(os.getloadavg())}
    print(f"{env['cpu']}, load {env['load_at_start'][0]:.2f}, commit {env['git_commit']}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        entrants = prepare(args.specs, overrides, Path(tmp))
        import vitgraph

        image_of = {e.model: vitgraph.compile(spec_path(e.spec), **overrides).image for e in entrants}
        data: dict[str, Any] = {"environment": env, "images": {m: list(i) for m, i in image_of.items()},
                                "agreement": agreement({e: load(e, max(args.threads)) for e in entrants}, image_of),
                                "entrants": [], "timings": [], "profiles": [], "profile_threads": max(args.threads)}
        for e in entrants:
            row = {"name": e.name, "model": e.model, "system": e.system, "params": e.params,
                   "bytes": e.path.stat().st_size if e.path else None}
            if not args.no_memory:
                row["peak_memory_mib"] = {str(b): peak_memory(e, max(args.threads), b) for b in args.batch}
            data["entrants"].append(row)
            print(f"{e.name}: {row['bytes'] or 0:,} bytes, peak memory {row.get('peak_memory_mib', '-')}", flush=True)
        for threads in args.threads:
            for batch, rounds in zip(args.batch, args.rounds):
                block = measure(entrants, threads, batch, args.runs, rounds, image_of)
                data["timings"].append(block)
                for e in entrants:
                    secs = [r[e.name]["wall"] for r in block["runs"]]
                    print(f"t{threads} b{batch} {e.name:40s} {1e3 * float(np.median(secs)):9.1f} ms/call "
                          f"(runs {', '.join(f'{1e3 * s:.1f}' for s in secs)})", flush=True)
        binary = [e for e in entrants if e.system == DEPLOYED]
        if binary and not args.no_ladder:
            data["ladder_model"] = binary[0].model
            data["ladder"] = ladder(binary[0].spec, overrides, Path(tmp), max(args.threads), args.batch, args.rounds)
            print("\n".join(ladder_table(data)), flush=True)
        for e in (e for e in entrants if e.path is not None):
            for batch in args.batch:
                top = profile(e, max(args.threads), batch, image_of[e.model])
                data["profiles"].append({"model": e.model, "system": e.system, "batch": batch, "top": top[:10]})
    data["seconds"] = time.time() - t0
    for line in goals(data):
        print(line)
    slug = re.sub(r"[^a-z0-9]+", "-", env["cpu"].lower()).strip("-")
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"binary_cpu_{slug}"
    stem.with_suffix(".json").write_text(json.dumps(data, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(data))
    print(f"wrote {stem}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
