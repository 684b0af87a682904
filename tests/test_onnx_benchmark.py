"""The CPU benchmark runs end to end at a tiny setting (vit, two calls per system) and
writes its JSON and markdown."""
from __future__ import annotations

import json
from pathlib import Path

from vitgraph.benchmarks import onnx_cpu


def test_benchmark_writes_results_named_by_conditions(tmp_path: Path) -> None:
    assert onnx_cpu.main(["--specs", "vit", "--batch", "2", "--rounds", "1", "--latency-rounds", "2",
                          "--threads", "1", "--out", str(tmp_path)]) == 0
    (path,) = tmp_path.glob("onnx_cpu_*_1t_b2.json")
    data = json.loads(path.read_text())
    env, (result,) = data["environment"], data["results"]
    assert env["threads"] == 1 and env["cpu"] and env["git_commit"] and env["onnxruntime"]
    assert result["spec_hash"] and set(result["systems"]) == set(onnx_cpu.SYSTEMS) and result["onnx_form"] == "float"
    assert all(d < 1e-4 for d in result["max_relative_diff_vs_torch"].values())
    assert result["systems"][onnx_cpu.OURS]["batch1_latency_ms"]["n"] == 2
    assert "## Goals" in path.with_suffix(".md").read_text()


def test_missing_onnxscript_names_the_bench_extra(monkeypatch, capsys, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else real(name, *a))
    assert onnx_cpu.main(["--specs", "vit", "--out", str(tmp_path)]) == 2
    assert "pip install -e '.[bench]'" in capsys.readouterr().err and not any(tmp_path.iterdir())
