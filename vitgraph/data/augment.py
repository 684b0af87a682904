"""Batched augmentations on the training device: whole batches (B, C, H, W) at once, with
per-image random parameters drawn from a torch.Generator (per-batch scalars from a numpy
Generator), so a seed reproduces every draw.

Each augmentation is split into a draw (random parameters) and an apply (a deterministic
function of the parameters), so tests can check the exact effect:
- random crop with zero padding (the CIFAR recipe of He et al. 2016; torchvision RandomCrop);
- random resized crop (Szegedy et al. 2015 "inception crop"; torchvision/timm RandomResizedCrop,
  scale (0.08, 1), log-uniform ratio (3/4, 4/3), 10 tries then a centre crop);
- horizontal flip;
- random erasing (Zhong et al. 2020; timm RandomErasing: area fraction uniform in
  [area_min, area_max], log-uniform aspect ratio in [ratio, 1/ratio], 10 tries);
- Mixup (Zhang et al. 2018) as AugReg (Steiner et al. 2021) does it: one a ~ Beta(alpha, alpha)
  per batch, a = max(a, 1 - a), images and targets mixed with the batch rolled by one;
- CutMix (Yun et al. 2019): a box of area (1 - lam) * H * W, clipped to the image, pasted from
  the rolled batch; lam is then recomputed from the clipped box.
Images are float tensors in [0, 255] before `normalize`, in normalised units after.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def _uniform(n: int, gen: torch.Generator, device: torch.device) -> Tensor:
    return torch.rand(n, generator=gen, device=device)


def _randint(high: Tensor, gen: torch.Generator) -> Tensor:
    """Per-element integer uniform in [0, high) for a tensor of highs (>= 1)."""
    return (torch.rand(high.shape, generator=gen, device=high.device) * high).long().clamp_max(high - 1)


# --- crop with padding, flip -------------------------------------------------------------------

def pad_crop(x: Tensor, padding: int, offsets: Tensor) -> Tensor:
    """Zero-pad by `padding` on every side, then cut the (H, W) window at offsets (B, 2) =
    (top, left) in [0, 2 * padding] per image. Offset (p, p) returns the image unchanged."""
    b, _, h, w = x.shape
    xp = F.pad(x, (padding, padding, padding, padding))  # (B, C, H+2p, W+2p)
    rows = offsets[:, 0, None] + torch.arange(h, device=x.device)  # (B, H)
    cols = offsets[:, 1, None] + torch.arange(w, device=x.device)  # (B, W)
    batch = torch.arange(b, device=x.device)[:, None, None]
    return xp.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def random_pad_crop(x: Tensor, padding: int, gen: torch.Generator) -> Tensor:
    offsets = torch.randint(0, 2 * padding + 1, (x.shape[0], 2), generator=gen, device=x.device)
    return pad_crop(x, padding, offsets)


def flip(x: Tensor, mask: Tensor) -> Tensor:
    """Mirror left-right exactly the images where mask (B,) is True."""
    return torch.where(mask[:, None, None, None], x.flip(-1), x)


def random_flip(x: Tensor, gen: torch.Generator, p: float = 0.5) -> Tensor:
    return flip(x, _uniform(x.shape[0], gen, x.device) < p)


# --- resizing ----------------------------------------------------------------------------------

def resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize (antialiased when shrinking) of a float batch."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


def center_crop_resize(x: Tensor, size: tuple[int, int], crop_pct: float) -> Tensor:
    """Evaluation view: resize to size / crop_pct, then cut the centre `size` (DeiT: 224 of 256)."""
    if crop_pct >= 1.0:
        return resize(x, size)
    big = (int(size[0] / crop_pct), int(size[1] / crop_pct))
    x = resize(x, big)
    top, left = (big[0] - size[0]) // 2, (big[1] - size[1]) // 2
    return x[..., top:top + size[0], left:left + size[1]]


def draw_resized_crops(b: int, h: int, w: int, gen: torch.Generator, device: torch.device,
                       scale: tuple[float, float] = (0.08, 1.0),
                       ratio: tuple[float, float] = (3 / 4, 4 / 3), tries: int = 10) -> Tensor:
    """Boxes (B, 4) = (top, left, height, width) as RandomResizedCrop draws them."""
    area = h * w * (scale[0] + (scale[1] - scale[0]) * torch.rand(b, tries, generator=gen, device=device))
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * torch.rand(
        b, tries, generator=gen, device=device)
    r = torch.exp(log_r)
    cw = torch.sqrt(area * r).round()
    ch = torch.sqrt(area / r).round()
    ok = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)  # (B, tries)
    first = ok.float().argmax(dim=1, keepdim=True)
    cw = cw.gather(1, first)[:, 0]
    ch = ch.gather(1, first)[:, 0]
    # fallback (no try fits): the largest centred crop with the ratio clamped to the range
    in_ratio = w / h
    fw, fh = (w, round(w / ratio[0])) if in_ratio < ratio[0] else \
        (round(h * ratio[1]), h) if in_ratio > ratio[1] else (w, h)
    any_ok = ok.any(dim=1)
    cw = torch.where(any_ok, cw, torch.full_like(cw, fw)).long()
    ch = torch.where(any_ok, ch, torch.full_like(ch, fh)).long()
    top = torch.where(any_ok, _randint(h - ch + 1, gen), (h - ch) // 2)
    left = torch.where(any_ok, _randint(w - cw + 1, gen), (w - cw) // 2)
    return torch.stack([top, left, ch, cw], dim=1)


def crop_resize(x: Tensor, boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """Cut box (top, left, height, width) of each image and resize it bilinearly to `size`."""
    b, _, h, w = x.shape
    top, left, ch, cw = boxes.to(torch.float32).unbind(1)
    theta = torch.zeros(b, 2, 3, device=x.device)
    theta[:, 0, 0] = cw / w
    theta[:, 0, 2] = (2 * left + cw) / w - 1
    theta[:, 1, 1] = ch / h
    theta[:, 1, 2] = (2 * top + ch) / h - 1
    grid = F.affine_grid(theta, [b, x.shape[1], *size], align_corners=False)  # (B, H', W', 2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def random_resized_crop(x: Tensor, size: tuple[int, int], gen: torch.Generator,
                        scale: tuple[float, float] = (0.08, 1.0)) -> Tensor:
    boxes = draw_resized_crops(x.shape[0], x.shape[2], x.shape[3], gen, x.device, scale)
    return crop_resize(x, boxes, size)


# --- normalisation and random erasing ---------------------------------------------------------

def normalize(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """[0, 255] -> (x / 255 - mean) / std per channel; mean, std of shape (C,)."""
    return (x / 255.0 - mean[:, None, None]) / std[:, None, None]


def draw_erase_boxes(b: int, h: int, w: int, prob: float, gen: torch.Generator, device: torch.device,
                     area: tuple[float, float] = (0.02, 1 / 3), ratio: float = 0.3,
                     tries: int = 10) -> tuple[Tensor, Tensor]:
    """(boxes (B, 4) top, left, height, width; apply (B,) bool): the first of `tries` boxes
    that fits, for images chosen with probability `prob`."""
    target = h * w * (area[0] + (area[1] - area[0]) * torch.rand(b, tries, generator=gen, device=device))
    log_r = math.log(ratio) + (math.log(1 / ratio) - math.log(ratio)) * torch.rand(
        b, tries, generator=gen, device=device)
    r = torch.exp(log_r)
    eh = torch.sqrt(target * r).round().long()
    ew = torch.sqrt(target / r).round().long()
    ok = (eh < h) & (ew < w) & (eh > 0) & (ew > 0)
    first = ok.float().argmax(dim=1, keepdim=True)
    eh = eh.gather(1, first)[:, 0]
    ew = ew.gather(1, first)[:, 0]
    apply = ok.any(dim=1) & (_uniform(b, gen, device) < prob)
    eh = torch.where(apply, eh, torch.ones_like(eh))
    ew = torch.where(apply, ew, torch.ones_like(ew))
    top = _randint(h - eh + 1, gen)
    left = _randint(w - ew + 1, gen)
    return torch.stack([top, left, eh, ew], dim=1), apply


def box_mask(boxes: Tensor, h: int, w: int) -> Tensor:
    """(B, 1, H, W) bool: True inside each image's box (top, left, height, width)."""
    rows = torch.arange(h, device=boxes.device)[None, :]
    cols = torch.arange(w, device=boxes.device)[None, :]
    in_r = (rows >= boxes[:, :1]) & (rows < boxes[:, :1] + boxes[:, 2:3])  # (B, H)
    in_c = (cols >= boxes[:, 1:2]) & (cols < boxes[:, 1:2] + boxes[:, 3:4])  # (B, W)
    return (in_r[:, :, None] & in_c[:, None, :])[:, None]


