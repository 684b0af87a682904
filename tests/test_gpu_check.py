"""The GPU check (benchmarks/gpu_check.py) and its data pack (benchmarks/datapack.py).

No GPU here: the dry run runs the whole script on the CPU at tiny sizes (every section, the
worker processes, torchrun, the real CIFAR-10 pack), so that the script cannot rot; the parts
only a GPU reaches (its markdown, the goal verdicts with timm, which compiled variants are left
out) are checked on records in the shape the script writes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from spec_helpers import CIFAR10, SPECS
from vitgraph.benchmarks import datapack, gpu_check
from vitgraph.benchmarks.gpu_check import DRY_RUN, GPU, compiled_skip, deal, goals, markdown

needs_cifar = pytest.mark.skipif(not (CIFAR10 / "train").is_dir(), reason="CIFAR-10 image folders not found")


@pytest.fixture(scope="module")
def pack(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pack") / "cifar10.pack"
    assert datapack.main([str(CIFAR10), "-o", str(path)]) == 0
    return path


@needs_cifar
def test_shared_cifar10_packs_under_60_mib_and_unpacks_byte_for_byte(pack: Path, tmp_path: Path) -> None:
    assert pack.stat().st_size < 60 * 2**20
    index = datapack.read_index(pack)
    assert index.name == "cifar10" and len(index.files) == 60_000
    assert sum(name.startswith("train/") for name, _ in index.files) == 50_000
    root = datapack.unpack(pack, tmp_path, per_folder=3)
    written = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    assert len(written) == 2 * 10 * 3 and written[0] == "test/airplane/0000.jpg"
    assert all((root / name).read_bytes() == (CIFAR10 / name).read_bytes() for name in written)


@needs_cifar
def test_dry_run_exercises_every_section(pack: Path, tmp_path: Path) -> None:
    out, scratch = tmp_path / "out", tmp_path / "tmp"
    scratch.mkdir()
    env = dict(os.environ, VITGRAPH_CACHE=str(tmp_path / "cache"), TMPDIR=str(scratch))
    proc = subprocess.run([sys.executable, "-m", "vitgraph.benchmarks.gpu_check", str(out), "--dry-run",
                           "--pack", str(pack)], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    files = sorted(p.name for p in out.iterdir())
    assert len(files) == 2 and files[0].startswith("gpu_check_dry-run_") and files[0].endswith(".json")
    record = json.loads((out / files[0]).read_text())
    assert record["dry_run"] and not record["failed_sections"] and set(record["section_seconds"]) == \
        {"checks", "throughput", "cifar10"}
    assert record["environment"]["source_digest"] == gpu_check.source_digest()

    specs = record["specs"]["rows"]
    assert [r["model"] for r in specs] == list(DRY_RUN.check_specs) and all(r["status"] == "ok" for r in specs)
    assert specs[0]["mode"] == "compiled" and specs[0]["max_rel_diff_vs_eager"] < 1e-3
    assert specs[0]["output_shape"] == [DRY_RUN.throughput_batch, 10] and specs[1]["mode"] == "eager"

    ddp = record["ddp"]
    assert ddp["status"] == "ok" and ddp["backend"] == "gloo" and ddp["world_size"] == 1 and ddp["all_reduce_ok"]
    assert ddp["grad_max_rel_diff"] < 1e-3 and ddp["loss"] == pytest.approx(ddp["single_process_loss"], rel=1e-3)

    tp = record["throughput"]
    ours = [r for r in tp["rows"] if r["impl"] == "vitgraph"]
    assert [r["model"] for r in ours] == list(DRY_RUN.throughput_models)
    assert all(r["train_img_s"]["median"] > 0 and r["infer_img_s"]["n"] == DRY_RUN.repeats for r in ours)
    try:
        import timm  # noqa: F401
    except ImportError:
        assert "timm is not importable" in tp["timm_note"] and len(tp["rows"]) == len(ours)
        assert [g["verdict"] for g in record["goals"][:2]] == ["not measured (timm absent)"] * 2
        # without timm the goal cannot be judged, so the script says where our time goes
        profile = tp["profiles"]["vit"]["vitgraph eager"]
        assert profile["what"] == "CPU ops" and 0 < profile["busy_ms_per_step"] and len(profile["top"]) > 3

    cifar = record["cifar10"]
    per_folder = DRY_RUN.cifar_per_folder
    assert cifar["train_images"] == 10 * per_folder and cifar["images_per_epoch"] == 3 * 10 * per_folder
    for name in ("vit", "sl_vit"):
        m = cifar["models"][name]
        assert m["epochs"] >= 1 and len(m["history"]) == m["epochs"] and 0 <= m["top1"] <= 100
        assert m["history"][-1]["top1"] == pytest.approx(m["top1"], abs=0.01) and m["train_time_s"] > 0
    assert record["goals"][2]["measured"].endswith(f"vs {cifar['models']['vit']['top1']:.2f}%")
    table = (out / files[1]).read_text()
    assert table.startswith("# GPU check: dry run on the CPU") and "## CIFAR-10: vit vs sl_vit" in table
    assert "wrote" in proc.stdout and not list(scratch.glob("vitgraph-gpu-check-*"))  # the work folder is gone


def test_children_past_their_deadline_are_killed_and_reported(tmp_path: Path) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = dict(os.environ, TMPDIR=str(scratch))
    proc = subprocess.run([sys.executable, "-m", "vitgraph.benchmarks.gpu_check", str(tmp_path / "out"), "--dry-run",
                           "--sections", "specs", "ddp", "--minutes", "0.01"], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    record = json.loads(next((tmp_path / "out").glob("*.json")).read_text())
    rows = record["specs"]["rows"]
    assert rows[0]["status"] == "failed" and rows[0]["error"] == "killed at the section's deadline"
    assert all(r["status"] == "not run" for r in rows[1:]) and record["ddp"]["status"] == "failed"
    assert [g["verdict"] for g in record["goals"][-2:]] == ["NOT met", "NOT met"]
    leftovers = [p for p in Path("/proc").glob("[0-9]*") if str(scratch) in _cmdline(p)]
    assert not leftovers, [_cmdline(p) for p in leftovers]


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = gpu_check.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.err


def test_missing_pack_is_one_message_before_anything_runs(tmp_path: Path, capsys) -> None:
    code, err = _run(capsys, str(tmp_path / "out"), "--dry-run", "--pack", str(tmp_path / "none.pack"))
    assert code != 0 and "none.pack: no such pack" in err and "python -m vitgraph.benchmarks.datapack" in err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


@needs_cifar
def test_truncated_pack_is_refused(pack: Path, tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.pack"
    bad.write_bytes(pack.read_bytes()[: 1 << 20])
    code, err = _run(capsys, str(tmp_path / "out"), "--dry-run", "--pack", str(bad))
    assert code != 0 and "is not a complete vitgraph pack" in err and "Traceback" not in err


def test_altered_payload_is_refused_and_nothing_is_unpacked(tmp_path: Path) -> None:
    source = tmp_path / "mini"
    for name in ("train/a/0.jpg", "train/b/1.jpg", "test/a/2.jpg"):
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_bytes(name.encode() * 10)
    path = tmp_path / "mini.pack"
    datapack.pack(source, path)
    assert (datapack.unpack(path, tmp_path / "ok") / "train/b/1.jpg").read_bytes() == b"train/b/1.jpg" * 10
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(datapack.UserError, match="checksum differs"):
        datapack.unpack(path, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_pack_of_a_missing_or_empty_folder_is_one_message(tmp_path: Path, capsys) -> None:
    assert datapack.main([str(tmp_path / "nowhere"), "-o", str(tmp_path / "x.pack")]) == 2
    assert "nowhere: no such folder" in capsys.readouterr().err
    (tmp_path / "empty" / "train").mkdir(parents=True)
    assert datapack.main([str(tmp_path / "empty"), "-o", str(tmp_path / "x.pack")]) == 2
    assert "no image files found" in capsys.readouterr().err and not (tmp_path / "x.pack").exists()


def test_outdir_is_required(capsys) -> None:
    code, err = _run(capsys, "--dry-run")
    assert code == 2 and "give the folder" in err


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the message shown without a GPU")
def test_no_gpu_without_dry_run_is_refused(tmp_path: Path, capsys) -> None:
    code, err = _run(capsys, str(tmp_path / "out"), "--sections", "specs")
    assert code == 2 and "torch sees no GPU" in err and "--dry-run" in err and not (tmp_path / "out").exists()


def test_timed_jobs_first_and_the_rest_balanced_by_graph_size() -> None:
    jobs = [{"id": n, "timed": n.startswith("t"), "size": s}
            for n, s in (("a", 50), ("t1", 10), ("b", 40), ("c", 30), ("t2", 20), ("d", 5))]
    lists = deal(jobs, 2)
    assert [js[0]["id"] for js in lists] == ["t2", "t1"]
    assert sorted(j["id"] for js in lists for j in js) == sorted(j["id"] for j in jobs)
    loads = [sum(j["size"] for j in js) for js in lists]
    assert max(loads) - min(loads) <= max(j["size"] for j in jobs)
    assert len(deal(jobs, 16)) == len(jobs)


def test_every_spec_is_checked_on_the_gpu_plan() -> None:
    jobs = gpu_check.check_jobs(GPU, timm_present=True)
    ours = [j for j in jobs if j["impl"] == "vitgraph"]
    assert sorted(j["model"] for j in ours) == sorted(p.stem for p in SPECS) and all(j["compile"] for j in jobs)
    timed = {j["id"]: j["batch"] for j in jobs if j["timed"]}
    assert timed == {"vitgraph-vit": 512, "vitgraph-deit_tiny": 256, "vitgraph-deit_small": 256,
                     "timm-vit": 512, "timm-deit_tiny": 256, "timm-deit_small": 256}
    assert all(j["batch"] == GPU.check_batch and not j["infer"] for j in ours if not j["timed"])


def _row(model: str, impl: str, mode: str, train: float) -> dict:
    stat = {"median": train, "q1": train, "q3": train, "min": train, "max": train, "n": 1}
    return {"model": model, "impl": impl, "mode": mode, "batch": 256, "params": 5.7e6, "train_img_s": stat,
            "infer_img_s": stat}


def _gpu_record() -> dict:
    """A record in the shape a GPU run writes (no figure in it was measured)."""
    env = {"cpu": "x", "cpu_count": 16, "load_avg_1min": 0.5, "git_commit": None, "source_digest": "0" * 16,
           "date": "d", "versions": {"torch": "2.11.0", "triton": "3.6.0", "timm": "1.0", "python": "3.12.3"},
           "cuda": {"name": "NVIDIA H200", "capability": "9.0", "memory_gib": 139.8, "multiprocessors": 132,
                    "driver": "580.159.03", "cuda_runtime": "13.0", "cudnn": 91000, "nccl": "2.27.7"}}
    profile = {"what": "CUDA kernels", "steps": 5, "wall_ms_per_step": 12.0, "busy_ms_per_step": 6.0,
               "busy_fraction": 0.5, "calls_per_step": 900.0,
               "top": [{"name": "sm90_xmma_gemm_bf16", "calls_per_step": 40.0, "ms_per_step": 2.0, "share": 0.33}]}
    return {"dry_run": False, "environment": env, "failed_sections": {}, "seconds": 500.0,
            "specs": {"workers": 8, "compile_backend": "inductor", "rows": [
                {"job": "vitgraph-vit", "impl": "vitgraph", "model": "vit", "batch": 512, "mode": "compiled",
                 "status": "ok", "loss": 2.3, "first_train_step_s": 40.0, "first_inference_s": 10.0,
                 "max_rel_diff_vs_eager": 0.2, "graphs": 2, "graph_breaks": 0, "peak_gib": 3.1,
                 "params_without_grad": 0},
                {"job": "timm-vit", "impl": "timm", "model": "vit", "batch": 512, "mode": "compiled",
                 "status": "failed", "error": "killed at the section's deadline"}]},
            "ddp": {"status": "ok", "launcher": "torchrun", "backend": "nccl", "nccl": "2.27.7", "world_size": 1,
                    "loss": 2.3, "single_process_loss": 2.3, "grad_max_rel_diff": 1e-3, "fused_adamw": True,
                    "compiled_loss": 2.2, "compiled_step_s": 30.0, "seconds": 40.0},
            "throughput": {"dtype": "bf16", "warmup": 3, "repeats": 10, "iters": 5, "timm_note": None, "notes": [],
                           "failed": {}, "profiles": {"vit": {"vitgraph compiled": profile}},
                           "rows": [_row("vit", "vitgraph", "eager", 9000), _row("vit", "vitgraph", "compiled", 15000),
                                    _row("vit", "timm", "eager", 10000), _row("deit_tiny", "vitgraph", "eager", 8000),
                                    _row("deit_tiny", "timm", "eager", 3900)]},
            "cifar10": {"recipe": "small-datasets", "recipe_set": {}, "train_images": 50000, "images_per_epoch": 150000,
                        "budget_s": 90.0, "models": {
                            "vit": {"probe_img_s": 6000.0, "epochs": 3, "train_time_s": 80.0, "wall_time_s": 85.0,
                                    "train_img_s": 5600.0, "top1": 50.1, "top5": 93.0, "best_top1": 50.1,
                                    "best_epoch": 3},
                            "sl_vit": {"probe_img_s": 5000.0, "epochs": 3, "train_time_s": 88.0,
                                       "wall_time_s": 93.0, "train_img_s": 5100.0, "top1": 52.3, "top5": 94.0,
                                       "best_top1": 52.3, "best_epoch": 3}}}}


def test_goals_compare_our_best_mode_with_timm_eager() -> None:
    verdicts = {g["goal"].split(":")[0]: (g["measured"], g["verdict"]) for g in goals(_gpu_record())}
    assert verdicts["vit"] == ("1.50x (compiled)", "NOT met")
    assert verdicts["deit_tiny"] == ("2.05x (eager)", "met")
    assert verdicts["CIFAR-10 at equal time"] == ("52.30% vs 50.10%", "met")
    assert verdicts["every spec"] == ("1/2 ok", "NOT met") and verdicts["one DDP step through torchrun"][1] == "met"


def test_gpu_markdown_names_the_machine_and_where_the_time_goes() -> None:
    record = _gpu_record()
    record["goals"] = goals(record)
    text = markdown(record)
    assert text.startswith("# GPU check: NVIDIA H200\n")
    assert "driver 580.159.03, CUDA 13.0, cuDNN 91000, NCCL 2.27.7" in text and "commit unknown (no .git)" in text
    assert "| vit: torch backend training >= 2x timm eager img/s | 1.50x (compiled) | NOT met |" in text
    assert "| vit | vitgraph | 512 | compiled | ok | 2.300 | 40.0 | 10.0 | 2 | 0 | 2.0e-01 (look) |" in text
    assert "failed: killed at the section's deadline" in text
    assert "### Where the time goes: vit, vitgraph compiled training step (5 profiled steps)" in text
    assert "| `sm90_xmma_gemm_bf16` | 40.0 | 2.0 | 33.0% |" in text and "900 CUDA kernels per step" in text
    assert "| sl_vit | 5,000 | 3 | 88.0 | 93.0 | 5,100 | 52.30 | 94.00 | 52.30 (3) |" in text
    assert "Backend nccl (NCCL 2.27.7), world size 1" in text and "compiled DDP step loss 2.2000" in text


def test_compiled_variants_left_out_when_their_check_failed_or_time_is_short() -> None:
    record = _gpu_record()
    skip, why = compiled_skip("vit", GPU, record, time.monotonic() + 300)
    assert skip == {"timm"} and "timm compiled left out" in why[0]
    skip, why = compiled_skip("vit", GPU, record, time.monotonic() + 40)  # 50 s of cold compiles, 40 s left
    assert skip == {"vitgraph", "timm"} and "compiling took 50 s" in why[-1]
    skip, why = compiled_skip("deit_tiny", GPU, record, time.monotonic() + 300)
    assert skip == {"vitgraph", "timm"} and "vitgraph compiled left out: its compile check was not run" in why[1]
    assert compiled_skip("vit", GPU, {}, time.monotonic())[0] == set()  # no checks asked for: compile and see
    assert compiled_skip("vit", DRY_RUN, record, time.monotonic())[0] == {"vitgraph", "timm"}  # eager only


def test_sections_share_the_budget_in_order() -> None:
    ends = gpu_check.deadlines(100.0, 1000.0, set(gpu_check.SECTIONS))
    assert list(ends) == ["checks", "throughput", "cifar10"]
    assert [round(v) for v in ends.values()] == [420, 720, 1100]
    assert gpu_check.deadlines(100.0, 1000.0, {"cifar10"}) == {"cifar10": 1100.0}
    assert [round(v) for v in gpu_check.deadlines(0.0, 620.0, {"ddp", "throughput"}).values()] == [320, 620]


def test_source_digest_names_the_sources_and_nothing_else(tmp_path: Path) -> None:
    (tmp_path / "vitgraph").mkdir()
    (tmp_path / "specs").mkdir()
    (tmp_path / "vitgraph" / "a.py").write_text("x = 1\n")
    (tmp_path / "specs" / "m.vg").write_text("param image = 32\n")
    first = gpu_check.source_digest(tmp_path)
    (tmp_path / "vitgraph" / "a.cpython-312.pyc").write_bytes(b"compiled")
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "b.py").write_text("y = 2\n")
    assert gpu_check.source_digest(tmp_path) == first
    (tmp_path / "specs" / "m.vg").write_text("param image = 64\n")
    assert gpu_check.source_digest(tmp_path) != first and len(first) == 16
