"""Paths and small-size compilation shared by the test modules (imported by conftest and
the per-area helpers)."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import vitgraph
from vitgraph.diagnostics import SpecError

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted((ROOT / "specs").glob("*.vg"))
# Real CIFAR-10 image folders: shared/ lies beside the checkout, here and in CI.
CIFAR10 = ROOT.parent / "shared" / "data" / "cifar10"

# Cheapest first: a 2x2 grid, then larger grids as pooling kernels and reductions need them
# (binary DeiT-S with 5-wide pool branches: 80/16 -> 5x5; BinaryViT's four stages with
# reduce 8 and 5-wide kernels: 160/4 -> 40, 20, 10, 5; Swin-T's four stages, whose window 7
# divides no small grid: 32/4 -> 8, 4, 2, 1 with window 4, shifted in the first stage).
CANDIDATES: tuple[dict[str, Any], ...] = (
    {"image": 32, "patch": 16}, {"image": 32, "patch": 8}, {"image": 80, "patch": 16},
    {"image": 32, "patch": 4}, {"image": 32, "patch": 4, "window": 4}, {"image": 64, "patch": 8}, {"image": 64},
    {"image": 160}, {})


@lru_cache(maxsize=None)
def _small_overrides(spec: str) -> tuple[tuple[str, Any], ...]:
    declared = vitgraph.compile(spec).spec.params
    for candidate in CANDIDATES:
        overrides = {k: v for k, v in candidate.items() if k in declared}
        if "classes" in declared:
            overrides["classes"] = 10
        try:
            vitgraph.compile(spec, **overrides)
        except SpecError:
            continue
        return tuple(sorted(overrides.items()))
    raise AssertionError(f"{spec}: no small override set compiles")


def small_graph(spec: str | Path) -> vitgraph.Graph:
    """The spec at the first candidate size that compiles, with 10 classes where it has a
    `classes` parameter (a fresh graph on every call)."""
    return vitgraph.compile(spec, **dict(_small_overrides(str(spec))))
