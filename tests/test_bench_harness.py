"""The harness on a tiny spec and the embedded digits: a suite runs, writes one record per
run with figures and conditions, skips finished runs when run again, resumes an interrupted
run from its checkpoint, and reports a missing dataset once while the rest of the suite runs."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from bench_helpers import offline_options as _opts
from bench_helpers import suite_file as _suite_file

from vitgraph.benchmarks import harness as H
from vitgraph.benchmarks.results import ResultStore
from vitgraph.benchmarks.suite import load_suite, narrow
from vitgraph.cli import main


def test_suite_runs_then_skips(tmp_path):
    suite = load_suite(str(_suite_file(tmp_path, measure="batch = 4\nwarmup = 1\nrepeats = 2")))
    store = ResultStore(tmp_path / "res")
    lines: list[str] = []
    outcome = H.run_suite(suite, store, _opts(tmp_path), lines.append)
    assert [r["run"] for r in outcome.done] == ["tiny@digits", "tiny2@digits"] and not outcome.failed
    records = store.records()
    assert len(records) == 2
    r = records[0]
    assert r["status"] == "ok" and r["suite"] == "t" and r["spec_hash"] == H.compile_run(suite.runs[0]).spec.hash
    assert 0 <= r["metrics"]["top1"] <= r["metrics"]["top5"] <= 100 and r["metrics"]["epochs"] == 1
    assert r["counts"]["params"] > 0 and r["counts"]["ops"] == r["counts"]["macs"]
    assert r["torch"]["train_img_s"]["median"] > 0 and r["torch"]["infer_img_s"]["n"] == 2
    assert r["onnx_cpu"]["latency_ms"]["median"] > 0 and r["onnx_cpu"]["throughput_img_s"]["median"] > 0
    assert r["overrides"] == {"image": 8} and r["recipe"] == "digits" and r["seed"] == 0
    assert r["spec_params"]["image"] == 8 and r["spec_params"]["patch"] == 4  # recipe [spec] < suite
    cond = r["conditions"]
    assert cond["device"] == "cpu" and cond["cpu"] and cond["versions"]["torch"] and "git_commit" in cond
    assert (store.folder / r["metrics"]["run_dir"] / "last.pt").is_file()

    lines.clear()
    again = H.run_suite(suite, store, _opts(tmp_path), lines.append)
    assert not again.done and [p.run.id for p in again.skipped] == ["tiny@digits", "tiny2@digits"]
    assert len(store.records()) == 2 and "2 run(s) already in" in lines[0]

    more = narrow(suite, specs=["tiny"], epochs=2)  # a new budget is a new result
    assert [r["run"] for r in H.run_suite(more, store, _opts(tmp_path), lines.append).done] == ["tiny@digits"]


def test_interrupted_run_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    import vitgraph.train.loop as loop

    suite = narrow(load_suite(str(_suite_file(tmp_path, epochs=2))), specs=["tiny"])
    store = ResultStore(tmp_path / "res")
    real = loop.evaluate_model
    calls = {"n": 0}

    def interrupt_in_epoch_2(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "evaluate_model", interrupt_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        H.run_suite(suite, store, _opts(tmp_path), lambda _: None)
    assert store.records() == []
    folder = next((store.folder / "runs").iterdir())
    first = list(csv.DictReader((folder / "metrics.csv").open()))
    assert len(first) == 1 and (folder / "last.pt").is_file()

    monkeypatch.setattr(loop, "evaluate_model", real)
    outcome = H.run_suite(suite, store, _opts(tmp_path), lambda _: None)
    assert outcome.done[0]["metrics"]["epochs"] == 2
    rows = list(csv.DictReader((folder / "metrics.csv").open()))
    assert len(rows) == 2 and rows[0] == first[0]  # epoch 1 was not trained again
    assert "resumed from" in " ".join(json.loads((folder / "config.json").read_text())["notes"])


def test_missing_dataset_is_reported_once_and_the_rest_runs(tmp_path, capsys):
    path = _suite_file(tmp_path, datasets='["cifar100", "digits"]')
    results = tmp_path / "res"
    status = main(["bench", "--suite", str(path), "--results", str(results), "--data-root", str(tmp_path / "none"),
                   "--no-download", "--no-report"])
    out = capsys.readouterr()
    assert status == 1
    assert out.err.count("dataset 'cifar100' not found") == 1
    assert "cifar-100-python.tar.gz" in out.err and "left out: tiny@cifar100, tiny2@cifar100" in out.err
    assert "missing dataset(s): cifar100 (2 run(s) left out)" in out.err
    table = out.out.split("\n\n")[-1].splitlines()  # the table of what ran, aligned for the terminal
    assert table[0].startswith("spec   digits top-1") and [row.split()[0] for row in table[2:4]] == ["tiny", "tiny2"]
    assert [r["run"] for r in ResultStore(results).records()] == ["tiny@digits", "tiny2@digits"]


def test_bad_recipe_is_caught_before_anything_trains(tmp_path):
    path = _suite_file(tmp_path)
    path.write_text(path.read_text().replace("[budget]", "[spec.tiny2]\nrecipe_set = { lr = -1 }\n[budget]"))
    with pytest.raises(H.UserError, match="lr = -1.0 is out of range; expected lr > 0"):
        H.plan(load_suite(str(path)).runs)


def test_failed_run_is_recorded_and_the_suite_goes_on(tmp_path):
    path = _suite_file(tmp_path)  # tiny distils from tiny2, which comes later: tiny fails, tiny2 runs
    path.write_text(path.read_text().replace("[budget]", '[spec.tiny]\ndistill = "kd"\nteacher = "tiny2"\n[budget]'))
    lines: list[str] = []
    outcome = H.run_suite(load_suite(str(path)), ResultStore(tmp_path / "res"), _opts(tmp_path), lines.append)
    assert [r["run"] for r in outcome.failed] == ["tiny@digits"] and [r["run"] for r in outcome.done] == ["tiny2@digits"]
    assert outcome.failed[0]["status"] == "failed" and "has not finished" in outcome.failed[0]["error"]
    assert any(line.startswith("error: tiny@digits: tiny@digits distils from tiny2@digits") for line in lines)
    assert [r["status"] for r in ResultStore(tmp_path / "res").records()] == ["failed", "ok"]


def test_distilling_run_needs_its_teacher_first(tmp_path):
    path = _suite_file(tmp_path)
    path.write_text(path.read_text().replace("[budget]", '[spec.tiny2]\ndistill = "kd"\nteacher = "tiny"\n[budget]'))
    suite = load_suite(str(path))
    store = ResultStore(tmp_path / "res")
    everything = H.plan(suite.runs)
    student = everything[1]
    with pytest.raises(H.UserError, match="tiny2@digits distils from tiny@digits, which has not finished"):
        H.find_teacher(student, everything, store)
    outcome = H.run_suite(suite, store, _opts(tmp_path), lambda _: None)
    assert [r["run"] for r in outcome.done] == ["tiny@digits", "tiny2@digits"]
    teacher = H.find_teacher(student, everything, store)
    assert teacher.weights.endswith("last.pt") and Path(teacher.weights).is_file()
    assert teacher.overrides == {"image": 8}


def test_shards_write_into_one_folder(tmp_path):
    path = _suite_file(tmp_path)
    results = tmp_path / "res"
    for i in (1, 2):
        assert main(["bench", "--suite", str(path), "--results", str(results), "--shard", f"{i}/2",
                     "--no-report"]) == 0
    assert sorted(r["run"] for r in ResultStore(results).records()) == ["tiny2@digits", "tiny@digits"]
    assert main(["bench", "--suite", str(path), "--results", str(results), "--list"]) == 0


def test_minutes_budget_end_to_end(tmp_path):
    path = _suite_file(tmp_path, measure="batch = 8\nwarmup = 1\nrepeats = 2\nonnx_cpu = false")
    suite = narrow(load_suite(str(path)), specs=["tiny"], minutes=0.02, epochs=3)
    store = ResultStore(tmp_path / "res")
    record = H.run_suite(suite, store, _opts(tmp_path), lambda _: None).done[0]
    kept = json.loads((store.folder / record["metrics"]["run_dir"] / "budget.json").read_text())
    assert 1 <= kept["epochs"] <= 3 and record["minutes"] == 0.02
    assert 1 <= record["metrics"]["steps"] <= kept["max_steps"] and record["metrics"]["epochs"] <= kept["epochs"]
    assert kept["train_img_s"] == record["torch"]["train_img_s"]["median"]


def test_minutes_budget_becomes_steps_kept_for_resume(tmp_path):
    suite = narrow(load_suite(str(_suite_file(tmp_path))), specs=["tiny"], minutes=0.5)
    p = H.plan(suite.runs)[0]
    folder = tmp_path / "run"
    # batch 128, 1437 images: 11 steps per epoch; 30 s x 100 img/s = 3000 images -> 23 steps in 3 epochs
    assert H.budget(p, folder, 100.0, 1437) == H.Budget(3, 23)
    assert H.budget(p, folder, 1e6, 1437) == H.Budget(3, 23)  # the first choice is kept
    assert H.budget(p, tmp_path / "other", 1.0, 1437) == H.Budget(1, 1)  # at least one step


def test_step_budget_and_subset_set_the_epochs(tmp_path):
    suite = narrow(load_suite(str(_suite_file(tmp_path))), specs=["tiny"], max_steps=25, subset=640)
    p = H.plan(suite.runs)[0]
    assert (p.run.epochs, p.run.max_steps, p.run.subset) == (None, 25, 640)
    # 640 images at batch 128: 5 steps per epoch, so 25 steps are 5 epochs of the recipe's 30
    assert H.budget(p, tmp_path / "run", None, 1437) == H.Budget(5, 25)


@pytest.mark.slow
def test_torchrun_two_processes_share_one_process_group(tmp_path):
    """`--nproc 2` relaunches under torchrun (gloo on CPU): both runs train on 2 processes, rank 0
    alone measures, chooses the epochs of the minutes budget and the teacher, and writes."""
    import subprocess
    import sys

    path = _suite_file(tmp_path, measure="batch = 4\nwarmup = 1\nrepeats = 2")
    path.write_text(path.read_text().replace("[budget]", '[spec.tiny2]\ndistill = "kd"\nteacher = "tiny"\n[budget]'))
    vitgraph = Path(sys.executable).parent / "vitgraph"
    done = subprocess.run([str(vitgraph), "bench", "--suite", str(path), "--results", str(tmp_path / "res"),
                           "--nproc", "2", "--minutes", "0.05", "--epochs", "2", "--no-report"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    records = ResultStore(tmp_path / "res").records()
    assert [(r["run"], r["status"], r["metrics"]["world_size"]) for r in records] == [
        ("tiny@digits", "ok", 2), ("tiny2@digits", "ok", 2)]
    assert all(1 <= r["metrics"]["epochs"] <= 2 for r in records)


@pytest.mark.slow
def test_smoke_subset_end_to_end(tmp_path, capsys):
    """The real smoke suite, narrowed to ViT for one epoch: trains on digits, measures, reports."""
    root = Path(__file__).resolve().parents[1]
    assert main(["bench", "--specs", "vit", "--epochs", "1", "--results", str(tmp_path / "res"),
                 "--specs-dir", str(root / "specs")]) == 0
    out = capsys.readouterr().out
    assert "| vit |" in out and (tmp_path / "res" / "accuracy_vs_ops.png").is_file()
    record = ResultStore(tmp_path / "res").records()[0]
    assert record["suite"] == "smoke" and record["spec_params"]["image"] == 12 and record["metrics"]["epochs"] == 1


def test_failed_download_still_says_where_the_files_go(tmp_path, monkeypatch):
    import vitgraph.data.datasets as D

    def offline(remote, directory):
        raise H.UserError(f"could not download {remote.url}: no network")

    monkeypatch.setattr(D, "fetch", offline)
    opts = H.Options(data_root=str(tmp_path), download=True)
    with pytest.raises(H.UserError) as e:
        H.dataset_size("cifar100", opts)
    assert e.value.message.startswith(f"dataset 'cifar100' not found: looked for {tmp_path / 'cifar-100-python'}")
    assert "could not download https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz" in e.value.message
    assert "cifar.html" in e.value.hint


def test_nproc_without_gpus_is_refused_before_anything_starts(tmp_path, capsys):
    path = _suite_file(tmp_path)
    path.write_text(path.read_text().replace('device = "cpu"\n', ""))  # the suite's runs want a GPU when there is one
    assert main(["bench", "--suite", str(path), "--results", str(tmp_path / "res"), "--nproc", "8"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --nproc 8 needs 8 GPUs, and this machine has 0") and "--device cpu" in err
    assert not (tmp_path / "res").exists()
    assert main(["bench", "--suite", str(path), "--results", str(tmp_path / "res"), "--nproc", "8", "--list"]) == 0
    assert capsys.readouterr().out.count("tiny@digits") == 1  # listed once, by this process


def test_interrupted_bench_says_how_to_resume(tmp_path, monkeypatch, capsys):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(H, "execute", interrupt)
    path = _suite_file(tmp_path)
    assert main(["bench", "--suite", str(path), "--results", str(tmp_path / "res")]) == 130
    err = capsys.readouterr().err
    assert "interrupted: finished runs are kept in" in err and "run the same command again" in err
