"""Results that survive faults: appends to runs.jsonl are whole lines or nothing (a torn tail is
set aside, never glued onto), a failed append is one error after which nothing is lost, two
benches on one results folder write each record once, the report keeps configurations apart,
and what a killed write leaves behind (a torn budget.json, a temporary file) breaks nothing."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
from bench_helpers import make_record, offline_options, suite_file
from fault_helpers import file_size_limit, read_only
from train_helpers import write_specs

from vitgraph.benchmarks import harness as H
from vitgraph.benchmarks import report as R
from vitgraph.benchmarks.results import ResultStore, read_records
from vitgraph.benchmarks.suite import load_suite, narrow
from vitgraph.cli import main
from vitgraph.diagnostics import UserError
from vitgraph.fileio import folder_lock, remove_stale_temps, write_atomic
from vitgraph.train import loop


def _line(record: dict) -> str:
    return json.dumps(record, sort_keys=True) + "\n"


# --- runs.jsonl ----------------------------------------------------------------------------------

def test_torn_tail_is_set_aside_before_the_next_append(tmp_path, capsys):
    store = ResultStore(tmp_path)
    first, torn = make_record("vit", "digits", 90.0), _line(make_record("pit", "digits", 80.0))[:50]
    store.path.write_text(_line(first) + torn)  # an append cut short
    second = make_record("sl_vit", "digits", 95.0)
    store.append(second)
    assert store.records() == [first, second]
    assert store.path.read_text() == _line(first) + _line(second)
    assert (tmp_path / "runs.jsonl.torn").read_text() == torn + "\n"  # kept for a look, not lost
    assert f"note: {store.path} ended in a torn line (50 bytes" in capsys.readouterr().err


def test_last_record_without_its_newline_is_completed_not_dropped(tmp_path):
    store = ResultStore(tmp_path)
    first = make_record("vit", "digits", 90.0)
    store.path.write_text(_line(first).rstrip("\n"))
    store.append(make_record("pit", "digits", 80.0))
    assert [r["spec"] for r in store.records()] == ["vit", "pit"] and not (tmp_path / "runs.jsonl.torn").exists()


def test_failed_append_leaves_no_part_of_its_line(tmp_path):
    store = ResultStore(tmp_path)
    store.append(make_record("vit", "digits", 90.0))
    before = store.path.read_bytes()
    with file_size_limit(len(before) + 100), pytest.raises(UserError) as e:  # the disk fills mid-line
        store.append(make_record("pit", "digits", 80.0))
    assert e.value.message == f"cannot write {store.path}: File too large; the previous runs.jsonl is unchanged"
    assert store.path.read_bytes() == before
    store.append(make_record("sl_vit", "digits", 95.0))
    assert [r["spec"] for r in read_records(store.path)] == ["vit", "sl_vit"]


def test_failed_append_in_a_bench_is_one_error_and_the_training_is_kept(tmp_path):
    suite = narrow(load_suite(str(suite_file(tmp_path))), specs=["tiny"])
    store = ResultStore(tmp_path / "res")
    (store.folder / "runs").mkdir(parents=True)
    with read_only(store.folder):  # run folders can be written, runs.jsonl cannot
        with pytest.raises(UserError) as e:
            H.run_suite(suite, store, offline_options(tmp_path), lambda _: None)
    folder = next((store.folder / "runs").iterdir())
    assert e.value.message.startswith(f"tiny@digits: the record could not be saved: cannot write {store.path}: ")
    assert str(folder) in e.value.hint and "not repeated" in e.value.hint
    trained = (folder / "metrics.csv").read_text()
    outcome = H.run_suite(suite, store, offline_options(tmp_path), lambda _: None)  # the same command again
    assert [r["run"] for r in outcome.done] == ["tiny@digits"] and len(store.records()) == 1
    assert (folder / "metrics.csv").read_text() == trained  # not trained again


def _bench(path: Path, results: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "vitgraph.cli", "bench", "--suite", str(path), "--results",
                             str(results), "--no-report", "--threads", "1"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def test_two_benches_on_one_results_folder_write_each_record_once(tmp_path):
    """Two real processes started together on one suite and one results folder."""
    path = suite_file(tmp_path, epochs=2)
    results = tmp_path / "res"
    first, second = _bench(path, results), _bench(path, results)
    outputs = [p.communicate(timeout=600)[0] for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], outputs
    records = ResultStore(results).records()
    assert sorted(r["run"] for r in records) == ["tiny2@digits", "tiny@digits"], outputs
    for folder in (results / "runs").iterdir():  # each run trained once: two epochs, no repeat
        assert [line.split(",")[0] for line in (folder / "metrics.csv").read_text().splitlines()[1:]] == ["1", "2"]


def test_second_bench_waits_for_a_run_in_progress_then_skips_it(tmp_path):
    """Another process holds the first run's folder: the bench says which and waits; once that
    process has written the run's record and let go, the bench skips the run."""
    path = suite_file(tmp_path)
    results = tmp_path / "res"
    first = H.plan(load_suite(str(path)).runs)[0]
    folder = ResultStore(results).run_folder(first.run.id, first.digest)
    record = make_record("tiny", "digits", 50.0, digest=first.digest, image=8)
    code = ("import json, sys; from pathlib import Path; from vitgraph.fileio import folder_lock\n"
            "from vitgraph.benchmarks.results import ResultStore\n"
            f"with folder_lock({str(folder)!r}):\n"
            "    print('held', flush=True); sys.stdin.readline()\n"
            f"    ResultStore(Path({str(results)!r})).append(json.loads({json.dumps(record)!r}))\n")
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    bench = _bench(path, results)
    seen = [line for line in _lines_until(bench, "waiting for")]
    assert f"waiting for {folder}: in use by process {holder.pid} on " in seen[-1], seen
    holder.communicate("done\n", timeout=60)
    rest = bench.communicate(timeout=600)[0]
    assert bench.returncode == 0, rest
    assert "    finished meanwhile by another process" in rest
    assert [(r["run"], r["metrics"]["top1"]) for r in ResultStore(results).records()][0] == ("tiny@digits", 50.0)
    assert sorted(r["run"] for r in ResultStore(results).records()) == ["tiny2@digits", "tiny@digits"]


