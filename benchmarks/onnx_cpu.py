"""CPU inference speed of the ONNX backend against the alternatives, in one run on one
machine with one thread count:

  (a) torch eager: the torch backend's module (vitgraph.to_torch), inference_mode;
  (b) ours: vitgraph.to_onnx (lowered from the IR) in onnxruntime;
  (c) torch.onnx.export of the same torch module (the dynamo exporter, and the TorchScript
      one, dynamo=False) in onnxruntime.

All onnxruntime sessions come from make_session (same options and threads); all systems
get the same weights and the same images, and their outputs are checked against torch's
before timing. Measured: batch-1 latency (p50, p90) and batch-B throughput, for vit
(32 px), deit_tiny and deit_small (224 px) by default. Timing is interleaved: in each
round every system makes one call, in a rotated order, after warm-up, so that load from
other processes falls on all systems alike; the load average and the CPU time of each
call are recorded beside the wall-clock time.

    python -m vitgraph.benchmarks.onnx_cpu [--specs vit deit_tiny deit_small] [--batch 64]
        [--threads N] [--rounds 8] [--latency-rounds 60] [--repeat 1] [--out benchmarks/results]

Writes onnx_cpu_<cpu>_<threads>t_b<batch>.json and .md under --out.
"""
from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import platform
import re
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

import vitgraph
from vitgraph.benchmarks.results import cpu_info, git_commit, library_versions

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SPECS = ("vit", "deit_tiny", "deit_small")
SYSTEMS = ("torch eager", "vitgraph onnx", "torch.onnx dynamo", "torch.onnx torchscript")
OURS = "vitgraph onnx"


