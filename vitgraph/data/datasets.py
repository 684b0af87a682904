"""Datasets by name: where each is looked for under the data root, how it is fetched, and how
it is held (in memory as uint8 arrays, or as a file list streamed through DataLoader workers).

    ds = load_dataset("cifar10", root="/data")      # or "cifar100", "svhn", "tiny-imagenet",
    ds.train.images, ds.train.labels, ds.classes     # "imagenet", "digits", or a folder path

Names and layouts (under the data root):
  digits         shipped with vitgraph, no download: 1,797 8x8 grey images (UCI optdigits), split
                 80/20 by class into 1,437 train and 360 test images (always the same).
  cifar10        cifar-10-batches-py/ (official python batches; downloaded if missing) or an
                 image-folder tree cifar10/{train,test}/<class>/*.
  cifar100       cifar-100-python/ (downloaded if missing) or cifar100/{train,test}/<class>/*.
  svhn           svhn/{train,test}_32x32.mat (downloaded if missing).
  tiny-imagenet  tiny-imagenet-200/ (the CS231n zip; downloaded if missing); its labelled val
                 split is the test split.
  imagenet       imagenet/{train,val}/<wnid>/*.JPEG (ILSVRC-2012; no download, needs a login).
  a path         an image-folder tree: <path>/{train,test|val}/<class>/<image>, or
                 <path>/<class>/<image> split 80/20 stratified with seed 0 (a class of one
                 image keeps it in train). train/ and test/ must hold the same classes.

A folder of files is decoded once into a uint8 array cached under VITGRAPH_CACHE when it fits
`memory_limit` bytes (mode "auto"), and streamed otherwise (mode "stream" forces streaming).
Decoded arrays hold every image at the dataset's declared size (32x32 for the CIFAR folders,
64x64 for Tiny-ImageNet), or, for a folder without one, at the size most of its files have:
never at the size of whichever file happens to come first.
"""
from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..diagnostics import UserError, suggestion
from ..fileio import write_atomic
from .formats import (Arrays, Files, common_size, decode_all, read_cifar, read_digits, read_svhn,
                      read_tiny_imagenet, scan_folder, stratified_sample, stratified_split)
from .sources import Remote, cache_dir, data_root, extract, fetch

MEMORY_LIMIT = 8 << 30
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TEST_DIRS = ("test", "val", "validation")
SPLIT_SEED = 0
TEST_FRACTION = 0.2


@dataclass
class Dataset:
    """A dataset's two splits, class names and per-channel normalisation statistics."""

    name: str
    classes: list[str]
    train: Arrays | Files
    test: Arrays | Files
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str = ""
    size: tuple[int, int] | None = None  # (H, W) file splits are decoded at (see the module docstring)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_size(self) -> tuple[int, int] | None:
        """(H, W) of the images held in memory; None while streamed (each file is resized to the model)."""
        return tuple(self.train.images.shape[2:]) if isinstance(self.train, Arrays) else None

    @property
    def in_memory(self) -> bool:
        return isinstance(self.train, Arrays) and isinstance(self.test, Arrays)


@dataclass(frozen=True)
class Known:
    """A dataset with a name: its official folder, download, statistics and how to get it."""

    name: str
    official: str  # folder (or file) that marks the official format under the root
    remotes: tuple[Remote, ...]
    how_to_get: str
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    folder: str = ""  # image-folder tree accepted instead of the official format
    remote_dir: str = ""  # subdirectory the remotes are saved in (default: the root)
    aliases: tuple[str, ...] = field(default=())
    size: tuple[int, int] | None = None  # (H, W) of the official images, when they all have one


KNOWN: dict[str, Known] = {k.name: k for k in (
    Known("cifar10", "cifar-10-batches-py",
          (Remote("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"),),
          "download cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html and unpack it there",
          (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), folder="cifar10", size=(32, 32)),
    Known("cifar100", "cifar-100-python",
          (Remote("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85"),),
          "download cifar-100-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html and unpack it there",
          (0.5070, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), folder="cifar100", size=(32, 32)),
    Known("svhn", "svhn",
          (Remote("http://ufldl.stanford.edu/housenumbers/train_32x32.mat", "e26dedcc434d2e4c54c9b2d4a06d8373"),
           Remote("http://ufldl.stanford.edu/housenumbers/test_32x32.mat", "eb5a983be6a315427106f1b164d9cef3")),
          "download train_32x32.mat and test_32x32.mat from http://ufldl.stanford.edu/housenumbers/ into svhn/",
          (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), remote_dir="svhn", size=(32, 32)),
    Known("tiny-imagenet", "tiny-imagenet-200",
          (Remote("http://cs231n.stanford.edu/tiny-imagenet-200.zip", "90528d7ca1a48142e341f4ef8d21d0de"),),
          "download tiny-imagenet-200.zip from http://cs231n.stanford.edu/ and unzip it there",
          (0.4802, 0.4481, 0.3975), (0.2770, 0.2691, 0.2821), aliases=("tiny_imagenet", "tinyimagenet"),
          size=(64, 64)),
    Known("imagenet", "imagenet", (),
          "get ILSVRC-2012 from https://image-net.org (login required) and arrange it as "
          "imagenet/train/<wnid>/*.JPEG and imagenet/val/<wnid>/*.JPEG"),
)}
NAMES = ("digits", *KNOWN)


