"""Which form of a binary product runs fastest in onnxruntime on this CPU: the evidence for
the rule of the binary_matmul pass (backends/onnx_passes/binary_matmul.py).

For every binary linear shape of binaryvit and binary_deit_small at 224 px (tokens x in
-> out) and their attention products, the forms the pass emits are timed against the
float form it replaces, each as a small ONNX model that starts from float activations:

  float     Sign -> MatMul(+-scale weight) -> Add(bias)                (binary=False)
  standard  sign as uint8 -> MatMulInteger(u8 x s8) -> Cast -> Mul -> Add
  fused     sign as uint8 -> com.microsoft.MatMulIntegerToFloat (scale and bias inside)

and Q.K^T (signed q and k) and P.V (quantized probabilities, signed v) likewise. Timing:
onnxruntime sessions as vitgraph makes them, interleaved rounds, process CPU time per call
(less sensitive than wall time to the other processes on a shared machine); the figure
is the float form's median time / the form's.

    python -m vitgraph.benchmarks.binary_kernels [--threads 1 2] [--batch 1 16] [--rounds 20]
        [--out benchmarks/results]

Writes binary_kernels_<cpu>.json and .md under --out.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from vitgraph.benchmarks.results import cpu_info, git_commit, library_versions

ROOT = Path(__file__).resolve().parents[1]
KEY = "w"
FORMS = ("float", "standard", "fused")


@dataclass(frozen=True)
class Shape:
    """A binary product: `kind` linear (tokens x k -> n), qk or pv (heads, tokens, keys)."""

    model: str
    where: str
    kind: str
    dims: tuple[int, ...]

    def label(self) -> str:
        if self.kind == "linear":
            m, k, n = self.dims
            return f"{m} x {k} -> {n}"
        h, m, keys = self.dims
        return f"{h} heads, {m} x {keys} keys"


SHAPES = (
    Shape("binaryvit", "stage 1 q, proj", "linear", (3136, 64, 64)),
    Shape("binaryvit", "stage 1 fc1", "linear", (3136, 64, 512)),
    Shape("binaryvit", "stage 1 fc2", "linear", (3136, 512, 64)),
    Shape("binaryvit", "stage 1 reduce, k, v", "linear", (49, 64, 64)),
    Shape("binaryvit", "merge 1 -> 2", "linear", (784, 256, 128)),
    Shape("binaryvit", "stage 2 q, proj", "linear", (784, 128, 128)),
    Shape("binaryvit", "stage 2 fc1", "linear", (784, 128, 1024)),
    Shape("binaryvit", "stage 2 fc2", "linear", (784, 1024, 128)),
    Shape("binaryvit", "merge 2 -> 3", "linear", (196, 512, 256)),
    Shape("binaryvit", "stage 3 q, k, v, proj", "linear", (196, 256, 256)),
    Shape("binaryvit", "stage 3 fc1", "linear", (196, 256, 1024)),
    Shape("binaryvit", "stage 3 fc2", "linear", (196, 1024, 256)),
    Shape("binaryvit", "merge 3 -> 4", "linear", (49, 1024, 512)),
    Shape("binaryvit", "stage 4 q, k, v, proj", "linear", (49, 512, 512)),
    Shape("binaryvit", "stage 4 fc1", "linear", (49, 512, 2048)),
    Shape("binaryvit", "stage 4 fc2", "linear", (49, 2048, 512)),
    Shape("binary_deit_small", "q, k, v, proj", "linear", (197, 384, 384)),
    Shape("binary_deit_small", "fc1", "linear", (197, 384, 1536)),
    Shape("binary_deit_small", "fc2", "linear", (197, 1536, 384)),
    Shape("binaryvit", "stage 1 attention", "qk", (1, 3136, 49)),
    Shape("binaryvit", "stage 1 attention", "pv", (1, 3136, 49)),
    Shape("binaryvit", "stage 3 attention", "qk", (4, 196, 196)),
    Shape("binaryvit", "stage 3 attention", "pv", (4, 196, 196)),
    Shape("binary_deit_small", "attention", "qk", (6, 197, 197)),
    Shape("binary_deit_small", "attention", "pv", (6, 197, 197)),
)
HEAD_DIM = 64


def _graph(shape: Shape, batch: int) -> tuple[list[onnx.NodeProto], dict[str, np.ndarray], dict[str, list[int]]]:
    """The float form's nodes, initializers and inputs (float32)."""
    rng = np.random.default_rng(0)
    node = helper.make_node
    if shape.kind == "linear":
        m, k, n = shape.dims
        weight = np.where(rng.normal(size=(k, n)) > 0, 1.0, -1.0) * rng.uniform(0.5, 2.0, size=n)
        return ([node("Sign", ["x"], ["s"], name="l/Sign"), node("MatMul", ["s", KEY], ["t"], name="l/MatMul"),
                 node("Add", ["t", "b"], ["y"], name="l/Add")],
                {KEY: weight, "b": rng.normal(size=n)}, {"x": [batch, m, k]})
    h, m, keys = shape.dims
    if shape.kind == "qk":
        return ([node("Sign", ["q"], ["qs"], name="a/Sign"), node("Sign", ["k"], ["ks"], name="a/Sign_1"),
                 node("MatMul", ["qs", "ks"], ["t"], name="a/MatMul"),
                 node("Mul", ["t", "scale"], ["y"], name="a/Mul")],
                {"scale": np.array(HEAD_DIM ** -0.5)}, {"q": [batch, h, m, HEAD_DIM], "k": [batch, h, HEAD_DIM, keys]})
    return ([node("Div", ["p", "alpha"], ["d"], name="a/Div"), node("Round", ["d"], ["r"], name="a/Round"),
             node("Clip", ["r", "zero", "one"], ["c"], name="a/Clip"),
             node("Mul", ["c", "alpha"], ["pa"], name="a/Mul"),
             node("Sign", ["v"], ["vs"], name="a/Sign"), node("MatMul", ["pa", "vs"], ["y"], name="a/MatMul")],
            {"alpha": np.array([0.02]), "zero": np.array(0.0), "one": np.array(1.0)},
            {"p": [batch, h, m, keys], "v": [batch, h, keys, HEAD_DIM]})


