"""Readers for the datasets' official on-disk formats. Each returns numpy arrays (images uint8
(N, C, H, W), labels int64 (N,)) or, for folders of image files, the file list to decode.

- CIFAR-10/100 (Krizhevsky 2009): the "python version" pickled batches, rows of 3072 bytes
  (1024 red, 1024 green, 1024 blue, row-major 32x32).
- SVHN (Netzer et al. 2011): train_32x32.mat / test_32x32.mat, X of shape (32, 32, 3, N) and
  y of shape (N, 1) with the digit 0 stored as label 10.
- Tiny-ImageNet (CS231n): wnids.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG with
  val/val_annotations.txt mapping each file to its wnid.
- Image folders (ImageNet, anything else): <split>/<class>/<image>, classes sorted by name.
  Hidden files (macOS's `._name.jpg`) are not images. A split folder must hold class folders
  only (no `__MACOSX` or hidden folders), each with at least one image.
- Digits (the UCI optdigits test set, shipped as vitgraph/data/digits.npz): 1,797 8x8 images,
  17 grey levels.

Image files of every mode Pillow reads become 8-bit RGB, per file (`open_rgb`): 16-bit and
32-bit integer images keep their high byte (as Pillow reads 16-bit colour PNGs); float images
are taken as [0, 1] when their maximum is at most 1, else as [0, 255] when at most 255, else
as 16-bit levels; images with transparency (an alpha channel, a palette or colour key) are
laid over white; CMYK, YCbCr, LAB and 1-bit images go through Pillow's conversion; an
animation gives its first frame. Images larger than Pillow's decompression-bomb limit are
refused.

Corrupt or incomplete files raise UserError naming the file and the remedy.
"""
from __future__ import annotations

import math
import pickle
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np

from ..diagnostics import UserError

if TYPE_CHECKING:
    from PIL import Image as PILImage

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"})
JUNK_FOLDERS = ("__MACOSX",)  # besides hidden folders: what archives and tools leave beside class folders
SIZE_SAMPLE = 1000  # files whose header decides the common size of a folder dataset


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
            found = images_in(directory / "train" / wnid / "images")
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


def images_in(folder: Path) -> list[Path]:
    """The image files of a folder, sorted by name (hidden files are not images); UserError when
    the folder cannot be read."""
    try:
        entries = list(folder.iterdir())
    except OSError as e:
        raise UserError(f"cannot read folder {folder}: {e.strerror or e}") from None
    return sorted(p for p in entries
                  if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file())


def class_images(directory: Path) -> dict[str, list[Path]]:
    """The images of each class folder of a split folder, classes sorted by name. UserError naming
    the folders when some are not classes (`__MACOSX`, hidden folders) or hold no image (empty or
    unreadable)."""
    try:
        folders = sorted(d for d in directory.iterdir() if d.is_dir())
    except OSError as e:
        raise UserError(f"cannot read folder {directory}: {e.strerror or e}") from None
    junk = [d.name for d in folders if d.name in JUNK_FOLDERS or d.name.startswith(".")]
    if junk:
        raise UserError(f"{directory} holds folders that are not classes: {', '.join(junk)}",
                        hint="remove them (archives made on macOS add __MACOSX; tools add hidden folders)")
    found, bad = {}, []
    for d in folders:
        try:
            found[d.name] = images_in(d)
        except UserError:
            bad.append(f"{d.name} (unreadable)")
            continue
        if not found[d.name]:
            bad.append(f"{d.name} (no images)")
    if bad:
        raise UserError(f"{directory} has class folders without a readable image: {', '.join(bad)}",
                        hint=f"every class folder needs at least one image ({', '.join(sorted(IMAGE_SUFFIXES))}); "
                             "remove or fill these")
    return found


def scan_folder(directory: Path) -> tuple[Files, list[str]]:
    """<directory>/<class>/<image>: the files with their labels, and the classes sorted by name."""
    images = class_images(directory)
    paths = [p for found in images.values() for p in found]
    labels = [i for i, found in enumerate(images.values()) for _ in found]
    return Files(paths, np.asarray(labels, dtype=np.int64)), list(images)