def load_dataset(name: str, root: str | Path | None = None, download: bool = True, mode: str = "auto",
                 memory_limit: int = MEMORY_LIMIT) -> Dataset:
    """Find, fetch if needed, and read a dataset by name or folder path (see the module docstring).

    mode: "auto" holds decoded folders in memory when they fit `memory_limit`, "memory" always,
    "stream" never. Raises UserError saying what was looked for, where, and how to get it."""
    if mode not in ("auto", "memory", "stream"):
        raise UserError(f"unknown data mode '{mode}'; expected auto, memory or stream", status=2)
    if name == "digits":
        return _digits()
    known = _known(name)
    if known is None:
        path = Path(name).expanduser()
        if not path.is_dir():
            raise UserError(f"unknown dataset '{name}'{suggestion(name, NAMES)}",
                            hint=f"use one of {', '.join(NAMES)} or the path of an image-folder tree", status=2)
        return _hold(_folder_dataset(path.name, path, IMAGENET_MEAN, IMAGENET_STD, None), mode, memory_limit)
    base = data_root(root)
    reader = _find(known, base)
    if reader is None and download and known.remotes:
        try:
            _download(known, base)
        except UserError as e:  # offline, or a bad download: say what was looked for and how to get it
            raise _missing(known, base, download, failure=e.message) from None
        reader = _find(known, base)
    if reader is None:
        raise _missing(known, base, download)
    return _hold(reader(), mode, memory_limit)


def _known(name: str) -> Known | None:
    key = name.lower()
    return next((k for k in KNOWN.values() if key == k.name or key in k.aliases), None)


def _find(known: Known, base: Path) -> Callable[[], Dataset] | None:
    """A reader for the first layout of `known` present under `base`, or None."""
    official = base / known.official
    if known.name in ("cifar10", "cifar100"):
        if (official / ("test_batch" if known.name == "cifar10" else "test")).is_file():
            return lambda: _cifar(known, official)
    elif known.name == "svhn":
        for d in (official, base):
            if (d / "train_32x32.mat").is_file() and (d / "test_32x32.mat").is_file():
                return lambda d=d: _svhn(known, d)
    elif known.name == "tiny-imagenet":
        if (official / "wnids.txt").is_file():
            return lambda: _tiny(known, official)
    folder = base / (known.folder or known.official)
    if (folder / "train").is_dir() and any((folder / t).is_dir() for t in TEST_DIRS):
        return lambda: _folder_dataset(known.name, folder, known.mean, known.std, known)
    return None


def _download(known: Known, base: Path) -> None:
    for remote in known.remotes:
        path = fetch(remote, base / known.remote_dir)
        if path.suffix in (".gz", ".tgz", ".zip", ".tar"):
            extract(path, base)


def _missing(known: Known, base: Path, download: bool, failure: str | None = None) -> UserError:
    looked = [str(base / known.official)]
    if known.folder:
        looked.append(f"{base / known.folder}/{{train,test}}/<class>/")
    tried = " (download disabled)" if known.remotes and not download else ""
    if failure:
        tried = f" and {failure}"
    return UserError(f"dataset '{known.name}' not found: looked for {' and '.join(looked)}{tried}",
                     hint=f"{known.how_to_get}; set the location with --data-root or VITGRAPH_DATA "
                          f"(now {base})")


def _cifar(known: Known, directory: Path) -> Dataset:
    fine = known.name == "cifar100"
    train, classes = read_cifar(directory, "train", fine)
    test, _ = read_cifar(directory, "test", fine)
    return Dataset(known.name, classes, train, test, known.mean, known.std, str(directory))


def _svhn(known: Known, directory: Path) -> Dataset:
    train = read_svhn(directory / "train_32x32.mat")
    test = read_svhn(directory / "test_32x32.mat")
    return Dataset(known.name, [str(d) for d in range(10)], train, test, known.mean, known.std, str(directory))


def _tiny(known: Known, directory: Path) -> Dataset:
    train, classes = read_tiny_imagenet(directory, "train")
    test, _ = read_tiny_imagenet(directory, "val")
    return Dataset(known.name, classes, train, test, known.mean, known.std, str(directory), known.size)