def erase(x: Tensor, boxes: Tensor, apply: Tensor, fill: Tensor) -> Tensor:
    """Replace the box of each image where `apply` by `fill` (broadcastable to x)."""
    mask = box_mask(boxes, x.shape[2], x.shape[3]) & apply[:, None, None, None]
    return torch.where(mask, fill, x)


def random_erase(x: Tensor, prob: float, gen: torch.Generator, mode: str = "pixel",
                 area: tuple[float, float] = (0.02, 1 / 3), ratio: float = 0.3) -> Tensor:
    """On normalised images: mode "pixel" fills with N(0, 1) noise per pixel (timm/DeiT), "const"
    with 0 (the dataset mean)."""
    if prob <= 0:
        return x
    boxes, apply = draw_erase_boxes(x.shape[0], x.shape[2], x.shape[3], prob, gen, x.device, area, ratio)
    fill = torch.randn(x.shape, generator=gen, device=x.device) if mode == "pixel" else torch.zeros((), device=x.device)
    return erase(x, boxes, apply, fill)


# --- Mixup and CutMix --------------------------------------------------------------------------

def mixup(x: Tensor, t: Tensor, lam: float) -> tuple[Tensor, Tensor]:
    """x' = lam * x + (1 - lam) * roll(x, 1); the same for the soft targets t (B, K)."""
    return lam * x + (1 - lam) * x.roll(1, 0), lam * t + (1 - lam) * t.roll(1, 0)


