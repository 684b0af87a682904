"""Records in the shape `vitgraph bench` writes, for tests of the report and the store, and a
tiny suite (two 8x8 specs on the embedded digits) for tests of the harness."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from vitgraph.benchmarks.harness import Options


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


TINY = """\
param image = 8
param patch = 4
param classes = 10
model tiny {
    input 3 x image x image
    patchify patch -> 16
    tokens cls
    pos-embed learned
    norm layer eps 1e-5
    blocks 1 { attention heads 2; mlp ratio 2 }
    head token -> classes
}
"""


def suite_file(tmp_path: Path, datasets: str = '["digits"]', measure: str = "torch_throughput = false\n"
               "onnx_cpu = false", epochs: int = 1) -> Path:
    """t.toml: the specs tiny and tiny2 (tiny.vg, tiny2.vg beside it) on `datasets`, recipe digits, CPU."""
    (tmp_path / "tiny.vg").write_text(TINY)
    (tmp_path / "tiny2.vg").write_text(TINY.replace("model tiny", "model tiny2").replace("-> 16", "-> 8"))
    path = tmp_path / "t.toml"
    path.write_text(f"""
recipe = "digits"
specs = ["{tmp_path / 'tiny.vg'}", "{tmp_path / 'tiny2.vg'}"]
datasets = {datasets}
device = "cpu"
recipe_set = {{ batch_size = 128 }}
[budget]
epochs = {epochs}
[set]
image = 8
[measure]
{measure}
""")
    return path


def offline_options(tmp_path: Path) -> Options:
    """Harness options that never download."""
    return Options(data_root=str(tmp_path / "no-data"), download=False)
