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

from typing import TYPE_CHECKING, Iterator

import numpy as np
import torch
from torch import Tensor

from ..diagnostics import UserError
from . import augment as A
from .formats import Arrays, Files, open_rgb
from .policies import auto_augment, grey, rand_augment

if TYPE_CHECKING:
    from ..train.recipes import Recipe

AUTO_POLICY = {"svhn": "svhn", "cifar10": "cifar10", "cifar100": "cifar10", "digits": "svhn"}


class Augmenter:
    """Device-side augmentation for one (recipe, dataset, model input) combination. `recipe` is a
    vitgraph.train.recipes.Recipe (its augmentation, label-smoothing and evaluation-crop fields);
    its "auto" AutoAugment becomes the dataset's policy (CIFAR -> cifar10, SVHN and digits ->
    svhn, anything else -> imagenet, as the SPT code chooses)."""

    def __init__(self, recipe: Recipe, dataset_name: str, size: tuple[int, int], channels: int, classes: int,
                 mean: tuple[float, ...], std: tuple[float, ...], device: torch.device) -> None:
        self.r = recipe
        self.size, self.channels, self.classes = tuple(size), channels, classes
        self.policy = AUTO_POLICY.get(dataset_name, "imagenet") if recipe.autoaugment == "auto" else recipe.autoaugment
        mean, std = _match_channels(mean, std, channels)
        self.mean = torch.tensor(mean, device=device)  # (C,)
        self.std = torch.tensor(std, device=device)  # (C,)

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
        r = self.r
        x = self._channels(images.float())
        if not presized:
            x = A.random_resized_crop(x, self.size, gen, (r.rrc_scale_min, 1.0)) if r.crop == "rrc" \
                else A.resize(x, self.size)
            x = x.round().clamp(0, 255)
        if r.crop == "pad" and r.crop_padding > 0:
            x = A.random_pad_crop(x, r.crop_padding, gen)
        if r.flip:
            x = A.random_flip(x, gen)
        if r.randaug_n > 0:
            x = rand_augment(x, r.randaug_n, r.randaug_m, gen, r.randaug_variant, r.randaug_mstd)
        elif self.policy:
            x = auto_augment(x, self.policy, gen)
        x = A.normalize(x, self.mean, self.std)
        x = A.random_erase(x, r.erase_prob, gen, r.erase_mode, (0.02, r.erase_area_max), r.erase_ratio)
        t = A.soft_targets(labels, self.classes, r.label_smoothing)
        return A.mix_batch(x, t, rng, r.mixup_alpha, r.cutmix_alpha, r.mix_prob, r.mix_switch_prob)

    def eval_batch(self, images: Tensor, presized: bool = False) -> Tensor:
        """uint8 batch -> normalised evaluation input (resize, centre crop by eval_crop_pct)."""
        x = self._channels(images.float())
        if not presized:
            x = A.center_crop_resize(x, self.size, self.r.eval_crop_pct)
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

    def __getitem__(self, i: int) -> tuple[Tensor, int, str]:
        """(image, label, error): a file that cannot be decoded gives a blank image and its error
        ("message\nhint"), which the loader raises in the main process (raised in a worker, it
        would reach the user wrapped in the worker's traceback)."""
        from PIL import Image

        label = int(self.files.labels[i])
        try:
            im = open_rgb(self.files.paths[i])
        except UserError as e:
            return torch.zeros(3, *self.size, dtype=torch.uint8), label, f"{e.message}\n{e.hint or ''}"
        w, h = im.size
        if self.train and self.rrc:
            top, left, ch, cw = A.draw_resized_crops(1, h, w, None, torch.device("cpu"),
                                                     (self.rrc_scale_min, 1.0))[0].tolist()
            im = im.resize((self.size[1], self.size[0]), Image.BILINEAR, box=(left, top, left + cw, top + ch))
        elif self.train or self.crop_pct >= 1.0:
            im = im.resize((self.size[1], self.size[0]), Image.BILINEAR)
        else:
            im = _center_crop(im, self.size, self.crop_pct)
        return torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1), label, ""  # (C, H, W)


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
        for x, y, errors in self.loader:
            failed = next((e for e in errors if e), None)
            if failed:
                message, hint = failed.split("\n", 1)
                raise UserError(message, hint=hint or None)
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
