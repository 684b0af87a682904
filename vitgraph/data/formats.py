"""Readers for the datasets' official on-disk formats. Each returns numpy arrays (images uint8
(N, C, H, W), labels int64 (N,)) or, for folders of image files, the file list to decode.

- CIFAR-10/100 (Krizhevsky 2009): the "python version" pickled batches, rows of 3072 bytes
  (1024 red, 1024 green, 1024 blue, row-major 32x32).
- SVHN (Netzer et al. 2011): train_32x32.mat / test_32x32.mat, X of shape (32, 32, 3, N) and
  y of shape (N, 1) with the digit 0 stored as label 10.
- Tiny-ImageNet (CS231n): wnids.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG with
  val/val_annotations.txt mapping each file to its wnid.
- Image folders (ImageNet, anything else): <split>/<class>/<image>, classes sorted by name.
- Digits (the UCI optdigits test set, shipped as vitgraph/data/digits.npz): 1,797 8x8 images,
  17 grey levels.

Corrupt or incomplete files raise UserError naming the file and the remedy.
"""
from __future__ import annotations

import math
import pickle
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..diagnostics import UserError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"})


@dataclass
class Arrays:
    """A split held in memory: images (N, C, H, W) uint8 and labels (N,) int64."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Files:
    """A split read from image files: paths and labels (N,) int64, decoded as needed."""

    paths: list[Path]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


def corrupt(path: Path, why: object) -> UserError:
    """The error for a file that exists but cannot be read as expected."""
    return UserError(f"{path} is corrupt or not in the expected format ({why})",
                     hint=f"delete {path} and fetch the dataset again")


def read_cifar(directory: Path, split: str, fine: bool) -> tuple[Arrays, list[str]]:
    """CIFAR-10 (`fine=False`, cifar-10-batches-py) or CIFAR-100 (`fine=True`, cifar-100-python)."""
    if fine:
        files = ["train"] if split == "train" else ["test"]
        meta_file, names_key, labels_key = "meta", b"fine_label_names", b"fine_labels"
    else:
        files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        meta_file, names_key, labels_key = "batches.meta", b"label_names", b"labels"
    images, labels = [], []
    for name in files:
        batch = _unpickle(directory / name)
        try:
            data = np.asarray(batch[b"data"], dtype=np.uint8)
            images.append(data.reshape(-1, 3, 32, 32))  # (N, 3072) -> (N, C, H, W)
            labels.append(np.asarray(batch[labels_key], dtype=np.int64))
        except (KeyError, ValueError) as e:
            raise corrupt(directory / name, e) from e
    meta = _unpickle(directory / meta_file)
    classes = [n.decode() for n in meta.get(names_key, [])]
    out = Arrays(np.concatenate(images), np.concatenate(labels))
    if len(out.images) != len(out.labels) or not classes or out.labels.max(initial=0) >= len(classes):
        raise corrupt(directory, "image and label counts or class names disagree")
    return out, classes


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="bytes")
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as e:
        raise corrupt(path, e) from e


def read_svhn(path: Path) -> Arrays:
    """One SVHN .mat file; label 10 (the digit 0) becomes 0."""
    import scipy.io

    try:
        mat = scipy.io.loadmat(str(path))
        x = np.asarray(mat["X"], dtype=np.uint8)  # (H, W, C, N)
        y = np.asarray(mat["y"], dtype=np.int64).reshape(-1)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise corrupt(path, e) from e
    if x.ndim != 4 or x.shape[3] != len(y):
        raise corrupt(path, f"X has shape {x.shape} for {len(y)} labels")
    return Arrays(np.ascontiguousarray(x.transpose(3, 2, 0, 1)), np.where(y == 10, 0, y))  # (N, C, H, W)


def read_tiny_imagenet(directory: Path, split: str) -> tuple[Files, list[str]]:
    """The file list of Tiny-ImageNet's train or val split (val is the labelled test split)."""
    wnids_file = directory / "wnids.txt"
    try:
        wnids = [w.strip() for w in wnids_file.read_text().splitlines() if w.strip()]
    except OSError as e:
        raise corrupt(wnids_file, e) from e
    index = {w: i for i, w in enumerate(wnids)}
    paths: list[Path] = []
    labels: list[int] = []
    if split == "train":
        for wnid in wnids:
            found = sorted(p for p in (directory / "train" / wnid / "images").glob("*") if _is_image(p))
            paths += found
            labels += [index[wnid]] * len(found)
    else:
        annotations = directory / "val" / "val_annotations.txt"
        try:
            lines = annotations.read_text().splitlines()
        except OSError as e:
            raise corrupt(annotations, e) from e
        for line in lines:
            parts = line.split("\t")
            if len(parts) < 2 or parts[1] not in index:
                raise corrupt(annotations, f"bad line {line!r}")
            paths.append(directory / "val" / "images" / parts[0])
            labels.append(index[parts[1]])
    if not paths:
        raise corrupt(directory, f"no {split} images found")
    return Files(paths, np.asarray(labels, dtype=np.int64)), wnids


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()