def _lines_until(process: subprocess.Popen, text: str) -> Iterator[str]:
    """The process's output lines up to the first holding `text` (all of them if none does)."""
    for line in process.stdout:
        yield line
        if text in line:
            return


def test_a_run_folder_in_use_says_which_process_holds_it(tmp_path, capsys):
    spec, _ = write_specs(tmp_path / "specs")
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from vitgraph.fileio import folder_lock\n"
                               f"with folder_lock({str(tmp_path / 'run')!r}):\n"
                               "    print('held', flush=True); time.sleep(600)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        assert main(["train", str(spec), "--out", str(tmp_path / "run"), "--epochs", "1", "--device", "cpu"]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"error: {tmp_path / 'run'} is in use by process {holder.pid} on ")
        assert "hint: wait until it has finished, or choose another folder" in err
        with pytest.raises(UserError, match="is in use by process"):
            with folder_lock(tmp_path / "run"):
                pass
    finally:
        holder.kill()
        holder.wait()
    with folder_lock(tmp_path / "run"), folder_lock(tmp_path / "run"):  # free once its holder is gone; nests
        pass


# --- the report ----------------------------------------------------------------------------------

def test_report_keeps_configurations_apart():
    """A suite run again with other overrides: each configuration its own row, figures unmixed."""
    small = make_record("vit", "cifar10", 90.0, ops=1e8, image=32, digest="a")
    large = make_record("vit", "cifar10", 70.0, ops=4e8, image=64, digest="b")
    large_svhn = make_record("vit", "svhn", 95.0, ops=4e8, image=64, digest="c")
    other = make_record("pit", "cifar10", 80.0, ops=2e8, image=32, digest="d")
    header, rows = R.paper_table([small, other, large, large_svhn])
    table = {row[0]: dict(zip(header, row)) for row in rows}
    assert list(table) == ["vit (image=32)", "pit", "vit (image=64)"]
    assert table["vit (image=32)"]["cifar10 top-1"] == "90.00" and table["vit (image=32)"]["OPs (G)"] == "0.100"
    assert table["vit (image=32)"]["svhn top-1"] == "–"
    assert table["vit (image=64)"]["cifar10 top-1"] == "70.00" and table["vit (image=64)"]["svhn top-1"] == "95.00"
    assert table["vit (image=64)"]["OPs (G)"] == "0.400"
    again = make_record("vit", "cifar10", 91.0, ops=1e8, image=32, digest="a")  # the same configuration rerun
    _, rows = R.paper_table([small, large, again])
    assert [row[:2] for row in rows] == [["vit (image=32)", "91.00"], ["vit (image=64)", "70.00"]]