# -- the machine and the code -----------------------------------------------------------
def environment(threads: int) -> dict[str, Any]:
    from vitgraph.backends.onnx_backend import physical_cores

    return {**cpu_info(), "physical_cores": physical_cores(), "logical_cpus": os.cpu_count(),
            "threads": threads, **library_versions(), "git_commit": git_commit() or "unknown",
            "date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "platform": platform.platform()}


# -- the systems ---------------------------------------------------------------------------
def torch_export(module: Any, image: tuple[int, int, int], dynamo: bool) -> Any:
    """torch.onnx.export of `module` with a dynamic batch axis -> onnx.ModelProto."""
    import onnx
    import torch

    example = (torch.randn(1, *image),)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            batch = torch.export.Dim("batch", min=1, max=4096)
            program = torch.onnx.export(module, example, dynamo=True, input_names=["input"], output_names=["logits"],
                                        dynamic_shapes=({0: batch},), verbose=False)
            return program.model_proto
        buf = io.BytesIO()
        torch.onnx.export(module, example, buf, dynamo=False, input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17)
        return onnx.load_from_string(buf.getvalue())


def build_systems(spec: str, threads: int) -> tuple[vitgraph.Graph, dict[str, Callable[[np.ndarray], np.ndarray]]]:
    """The spec at its real size and one callable per system, images -> logits."""
    import torch

    from vitgraph.backends.onnx_backend import make_session

    graph = vitgraph.compile(ROOT / "specs" / f"{spec}.vg")
    module = vitgraph.to_torch(graph).eval()

    def eager(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(x)).numpy()

    def onnxruntime_call(model: Any) -> Callable[[np.ndarray], np.ndarray]:
        session = make_session(model, threads)
        name = session.get_inputs()[0].name
        return lambda x: session.run(None, {name: x})[0]

    systems = {
        "torch eager": eager,
        OURS: onnxruntime_call(vitgraph.to_onnx(graph, module.state_dict())),
        "torch.onnx dynamo": onnxruntime_call(torch_export(module, graph.image, dynamo=True)),
        "torch.onnx torchscript": onnxruntime_call(torch_export(module, graph.image, dynamo=False)),
    }
    return graph, systems


# -- timing ---------------------------------------------------------------------------------
def interleaved(systems: dict[str, Callable[[np.ndarray], Any]], x: np.ndarray, warmup: int,
                rounds: int) -> dict[str, dict[str, list[float]]]:
    """Wall-clock and process CPU seconds of each call: `warmup` calls per system, then
    `rounds` rounds of one call per system, in an order rotated every round, with a short
    pause before each call so that the previous system's worker threads are idle. Load
    from other processes thus falls on all systems alike; CPU time (all threads of this
    process) is less sensitive to it than wall-clock time."""
    names = list(systems)
    for name in names:
        for _ in range(warmup):
            systems[name](x)
    times: dict[str, dict[str, list[float]]] = {name: {"wall": [], "cpu": []} for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            time.sleep(0.01)
            w0, c0 = time.perf_counter(), time.process_time()
            systems[name](x)
            times[name]["cpu"].append(time.process_time() - c0)
            times[name]["wall"].append(time.perf_counter() - w0)
    return times


def percentiles(values: list[float], scale: float = 1.0) -> dict[str, float]:
    v = np.asarray(values) * scale
    return {"p10": float(np.percentile(v, 10)), "p50": float(np.percentile(v, 50)),
            "p90": float(np.percentile(v, 90)), "min": float(v.min()), "n": int(v.size)}


def measure(graph: vitgraph.Graph, systems: dict[str, Callable[[np.ndarray], np.ndarray]], batch: int,
            rounds: int, latency_rounds: int) -> dict[str, Any]:
    from vitgraph.backends.onnx_backend import has_binary_weights

    t0 = time.time()
    rng = np.random.default_rng(0)
    check = rng.standard_normal((2, *graph.image), dtype=np.float32)
    want = systems["torch eager"](check)
    agreement = {name: float(np.abs(fn(check) - want).max() / np.abs(want).max())
                 for name, fn in systems.items() if name != "torch eager"}
    one = rng.standard_normal((1, *graph.image), dtype=np.float32)                  # (1, C, H, W)
    many = rng.standard_normal((batch, *graph.image), dtype=np.float32)             # (B, C, H, W)
    load_before = os.getloadavg()
    latency = interleaved(systems, one, warmup=5, rounds=latency_rounds)
    throughput = interleaved(systems, many, warmup=1, rounds=rounds)
    load_after = os.getloadavg()
    result: dict[str, Any] = {
        "model": graph.name, "spec_hash": graph.spec.hash, "spec_params": graph.spec.params,
        "onnx_form": "binary" if has_binary_weights(graph) else "float",  # what to_onnx deploys by default
        "image": list(graph.image), "batch": batch, "max_relative_diff_vs_torch": agreement,
        "load_average": {"before": list(load_before), "after": list(load_after)}, "systems": {},
    }
    for name in systems:
        result["systems"][name] = {
            "batch1_latency_ms": percentiles(latency[name]["wall"], 1e3),
            "batch1_cpu_ms": percentiles(latency[name]["cpu"], 1e3),
            f"batch{batch}_s_per_call": percentiles(throughput[name]["wall"]),
            f"batch{batch}_cpu_s_per_call": percentiles(throughput[name]["cpu"]),
            f"batch{batch}_img_s": batch / float(np.median(throughput[name]["wall"]))}

    def ratio(times: dict[str, dict[str, list[float]]], name: str, clock: str) -> float:
        return float(np.median(times[name][clock]) / np.median(times[OURS][clock]))

    # the other system's median time / ours: > 1 means ours is faster
    result["ours_speedup"] = {name: {"batch1_p50": ratio(latency, name, "wall"),
                                     f"batch{batch}": ratio(throughput, name, "wall"),
                                     "batch1_cpu": ratio(latency, name, "cpu"),
                                     f"batch{batch}_cpu": ratio(throughput, name, "cpu")}
                              for name in systems if name != OURS}
    result["seconds"] = round(time.time() - t0, 1)
    return result


# -- reporting --------------------------------------------------------------------------------
def table(r: dict[str, Any]) -> list[str]:
    batch = r["batch"]
    lines = [f"| system | batch 1 p50 (ms) | batch 1 p90 (ms) | batch {batch} (img/s) | ours vs it, batch 1 "
             f"| ours vs it, batch {batch} | same, CPU time (1 / {batch}) | max rel diff vs torch |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, s in r["systems"].items():
        up = r["ours_speedup"].get(name)
        ratio1 = f"{up['batch1_p50']:.2f}x" if up else "-"
        ratio_b = f"{up[f'batch{batch}']:.2f}x" if up else "-"
        ratio_cpu = f"{up['batch1_cpu']:.2f}x / {up[f'batch{batch}_cpu']:.2f}x" if up else "-"
        diff = r["max_relative_diff_vs_torch"].get(name)
        lines.append(f"| {name} | {s['batch1_latency_ms']['p50']:.2f} | {s['batch1_latency_ms']['p90']:.2f} | "
                     f"{s[f'batch{batch}_img_s']:.1f} | {ratio1} | {ratio_b} | {ratio_cpu} | "
                     f"{'-' if diff is None else f'{diff:.1e}'} |")
    before, after = r["load_average"]["before"][0], r["load_average"]["after"][0]
    return lines + ["", f"Load average (1 min) {before:.2f} before, {after:.2f} after; {r['seconds']} s.", ""]


def markdown(env: dict[str, Any], results: list[dict[str, Any]]) -> str:
    batch = results[0]["batch"]
    lines = [f"# ONNX CPU inference: {env['cpu']}, {env['threads']} threads, batch 1 and {batch}", "",
             f"CPU {env['cpu']} (family/model/stepping {env.get('cpu_family_model_stepping', '?')}; "
             f"{env.get('cpu_vector_flags', '')}), {env['physical_cores']} physical cores, shared with other "
             "processes (see the load averages).",
             f"torch {env['torch']}, onnxruntime {env['onnxruntime']}, onnx {env['onnx']}, python "
             f"{env['python']}; vitgraph commit {env['git_commit']}; {env['date']}.",
             "Interleaved rounds (one call per system, rotated order) after warm-up; latency percentiles over "
             "all batch-1 calls, throughput = batch / median wall seconds per call. `ours vs it` = the other "
             "system's median time / ours (wall clock; CPU time of all this process's threads alongside: "
             "less sensitive to other processes' load, but it counts torch's spinning OpenMP threads). "
             "Each run measures every spec once; runs follow each other.",
             ""]
    for model in dict.fromkeys(r["model"] for r in results):
        first = next(r for r in results if r["model"] == model)
        lines += [f"## {model} ({first['image'][1]} px, spec hash {first['spec_hash']})", ""]
        for r in (r for r in results if r["model"] == model):
            lines += [f"### run {r['run']}", ""] + table(r)
    lines += ["## Goals (issue 4), on the median over runs of each ratio", ""] + [f"- {v}" for v in verdicts(results)]
    return "\n".join(lines) + "\n"


def verdicts(results: list[dict[str, Any]]) -> list[str]:
    """Per model: ours vs the slower-to-beat torch.onnx.export path and vs torch eager,
    the median over runs, with every run's figure in brackets."""
    out = []
    for model in dict.fromkeys(r["model"] for r in results):
        runs = [r for r in results if r["model"] == model]
        batch = runs[0]["batch"]
        exporters = [n for n in runs[0]["ours_speedup"] if n.startswith("torch.onnx")]
        worst1 = [min(r["ours_speedup"][n]["batch1_p50"] for n in exporters) for r in runs]
        worst_b = [min(r["ours_speedup"][n][f"batch{batch}"] for n in exporters) for r in runs]
        eager = [r["ours_speedup"]["torch eager"]["batch1_p50"] for r in runs]
        m1, mb, me = (float(np.median(v)) for v in (worst1, worst_b, eager))

        def each(v: list[float]) -> str:
            return "(" + ", ".join(f"{x:.2f}" for x in v) + ")"

        out.append(f"{model}: vs torch.onnx.export {m1:.2f}x {each(worst1)} at batch 1, {mb:.2f}x {each(worst_b)} "
                   f"at batch {batch} [goal >= 1.00: {'met' if min(m1, mb) >= 1 else 'NOT met'}]; vs torch eager "
                   f"{me:.2f}x {each(eager)} at batch 1 [goal >= 1.15: {'met' if me >= 1.15 else 'NOT met'}]")
    return out


def main(argv: list[str] | None = None) -> int:
    import torch

    from vitgraph.backends.onnx_backend import physical_cores

    p = argparse.ArgumentParser(prog="python -m vitgraph.benchmarks.onnx_cpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--specs", nargs="+", default=list(DEFAULT_SPECS), help="spec names under specs/")
    p.add_argument("--batch", type=int, default=64, help="batch size of the throughput runs (default 64)")
    p.add_argument("--threads", type=int, default=None, help="threads for every system (default: physical cores)")
    p.add_argument("--rounds", type=int, default=8, help="interleaved rounds at the batch size (default 8)")
    p.add_argument("--latency-rounds", type=int, default=60, help="interleaved rounds at batch 1 (default 60)")
    p.add_argument("--repeat", type=int, default=1, help="measure every spec this many times (default 1)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="results folder")
    args = p.parse_args(argv)
    if importlib.util.find_spec("onnxscript") is None:  # torch.onnx.export(dynamo=True) needs it
        print("error: the ONNX benchmark needs onnxscript for torch.onnx.export\n"
              "hint: pip install -e '.[bench]'", file=sys.stderr)
        return 2
    threads = args.threads or physical_cores()
    torch.set_num_threads(threads)
    env = environment(threads)
    print(f"{env['cpu']}, {threads} threads, commit {env['git_commit']}", flush=True)
    built = {spec: build_systems(spec, threads) for spec in args.specs}
    results = []
    for run in range(1, args.repeat + 1):
        for spec, (graph, systems) in built.items():
            r = measure(graph, systems, args.batch, args.rounds, args.latency_rounds)
            results.append({"run": run, "spec": spec, **r})
            for name, s in r["systems"].items():
                print(f"run {run} {spec:12s} {name:24s} batch 1 p50 {s['batch1_latency_ms']['p50']:8.2f} ms  p90 "
                      f"{s['batch1_latency_ms']['p90']:8.2f} ms   batch {args.batch} "
                      f"{s[f'batch{args.batch}_img_s']:8.1f} img/s", flush=True)
    for line in verdicts(results):
        print(line)
    slug = re.sub(r"[^a-z0-9]+", "-", env["cpu"].lower()).strip("-")
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"onnx_cpu_{slug}_{threads}t_b{args.batch}"
    stem.with_suffix(".json").write_text(json.dumps({"environment": env, "results": results}, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(env, results))
    print(f"wrote {stem}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
