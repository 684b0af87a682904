"""The CPU headline (slow, deselected by default; run with `pytest -m slow`):
`vitgraph train specs/vit.vg --dataset digits` reaches at least 90% test accuracy with the
default `digits` recipe (benchmarks/results/train_digits_cpu.md records a run)."""
from __future__ import annotations

import pytest
from train_helpers import ROOT

from vitgraph.train import run


@pytest.mark.slow
def test_vit_on_digits_reaches_90_percent(tmp_path):
    result = run(str(ROOT / "specs" / "vit.vg"), "digits", out=tmp_path / "run", progress=False, device="cpu")
    assert result["recipe"] == "digits" and result["epochs"] == 30
    assert result["top1"] >= 90.0