@lru_cache(maxsize=None)
def _ir(spec: str) -> Any:
    import vitgraph

    return vitgraph.compile(ROOT / "specs" / f"{spec}.vg")


def model(shape: Shape, batch: int, form: str) -> onnx.ModelProto:
    """The ONNX model of one form: the float graph, rewritten by the binary_matmul pass
    (integer everywhere) for the standard and fused forms."""
    from vitgraph.backends._onnx_graph import OnnxGraph
    from vitgraph.backends.onnx_passes import Export
    from vitgraph.backends.onnx_passes.binary_matmul import rewrite

    nodes, inits, inputs = _graph(shape, batch)
    g = OnnxGraph(np.float32)
    g.nodes.extend(nodes)
    for n in nodes:
        g.fresh_name(n.name)
    g.initializers.update({k: numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()})
    values = [helper.make_tensor_value_info(k, onnx.TensorProto.FLOAT, v) for k, v in inputs.items()]
    if form != "float":
        ex = Export(g, _ir(shape.model), {}, outputs=("y",), fused=form == "fused", inputs=tuple(values))
        if not rewrite(ex, {KEY}):
            raise RuntimeError(f"binary_matmul did not rewrite {shape}")
    return g.model(values, [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], "k", {}, "")


def feeds(shape: Shape, batch: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    _, _, inputs = _graph(shape, batch)
    out = {k: rng.normal(size=v).astype(np.float32) for k, v in inputs.items()}
    if "p" in out:  # probabilities over the keys
        out["p"] = rng.dirichlet(np.ones(inputs["p"][-1]), size=inputs["p"][:-1]).astype(np.float32)
    return out


def time_forms(calls: dict[str, Callable[[], Any]], rounds: int) -> dict[str, float]:
    """Median process CPU seconds per call of each form, interleaved (rotated order)."""
    names = list(calls)
    for name in names:
        calls[name]()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            t0 = time.process_time()
            calls[name]()
            times[name].append(time.process_time() - t0)
    return {n: float(np.median(v)) for n, v in times.items()}


def measure(shape: Shape, batch: int, threads: int, rounds: int) -> dict[str, Any]:
    from vitgraph.backends.onnx_backend import make_session

    x = feeds(shape, batch)
    sessions = {form: make_session(model(shape, batch, form), threads) for form in FORMS}
    outs = {form: s.run(None, x)[0] for form, s in sessions.items()}
    scale = float(np.abs(outs["float"]).max())
    agree = {form: float(np.abs(o - outs["float"]).max() / scale) for form, o in outs.items() if form != "float"}
    seconds = time_forms({form: (lambda s=s: s.run(None, x)) for form, s in sessions.items()}, rounds)
    return {"model": shape.model, "where": shape.where, "kind": shape.kind, "dims": list(shape.dims),
            "batch": batch, "threads": threads, "cpu_ms": {f: 1e3 * t for f, t in seconds.items()},
            "speedup": {f: seconds["float"] / seconds[f] for f in FORMS if f != "float"},
            "max_relative_diff_vs_float": agree}


def markdown(env: dict[str, Any], results: list[dict[str, Any]]) -> str:
    lines = [f"# Binary products in onnxruntime: {env['cpu']}", "",
             f"CPU {env['cpu']} ({env.get('cpu_vector_flags', '')}), onnxruntime {env['onnxruntime']}, "
             f"vitgraph commit {env['git_commit']}, {env['date']}; load average (1 min) {env['load_before']:.2f} "
             f"before, {env['load_after']:.2f} after.",
             "Median process CPU time per call over interleaved rounds, each form from float activations "
             "(the float form's Sign and the integer forms' quantization included). Speedup = float form's time / "
             "the form's: > 1 means the integer form is faster. `standard`: MatMulInteger + Cast + Mul (+ Add); "
             "`fused`: com.microsoft.MatMulIntegerToFloat.", "",
             "| model | where | shape | batch | threads | float (ms) | standard | fused |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in results:
        shape = Shape(r["model"], r["where"], r["kind"], tuple(r["dims"]))
        kind = {"linear": "", "qk": "Q.K^T ", "pv": "P.V "}[r["kind"]]
        lines.append(f"| {r['model']} | {r['where']} | {kind}{shape.label()} | {r['batch']} | {r['threads']} | "
                     f"{r['cpu_ms']['float']:.3f} | {r['speedup']['standard']:.2f}x | {r['speedup']['fused']:.2f}x |")
    lines += ["", "## The rule (binary_matmul)", ""] + [f"- {line}" for line in rule_evidence(results)]
    return "\n".join(lines) + "\n"


def rule_evidence(results: list[dict[str, Any]]) -> list[str]:
    """What the pass's rule (every binary product integer) rests on: the range of the
    speedups per kind and form, and the measurements where the integer form was slower."""
    def span(rows: list[dict[str, Any]], form: str) -> str:
        v = [r["speedup"][form] for r in rows]
        return f"{min(v):.2f}-{max(v):.2f}x (median {np.median(v):.2f}x) over {len(v)}" if v else "none measured"

    lines = [f"{kind}: fused {span(rows, 'fused')}, standard ops {span(rows, 'standard')}"
             for kind, rows in (("linear layers", [r for r in results if r["kind"] == "linear"]),
                                ("Q.K^T and P.V", [r for r in results if r["kind"] != "linear"]))]
    slower = [f"{r['model']} {r['where']} ({Shape(r['model'], r['where'], r['kind'], tuple(r['dims'])).label()}) "
              f"batch {r['batch']}, {r['threads']} thread(s): {form} {r['speedup'][form]:.2f}x, "
              f"{r['cpu_ms']['float']:.3f} ms as float"
              for r in results for form in ("fused", "standard") if r["speedup"][form] < 1]
    return lines + [f"integer slower: {s}" for s in slower]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vitgraph.benchmarks.binary_kernels",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="intra-op threads (default 1 2)")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 16], help="batch sizes (default 1 16)")
    p.add_argument("--rounds", type=int, default=20, help="interleaved rounds per shape (default 20)")
    p.add_argument("--shapes", type=int, default=len(SHAPES), help="measure only the first N shapes")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="results folder")
    args = p.parse_args(argv)
    env: dict[str, Any] = {**cpu_info(), **library_versions(), "git_commit": git_commit() or "unknown",
                           "date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "load_before": os.getloadavg()[0]}
    print(f"{env['cpu']}, load {env['load_before']:.2f}, commit {env['git_commit']}", flush=True)
    results = []
    for threads in args.threads:
        for batch in args.batch:
            for shape in SHAPES[:args.shapes]:
                r = measure(shape, batch, threads, args.rounds)
                results.append(r)
                print(f"{shape.model:18s} {shape.where:24s} {shape.kind:6s} {shape.label():24s} b{batch:<3d} "
                      f"t{threads}  float {r['cpu_ms']['float']:8.3f} ms  standard {r['speedup']['standard']:.2f}x  "
                      f"fused {r['speedup']['fused']:.2f}x", flush=True)
    env["load_after"] = os.getloadavg()[0]
    slug = re.sub(r"[^a-z0-9]+", "-", env["cpu"].lower()).strip("-")
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"binary_kernels_{slug}"
    stem.with_suffix(".json").write_text(json.dumps({"environment": env, "results": results}, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(env, results))
    for line in rule_evidence(results):
        print(line)
    print(f"wrote {stem}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
