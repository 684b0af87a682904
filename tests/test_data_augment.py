"""Exact effects of the batched augmentations on small tensors: crop with padding, flip, resized
crops, erasing, Mixup, CutMix, label smoothing, normalisation."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import train_helpers  # noqa: F401  (one torch thread)

from vitgraph.data import augment as A


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def batch(b: int = 4, c: int = 2, h: int = 3, w: int = 4) -> torch.Tensor:
    return torch.arange(b * c * h * w, dtype=torch.float32).reshape(b, c, h, w) + 1


def test_flip_flips_exactly_the_chosen_images():
    x = batch()
    mask = torch.tensor([True, False, True, False])
    y = A.flip(x, mask)
    for i in range(4):
        expected = x[i].flip(-1) if mask[i] else x[i]
        assert torch.equal(y[i], expected)
    assert torch.equal(y[0, 0, 0], torch.tensor([4.0, 3.0, 2.0, 1.0]))


def test_pad_crop_shifts_by_the_offsets():
    x = batch()
    offsets = torch.tensor([[1, 1], [0, 0], [2, 2], [0, 2]])  # padding 1: (1, 1) is no shift
    y = A.pad_crop(x, 1, offsets)
    assert torch.equal(y[0], x[0])
    # offset (0, 0): the window starts one row/column into the zero padding -> content moves down-right
    assert torch.equal(y[1, :, 1:, 1:], x[1, :, :-1, :-1])
    assert y[1, :, 0, :].abs().sum() == 0 and y[1, :, :, 0].abs().sum() == 0
    # offset (2, 2): content moves up-left
    assert torch.equal(y[2, :, :-1, :-1], x[2, :, 1:, 1:])
    assert y[2, :, -1, :].abs().sum() == 0
    # offset (0, 2): down one row, left one column
    assert torch.equal(y[3, :, 1:, :-1], x[3, :, :-1, 1:])


def test_random_pad_crop_is_a_shift_within_the_padding():
    x = torch.rand(16, 3, 8, 8) + 1  # no zeros inside
    y = A.random_pad_crop(x, 2, gen())
    for i in range(16):
        found = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                 if torch.equal(A.pad_crop(x[i:i + 1], 2, torch.tensor([[2 + dy, 2 + dx]]))[0], y[i])]
        assert found, f"image {i} is not a shifted copy"


def test_crop_resize_full_box_is_identity_and_sub_box_is_a_crop():
    x = torch.rand(2, 3, 6, 6)
    full = torch.tensor([[0, 0, 6, 6], [0, 0, 6, 6]])
    assert torch.allclose(A.crop_resize(x, full, (6, 6)), x, atol=1e-5)
    box = torch.tensor([[1, 2, 3, 3], [0, 0, 2, 2]])  # top, left, h, w
    y = A.crop_resize(x, box, (3, 3))
    assert torch.allclose(y[0], x[0, :, 1:4, 2:5], atol=1e-5)


def test_resized_crop_boxes_are_inside_and_sized_by_scale():
    boxes = A.draw_resized_crops(500, 32, 48, gen(), torch.device("cpu"), scale=(0.25, 0.5))
    top, left, h, w = boxes.T
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 32).all() and (left + w <= 48).all()
    area = (h * w).float() / (32 * 48)
    assert area.min() > 0.2 and area.max() < 0.56  # scale range, up to rounding
    ratio = w.float() / h.float()
    assert ratio.min() > 0.7 and ratio.max() < 1.45


def test_center_crop_resize_cuts_the_middle():
    x = torch.arange(64, dtype=torch.float32).reshape(1, 1, 8, 8)
    y = A.center_crop_resize(x, (4, 4), crop_pct=0.5)  # resize to 8 (no-op), cut centre 4x4
    assert torch.equal(y, x[..., 2:6, 2:6])


def test_normalize():
    x = torch.full((1, 3, 1, 1), 255.0)
    y = A.normalize(x, torch.tensor([0.5, 0.0, 1.0]), torch.tensor([0.5, 2.0, 1.0]))
    assert y.flatten().tolist() == [1.0, 0.5, 0.0]


def test_erase_replaces_exactly_the_box():
    x = batch(3, 2, 5, 6)
    boxes = torch.tensor([[1, 2, 2, 3], [0, 0, 5, 6], [4, 5, 1, 1]])
    apply = torch.tensor([True, False, True])
    y = A.erase(x, boxes, apply, torch.tensor(-7.0))
    assert (y[0, :, 1:3, 2:5] == -7).all() and (y[0] == -7).sum() == 2 * 6
    assert torch.equal(y[1], x[1])
    assert y[2, 0, 4, 5] == -7 and (y[2] == -7).sum() == 2


def test_erase_boxes_fit_and_follow_the_area_range():
    boxes, apply = A.draw_erase_boxes(2000, 32, 32, 0.5, gen(), torch.device("cpu"), area=(0.02, 0.4), ratio=0.3)
    assert 0.45 < apply.float().mean() < 0.55
    top, left, h, w = boxes[apply].T
    assert (top + h <= 32).all() and (left + w <= 32).all()
    frac = (h * w).float() / 1024
    assert frac.min() > 0.01 and frac.max() < 0.45
    none, applied = A.draw_erase_boxes(50, 32, 32, 0.0, gen(), torch.device("cpu"))
    assert not applied.any()


def test_random_erase_pixel_mode_fills_noise_in_one_box():
    x = torch.zeros(8, 3, 16, 16)
    y = A.random_erase(x, 1.0, gen(), mode="pixel")
    changed = (y != 0).any(1)  # (B, H, W)
    for i in range(8):
        rows, cols = torch.nonzero(changed[i], as_tuple=True)
        area = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        assert area == changed[i].sum()  # a filled rectangle
    assert 0.5 < y[y != 0].std() < 1.5


def test_mixup_equals_the_formula():
    x, t = torch.rand(4, 3, 2, 2), torch.eye(4)
    y, ty = A.mixup(x, t, 0.7)
    for i in range(4):
        j = (i - 1) % 4  # rolled by one: image i is mixed with image i-1
        assert torch.allclose(y[i], 0.7 * x[i] + 0.3 * x[j])
        assert torch.allclose(ty[i], 0.7 * t[i] + 0.3 * t[j])


def test_mix_batch_mixup_uses_max_a_one_minus_a():
    rng = np.random.default_rng(3)
    x, t = torch.rand(6, 3, 4, 4), A.soft_targets(torch.arange(6), 6)
    for _ in range(20):
        _, ty = A.mix_batch(x, t, rng, mixup_alpha=0.8, cutmix_alpha=0.0)
        lam = ty.max().item()
        assert lam >= 0.5 and torch.allclose(ty.sum(1), torch.ones(6))


def test_cutmix_box_area_matches_lambda():
    x, t = torch.rand(4, 3, 10, 10), torch.eye(4)
    box = (2, 3, 4, 5)
    y, ty, lam = A.cutmix(x, t, box)
    assert lam == pytest.approx(1 - 20 / 100)
    assert torch.allclose(ty, lam * t + (1 - lam) * t.roll(1, 0))
    assert torch.equal(y[:, :, 2:6, 3:8], x.roll(1, 0)[:, :, 2:6, 3:8])
    outside = torch.ones(10, 10, dtype=torch.bool)
    outside[2:6, 3:8] = False
    assert torch.equal(y[:, :, outside], x[:, :, outside])


def test_cutmix_box_size_follows_lambda_unless_clipped():
    rng = np.random.default_rng(0)
    for lam in (0.2, 0.5, 0.9):
        for _ in range(20):
            top, left, h, w = A.cutmix_box(32, 32, lam, rng)
            side = int(32 * math.sqrt(1 - lam))
            assert 0 <= top and top + h <= 32 and 0 <= left and left + w <= 32
            assert h <= 2 * (side // 2) and w <= 2 * (side // 2)
            if 0 < top and top + h < 32 and 0 < left and left + w < 32:
                assert (h, w) == (2 * (side // 2), 2 * (side // 2))


def test_soft_targets_label_smoothing():
    t = A.soft_targets(torch.tensor([2, 0]), 4, smoothing=0.1)
    assert torch.allclose(t[0], torch.tensor([0.025, 0.025, 0.925, 0.025]))
    assert torch.allclose(t.sum(1), torch.ones(2))


def test_mix_batch_probability_zero_leaves_the_batch():
    x, t = torch.rand(4, 3, 4, 4), torch.eye(4)
    y, ty = A.mix_batch(x, t, np.random.default_rng(0), 1.0, 1.0, prob=0.0)
    assert y is x and ty is t


def test_mix_batch_switches_between_cutmix_and_mixup():
    x, t = torch.rand(8, 3, 16, 16), torch.eye(8)
    rng = np.random.default_rng(0)
    kinds = set()
    for _ in range(40):
        y, _ = A.mix_batch(x, t, rng, 1.0, 1.0, prob=1.0, switch_prob=0.5)
        same = torch.isclose(y, x) | torch.isclose(y, x.roll(1, 0))
        kinds.add("cutmix" if same.all() else "mixup")
    assert kinds == {"cutmix", "mixup"}