def scan_folder(directory: Path, classes: list[str] | None = None) -> tuple[Files, list[str]]:
    """<directory>/<class>/<image> with classes sorted by name (or the given class list)."""
    if classes is None:
        classes = sorted(d.name for d in directory.iterdir() if d.is_dir() and not d.name.startswith("."))
    paths: list[Path] = []
    labels: list[int] = []
    for i, name in enumerate(classes):
        found = sorted(p for p in (directory / name).glob("*") if _is_image(p)) if (directory / name).is_dir() else []
        paths += found
        labels += [i] * len(found)
    return Files(paths, np.asarray(labels, dtype=np.int64)), classes


def decode(path: Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """One image file as uint8 (C, H, W), RGB; resized (bilinear) to `size` = (H, W) if given."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if size is not None and im.size != (size[1], size[0]):
                im = im.resize((size[1], size[0]), Image.BILINEAR)
            return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)  # (H, W, C) -> (C, H, W)
    except OSError as e:
        raise corrupt(path, e) from e


def decode_all(files: Files, workers: int = 8) -> Arrays:
    """Decode every file in parallel threads (PIL releases the GIL while decoding). Images of
    another size than the first are resized to it, so they stack into one array."""
    if not files.paths:
        raise UserError("no images to decode")
    first = decode(files.paths[0])
    size = (first.shape[1], first.shape[2])
    out = np.empty((len(files), 3, *size), dtype=np.uint8)  # (N, C, H, W)

    def work(i: int) -> None:
        out[i] = decode(files.paths[i], size)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(work, range(len(files))))
    return Arrays(out, files.labels.copy())


def read_digits() -> tuple[Arrays, Arrays, list[str]]:
    """The handwritten digits shipped with vitgraph (vitgraph/data/digits.npz, see DIGITS.md
    beside it): 1,797 8x8 images, grey levels 0..16 scaled to 0..255, as (train, test, class
    names). The split is fixed: 360 test images, 20% of each class, the same split the
    documented figures were measured on."""
    path = Path(__file__).with_name("digits.npz")
    try:
        with np.load(path) as z:
            images = np.rint(z["images"] * (255.0 / 16.0)).astype(np.uint8)[:, None]  # (N, 1, 8, 8)
            labels = z["labels"].astype(np.int64)
            test = np.zeros(len(labels), dtype=bool)
            test[z["test"]] = True
    except (OSError, ValueError, KeyError) as e:
        raise corrupt(path, e) from e
    classes = [str(d) for d in range(10)]
    return Arrays(images[~test], labels[~test]), Arrays(images[test], labels[test]), classes


def stratified_sample(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Sorted indices of `n` samples drawn without replacement, each class in proportion to its
    share of `labels` (largest remainders get the odd samples); the same (labels, n, seed) always
    give the same indices."""
    if not 0 < n <= len(labels):
        raise ValueError(f"cannot draw {n} of {len(labels)} samples")
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * n / len(labels)
    take = np.floor(exact).astype(np.int64)
    short = n - int(take.sum())
    order = np.lexsort((rng.random(len(classes)), -(exact - take)))  # largest remainder, ties at random
    take[order[:short]] += 1
    chosen = [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, take)]
    return np.sort(np.concatenate(chosen))


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic stratified split: indices (train, test), each class split in the same proportion."""
    test = stratified_sample(labels, max(1, math.ceil(test_fraction * len(labels))), seed)
    return np.setdiff1d(np.arange(len(labels)), test), test