def test_suite_rerun_with_other_overrides_reports_both(tmp_path, capsys):
    path = suite_file(tmp_path)
    results = tmp_path / "res"
    common = ["bench", "--suite", str(path), "--results", str(results), "--no-report"]
    assert main(common) == 0
    assert main([*common, "--specs", "tiny", "--set", "image=16"]) == 0
    capsys.readouterr()
    assert main(["report", str(results), "--no-plots"]) == 0
    rows = [line.split("  ")[0].strip() for line in capsys.readouterr().out.splitlines()[2:5]]
    assert sorted(rows) == ["tiny (image=16)", "tiny (image=8)", "tiny2"]  # the terminal's aligned table
    assert "| tiny (image=8) |" in (results / "report.md").read_text()


# --- what a killed write leaves behind -----------------------------------------------------------

def _killed_while_writing(path: Path) -> None:
    """A process killed (SIGKILL) in the middle of write_atomic(path, ...)."""
    code = ("import time; from vitgraph.fileio import write_atomic\n"
            f"write_atomic({str(path)!r}, lambda tmp: (tmp.write_text('{{\"epo'), print('writing', flush=True), "
            "time.sleep(600)))")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline() == "writing\n"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()


def test_kill_while_budget_json_is_written_keeps_resume_working(tmp_path):
    suite = narrow(load_suite(str(suite_file(tmp_path))), specs=["tiny"], minutes=0.5)
    p = H.plan(suite.runs)[0]
    folder = tmp_path / "run"
    folder.mkdir()
    _killed_while_writing(folder / "budget.json")
    assert not (folder / "budget.json").exists() and len(list(folder.glob(".budget.json.tmp*"))) == 1
    assert H.budget(p, folder, 100.0, 1437) == H.Budget(3, 23)  # chosen afresh, written whole
    assert json.loads((folder / "budget.json").read_text())["max_steps"] == 23
    assert list(folder.glob(".budget.json.tmp*")) == []  # the killed write's file, removed by the next
    (folder / "budget.json").write_text('{"epo')  # torn by an older, non-atomic version
    assert H.budget(p, folder, 100.0, 1437) == H.Budget(3, 23)


def test_stale_temporary_files_are_those_of_dead_processes(tmp_path):
    _killed_while_writing(tmp_path / "a.json")
    write_atomic(tmp_path / "b.json", lambda tmp: (tmp.write_text("{}"), (tmp_path / "during").write_text(
        " ".join(p.name for p in remove_stale_temps(tmp_path)))))
    assert (tmp_path / "during").read_text().startswith(".a.json.tmp")  # not the live write's own file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.json", "during"]


def test_temporary_file_of_a_killed_checkpoint_write_is_removed_on_start(tmp_path):
    spec, _ = write_specs(tmp_path / "specs")
    run = dict(epochs=1, out=tmp_path / "run", progress=False, device="cpu",
               overrides={"warmup_epochs": "0", "batch_size": "256"})
    loop.run(str(spec), "digits", "digits", **run)
    _killed_while_writing(tmp_path / "run" / "last.pt")
    left = list((tmp_path / "run").glob(".last.pt.tmp*"))
    assert len(left) == 1
    loop.run(str(spec), "digits", "digits", **{**run, "epochs": 2}, resume=True)
    assert not left[0].exists()
    notes = json.loads((tmp_path / "run" / "config.json").read_text())["notes"]
    assert f"removed {left[0].name}, left by a write that was killed" in notes
