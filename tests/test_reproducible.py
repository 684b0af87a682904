"""Same command, same seed, threads and versions -> the same figures to the last digit: the smoke
suite, reduced to a few steps, run twice from empty results folders; --seeds into the report;
and `vitgraph build --weights RUN/best.pt --backend onnx` with no other flag predicting what
`vitgraph eval` predicts on the same real images."""
from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from spec_helpers import CIFAR10, ROOT

import vitgraph
from vitgraph.benchmarks.results import ResultStore
from vitgraph.checkpoints import checkpoint_graph
from vitgraph.cli import main


def _smoke(results: Path, *flags: str) -> list[dict]:
    """The smoke suite as shipped, but for its timing measurements (not what is compared here)."""
    text = (ROOT / "benchmarks" / "suites" / "smoke.toml").read_text().split("[measure]")[0]
    suite = results.parent / f"{results.name}-suite" / "smoke.toml"
    suite.parent.mkdir(parents=True)
    suite.write_text(text + "[measure]\ntorch_throughput = false\nonnx_cpu = false\n")
    argv = ["bench", "--suite", str(suite), "--results", str(results), "--specs-dir", str(ROOT / "specs"), "--quiet",
            "--no-report", *flags]
    assert main(argv) == 0
    return ResultStore(results).records()


def _losses(results: Path, record: dict) -> list[str]:
    rows = csv.DictReader((results / record["metrics"]["run_dir"] / "metrics.csv").open())
    return [row["train_loss"] for row in rows]  # full precision, as written


def test_the_smoke_suite_gives_the_same_figures_twice(tmp_path, capsys):
    first = _smoke(tmp_path / "a", "--max-steps", "12")  # both specs, 12 of 22 steps of epoch 1
    second = _smoke(tmp_path / "b", "--max-steps", "12")
    assert [r["run"] for r in first] == ["vit@digits", "sl_vit@digits"] == [r["run"] for r in second]
    for a, b in zip(first, second):
        assert (a["metrics"]["top1"], a["metrics"]["top5"]) == (b["metrics"]["top1"], b["metrics"]["top5"])
        assert _losses(tmp_path / "a", a) == _losses(tmp_path / "b", b)
        assert a["metrics"]["steps"] == 12 and a["conditions"]["torch_cpu_capability"]
    assert first[0]["metrics"]["top1"] != first[1]["metrics"]["top1"] or \
        _losses(tmp_path / "a", first[0]) != _losses(tmp_path / "a", first[1])  # two models, not one twice


def test_seeds_end_to_end_into_the_report(tmp_path, capsys):
    records = _smoke(tmp_path / "s", "--specs", "vit", "--max-steps", "3", "--seeds", "2")
    assert [(r["run"], r["seed"]) for r in records] == [("vit@digits", 0), ("vit@digits", 1)]
    out = capsys.readouterr().out
    assert re.search(r"vit\s+\d+\.\d\d ± \d+\.\d\d \(2 seeds\)", out)
    assert main(["report", str(tmp_path / "s"), "--no-plots"]) == 0
    assert "± " in (tmp_path / "s" / "report.md").read_text() and "(2 seeds)" in capsys.readouterr().out


def _image_folder(root: Path, classes: tuple[str, ...] = ("cat", "dog", "ship"), train: int = 16,
                  test: int = 8) -> Path:
    """A small image-folder dataset of real CIFAR-10 test images (32x32 JPEG), linked."""
    for c in classes:
        files = sorted((CIFAR10 / "test" / c).iterdir())[: train + test]
        for split, chosen in (("train", files[:train]), ("test", files[train:])):
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for f in chosen:
                os.symlink(f, root / split / c / f.name)
    return root


@pytest.mark.skipif(not CIFAR10.is_dir(), reason="needs ../shared/data/cifar10")
def test_built_onnx_model_predicts_what_eval_predicts(tmp_path, capsys):
    from vitgraph.backends.torch_backend import read_checkpoint
    from vitgraph.commands.predict import load_image, open_model
    from vitgraph.data.datasets import load_dataset
    from vitgraph.data.pipeline import Augmenter
    from vitgraph.train.loop import _eval_recipe

    data = _image_folder(tmp_path / "data")
    run = tmp_path / "run"
    assert main(["train", str(ROOT / "specs" / "vit.vg"), "--dataset", str(data), "--set", "patch=8", "--max-steps",
                 "4", "--batch-size", "16", "--out", str(run), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["eval", "--weights", str(run / "best.pt")]) == 0
    evaluated = capsys.readouterr().out
    model = tmp_path / "m.onnx"
    assert main(["build", "--weights", str(run / "best.pt"), "--backend", "onnx", "-o", str(model)]) == 0

    # the CLIs: predict's top-1 over the test files scores what eval reports
    files = sorted((data / "test").glob("*/*.jpg"))
    capsys.readouterr()
    assert main(["predict", str(model), *map(str, files), "--top", "1"]) == 0
    printed = capsys.readouterr().out.splitlines()
    guesses = [line.split()[1] for line in printed[1::2]]
    hits = sum(guess == f.parent.name for guess, f in zip(guesses, files))
    assert evaluated.startswith(f"data: top-1 {100 * hits / len(files):.2f}%  ")
    assert main(["predict", str(run / "best.pt"), *map(str, files), "--top", "1"]) == 0  # the checkpoint itself
    assert capsys.readouterr().out.splitlines() == printed

    # image by image: the ONNX model on predict's input, the checkpoint in torch on eval's input
    session, prep = open_model(str(model))
    onnx_logits = session.run(None, {"input": np.stack([load_image(str(f), prep) for f in files])})[0]
    ck = read_checkpoint(run / "best.pt")
    ds = load_dataset(str(data))  # decoded in the same order as the sorted files
    graph = checkpoint_graph(None, ck, "best.pt", {})
    torch_model = vitgraph.to_torch(graph).eval()
    torch_model.load_state_dict(ck["model"])
    aug = Augmenter(_eval_recipe(ck, None, str(data), 16), ds.name, graph.image[1:], 3, 3, ds.mean, ds.std,
                    torch.device("cpu"))
    with torch.no_grad():
        torch_logits = torch_model(aug.eval_batch(torch.from_numpy(ds.test.images))).numpy()
    assert np.array_equal(onnx_logits.argmax(1), torch_logits.argmax(1))
    np.testing.assert_allclose(onnx_logits, torch_logits, atol=1e-4)
    assert json.loads(session.get_modelmeta().custom_metadata_map["trained"]) is True
