"""`vitgraph build SPEC --backend onnx` and `vitgraph predict MODEL.onnx IMAGE...` on real
CIFAR-10 test images: exit codes, output, and one-line errors without tracebacks."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper
from PIL import Image

import vitgraph
from onnx_helpers import ROOT, small_graph, torch_module
from spec_helpers import CIFAR10
from vitgraph.backends.onnx_backend import to_onnx
from vitgraph.cli import main

CIFAR = CIFAR10 / "test"
CLASSES = sorted(p.name for p in CIFAR.iterdir()) if CIFAR.is_dir() else []
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
needs_cifar = pytest.mark.skipif(len(CLASSES) != 10, reason="CIFAR-10 image folders not found")
VIT = str(ROOT / "specs" / "vit.vg")


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def test_build_writes_a_checked_model_and_a_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "b.onnx"
    code, text, _ = _run(capsys, "build", str(ROOT / "specs" / "binary_deit_small.vg"), "--backend", "onnx",
                         "-o", str(out), "--set", "image=32", "patch=16")
    assert code == 0
    model = onnx.load(out)
    onnx.checker.check_model(model, full_check=True)
    assert "MiB bit-packed" in text and f"wrote {out}" in text and "spec's initialisation" in text
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["spec"] == "binary_deit_small" and meta["form"] == "binary"
    params = vitgraph.count(vitgraph.compile(ROOT / "specs" / "binary_deit_small.vg", image=32, patch=16)).total.params
    bits = 8 * out.stat().st_size / params
    assert f"{bits:.2f} bits per parameter; binary layers deployed as binary (1-bit weights" in text and bits < 4


def test_build_options_select_the_form(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--float-binary keeps binary layers as float32 weights; --standard-ops keeps the
    binary deployment in standard ONNX ops (MatMulInteger instead of onnxruntime's
    MatMulIntegerToFloat)."""
    spec = str(ROOT / "specs" / "binary_deit_small.vg")
    small = ["--set", "image=32", "patch=16"]
    paths = {k: tmp_path / f"{k}.onnx" for k in ("binary", "float", "standard")}
    flags = {"binary": [], "float": ["--float-binary"], "standard": ["--standard-ops"]}
    for k, path in paths.items():
        code, text, _ = _run(capsys, "build", spec, "--backend", "onnx", "-o", str(path), *small, *flags[k])
        assert code == 0 and ("float32 weights (binary weights as +-scale" in text) == (k == "float")
        onnx.checker.check_model(onnx.load(path), full_check=True)
    kinds = {k: {n.domain + "." + n.op_type for n in onnx.load(p).graph.node} for k, p in paths.items()}
    assert "com.microsoft.MatMulIntegerToFloat" in kinds["binary"] and ".MatMulInteger" in kinds["standard"]
    assert not any(k.startswith("com.") for k in kinds["standard"]) and ".Sign" in kinds["float"]
    assert paths["float"].stat().st_size > 8 * paths["binary"].stat().st_size


def test_build_with_weights_exports_them(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--weights reads a checkpoint written by `vitgraph build --backend torch`; the dataset's
    mean, std and class names come from a training run's config.json beside it."""
    ckpt, out = tmp_path / "vit.pt", tmp_path / "vit.onnx"
    assert _run(capsys, "build", VIT, "-o", str(ckpt), "--set", "image=32", "patch=16")[0] == 0
    names = [f"n{i}" for i in range(10)]
    (tmp_path / "config.json").write_text(json.dumps({"dataset": {"mean": list(MEAN), "std": list(STD),
                                                                   "class_names": names}}))
    code, text, _ = _run(capsys, "build", VIT, "--backend", "onnx", "-o", str(out), "--weights", str(ckpt),
                         "--set", "image=32", "patch=16")
    assert code == 0 and "config.json" in text
    model = onnx.load(out)
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    state = torch.load(ckpt, weights_only=True)["model"]
    # stored as the (in, out) matrix the MatMul reads (fold_constants evaluated the transpose)
    np.testing.assert_array_equal(inits["blocks.2.mlp.fc1.weight:folded"], state["blocks.2.mlp.fc1.weight"].numpy().T)
    np.testing.assert_array_equal(inits["blocks.2.mlp.fc1.bias"], state["blocks.2.mlp.fc1.bias"].numpy())
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["class_names"]) == names and json.loads(meta["mean"]) == list(MEAN)


def test_build_with_unusable_weights_is_one_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    for weights in (str(bad), str(tmp_path / "missing.pt")):
        code, _, err = _run(capsys, "build", VIT, "--backend", "onnx", "-o", str(tmp_path / "x.onnx"),
                            "--weights", weights)
        assert code == 1 and err.startswith("error:") and len(err.strip().splitlines()) <= 2
    assert not (tmp_path / "x.onnx").exists()


