"""The CLI under faults: an internal error is one line and exit 70 (the traceback only with
--debug); every output place is checked before any work (a folder given as a file, a file
given as a folder, a read-only place); a full disk while writing keeps the previous file."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import pytest
from bench_helpers import make_record
from fault_helpers import file_size_limit, read_only
from train_helpers import write_specs

import vitgraph.commands.bench
import vitgraph.commands.check
from spec_helpers import ROOT
from vitgraph.backends.torch_backend import read_checkpoint
from vitgraph.cli import EX_SOFTWARE, main

VIT = str(ROOT / "specs" / "vit.vg")


def _err(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


# --- the last resort -----------------------------------------------------------------------------

def _a_bug(args):
    return {}["no such key"]  # any exception vitgraph did not anticipate


def test_internal_error_is_one_line_asking_for_a_report(monkeypatch, capsys):
    monkeypatch.setattr(vitgraph.commands.check, "run", _a_bug)
    assert main(["check", VIT]) == EX_SOFTWARE == 70
    err = _err(capsys)
    assert err.count("\n") == 1 and err.startswith("internal error in `vitgraph check` (KeyError: 'no such key')")
    assert "please report it" in err and "--debug" in err


def test_debug_shows_the_traceback(monkeypatch, capsys):
    monkeypatch.setattr(vitgraph.commands.check, "run", _a_bug)
    assert main(["--debug", "check", VIT]) == EX_SOFTWARE
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):") and "in _a_bug" in err
    assert err.strip().splitlines()[-1].startswith("internal error in `vitgraph check`")


def test_bare_command_and_debug_alone_print_help_and_run_nothing(monkeypatch, capsys):
    ran = []  # issue 12: a bare `vitgraph` printed help nowhere and started a multi-minute run
    monkeypatch.setattr(vitgraph.commands.bench, "run", lambda args: ran.append(args.suite) or 0)
    assert main([]) == 0 and main(["--debug"]) == 0
    out = capsys.readouterr().out
    assert ran == [] and out.count("usage: vitgraph") == 2 and "`vitgraph bench`" in out


# --- output places, checked before any work ------------------------------------------------------

@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("results")
    (folder / "runs.jsonl").write_text(json.dumps(make_record("vit", "digits", 90.0)) + "\n")
    return folder


def _commands(tmp_path: Path, results: Path, spec: Path) -> dict[str, Callable[[Path], list[str]]]:
    """Each command with its output place as a function of that place."""
    suite = ROOT / "benchmarks" / "suites" / "smoke.toml"
    return {
        "build": lambda out: ["build", VIT, "-o", str(out)],
        "train": lambda out: ["train", str(spec), "--epochs", "1", "--out", str(out), "--device", "cpu"],
        "bench": lambda out: ["bench", "--suite", str(suite), "--specs", "vit", "--epochs", "1", "--results", str(out),
                              "--specs-dir", str(ROOT / "specs")],
        "report": lambda out: ["report", str(results), "-o", str(out), "--no-plots"],
        "show": lambda out: ["show", VIT, "-o", str(out)],
    }


FILE_OUTPUTS = ("build", "show")


@pytest.mark.parametrize("command", ["build", "train", "bench", "report", "show"])
def test_output_of_the_wrong_kind_is_refused_up_front(command, tmp_path, results, capsys):
    spec, _ = write_specs(tmp_path / "specs")
    argv = _commands(tmp_path, results, spec)[command]
    if command in FILE_OUTPUTS:
        (tmp_path / "a-folder").mkdir()
        wrong, message = tmp_path / "a-folder", f"error: cannot write '{tmp_path / 'a-folder'}': it is a folder"
    else:
        (tmp_path / "a-file").write_text("precious")
        wrong, message = tmp_path / "a-file", f"error: cannot write into '{tmp_path / 'a-file'}': it is a file"
    assert main(argv(wrong)) == 2
    assert _err(capsys).startswith(message)
    (tmp_path / "plain").write_text("precious")
    assert main(argv(tmp_path / "plain" / "out")) == 2  # below a file
    assert f"'{tmp_path / 'plain'}' is a file, not a folder" in _err(capsys)
    assert (tmp_path / "plain").read_text() == "precious"


@pytest.mark.parametrize("command", ["build", "train", "bench", "report", "show"])
def test_read_only_place_is_refused_up_front(command, tmp_path, results, capsys):
    spec, _ = write_specs(tmp_path / "specs")
    argv = _commands(tmp_path, results, spec)[command]
    with read_only(tmp_path / "locked") as locked:
        out = locked / ("m.pt" if command == "build" else "g.txt" if command == "show" else "out")
        assert main(argv(out)) == 2
        err = _err(capsys)
        assert err.startswith(f"error: cannot write '{out}': ") and f"in '{locked}'" in err
        assert list(locked.iterdir()) == []


# --- a full disk while writing -------------------------------------------------------------------

def test_full_disk_during_torch_build_keeps_the_previous_file(tmp_path, capsys):
    out = tmp_path / "vit.pt"
    assert main(["build", VIT, "-o", str(out)]) == 0
    before = out.read_bytes()
    capsys.readouterr()
    with file_size_limit(64 << 10):
        status = main(["build", VIT, "-o", str(out), "--set", "classes=7"])
    err = _err(capsys)
    assert status == 1 and err.startswith(f"error: cannot write {out}: ")
    assert "the previous vit.pt is unchanged" in err
    assert out.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["vit.pt"]


def test_full_disk_during_a_checkpoint_write_keeps_the_last_checkpoint(tmp_path, capsys):
    spec, _ = write_specs(tmp_path / "specs")
    argv = ["train", str(spec), "--out", str(tmp_path / "run"), "--device", "cpu", "--quiet",
            "--recipe-set", "warmup_epochs=0", "batch_size=256"]
    assert main([*argv, "--epochs", "1"]) == 0
    capsys.readouterr()
    with file_size_limit(64 << 10):  # config.json and metrics.csv fit; a checkpoint does not
        status = main([*argv, "--epochs", "2", "--resume"])
    err = _err(capsys)
    assert status == 1 and err.startswith(f"error: cannot write {tmp_path / 'run' / 'last.pt'}: ")
    assert read_checkpoint(tmp_path / "run" / "last.pt")["epoch"] == 1
    assert not list((tmp_path / "run").glob(".*.tmp*"))
