"""Images as files really come: every mode Pillow reads decodes to the right 8-bit RGB (in
training, held in memory or streamed, and in `vitgraph predict`); folders are decoded at the
dataset's size, not the first file's; decompression bombs and corrupt files get one message
naming the file. Every fixture is written by the test."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import pytest
import torch
from fault_helpers import PNG_GREY_ALPHA, PNG_RGB, write_bomb_png, write_png
from PIL import Image
from train_helpers import random_images, save_png, write_folder, write_specs

from spec_helpers import SPECS, small_graph
from vitgraph.backends.onnx_backend import to_onnx
from vitgraph.cli import main
from vitgraph.data.datasets import load_dataset
from vitgraph.data.formats import Files, decode_all, open_rgb
from vitgraph.data.pipeline import StreamLoader
from vitgraph.diagnostics import UserError
from vitgraph.train import loop

H, W = 6, 5
CPU = torch.device("cpu")
WHITE = 255.0


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VITGRAPH_CACHE", str(tmp_path / "cache"))


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _over_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Colours (H, W, 3) with alpha (H, W) in 0..255 laid over white."""
    a = alpha[..., None] / 255.0
    return rgb * a + WHITE * (1 - a)


def _alpha() -> np.ndarray:
    return _rng(1).choice([0, 128, 255], size=(H, W))


# Each case writes one file in one mode and returns the 8-bit RGB it must decode to (H, W, 3).
def grey(path: Path) -> np.ndarray:
    x = _rng().integers(0, 256, (H, W), dtype=np.uint8)
    Image.fromarray(x, "L").save(path.with_suffix(".png"))
    return np.repeat(x[..., None], 3, axis=2)


def bilevel(path: Path) -> np.ndarray:
    bits = _rng().random((H, W)) > 0.5
    Image.fromarray(bits).save(path.with_suffix(".png"))  # mode "1"
    return np.repeat(bits[..., None], 3, axis=2) * 255


PALETTE = np.array([[10, 20, 30], [200, 0, 0], [0, 180, 90], [255, 255, 0]], dtype=np.uint8)


def _palette_image() -> tuple[Image.Image, np.ndarray]:
    index = _rng().integers(0, 4, (H, W), dtype=np.uint8)
    im = Image.fromarray(index, "P")
    im.putpalette(PALETTE.reshape(-1).tolist())
    return im, index


def palette(path: Path) -> np.ndarray:
    im, index = _palette_image()
    im.save(path.with_suffix(".png"))
    return PALETTE[index]


def palette_transparent(path: Path) -> np.ndarray:
    im, index = _palette_image()
    im.save(path.with_suffix(".png"), transparency=0)  # index 0 is transparent: white
    return np.where(index[..., None] == 0, 255, PALETTE[index])


def grey_alpha(path: Path) -> np.ndarray:
    x, a = _rng().integers(0, 256, (H, W), dtype=np.uint8), _alpha()
    Image.fromarray(np.stack([x, a.astype(np.uint8)], axis=2), "LA").save(path.with_suffix(".png"))
    return _over_white(np.repeat(x[..., None], 3, axis=2), a)


def rgba(path: Path) -> np.ndarray:
    x, a = _rng().integers(0, 256, (H, W, 3), dtype=np.uint8), _alpha()
    Image.fromarray(np.dstack([x, a.astype(np.uint8)]), "RGBA").save(path.with_suffix(".png"))
    return _over_white(x, a)


def cmyk(path: Path) -> np.ndarray:
    x = _rng().integers(0, 256, (H, W, 4), dtype=np.uint8)
    Image.fromarray(x, "CMYK").save(path.with_suffix(".tif"))
    c, k = x[..., :3].astype(float), x[..., 3:].astype(float)
    return (255 - c) * (255 - k) / 255  # the naive conversion Pillow does without a colour profile


def grey16(path: Path) -> np.ndarray:
    x = _rng().integers(0, 65536, (H, W), dtype=np.uint16)
    Image.fromarray(x).save(path.with_suffix(".png"))  # mode I;16, a 16-bit greyscale PNG
    return np.repeat((x >> 8)[..., None], 3, axis=2)


def rgb16(path: Path) -> np.ndarray:
    x = _rng().integers(0, 65536, (H, W, 3))
    write_png(path.with_suffix(".png"), x, PNG_RGB)
    return x >> 8


