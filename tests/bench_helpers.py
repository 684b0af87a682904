"""Records in the shape `vitgraph bench` writes, for tests of the report and the store."""
from __future__ import annotations

from typing import Any


def make_record(spec: str, dataset: str, top1: float | None, *, ops: float = 2e8, bops: float = 0.0,
                latency_ms: float = 3.0, status: str = "ok", suite: str = "test", image: int = 32,
                digest: str | None = None) -> dict[str, Any]:
    return {
        "suite": suite, "run": f"{spec}@{dataset}", "digest": digest or f"{spec}-{dataset}", "status": status,
        "spec": spec, "dataset": dataset, "spec_hash": "0123456789abcdef", "spec_params": {"image": image},
        "overrides": {"image": image}, "recipe": "r", "epochs": 2.0, "minutes": None, "seed": 0,
        "metrics": {"top1": top1, "top5": None if top1 is None else min(100.0, top1 + 5), "epochs": 2,
                    "train_seconds": 10.0},
        "counts": {"params": 2_700_000, "binary_params": 2_000_000 if bops else 0, "fp_params": 700_000,
                   "macs": ops - bops / 64, "bops": bops, "ops": ops},
        "torch": {"device": "cpu", "batch": 8, "train_img_s": {"median": 120.0}, "infer_img_s": {"median": 400.0}},
        "onnx_cpu": {"latency_ms": {"median": latency_ms}, "throughput_img_s": {"median": 500.0}, "batch": 8},
        "conditions": {"device": "cpu", "cpu": "Test CPU", "cpu_count": 2, "torch_threads": 2, "gpu": None,
                       "versions": {"torch": "2.x"}, "git_commit": "abc"},
        "finished": "2025-01-01T00:00:00",
    }