def cutmix_box(h: int, w: int, lam: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a box of side ratio sqrt(1 - lam) centred uniformly, clipped."""
    cut = math.sqrt(1.0 - lam)
    ch, cw = int(h * cut), int(w * cut)
    cy, cx = int(rng.integers(h)), int(rng.integers(w))
    y0, y1 = np.clip([cy - ch // 2, cy + ch // 2], 0, h)
    x0, x1 = np.clip([cx - cw // 2, cx + cw // 2], 0, w)
    return int(y0), int(x0), int(y1 - y0), int(x1 - x0)


def cutmix(x: Tensor, t: Tensor, box: tuple[int, int, int, int]) -> tuple[Tensor, Tensor, float]:
    """Paste the box from the batch rolled by one; targets mixed by the kept area fraction."""
    top, left, bh, bw = box
    out = x.clone()
    out[:, :, top:top + bh, left:left + bw] = x.roll(1, 0)[:, :, top:top + bh, left:left + bw]
    lam = 1.0 - bh * bw / (x.shape[2] * x.shape[3])
    return out, lam * t + (1 - lam) * t.roll(1, 0), lam


def soft_targets(y: Tensor, classes: int, smoothing: float = 0.0) -> Tensor:
    """Label-smoothed one-hot targets (B, K): 1 - smoothing + smoothing/K on the label, smoothing/K elsewhere."""
    off = smoothing / classes
    t = torch.full((y.shape[0], classes), off, device=y.device)
    return t.scatter_(1, y[:, None], 1.0 - smoothing + off)


def mix_batch(x: Tensor, t: Tensor, rng: np.random.Generator, mixup_alpha: float, cutmix_alpha: float,
              prob: float = 1.0, switch_prob: float = 0.5) -> tuple[Tensor, Tensor]:
    """With probability `prob` mix the batch: CutMix (with probability `switch_prob` when both are
    enabled) or Mixup. Per batch, as AugReg, timm and the SPT/LSA code do."""
    if (mixup_alpha <= 0 and cutmix_alpha <= 0) or rng.random() >= prob:
        return x, t
    use_cutmix = cutmix_alpha > 0 and (mixup_alpha <= 0 or rng.random() < switch_prob)
    if use_cutmix:
        lam = float(rng.beta(cutmix_alpha, cutmix_alpha))
        x, t, _ = cutmix(x, t, cutmix_box(x.shape[2], x.shape[3], lam, rng))
        return x, t
    a = float(rng.beta(mixup_alpha, mixup_alpha))
    return mixup(x, t, max(a, 1.0 - a))
