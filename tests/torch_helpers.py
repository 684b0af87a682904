"""Helpers of the torch-backend tests: every spec at the smallest overrides that compile."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

import vitgraph
from vitgraph.diagnostics import SpecError

# The test models are small: one intra-op thread avoids OpenMP barrier stalls on a shared
# CPU (building sl_vit took 6 s with 2 threads under load, 0.1 s with 1).
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted((ROOT / "specs").glob("*.vg"))

# Cheapest first: a 2x2 grid, then larger grids as pooling kernels and reductions need them
# (BinaryViT's four stages with reduce 8 and 5-wide pooling kernels need image 160).
_CANDIDATES: list[dict[str, Any]] = [
    dict(image=32, patch=16), dict(image=32, patch=8), dict(image=32, patch=4),
    dict(image=64, patch=8), dict(image=64), dict(image=160), {},
]


@lru_cache(maxsize=None)
def small_overrides(spec: Path) -> tuple[tuple[str, Any], ...]:
    """The first candidate override set that compiles, plus classes=10 where the spec has it."""
    for cand in _CANDIDATES:
        for extra in (dict(classes=10), {}):
            try:
                vitgraph.compile(spec, **cand, **extra)
            except SpecError:
                continue
            return tuple(sorted({**cand, **extra}.items()))
    raise AssertionError(f"{spec.name}: no small override set compiles")


def small_graph(spec: Path) -> vitgraph.Graph:
    return vitgraph.compile(spec, **dict(small_overrides(spec)))
