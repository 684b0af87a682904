"""The throughput benchmark script: runs on the CPU, records conditions, names its files by
them, and compares against timm eager when timm rows exist."""
from __future__ import annotations

import importlib.metadata
import json

import pytest
import torch

from vitgraph.benchmarks import throughput


def test_cpu_run_writes_json_and_table(tmp_path, capsys) -> None:
    rc = throughput.main(["--device", "cpu", "--models", "vit", "--modes", "eager", "--batch", "2",
                          "--warmup", "0", "--repeats", "2", "--iters", "1", "--out", str(tmp_path)])
    assert rc == 0
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 2 and files[0].startswith("throughput_cpu_") and files[0].endswith(".json")
    record = json.loads((tmp_path / files[0]).read_text())
    assert record["conditions"]["device"] == "cpu" and record["conditions"]["torch_threads"] >= 1
    assert record["conditions"]["versions"]["torch"] == importlib.metadata.version("torch")  # torch.__version__
    # may add a local label that the package metadata lacks (2.5.1+cu124 for 2.5.1)
    mine = [r for r in record["rows"] if r["impl"] == "vitgraph"]
    assert len(mine) == 1 and mine[0]["params"] == 2_692_426 and len(mine[0]["spec_hash"]) == 16
    for phase in ("train_img_s", "infer_img_s"):
        s = mine[0][phase]
        assert s["n"] == 2 and 0 < s["min"] <= s["median"] <= s["max"]
    try:
        import timm  # noqa: F401
    except ImportError:
        assert "timm is not importable" in record["timm_note"] and len(record["rows"]) == 1
    out = capsys.readouterr().out
    assert "| vit | vitgraph | eager | 2 | 2.69M |" in out


def test_table_compares_with_timm_eager() -> None:
    def row(impl: str, mode: str, train: float, infer: float) -> dict:
        stat = lambda v: {"median": v, "q1": v, "q3": v, "min": v, "max": v, "n": 1}  # noqa: E731
        return {"model": "deit_tiny", "impl": impl, "mode": mode, "batch": 256, "params": 5.7e6,
                "train_img_s": stat(train), "infer_img_s": stat(infer)}

    record = {"conditions": {"gpu": "NVIDIA H200", "cpu": "x", "versions": {"torch": "2.11"}, "torch_threads": 16,
                             "git_commit": "abc", "load_avg_1min": 0.1},
              "dtype": "bf16", "repeats": 10, "iters": 10, "warmup": 5, "timm_note": None,
              "rows": [row("timm", "eager", 6900, 35100), row("vitgraph", "compiled", 13800, 52650)]}
    table = throughput.markdown(record)
    assert "NVIDIA H200" in table
    assert "| deit_tiny | vitgraph | compiled | 256 | 5.70M | 13,800 (13,800–13,800) | 52,650 (52,650–52,650) " \
           "| 2.00x | 1.50x |" in table


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a GPU")
def test_cuda_without_gpu_is_refused(capsys) -> None:
    assert throughput.main(["--device", "cuda"]) == 2
    assert "no GPU" in capsys.readouterr().err
