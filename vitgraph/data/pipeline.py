"""The input pipeline: batches of uint8 images on the training device, augmented there.

- In memory (`MemoryLoader`): the whole split lives on the device as a uint8 tensor
  (N, C, H, W); a batch is an index into it, and every augmentation runs on the batch.
- Streaming (`StreamLoader`): DataLoader workers decode image files in parallel with PIL and
  resize them to the model's input (a random resized crop for training when the recipe asks
  for one); the device then does the rest, exactly as for in-memory batches.

Both draw the same epoch order from `epoch_order`: a permutation fixed by (seed, epoch), each
index repeated `repeats` times in a row (repeated augmentation, Hoffer et al. 2020 / DeiT's
RASampler), dealt round-robin to the ranks of a multi-process run (so the copies of one image
land on different GPUs) and, with `truncate`, cut back to about one pass over the data.

`Augmenter` turns a uint8 batch into the model input: geometry (resize, pad-crop or random
resized crop, flip), RandAugment or AutoAugment, normalisation, random erasing, then soft
targets with label smoothing, Mixup or CutMix.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from torch import Tensor

from ..diagnostics import UserError
from . import augment as A
from .formats import Arrays, Files
from .policies import auto_augment, grey, rand_augment

AUTO_POLICY = {"svhn": "svhn", "cifar10": "cifar10", "cifar100": "cifar10", "digits": "svhn"}


@dataclass
class Augmenter:
    """Device-side augmentation for one (recipe, dataset, model input) combination."""

    size: tuple[int, int]
    channels: int
    classes: int
    mean: Tensor  # (C,)
    std: Tensor  # (C,)
    crop: str = "none"
    crop_padding: int = 4
    rrc_scale_min: float = 0.08
    flip: bool = False
    randaug_n: int = 0
    randaug_m: float = 0.0
    randaug_mstd: float = 0.0
    randaug_variant: str = "augreg"
    autoaugment: str = ""
    erase_prob: float = 0.0
    erase_mode: str = "pixel"
    erase_area_max: float = 1 / 3
    erase_ratio: float = 0.3
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mix_prob: float = 1.0
    mix_switch_prob: float = 0.5
    label_smoothing: float = 0.0
    eval_crop_pct: float = 1.0

    @classmethod
    def from_recipe(cls, recipe, dataset_name: str, size: tuple[int, int], channels: int, classes: int,
                    mean: tuple[float, ...], std: tuple[float, ...], device: torch.device) -> "Augmenter":
        """Copy the augmentation fields of a Recipe; "auto" AutoAugment picks the dataset's policy
        (CIFAR -> cifar10, SVHN and digits -> svhn, anything else -> imagenet, as the SPT code)."""
        keys = [k for k in cls.__dataclass_fields__ if hasattr(recipe, k)]
        values = {k: getattr(recipe, k) for k in keys}
        if values.get("autoaugment") == "auto":
            values["autoaugment"] = AUTO_POLICY.get(dataset_name, "imagenet")
        stats = _match_channels(mean, std, channels)
        return cls(size=size, channels=channels, classes=classes,
                   mean=torch.tensor(stats[0], device=device), std=torch.tensor(stats[1], device=device), **values)

    def _channels(self, x: Tensor) -> Tensor:
        if x.shape[1] == self.channels:
            return x
        if x.shape[1] == 1:
            return x.expand(-1, self.channels, -1, -1)  # grey -> RGB
        if self.channels == 1:
            return grey(x)
        raise UserError(f"cannot feed {x.shape[1]}-channel images to a {self.channels}-channel model")

    def train_batch(self, images: Tensor, labels: Tensor, gen: torch.Generator, rng: np.random.Generator,
                    presized: bool = False) -> tuple[Tensor, Tensor]:
        """uint8 (B, C, H, W) + labels (B,) -> normalised float input (B, C', H', W') and soft
        targets (B, K). `presized`: the loader already resized (streaming workers)."""
        x = self._channels(images.float())
        if not presized:
            x = A.random_resized_crop(x, self.size, gen, (self.rrc_scale_min, 1.0)) if self.crop == "rrc" \
                else A.resize(x, self.size)
            x = x.round().clamp(0, 255)
        if self.crop == "pad" and self.crop_padding > 0:
            x = A.random_pad_crop(x, self.crop_padding, gen)
        if self.flip:
            x = A.random_flip(x, gen)
        if self.randaug_n > 0:
            x = rand_augment(x, self.randaug_n, self.randaug_m, gen, self.randaug_variant, self.randaug_mstd)
        elif self.autoaugment:
            x = auto_augment(x, self.autoaugment, gen)
        x = A.normalize(x, self.mean, self.std)
        x = A.random_erase(x, self.erase_prob, gen, self.erase_mode, (0.02, self.erase_area_max), self.erase_ratio)
        t = A.soft_targets(labels, self.classes, self.label_smoothing)
        return A.mix_batch(x, t, rng, self.mixup_alpha, self.cutmix_alpha, self.mix_prob, self.mix_switch_prob)

    def eval_batch(self, images: Tensor, presized: bool = False) -> Tensor:
        """uint8 batch -> normalised evaluation input (resize, centre crop by eval_crop_pct)."""
        x = self._channels(images.float())
        if not presized:
            x = A.center_crop_resize(x, self.size, self.eval_crop_pct)
        return A.normalize(x, self.mean, self.std)


def _match_channels(mean: tuple[float, ...], std: tuple[float, ...], channels: int):
    if len(mean) == channels:
        return mean, std
    if len(mean) == 1:
        return mean * channels, std * channels
    return (sum(mean) / len(mean),) * channels, (sum(std) / len(std),) * channels


def epoch_order(n: int, epoch: int, seed: int, repeats: int = 1, truncate: bool = False,
                rank: int = 0, world: int = 1, shuffle: bool = True) -> Tensor:
    """This rank's sample indices for one epoch (see the module docstring). The permutation
    depends only on (seed, epoch), so every rank and every resumed run agree on it."""
    if not shuffle:  # evaluation: disjoint shards, every image exactly once
        return torch.arange(n)[rank::world]
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    if repeats > 1:
        order = order.repeat_interleave(repeats)
    per_rank = (n if truncate else len(order)) // world
    padded = torch.cat([order, order[: max(0, per_rank * world - len(order))]])  # pad to a multiple
    return padded[rank::world][:per_rank]


def batches(order: Tensor, batch_size: int, drop_last: bool) -> list[Tensor]:
    """Split an index order into batches; the last partial one is dropped when asked and
    at least one full batch exists."""
    parts = list(order.split(batch_size))
    if drop_last and len(parts) > 1 and len(parts[-1]) < batch_size:
        parts.pop()
    return parts


class MemoryLoader:
    """A split held on the device: yields (uint8 images, labels) batches by indexing."""

    presized = False

    def __init__(self, arrays: Arrays, device: torch.device, batch_size: int, train: bool, seed: int = 0,
                 repeats: int = 1, truncate: bool = False, rank: int = 0, world: int = 1) -> None:
        self.images = torch.from_numpy(arrays.images).to(device)  # (N, C, H, W) uint8
        self.labels = torch.from_numpy(arrays.labels).to(device)
        self.batch_size, self.train, self.seed = batch_size, train, seed
        self.repeats, self.truncate, self.rank, self.world = repeats, truncate, rank, world
        self.epoch = 0

    def order(self) -> Tensor:
        return epoch_order(len(self.labels), self.epoch, self.seed, self.repeats if self.train else 1,
                           self.truncate, self.rank, self.world, shuffle=self.train)

    def __len__(self) -> int:
        return len(batches(self.order(), self.batch_size, self.train))

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for idx in batches(self.order(), self.batch_size, self.train):
            idx = idx.to(self.images.device)
            yield self.images[idx], self.labels[idx]


class _Decode(torch.utils.data.Dataset):
    """Worker side of streaming: decode one file (PIL) to uint8 (C, H, W) at the model size;
    training with "rrc" draws the random resized crop here, evaluation centre-crops."""

    def __init__(self, files: Files, size: tuple[int, int], train: bool, rrc: bool, rrc_scale_min: float,
                 crop_pct: float) -> None:
        self.files, self.size, self.train, self.rrc = files, size, train, rrc
        self.rrc_scale_min, self.crop_pct = rrc_scale_min, crop_pct

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        from PIL import Image

        from .formats import _corrupt

        path = self.files.paths[i]
        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
                w, h = im.size
                if self.train and self.rrc:
                    top, left, ch, cw = A.draw_resized_crops(1, h, w, None, torch.device("cpu"),
                                                             (self.rrc_scale_min, 1.0))[0].tolist()
                    im = im.resize((self.size[1], self.size[0]), Image.BILINEAR, box=(left, top, left + cw, top + ch))
                elif self.train or self.crop_pct >= 1.0:
                    im = im.resize((self.size[1], self.size[0]), Image.BILINEAR)
                else:
                    im = _center_crop(im, self.size, self.crop_pct)
                x = torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1)  # (C, H, W)
        except OSError as e:
            raise _corrupt(path, e) from e
        return x, int(self.files.labels[i])


def _center_crop(im, size: tuple[int, int], crop_pct: float):
    """Resize the shorter side to size / crop_pct, then cut the centre (DeiT evaluation)."""
    from PIL import Image

    w, h = im.size
    short = int(min(size) / crop_pct)
    nw, nh = (short, round(h * short / w)) if w <= h else (round(w * short / h), short)
    im = im.resize((nw, nh), Image.BILINEAR)
    left, top = (nw - size[1]) // 2, (nh - size[0]) // 2
    return im.crop((left, top, left + size[1], top + size[0]))


class _Order(torch.utils.data.Sampler):
    def __init__(self, loader: "StreamLoader") -> None:
        self.loader = loader

    def __iter__(self) -> Iterator[list[int]]:
        for b in batches(self.loader.order(), self.loader.batch_size, self.loader.train):
            yield b.tolist()

    def __len__(self) -> int:
        return len(batches(self.loader.order(), self.loader.batch_size, self.loader.train))


class StreamLoader(MemoryLoader):
    """A split read from files by `workers` DataLoader processes; yields uint8 batches at the
    model's input size on the device."""

    presized = True

    def __init__(self, files: Files, device: torch.device, batch_size: int, train: bool, size: tuple[int, int],
                 workers: int, rrc: bool = False, rrc_scale_min: float = 0.08, crop_pct: float = 1.0,
                 seed: int = 0, repeats: int = 1, truncate: bool = False, rank: int = 0, world: int = 1) -> None:
        self.labels = torch.from_numpy(files.labels)
        self.device = device
        self.batch_size, self.train, self.seed = batch_size, train, seed
        self.repeats, self.truncate, self.rank, self.world = repeats, truncate, rank, world
        self.epoch = 0
        self.loader = torch.utils.data.DataLoader(
            _Decode(files, size, train, rrc, rrc_scale_min, crop_pct), batch_sampler=_Order(self),
            num_workers=workers, pin_memory=device.type == "cuda", persistent_workers=False,
            generator=torch.Generator().manual_seed(seed))

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        self.loader.generator.manual_seed(self.seed * 1_000_003 + self.epoch + 7 * self.rank)
        for x, y in self.loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
