"""The binary deployment's benchmarks run end to end at a tiny setting and write their
tables named by the CPU (the real runs: benchmarks/results/binary_*_amd-epyc.md)."""
from __future__ import annotations

import json
from pathlib import Path

from onnx_helpers import TINY_BINARY
from vitgraph.benchmarks import binary_cpu, binary_kernels


def test_binary_cpu_benchmark_writes_every_figure(tmp_path: Path) -> None:
    spec = tmp_path / "tiny_binary.vg"
    spec.write_text(TINY_BINARY)
    assert binary_cpu.main(["--specs", str(spec), "--batch", "1", "2", "--rounds", "2", "1", "--runs", "2",
                            "--threads", "1", "--no-memory", "--out", str(tmp_path)]) == 0
    (path,) = tmp_path.glob("binary_cpu_*.json")
    data = json.loads(path.read_text())
    assert data["environment"]["cpu"] and data["environment"]["git_commit"] and data["environment"]["load_at_start"]
    systems = [e["system"] for e in data["entrants"]]
    assert systems == [binary_cpu.FP32, binary_cpu.DEPLOYED, binary_cpu.EAGER]
    fp32, deployed, _ = data["entrants"]
    assert fp32["bytes"] > deployed["bytes"]  # a tiny model: most of its bytes are not binary weights
    assert all(a["same_top1"] and a["relative_diff"] < 1e-3 for a in data["agreement"].values())
    assert [(b["threads"], b["batch"], len(b["runs"])) for b in data["timings"]] == [(1, 1, 2), (1, 2, 2)]
    assert all(len(binary_cpu.speedups(b, "tiny_binary")) == 2 for b in data["timings"])
    tops = {(p["system"], p["batch"]): dict(p["top"]) for p in data["profiles"]}
    assert "MatMulIntegerToFloat" in tops[binary_cpu.DEPLOYED, 1] and "MatMul" in tops[binary_cpu.FP32, 2]
    steps = [b["seconds"] for b in data["ladder"]]
    assert [list(s) for s in steps] == [["fp32-folded", "+ fast_prelu", "+ repeat_shortcut", "+ sink_shifts",
                                         "+ binary_matmul", "+ pack_binary"]] * 2
    text = path.with_suffix(".md").read_text()
    assert "## Goals (issue 14)" in text and "## Where the time goes" in text
    assert "## Step by step" in text and "| + binary_matmul |" in text


def test_peak_memory_is_measured_in_a_child(tmp_path: Path) -> None:
    spec = tmp_path / "tiny_binary.vg"
    spec.write_text(TINY_BINARY)
    _, deployed, _ = binary_cpu.prepare([str(spec)], {}, tmp_path)
    assert 0 < binary_cpu.peak_memory(deployed, 1, 4) < 1024  # MiB


def test_binary_kernels_benchmark_times_the_pass_forms(tmp_path: Path) -> None:
    assert binary_kernels.main(["--shapes", "2", "--batch", "1", "--threads", "1", "--rounds", "1",
                                "--out", str(tmp_path)]) == 0
    (path,) = tmp_path.glob("binary_kernels_*.json")
    results = json.loads(path.read_text())["results"]
    assert [r["dims"] for r in results] == [list(s.dims) for s in binary_kernels.SHAPES[:2]]
    assert all(r["max_relative_diff_vs_float"]["fused"] < 1e-5 and r["cpu_ms"]["float"] > 0 for r in results)
    assert "## The rule (binary_matmul)" in path.with_suffix(".md").read_text()
