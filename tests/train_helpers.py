"""Helpers of the data and training tests: a tiny ViT spec, and small datasets written in the
official on-disk formats (CIFAR python pickles, SVHN .mat, a Tiny-ImageNet tree, image folders).

Importing this module limits torch to one CPU thread: the test machine's cores are shared, and
torch's thread pool slows small ops a hundredfold when other processes hold the cores."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from spec_helpers import CIFAR10 as CIFAR10_FOLDERS  # noqa: F401 - the data tests import it from here
from spec_helpers import ROOT  # noqa: F401 - the training tests import it from here

torch.set_num_threads(1)


TINY_SPEC = """\
# A tiny ViT for fast training tests: 16x16 input, 4x4 patches, dim 32, 2 blocks.
param image = 16
param patch = 4
param classes = 10
param drop_path = 0.0

model tiny {
    input 3 x image x image
    patchify patch -> 32
    tokens cls
    pos-embed learned
    norm layer eps 1e-6
    blocks 2 {
        attention heads 2
        mlp ratio 2
    }
    drop-path drop_path linear
    head token -> classes
}
"""
TINY_DISTILLED = """\
use "tiny.vg"
model tiny_distilled extends tiny {
    tokens cls distill
    head token+distill -> classes
}
"""


def write_specs(directory: Path) -> tuple[Path, Path]:
    """tiny.vg and tiny_distilled.vg in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tiny.vg").write_text(TINY_SPEC)
    (directory / "tiny_distilled.vg").write_text(TINY_DISTILLED)
    return directory / "tiny.vg", directory / "tiny_distilled.vg"


def random_images(n: int, c: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, c, h, w), dtype=np.uint8)


def write_cifar(root: Path, fine: bool, per_batch: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """A CIFAR-10 (5 train batches + test batch) or CIFAR-100 (train + test) folder of pickles
    with `per_batch` images each; returns all (images (N, 3, 32, 32), labels) in file order,
    train then test."""
    directory = root / ("cifar-100-python" if fine else "cifar-10-batches-py")
    directory.mkdir(parents=True)
    files = ["train", "test"] if fine else [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    classes = 100 if fine else 10
    key = b"fine_labels" if fine else b"labels"
    images, labels = [], []
    for i, name in enumerate(files):
        x = random_images(per_batch, 3, 32, 32, seed=i)
        y = np.arange(per_batch) * 7 % classes
        batch = {b"data": x.reshape(per_batch, 3072), key: y.tolist(), b"batch_label": name.encode()}
        (directory / name).write_bytes(pickle.dumps(batch))
        images.append(x)
        labels.append(y)
    names = [f"class{i}".encode() for i in range(classes)]
    meta = {b"fine_label_names": names, b"coarse_label_names": names[:20]} if fine else {b"label_names": names}
    (directory / ("meta" if fine else "batches.meta")).write_bytes(pickle.dumps(meta))
    return np.concatenate(images), np.concatenate(labels)


def write_svhn(directory: Path, n: int = 5) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """train_32x32.mat / test_32x32.mat with labels 1..10 (10 = digit 0), as SVHN stores them."""
    import scipy.io

    directory.mkdir(parents=True)
    out = {}
    for i, split in enumerate(("train", "test")):
        x = random_images(n, 3, 32, 32, seed=10 + i)  # (N, C, H, W)
        y = (np.arange(n) % 10 + 1).astype(np.uint8)  # 1..10
        scipy.io.savemat(directory / f"{split}_32x32.mat", {"X": x.transpose(2, 3, 1, 0), "y": y[:, None]})
        out[split] = (x, y)
    return out


def save_png(path: Path, image: np.ndarray, fmt: str = "PNG") -> None:
    """Write a uint8 (C, H, W) image losslessly."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image.transpose(1, 2, 0)).save(path, format=fmt)


def write_tiny_imagenet(root: Path, wnids: tuple[str, ...] = ("n01", "n02", "n03"), per_class: int = 2
                        ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """tiny-imagenet-200/ with wnids.txt, train/<wnid>/images/<wnid>_<i>.JPEG and val/images
    + val_annotations.txt; files are PNG-encoded (lossless) under the official .JPEG names."""
    d = root / "tiny-imagenet-200"
    (d).mkdir(parents=True)
    (d / "wnids.txt").write_text("\n".join(wnids) + "\n")
    train_x, train_y, val_x, val_y, lines = [], [], [], [], []
    for c, wnid in enumerate(wnids):
        for i in range(per_class):
            x = random_images(1, 3, 64, 64, seed=100 * c + i)[0]
            save_png(d / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", x)
            train_x.append(x)
            train_y.append(c)
    for j, c in enumerate([2, 0, 1, 2]):
        x = random_images(1, 3, 64, 64, seed=1000 + j)[0]
        save_png(d / "val" / "images" / f"val_{j}.JPEG", x)
        lines.append(f"val_{j}.JPEG\t{wnids[c]}\t0\t0\t63\t63")
        val_x.append(x)
        val_y.append(c)
    (d / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return {"train": (np.stack(train_x), np.array(train_y)), "test": (np.stack(val_x), np.array(val_y))}


def write_folder(root: Path, splits: tuple[str, ...] = ("train", "test"), classes: tuple[str, ...] = ("cat", "dog"),
                 per_class: int = 3, size: int = 8) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """<root>/<split>/<class>/<i>.png (or <root>/<class>/... when splits is ("",))."""
    out = {}
    for s, split in enumerate(splits):
        xs, ys = [], []
        for c, name in enumerate(classes):
            for i in range(per_class):
                x = random_images(1, 3, size, size, seed=10_000 * s + 100 * c + i)[0]
                save_png(root / split / name / f"{i:03d}.png", x)
                xs.append(x)
                ys.append(c)
        out[split] = (np.stack(xs), np.array(ys))
    return out
