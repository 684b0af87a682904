"""The report from recorded results: the papers' table (rows specs, a top-1 column per
dataset, then size, operations and speed), its CSV twin, every run's CSV, and the plots."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from bench_helpers import make_record

from vitgraph.benchmarks import report as R
from vitgraph.cli import main
from vitgraph.diagnostics import UserError


def _records() -> list[dict]:
    return [
        make_record("vit", "cifar10", 93.58, ops=1.877e8, latency_ms=4.0),
        make_record("sl_vit", "cifar10", 94.53, ops=1.901e8, latency_ms=5.0),
        make_record("vit", "svhn", 97.82, ops=1.877e8),
        make_record("binaryvit", "cifar10", 70.0, ops=3.0e7, bops=1.9e9, latency_ms=9.0, image=160),
        make_record("vit", "cifar10", None, status="failed"),       # a failed rerun does not hide the result
        make_record("sl_vit", "svhn", 12.0, status="running"),      # not finished: not shown
    ]


def _write(folder: Path, records: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


def test_paper_table_shape_and_values():
    header, rows = R.paper_table(_records())
    assert header[:3] == ["spec", "cifar10 top-1", "svhn top-1"]
    assert {"params (M)", "OPs (G)", "BOPs (G)", "CPU latency (ms)", "train img/s"} <= set(header)
    table = {row[0]: dict(zip(header, row)) for row in rows}
    assert list(table) == ["vit", "sl_vit", "binaryvit"]
    assert table["vit"]["cifar10 top-1"] == "93.58" and table["vit"]["svhn top-1"] == "97.82"
    assert table["sl_vit"]["svhn top-1"] == "–"
    assert table["sl_vit"]["OPs (G)"] == "0.190" and table["binaryvit"]["BOPs (G)"] == "1.900"
    assert table["binaryvit"]["measured on"] == "cifar10 160px, cpu"
    assert table["vit"]["CPU latency (ms)"] == "4.00"


def test_no_bops_column_without_binary_models():
    header, _ = R.paper_table([make_record("vit", "digits", 90.0)])
    assert "BOPs (G)" not in header and "binary params (M)" not in header


def test_latest_successful_record_wins():
    older = make_record("vit", "digits", 50.0)
    newer = make_record("vit", "digits", 80.0, digest="other")
    _, rows = R.paper_table([older, newer, make_record("vit", "digits", None, status="failed")])
    assert rows[0][1] == "80.00"


def test_report_files(tmp_path):
    written = R.write_report(_records(), tmp_path, "t")
    assert set(written) == {"report.md", "table.csv", "runs.csv", "accuracy_vs_ops.png",
                            "accuracy_vs_cpu_latency.png", "accuracy_per_dataset.png"}
    md = (tmp_path / "report.md").read_text()
    assert "| vit | 93.58 | 97.82 |" in md and "Test CPU" in md and "![accuracy_vs_ops](accuracy_vs_ops.png)" in md
    table = list(csv.DictReader((tmp_path / "table.csv").open()))
    assert [r["spec"] for r in table] == ["vit", "sl_vit", "binaryvit"] and table[1]["cifar10 top-1"] == "94.53"
    runs = list(csv.DictReader((tmp_path / "runs.csv").open()))
    assert len(runs) == 4 and {r["spec_hash"] for r in runs} == {"0123456789abcdef"}
    assert float(next(r for r in runs if r["spec"] == "binaryvit")["counts.bops"]) == 1.9e9
    for name in ("accuracy_vs_ops.png", "accuracy_vs_cpu_latency.png", "accuracy_per_dataset.png"):
        data = written[name].read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_plots_skip_what_was_not_measured(tmp_path):
    rec = make_record("vit", "digits", 90.0)
    del rec["onnx_cpu"]
    written = R.write_report([rec], tmp_path)
    assert "accuracy_vs_cpu_latency.png" not in written and "accuracy_vs_ops.png" in written


def test_report_command_prints_an_aligned_table_and_writes_markdown(tmp_path, capsys):
    folder = _write(tmp_path / "res", _records())
    assert main(["report", str(folder), "-o", str(tmp_path / "out")]) == 0
    lines = capsys.readouterr().out.splitlines()
    header, rule, *rows = lines[:5]
    assert header.startswith("spec       cifar10 top-1  svhn top-1") and set(rule) == {"-", " "}
    assert rows[1].startswith("sl_vit             94.53           –")  # numbers right-aligned under their header
    assert "|" not in "".join(lines[:5])
    assert "| sl_vit | 94.53 | – |" in (tmp_path / "out" / "report.md").read_text()
    assert (tmp_path / "out" / "accuracy_per_dataset.png").is_file()


def test_text_table_pads_columns():
    text = R.text_table(["name", "top-1"], [["vit", "9.50"], ["sl_vit", "95.00 ± 0.20 (3 seeds)"]])
    assert text.splitlines() == ["name                     top-1",
                                 "------  ----------------------",
                                 "vit                       9.50",
                                 "sl_vit  95.00 ± 0.20 (3 seeds)"]


def test_seeds_become_mean_and_std():
    records = []
    for seed, top1 in enumerate((90.0, 92.0, 94.0)):
        r = make_record("vit", "digits", top1, digest=f"d{seed}")
        r["seed"] = seed
        records.append(r)
    header, rows = R.paper_table(records)
    assert rows == [[*rows[0][:1], "92.00 ± 2.00 (3 seeds)", *rows[0][2:]]] and len(rows) == 1
    assert "mean ± sample standard deviation" in R.render_markdown(records, "t", [])


def test_accuracy_axis_spans_the_whole_scale():
    from vitgraph.benchmarks.plots import _OPS, scatter_figure

    runs = R.shown_runs([make_record("vit", "c", 93.6), make_record("sl_vit", "c", 94.8, ops=2.1e8)])
    fig = scatter_figure(runs, _OPS, "t")
    assert fig.axes[0].get_ylim() == (0.0, 100.0)


def test_report_of_nothing_is_a_user_error(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope")]) == 1
    assert "no benchmark results" in capsys.readouterr().err
    _write(tmp_path / "failed", [make_record("vit", "digits", None, status="failed")])
    with pytest.raises(UserError, match="no finished runs"):
        R.write_report(R.load_records(tmp_path / "failed"), tmp_path / "x")


def test_torn_last_line_is_ignored_but_corruption_elsewhere_is_reported(tmp_path):
    path = tmp_path / "runs.jsonl"
    good = json.dumps(make_record("vit", "digits", 90.0))
    path.write_text(good + "\n" + good[:40])
    assert len(R.load_records(path)) == 1
    path.write_text(good[:40] + "\n" + good + "\n")
    with pytest.raises(UserError, match="runs.jsonl:1: not a JSON record"):
        R.load_records(path)