@contextmanager
def _opened(path: Path) -> Iterator[PILImage.Image]:
    """Image.open, with every way of failing turned into one UserError naming the file."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            yield im
    except FileNotFoundError:
        raise UserError(f"image {path} not found") from None
    except Image.DecompressionBombError as e:
        size = str(e).split(", could be")[0]  # "Image size (N pixels) exceeds limit of M pixels"
        raise UserError(f"{path} is too large to decode safely: {size}",
                        hint="shrink or remove it (Pillow refuses images this large as possible "
                             "decompression bombs)") from None
    except (OSError, ValueError, EOFError, SyntaxError) as e:  # UnidentifiedImageError is an OSError
        raise UserError(f"cannot read {path} as an image ({e})", hint=f"replace or remove {path}") from None


def open_rgb(path: Path) -> PILImage.Image:
    """An image file as an 8-bit RGB image, decoded as the module docstring says."""
    with _opened(path) as im:
        return _to_rgb(im)


def image_size(path: Path) -> tuple[int, int]:
    """(H, W) of an image file, from its header."""
    with _opened(path) as im:
        return im.size[1], im.size[0]


def _to_rgb(im: PILImage.Image) -> PILImage.Image:
    from PIL import Image

    if im.mode.startswith("I") or im.mode == "F":
        grey = _to_8bit(np.asarray(im), im.mode == "F")
        return Image.fromarray(grey, "L").convert("RGB")
    if "A" in im.mode or "a" in im.mode or "transparency" in im.info:
        rgba = im.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return im.convert("RGB")


def _to_8bit(values: np.ndarray, floating: bool) -> np.ndarray:
    """Integer (16/32-bit) or float pixel values -> uint8 levels (see the module docstring)."""
    if not floating:
        return (np.clip(values.astype(np.int64), 0, 65535) >> 8).astype(np.uint8)
    x = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    top = float(x.max(initial=0.0))
    scale = 255.0 if top <= 1.0 else 1.0 if top <= 255.0 else 255.0 / 65535.0
    return np.clip(np.rint(x * scale), 0, 255).astype(np.uint8)


def common_size(paths: list[Path]) -> tuple[int, int]:
    """The (H, W) most files have, from the headers of up to SIZE_SAMPLE evenly spaced files:
    the size a folder dataset is decoded at when it declares none (ties: the larger size)."""
    step = max(1, len(paths) // SIZE_SAMPLE)
    counts = Counter(image_size(p) for p in paths[::step])
    return max(counts, key=lambda hw: (counts[hw], hw[0] * hw[1], hw))


def decode(path: Path, size: tuple[int, int]) -> np.ndarray:
    """One image file as uint8 (C, H, W), RGB, resized (bilinear) to `size` = (H, W)."""
    from PIL import Image

    im = open_rgb(path)
    if im.size != (size[1], size[0]):
        im = im.resize((size[1], size[0]), Image.BILINEAR)
    return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)  # (H, W, C) -> (C, H, W)


def decode_all(files: Files, size: tuple[int, int], workers: int = 8) -> Arrays:
    """Decode every file in parallel threads (PIL releases the GIL while decoding), each resized
    to `size` = (H, W) when it has another size, so they stack into one array."""
    if not files.paths:
        raise UserError("no images to decode")
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
    """Deterministic stratified split: indices (train, test), each class split in the same
    proportion (stratified_sample). A class of one image cannot be split: it goes to train."""
    index = np.arange(len(labels))
    alone = np.bincount(labels)[labels] == 1
    rest = index[~alone]
    classes = len(np.unique(labels[rest]))
    n_test = math.ceil(test_fraction * len(rest))
    if not 0 < classes <= n_test <= len(rest) - classes:  # every class on both sides
        raise UserError(f"cannot split {len(labels)} images of {len(set(labels.tolist()))} classes "
                        f"{1 - test_fraction:.0%}/{test_fraction:.0%} by class: {n_test} test images for "
                        f"{classes} classes", hint="give the images as <path>/{train,test}/<class>/<image>")
    test = rest[stratified_sample(labels[rest], n_test, seed)]
    return np.setdiff1d(index, test), np.sort(test)