def grey_alpha16(path: Path) -> np.ndarray:
    x = _rng().integers(0, 65536, (H, W, 2))
    x[..., 1] = _alpha() * 257
    write_png(path.with_suffix(".png"), x, PNG_GREY_ALPHA)
    return _over_white(np.repeat((x[..., :1] >> 8), 3, axis=2), x[..., 1] >> 8)


def int32(path: Path) -> np.ndarray:
    x = _rng().integers(0, 65536, (H, W)).astype(np.int32)
    Image.fromarray(x, "I").save(path.with_suffix(".tif"))
    return np.repeat((x >> 8)[..., None], 3, axis=2)


def float_unit(path: Path) -> np.ndarray:
    x = _rng().random((H, W), dtype=np.float32)  # [0, 1]: a float TIFF as scientific tools write it
    Image.fromarray(x, "F").save(path.with_suffix(".tif"))
    return np.repeat(np.rint(x * 255.0)[..., None], 3, axis=2)


def float_levels(path: Path) -> np.ndarray:
    x = (_rng().random((H, W)) * 255).astype(np.float32)
    x[0, 0] = 255.0  # levels up to 255
    Image.fromarray(x, "F").save(path.with_suffix(".tif"))
    return np.repeat(np.rint(x)[..., None], 3, axis=2)


