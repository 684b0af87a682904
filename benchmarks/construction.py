"""How long building a model takes: `vitgraph.to_torch` of a spec against timm's
`create_model` of the same architecture, side by side in one process, rounds rotated so
that load on the machine falls on both alike; also the compile (spec -> checked graph)
alone and the build on the meta device.

    python -m vitgraph.benchmarks.construction [--models deit_base deit_tiny] [--repeats 5]

Writes benchmarks/results/construction_<cpu>.{json,md}. Without timm, only vitgraph's
times are measured (and the ratio is left out).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Callable

import vitgraph
from vitgraph.benchmarks.harness import spread
from vitgraph.benchmarks.results import conditions
from vitgraph.benchmarks.throughput import import_timm, slug

ROOT = Path(__file__).resolve().parent.parent
TIMM_NAMES = {"deit_tiny": "deit_tiny_patch16_224", "deit_small": "deit_small_patch16_224",
              "deit_base": "deit_base_patch16_224", "swin_tiny": "swin_tiny_patch4_window7_224",
              "cait_xxs24": "cait_xxs24_224"}


def _seconds(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    out = fn()
    elapsed = time.perf_counter() - t0
    del out
    return elapsed


def measure(model: str, repeats: int, timm: Any) -> dict[str, Any]:
    import torch

    spec = ROOT / "specs" / f"{model}.vg"
    graph = vitgraph.compile(spec)
    systems: dict[str, Callable[[], Any]] = {
        "vitgraph compile": lambda: vitgraph.compile(spec),
        "vitgraph to_torch": lambda: vitgraph.to_torch(graph),
        "vitgraph to_torch (meta)": lambda: vitgraph.to_torch(graph, device="meta"),
    }
    if timm is not None and model in TIMM_NAMES:
        systems["timm create_model"] = lambda: timm.create_model(TIMM_NAMES[model], pretrained=False)
    for fn in systems.values():  # warm-up: imports, allocator, first-call costs
        fn()
    samples: dict[str, list[float]] = {name: [] for name in systems}
    names = list(systems)
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            samples[name].append(_seconds(systems[name]))
    row = {"model": model, "params": vitgraph.count(graph).total.params, "threads": torch.get_num_threads(),
           "seconds": {k: spread(v) for k, v in samples.items()}}
    if "timm create_model" in samples:
        ours, theirs = samples["vitgraph to_torch"], samples["timm create_model"]
        row["ratio_timm_over_vitgraph"] = [t / o for o, t in zip(ours, theirs)]
    return row


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| model | params | system | median s | min s | max s |", "|---|---|---|---|---|---|"]
    for row in rows:
        for name, s in row["seconds"].items():
            lines.append(f"| {row['model']} | {row['params'] / 1e6:.2f}M | {name} | {s['median']:.3f} | "
                         f"{s['min']:.3f} | {s['max']:.3f} |")
        if "ratio_timm_over_vitgraph" in row:
            ratios = sorted(row["ratio_timm_over_vitgraph"])
            lines.append(f"| {row['model']} | | timm / vitgraph per round | {ratios[len(ratios) // 2]:.2f}x | "
                         f"{ratios[0]:.2f}x | {ratios[-1]:.2f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["deit_base", "deit_tiny"])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = p.parse_args(argv)
    timm, note = import_timm()
    env = conditions("cpu")
    rows = [measure(m, args.repeats, timm) for m in args.models]
    name = f"construction_{slug(env['cpu'])}"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.json").write_text(json.dumps({"conditions": env, "timm_note": note, "rows": rows},
                                                      indent=2) + "\n")
    text = "\n".join([f"# Model construction: vitgraph.to_torch vs timm.create_model ({env['cpu']})", "",
                      f"{env['cpu_count']} CPUs, torch threads {env['torch_threads']}, load average "
                      f"{env['load_avg_1min']} at the start, versions {env['versions']}, commit {env['git_commit']}; "
                      f"{args.repeats} rotated rounds after one warm-up call each.", "", table(rows), "",
                      note or ""])
    (args.out / f"{name}.md").write_text(text.rstrip() + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