def _folder_dataset(name: str, directory: Path, mean: tuple[float, ...], std: tuple[float, ...],
                    known: Known | None) -> Dataset:
    """An image-folder tree with train/ and test/ (or val/), or bare class folders split 80/20."""
    test_dir = next((directory / t for t in TEST_DIRS if (directory / t).is_dir()), None)
    if (directory / "train").is_dir() and test_dir is None:
        raise UserError(f"{directory} has train/ but no test split ({'/, '.join(TEST_DIRS)}/)",
                        hint="add the test images as <path>/test/<class>/<image>")
    if (directory / "train").is_dir():
        train, classes = scan_folder(directory / "train")
        test, test_classes = scan_folder(test_dir)
        _same_classes(directory / "train", classes, test_dir, test_classes)
    else:
        every, classes = scan_folder(directory)
        if len(every) == 0:
            hint = known.how_to_get if known else "arrange it as <path>/{train,test}/<class>/<image>"
            raise UserError(f"no images found in {directory}", hint=hint)
        tr, te = stratified_split(every.labels, TEST_FRACTION, SPLIT_SEED)
        train = Files([every.paths[i] for i in tr], every.labels[tr])
        test = Files([every.paths[i] for i in te], every.labels[te])
    if len(train) == 0 or len(test) == 0:
        raise UserError(f"{directory} has {len(train)} train and {len(test)} test images",
                        hint="expected <path>/{train,test}/<class>/<image>")
    return Dataset(name, classes, train, test, mean, std, str(directory), known.size if known else None)


def _same_classes(train_dir: Path, train: list[str], test_dir: Path, test: list[str]) -> None:
    """test/ must have the classes of train/, and no others (labels are positions in the list)."""
    if train != test:
        only = [f"only in {d.name}/: {', '.join(sorted(set(a) - set(b)))}"
                for d, a, b in ((train_dir, train, test), (test_dir, test, train)) if set(a) - set(b)]
        raise UserError(f"the classes of {train_dir} and {test_dir} differ ({'; '.join(only)})",
                        hint="every class needs a folder with images in both")


def _digits() -> Dataset:
    train, test, classes = read_digits()
    mean, std = channel_stats(train.images)
    return Dataset("digits", classes, train, test, mean, std, "vitgraph/data/digits.npz (UCI optdigits)")


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images (N, C, H, W), in [0, 1] units."""
    x = images.transpose(1, 0, 2, 3).reshape(images.shape[1], -1)  # (C, N*H*W)
    mean = x.mean(axis=1, dtype=np.float64) / 255.0
    std = x.std(axis=1, dtype=np.float64) / 255.0
    return tuple(float(m) for m in mean), tuple(float(max(s, 1e-3)) for s in std)


def _hold(ds: Dataset, mode: str, memory_limit: int) -> Dataset:
    """Decode file splits into cached arrays, at the dataset's size, when the mode and size allow."""
    if mode == "stream" or not isinstance(ds.train, Files):
        return ds
    ds.size = ds.size or common_size(ds.train.paths)
    needed = 3 * ds.size[0] * ds.size[1] * (len(ds.train) + len(ds.test))
    if mode == "auto" and needed > memory_limit:
        return ds
    ds.train = cached_decode(ds.train, ds.name, "train", ds.size)
    ds.test = cached_decode(ds.test, ds.name, "test", ds.size)
    return ds


def load_subset(name: str, n: int, seed: int, root: str | Path | None = None, download: bool = True,
                mode: str = "auto", memory_limit: int = MEMORY_LIMIT) -> Dataset:
    """load_dataset with the training split cut to `n` images drawn by class in proportion
    (stratified_sample, seeded), before any image file is decoded; the test split stays whole."""
    ds = load_dataset(name, root, download, "stream")  # file lists stay undecoded until _hold
    ds.train = take(ds.train, n, seed, f"--subset {n}: {ds.name}")
    return _hold(ds, mode, memory_limit)


def take(split: Arrays | Files, n: int, seed: int, where: str) -> Arrays | Files:
    """A stratified, seeded sample of `n` items of a split, in their original order."""
    if n > len(split):
        raise UserError(f"{where} has only {len(split):,} training images", status=2)
    idx = stratified_sample(split.labels, n, seed)
    if isinstance(split, Arrays):
        return Arrays(split.images[idx], split.labels[idx])
    return Files([split.paths[i] for i in idx], split.labels[idx])


def _say_decoding(files: Files, name: str, split: str, size: tuple[int, int], path: Path) -> None:
    """One line before the (first, slow) decoding of a split: how much, and where it is kept."""
    mib = 3 * size[0] * size[1] * len(files) / 2**20
    print(f"decoding {len(files):,} images of {name} ({split}, {mib:,.0f} MiB) once into {path} "
          "(VITGRAPH_CACHE sets the folder)", file=sys.stderr, flush=True)


def cached_decode(files: Files, name: str, split: str, size: tuple[int, int]) -> Arrays:
    """Decode `files` at `size` once; later calls load the .npz cache keyed by the size and the
    files' paths, sizes and mtimes."""
    digest = hashlib.sha1(f"{size[0]}x{size[1]}\n".encode())
    for p in files.paths:
        st = p.stat()
        digest.update(f"{p.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    digest.update(files.labels.tobytes())
    path = cache_dir() / f"{name.replace('/', '_')}-{split}-{digest.hexdigest()[:16]}.npz"
    if path.is_file():
        try:
            with np.load(path) as z:
                return Arrays(z["images"], z["labels"])
        except (OSError, ValueError, KeyError):
            path.unlink(missing_ok=True)  # a damaged cache is rebuilt
    _say_decoding(files, name, split, size, path)
    arrays = decode_all(files, size)
    def save(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to a name
            np.savez(f, images=arrays.images, labels=arrays.labels)

    write_atomic(path, save)
    return arrays