def animated(path: Path) -> np.ndarray:
    frames = [Image.new("RGB", (W, H), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(path.with_suffix(".gif"), save_all=True, append_images=frames[1:])
    return np.broadcast_to(np.array([255, 0, 0]), (H, W, 3))


MODES: list[Callable[[Path], np.ndarray]] = [grey, bilevel, palette, palette_transparent, grey_alpha, rgba, cmyk,
                                             grey16, rgb16, grey_alpha16, int32, float_unit, float_levels, animated]


def _written(folder: Path, case: Callable[[Path], np.ndarray]) -> tuple[Path, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    expected = case(folder / case.__name__)
    return next(folder.glob(f"{case.__name__}.*")), expected


@pytest.mark.parametrize("case", MODES, ids=[m.__name__ for m in MODES])
def test_every_mode_decodes_to_8bit_rgb(tmp_path, case):
    path, expected = _written(tmp_path, case)
    decoded = np.asarray(open_rgb(path)).astype(float)
    assert decoded.shape == (H, W, 3)
    np.testing.assert_allclose(decoded, expected, atol=1)  # alpha blends and CMYK round


def test_training_reads_16bit_and_float_images_in_memory_and_streamed(tmp_path):
    """The two training paths (decoded arrays, DataLoader workers) see the same correct pixels."""
    expected = {}
    for split in ("train", "test"):
        for case in (grey16, float_unit, rgba):
            path, rgb = _written(tmp_path / "modes" / split / case.__name__, case)
            expected[path.relative_to(tmp_path / "modes")] = np.rint(rgb).transpose(2, 0, 1)  # (C, H, W)
    held = load_dataset(str(tmp_path / "modes"), mode="memory")
    streamed = load_dataset(str(tmp_path / "modes"), mode="stream")
    assert held.image_size == (H, W)
    want = np.stack([expected[p.relative_to(tmp_path / "modes")] for p in streamed.test.paths])
    loader = StreamLoader(streamed.test, CPU, batch_size=3, train=False, size=(H, W), workers=0)
    np.testing.assert_allclose(torch.cat([x for x, _ in loader]).numpy(), want, atol=1)
    np.testing.assert_allclose(held.test.images, want, atol=1)


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "vit.onnx"
    onnx.save(to_onnx(small_graph(next(s for s in SPECS if s.name == "vit.vg"))), path)
    return path


def _predict(capsys, model: Path, image: Path) -> str:
    assert main(["predict", str(model), str(image)]) == 0
    out = capsys.readouterr().out
    return out.split("\n", 1)[1]  # the ranked classes, without the file name


@pytest.mark.parametrize("case", [grey16, float_unit], ids=["16-bit PNG", "float TIFF"])
def test_predict_on_16bit_or_float_equals_predict_on_its_8bit_conversion(tmp_path, capsys, onnx_model, case):
    path, expected = _written(tmp_path, case)
    eight = tmp_path / "eight.png"
    Image.fromarray(expected[..., 0].astype(np.uint8), "L").save(eight)  # what an 8-bit converter writes
    ranked = _predict(capsys, onnx_model, path)
    assert ranked == _predict(capsys, onnx_model, eight)  # same classes, same probabilities
    white = tmp_path / "white.png"
    Image.new("L", (W, H), 255).save(white)
    assert ranked != _predict(capsys, onnx_model, white)  # what a saturated decode would give


def test_decompression_bomb_is_one_message_naming_the_file(tmp_path, capsys, onnx_model):
    bomb = write_bomb_png(tmp_path / "bomb.png")
    assert main(["predict", str(onnx_model), str(bomb)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {bomb} is too large to decode safely: Image size (900000000 pixels)")
    assert "Traceback" not in err and "hint: shrink or remove it" in err
    write_folder(tmp_path / "data", classes=("a", "b"), per_class=2)
    write_bomb_png(tmp_path / "data" / "train" / "b" / "zz.png")
    for mode in ("memory", "stream"):
        with pytest.raises(UserError, match=f"{tmp_path / 'data' / 'train' / 'b' / 'zz.png'} is too large"):
            ds = load_dataset(str(tmp_path / "data"), mode=mode)
            list(StreamLoader(ds.train, CPU, batch_size=8, train=True, size=(8, 8), workers=0))


@pytest.mark.parametrize("mode,workers", [("memory", 0), ("stream", 0), ("stream", 1)])
def test_corrupt_image_names_the_file_not_a_dataset_download(tmp_path, mode, workers):
    write_folder(tmp_path / "data", classes=("a", "b"), per_class=2)
    bad = tmp_path / "data" / "train" / "a" / "001.png"
    bad.write_bytes(bad.read_bytes()[:60])  # truncated mid-file
    with pytest.raises(UserError) as e:
        ds = load_dataset(str(tmp_path / "data"), mode=mode)
        list(StreamLoader(ds.train, CPU, batch_size=2, train=True, size=(8, 8), workers=workers))
    assert e.value.message.startswith(f"cannot read {bad} as an image (")
    assert "\n" not in e.value.message and "Traceback" not in e.value.message  # not wrapped by a worker
    assert e.value.hint == f"replace or remove {bad}"


def test_folder_is_decoded_at_its_common_size_not_the_first_files(tmp_path):
    written = write_folder(tmp_path / "data", classes=("a", "b"), per_class=3, size=8)
    save_png(tmp_path / "data" / "train" / "a" / "000-tiny.png", random_images(1, 3, 1, 1)[0])  # sorted first
    save_png(tmp_path / "data" / "train" / "b" / "odd.png", random_images(1, 3, 13, 7)[0])
    ds = load_dataset(str(tmp_path / "data"))
    assert ds.train.images.shape == (8, 3, 8, 8) and ds.image_size == (8, 8)
    names = [p.name for p in load_dataset(str(tmp_path / "data"), mode="stream").train.paths]
    kept = [i for i, n in enumerate(names) if n not in ("000-tiny.png", "odd.png")]
    np.testing.assert_array_equal(ds.train.images[kept], written["train"][0])  # untouched, not resampled


def test_known_dataset_folder_is_decoded_at_its_declared_size(tmp_path):
    write_folder(tmp_path / "cifar10", classes=("cat", "dog"), per_class=2, size=32)
    for i, name in enumerate(("cat", "cat", "dog", "dog", "dog")):
        save_png(tmp_path / "cifar10" / "train" / name / f"000-big{i}.png", random_images(1, 3, 40, 40, seed=i)[0])
    ds = load_dataset("cifar10", root=tmp_path, download=False)
    assert ds.train.images.shape == (9, 3, 32, 32)  # 40x40 is the most common size, but CIFAR's is 32x32


def test_decode_all_resizes_every_image_to_the_size_asked(tmp_path):
    for size in (8, 12):
        write_folder(tmp_path / str(size), splits=("x",), classes=("c",), per_class=1, size=size)
    files = Files([tmp_path / "12/x/c/000.png", tmp_path / "8/x/c/000.png"], np.array([0, 0]))
    assert decode_all(files, (10, 9)).images.shape == (2, 3, 10, 9)


def test_odd_first_image_trains_at_the_declared_size(tmp_path):
    spec, _ = write_specs(tmp_path / "specs")
    write_folder(tmp_path / "data", classes=("a", "b"), per_class=4, size=16)
    save_png(tmp_path / "data" / "train" / "a" / "000-tiny.png", random_images(1, 3, 1, 1)[0])
    result = loop.run(str(spec), str(tmp_path / "data"), "digits", epochs=1, out=tmp_path / "run", progress=False,
                      device="cpu", overrides={"batch_size": "4", "warmup_epochs": "0"})
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["dataset"]["image_size"] == [16, 16] and config["dataset"]["train"] == 9
    assert 0 <= result["top1"] <= 100