def _preprocess(path: Path, size: int) -> np.ndarray:
    """Written here independently of predict.py: RGB, bilinear resize, /255, mean/std, CHW."""
    im = Image.open(path).convert("RGB").resize((size, size), Image.BILINEAR)
    x = (np.asarray(im, dtype=np.float32) / 255 - np.float32(MEAN)) / np.float32(STD)
    return x.transpose(2, 0, 1)


@needs_cifar
def test_predict_prints_the_top_classes_of_cifar_images(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The printed names and probabilities are those of the torch backend's softmax on the
    same images preprocessed as the metadata says (here 32 px CIFAR images resized to 48)."""
    graph = vitgraph.compile(VIT, image=48, patch=16)
    module = torch_module(graph)
    model_path = tmp_path / "vit.onnx"
    onnx.save(to_onnx(graph, module.state_dict(), mean=MEAN, std=STD, class_names=CLASSES), model_path)
    images = [CIFAR / c / "0000.jpg" for c in ("cat", "ship", "frog")]
    code, out, _ = _run(capsys, "predict", str(model_path), *map(str, images))
    assert code == 0
    with torch.no_grad():
        logits = module(torch.from_numpy(np.stack([_preprocess(p, 48) for p in images])))
    probs = torch.softmax(logits.double(), dim=1).numpy()
    blocks = out.strip().split("\n")
    assert len(blocks) == 3 * 6
    for i, path in enumerate(images):
        header, *rows = blocks[6 * i: 6 * i + 6]
        assert header == str(path)
        want = np.argsort(-probs[i])[:5]
        for rank, (row, k) in enumerate(zip(rows, want), 1):
            number, name, pct = row.split()
            assert number == f"{rank}." and name == CLASSES[k]
            assert abs(float(pct.rstrip("%")) - 100 * probs[i, k]) < 0.01
    code, out, _ = _run(capsys, "predict", str(model_path), str(images[0]), "--top", "2")
    assert code == 0 and len(out.strip().split("\n")) == 3


@needs_cifar
def test_predict_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    graph = small_graph(VIT)
    model_path = tmp_path / "vit.onnx"
    onnx.save(to_onnx(graph), model_path)
    image = str(CIFAR / "cat" / "0000.jpg")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07garbage")
    bare = tmp_path / "bare.onnx"  # a valid ONNX model without vitgraph's metadata
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 32, 32])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 3, 32, 32])
    onnx.save(helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y]),
                                opset_imports=[helper.make_opsetid("", 17)]), bare)
    cases = [
        ([str(model_path), str(tmp_path / "missing.jpg")], "image"),
        ([str(model_path), str(model_path)], "cannot read"),
        ([str(tmp_path / "missing.onnx"), image], "not found"),
        ([str(corrupt), image], "cannot load"),
        ([str(bare), image], "no vitgraph preprocessing metadata"),
        ([str(model_path), image, "--top", "0"], "--top 0"),
    ]
    for argv, expected in cases:
        code, out, err = _run(capsys, "predict", *argv)
        assert code == 1 and expected in err and err.startswith("error:"), (argv, err)


@needs_cifar
def test_predict_warns_about_untrained_weights(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "m.onnx"
    assert _run(capsys, "build", VIT, "--backend", "onnx", "-o", str(model), "--set", "patch=8")[0] == 0
    assert json.loads({p.key: p.value for p in onnx.load(model).metadata_props}["trained"]) is False
    code, out, err = _run(capsys, "predict", str(model), str(CIFAR / "cat" / "0000.jpg"))
    assert code == 0 and out.startswith(str(CIFAR / "cat" / "0000.jpg"))
    assert err.startswith(f"warning: {model} holds untrained weights")


def test_predict_runs_a_binary_checkpoint_as_deployed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A binary spec's checkpoint is exported in the deployed form (1-bit weights, integer
    matmuls), as `vitgraph build` does, and predicts."""
    from onnx_helpers import TINY_BINARY

    from vitgraph.backends.onnx_backend import form
    from vitgraph.commands.predict import checkpoint_model

    spec, ckpt = tmp_path / "tiny.vg", tmp_path / "tiny.pt"
    spec.write_text(TINY_BINARY)
    assert _run(capsys, "build", str(spec), "-o", str(ckpt))[0] == 0
    assert form(checkpoint_model(str(ckpt))) == "binary"
    image = ROOT / "tests" / "images" / "digit-3.png"
    code, out, _ = _run(capsys, "predict", str(ckpt), str(image), "--top", "1")
    assert code == 0 and out.startswith(str(image)) and len(out.strip().splitlines()) == 2
