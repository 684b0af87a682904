"""RandAugment (Cubuk et al. 2020) and AutoAugment (Cubuk et al. 2019) on whole batches, with
per-image random choices: each image draws its own op (or sub-policy), magnitude noise, sign and
apply-coin; images that drew the same op are transformed together.

Images are float (G, C, H, W) holding integers in [0, 255] (uint8 semantics; every op floors
and clamps its result). The op semantics follow PIL / torchvision: affine ops map each output
pixel centre (x + 0.5, y + 0.5) through the matrix to an input position, take the pixel it
falls in (nearest), and fill outside with grey 128; rotation is counter-clockwise about the
centre; Color/Contrast/Brightness/Sharpness blend with a degenerate image (grey, mean grey,
black, 3x3 smoothed with the border kept) by a factor.

Magnitude conventions (level L):
- "augreg": the TensorFlow RandAugment that big_vision (and so AugReg) uses: 16 ops incl. Cutout
  and SolarizeAdd, applied always; rotate L/10*30 deg, shear L/10*0.3, translate L/10*0.45*size,
  enhance factor L/10*1.8+0.1, posterize keeps int(L/10*4) bits, solarize threshold
  int(L/10*256), solarize-add int(L/10*110), cutout half-size int(L/10*40/224*size). L may
  exceed 10 (AugReg uses 15 and 20), which makes rotations, shears and factors stronger.
- "timm": timm's rand-mM-mstdS-inc1 (DeiT): 15 ops (no Cutout), each applied with probability
  0.5, "increasing" variants: enhance factor 1 +- L/10*0.9, posterize keeps 4 - int(L/10*4)
  bits, solarize threshold 256 - int(L/10*256); L ~ N(M, mstd) clipped to [0, max(10, M)].
- AutoAugment: torchvision's CIFAR10 / SVHN / ImageNet policies (the paper's tables), magnitude
  bins 0..9: shear 0..0.3, translate 0..150/331*size, rotate 0..30, enhance 1 +- 0..0.9,
  posterize 8 - round(bin/2.25) bits, solarize 255..0; signed ops take a random sign.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

FILL = 128.0
Op = Callable[[Tensor, Tensor, torch.Generator], Tensor]


def _u8(x: Tensor) -> Tensor:
    return x.clamp(0, 255).floor()


def _per_image(v: Tensor) -> Tensor:
    return v.to(torch.float32)[:, None, None, None]


# --- geometric ops -----------------------------------------------------------------------------

def affine(x: Tensor, matrix: Tensor, offset: Tensor, fill: float = FILL) -> Tensor:
    """Nearest-neighbour affine warp: output pixel centre p -> input position matrix @ p + offset
    (matrix (G, 2, 2), offset (G, 2), in (x, y) order); positions outside the image get `fill`."""
    g, c, h, w = x.shape
    ys, xs = torch.meshgrid(torch.arange(h, device=x.device, dtype=torch.float32) + 0.5,
                            torch.arange(w, device=x.device, dtype=torch.float32) + 0.5, indexing="ij")
    centres = torch.stack([xs, ys], dim=-1).reshape(1, h * w, 2)  # (1, HW, 2)
    src = centres @ matrix.transpose(1, 2) + offset[:, None, :]  # (G, HW, 2)
    col = torch.floor(src[..., 0] + 1e-4).long()
    row = torch.floor(src[..., 1] + 1e-4).long()
    inside = (col >= 0) & (col < w) & (row >= 0) & (row < h)  # (G, HW)
    flat = (row.clamp(0, h - 1) * w + col.clamp(0, w - 1))[:, None, :].expand(g, c, h * w)
    out = x.reshape(g, c, h * w).gather(2, flat)
    out = torch.where(inside[:, None, :], out, torch.full_like(out, fill))
    return out.reshape(g, c, h, w)


def _eye(v: Tensor) -> Tensor:
    return torch.eye(2, device=v.device).repeat(len(v), 1, 1)


def shear_x(x: Tensor, v: Tensor, gen: torch.Generator) -> Tensor:
    """PIL (1, v, 0, 0, 1, 0): input x = x + v * y (origin at the top-left corner)."""
    m = _eye(v)
    m[:, 0, 1] = v
    return affine(x, m, torch.zeros(len(v), 2, device=x.device))


def shear_y(x: Tensor, v: Tensor, gen: torch.Generator) -> Tensor:
    m = _eye(v)
    m[:, 1, 0] = v
    return affine(x, m, torch.zeros(len(v), 2, device=x.device))


def translate_x(x: Tensor, v: Tensor, gen: torch.Generator) -> Tensor:
    """PIL (1, 0, v, 0, 1, 0): output pixel x shows input pixel x + v (content moves left by v)."""
    return affine(x, _eye(v), torch.stack([v.float(), torch.zeros_like(v, dtype=torch.float32)], 1))


def translate_y(x: Tensor, v: Tensor, gen: torch.Generator) -> Tensor:
    return affine(x, _eye(v), torch.stack([torch.zeros_like(v, dtype=torch.float32), v.float()], 1))


def rotate(x: Tensor, v: Tensor, gen: torch.Generator) -> Tensor:
    """PIL Image.rotate(v): counter-clockwise by v degrees about the image centre."""
    a = -v.float() * math.pi / 180
    cos, sin = torch.cos(a), torch.sin(a)
    m = torch.stack([torch.stack([cos, sin], 1), torch.stack([-sin, cos], 1)], 1)  # (G, 2, 2)
    centre = torch.tensor([x.shape[3] / 2, x.shape[2] / 2], device=x.device)
    offset = centre - (m @ centre)  # (G, 2): input = m @ (p - c) + c
    return affine(x, m, offset)


def cutout(x: Tensor, v: Tensor, gen: torch.Generator) -> Tensor:
    """TF cutout: a (2v x 2v) grey square centred uniformly at random, clipped to the image."""
    g, _, h, w = x.shape
    cy = (torch.rand(g, generator=gen, device=x.device) * h).long()
    cx = (torch.rand(g, generator=gen, device=x.device) * w).long()
    v = v.long()
    rows = torch.arange(h, device=x.device)[None]
    cols = torch.arange(w, device=x.device)[None]
    inside = (((rows >= (cy - v)[:, None]) & (rows < (cy + v)[:, None]))[:, :, None]
              & ((cols >= (cx - v)[:, None]) & (cols < (cx + v)[:, None]))[:, None, :])  # (G, H, W)
    return torch.where(inside[:, None], torch.full_like(x, FILL), x)


# --- colour ops --------------------------------------------------------------------------------

def identity(x: Tensor, v: Tensor, gen: torch.Generator) -> Tensor:
    return x


def invert(x: Tensor, v: Tensor, gen: torch.Generator) -> Tensor:
    return 255.0 - x


def posterize(x: Tensor, v: Tensor, gen: torch.Generator) -> Tensor:
    """Keep the top v bits of each 8-bit value (v in 0..8)."""
    step = torch.pow(2.0, 8 - v.float().clamp(0, 8))
    return torch.floor(x / _per_image(step)) * _per_image(step)


def solarize(x: Tensor, v: Tensor, gen: torch.Generator) -> Tensor:
    """Invert every value >= threshold v."""
    return torch.where(x >= _per_image(v), 255.0 - x, x)


def solarize_add(x: Tensor, v: Tensor, gen: torch.Generator) -> Tensor:
    """TF solarize_add: add v to every value below 128, clamped."""
    return torch.where(x < 128, _u8(x + _per_image(v)), x)


def auto_contrast(x: Tensor, v: Tensor, gen: torch.Generator) -> Tensor:
    """Stretch each channel of each image to the full [0, 255] range (unchanged if flat)."""
    lo = x.amin(dim=(2, 3), keepdim=True)
    hi = x.amax(dim=(2, 3), keepdim=True)
    scale = torch.where(hi > lo, 255.0 / (hi - lo).clamp_min(1), torch.ones_like(hi))
    lo = torch.where(hi > lo, lo, torch.zeros_like(lo))
    return _u8((x - lo) * scale)


def equalize(x: Tensor, v: Tensor, gen: torch.Generator) -> Tensor:
    """PIL ImageOps.equalize per channel: lut[i] = (step // 2 + #values below i) // step, with
    step = (#pixels - count of the highest occurring value) // 255; identity when step is 0."""
    g, c, h, w = x.shape
    vals = x.reshape(g * c, h * w).long()
    hist = torch.zeros(g * c, 256, device=x.device).scatter_add_(1, vals, torch.ones_like(vals, dtype=torch.float32))
    last = 255 - (hist > 0).flip(1).float().argmax(dim=1, keepdim=True)  # highest value present
    step = torch.div(hist.sum(1, keepdim=True) - hist.gather(1, last), 255, rounding_mode="floor")
    below = hist.cumsum(1) - hist  # (GC, 256) exclusive cumulative counts
    lut = torch.div(below + torch.div(step, 2, rounding_mode="floor"), step.clamp_min(1),
                    rounding_mode="floor").clamp(0, 255)
    lut = torch.where(step > 0, lut, torch.arange(256, device=x.device, dtype=torch.float32)[None])
    return lut.gather(1, vals).reshape(g, c, h, w)


def grey(x: Tensor) -> Tensor:
    """ITU-R 601 luma, floored (as an 8-bit L image); a 1-channel image is its own grey."""
    if x.shape[1] == 1:
        return x
    return torch.floor(0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


def _blend(degenerate: Tensor, x: Tensor, factor: Tensor) -> Tensor:
    """degenerate + factor * (x - degenerate), as PIL ImageEnhance (factor 1 = unchanged)."""
    f = _per_image(factor)
    return _u8(degenerate + f * (x - degenerate))


def brightness(x: Tensor, v: Tensor, gen: torch.Generator) -> Tensor:
    return _blend(torch.zeros_like(x), x, v)


def color(x: Tensor, v: Tensor, gen: torch.Generator) -> Tensor:
    return _blend(grey(x).expand_as(x), x, v)


def contrast(x: Tensor, v: Tensor, gen: torch.Generator) -> Tensor:
    return _blend(grey(x).mean(dim=(1, 2, 3), keepdim=True).expand_as(x), x, v)


def sharpness(x: Tensor, v: Tensor, gen: torch.Generator) -> Tensor:
    c = x.shape[1]
    kernel = torch.ones(3, 3, device=x.device)
    kernel[1, 1] = 5
    kernel = (kernel / kernel.sum()).expand(c, 1, 3, 3)
    smooth = torch.round(F.conv2d(x, kernel, groups=c))  # (G, C, H-2, W-2)
    degenerate = x.clone()
    degenerate[:, :, 1:-1, 1:-1] = smooth
    return _blend(degenerate, x, v)


# --- magnitude schemes -------------------------------------------------------------------------

@dataclass(frozen=True)
class Entry:
    """An op in a scheme: its function, whether its magnitude takes a random sign, and the map
    from level (G,) and image size to the op's argument."""

    fn: Op
    signed: bool = False
    value: Callable[[Tensor, int], Tensor] | None = None


def _lin(top: float) -> Callable[[Tensor, int], Tensor]:
    return lambda level, size: level / 10 * top


def _rel(frac: float) -> Callable[[Tensor, int], Tensor]:
    return lambda level, size: level / 10 * frac * size


AUGREG: dict[str, Entry] = {
    "AutoContrast": Entry(auto_contrast), "Equalize": Entry(equalize), "Invert": Entry(invert),
    "Rotate": Entry(rotate, True, _lin(30)),
    "Posterize": Entry(posterize, False, lambda l, s: torch.floor(l / 10 * 4)),
    "Solarize": Entry(solarize, False, lambda l, s: torch.floor(l / 10 * 256)),
    "Color": Entry(color, False, lambda l, s: l / 10 * 1.8 + 0.1),
    "Contrast": Entry(contrast, False, lambda l, s: l / 10 * 1.8 + 0.1),
    "Brightness": Entry(brightness, False, lambda l, s: l / 10 * 1.8 + 0.1),
    "Sharpness": Entry(sharpness, False, lambda l, s: l / 10 * 1.8 + 0.1),
    "ShearX": Entry(shear_x, True, _lin(0.3)), "ShearY": Entry(shear_y, True, _lin(0.3)),
    "TranslateX": Entry(translate_x, True, _rel(0.45)), "TranslateY": Entry(translate_y, True, _rel(0.45)),
    "Cutout": Entry(cutout, False, lambda l, s: torch.floor(l / 10 * 40 / 224 * s)),
    "SolarizeAdd": Entry(solarize_add, False, lambda l, s: torch.floor(l / 10 * 110)),
}


def _enhance(fn: Op, value: Callable[[Tensor, int], Tensor]) -> Entry:
    """An enhance op whose factor is 1 +- value (the "increasing" form)."""
    return Entry(lambda x, v, g: fn(x, 1.0 + v, g), True, value)


TIMM: dict[str, Entry] = {
    "AutoContrast": AUGREG["AutoContrast"], "Equalize": AUGREG["Equalize"], "Invert": AUGREG["Invert"],
    "Rotate": AUGREG["Rotate"],
    "PosterizeIncreasing": Entry(posterize, False, lambda l, s: 4 - torch.floor(l / 10 * 4)),
    "SolarizeIncreasing": Entry(solarize, False, lambda l, s: 256 - torch.floor(l / 10 * 256)),
    "SolarizeAdd": AUGREG["SolarizeAdd"],
    "ColorIncreasing": _enhance(color, _lin(0.9)), "ContrastIncreasing": _enhance(contrast, _lin(0.9)),
    "BrightnessIncreasing": _enhance(brightness, _lin(0.9)), "SharpnessIncreasing": _enhance(sharpness, _lin(0.9)),
    "ShearX": AUGREG["ShearX"], "ShearY": AUGREG["ShearY"],
    "TranslateXRel": AUGREG["TranslateX"], "TranslateYRel": AUGREG["TranslateY"],
}
RANDAUGMENT = {"augreg": (AUGREG, 1.0), "timm": (TIMM, 0.5)}  # ops, probability of applying each


def _bins(top: float) -> Callable[[Tensor, int], Tensor]:
    return lambda b, size: b / 9 * top


AUTO: dict[str, Entry] = {
    "ShearX": Entry(shear_x, True, _bins(0.3)), "ShearY": Entry(shear_y, True, _bins(0.3)),
    "TranslateX": Entry(translate_x, True, lambda b, s: b / 9 * 150 / 331 * s),
    "TranslateY": Entry(translate_y, True, lambda b, s: b / 9 * 150 / 331 * s),
    "Rotate": Entry(rotate, True, _bins(30)),
    "Brightness": _enhance(brightness, _bins(0.9)), "Color": _enhance(color, _bins(0.9)),
    "Contrast": _enhance(contrast, _bins(0.9)), "Sharpness": _enhance(sharpness, _bins(0.9)),
    "Posterize": Entry(posterize, False, lambda b, s: 8 - torch.round(b / 2.25)),
    "Solarize": Entry(solarize, False, lambda b, s: 255 - b / 9 * 255),
    "AutoContrast": Entry(auto_contrast), "Equalize": Entry(equalize), "Invert": Entry(invert),
}

SubPolicy = tuple[tuple[str, float, int], tuple[str, float, int]]
POLICIES: dict[str, list[SubPolicy]] = {
    "imagenet": [
        (("Posterize", 0.4, 8), ("Rotate", 0.6, 9)), (("Solarize", 0.6, 5), ("AutoContrast", 0.6, 0)),
        (("Equalize", 0.8, 0), ("Equalize", 0.6, 0)), (("Posterize", 0.6, 7), ("Posterize", 0.6, 6)),
        (("Equalize", 0.4, 0), ("Solarize", 0.2, 4)), (("Equalize", 0.4, 0), ("Rotate", 0.8, 8)),
        (("Solarize", 0.6, 3), ("Equalize", 0.6, 0)), (("Posterize", 0.8, 5), ("Equalize", 1.0, 0)),
        (("Rotate", 0.2, 3), ("Solarize", 0.6, 8)), (("Equalize", 0.6, 0), ("Posterize", 0.4, 6)),
        (("Rotate", 0.8, 8), ("Color", 0.4, 0)), (("Rotate", 0.4, 9), ("Equalize", 0.6, 0)),
        (("Equalize", 0.0, 0), ("Equalize", 0.8, 0)), (("Invert", 0.6, 0), ("Equalize", 1.0, 0)),
        (("Color", 0.6, 4), ("Contrast", 1.0, 8)), (("Rotate", 0.8, 8), ("Color", 1.0, 2)),
        (("Color", 0.8, 8), ("Solarize", 0.8, 7)), (("Sharpness", 0.4, 7), ("Invert", 0.6, 0)),
        (("ShearX", 0.6, 5), ("Equalize", 1.0, 0)), (("Color", 0.4, 0), ("Equalize", 0.6, 0)),
        (("Equalize", 0.4, 0), ("Solarize", 0.2, 4)), (("Solarize", 0.6, 5), ("AutoContrast", 0.6, 0)),
        (("Invert", 0.6, 0), ("Equalize", 1.0, 0)), (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
        (("Equalize", 0.8, 0), ("Equalize", 0.6, 0)),
    ],
    "cifar10": [
        (("Invert", 0.1, 0), ("Contrast", 0.2, 6)), (("Rotate", 0.7, 2), ("TranslateX", 0.3, 9)),
        (("Sharpness", 0.8, 1), ("Sharpness", 0.9, 3)), (("ShearY", 0.5, 8), ("TranslateY", 0.7, 9)),
        (("AutoContrast", 0.5, 0), ("Equalize", 0.9, 0)), (("ShearY", 0.2, 7), ("Posterize", 0.3, 7)),
        (("Color", 0.4, 3), ("Brightness", 0.6, 7)), (("Sharpness", 0.3, 9), ("Brightness", 0.7, 9)),
        (("Equalize", 0.6, 0), ("Equalize", 0.5, 0)), (("Contrast", 0.6, 7), ("Sharpness", 0.6, 5)),
        (("Color", 0.7, 7), ("TranslateX", 0.5, 8)), (("Equalize", 0.3, 0), ("AutoContrast", 0.4, 0)),
        (("TranslateY", 0.4, 3), ("Sharpness", 0.2, 6)), (("Brightness", 0.9, 6), ("Color", 0.2, 8)),
        (("Solarize", 0.5, 2), ("Invert", 0.0, 0)), (("Equalize", 0.2, 0), ("AutoContrast", 0.6, 0)),
        (("Equalize", 0.2, 0), ("Equalize", 0.6, 0)), (("Color", 0.9, 9), ("Equalize", 0.6, 0)),
        (("AutoContrast", 0.8, 0), ("Solarize", 0.2, 8)), (("Brightness", 0.1, 3), ("Color", 0.7, 0)),
        (("Solarize", 0.4, 5), ("AutoContrast", 0.9, 0)), (("TranslateY", 0.9, 9), ("TranslateY", 0.7, 9)),
        (("AutoContrast", 0.9, 0), ("Solarize", 0.8, 3)), (("Equalize", 0.8, 0), ("Invert", 0.1, 0)),
        (("TranslateY", 0.7, 9), ("AutoContrast", 0.9, 0)),
    ],
    "svhn": [
        (("ShearX", 0.9, 4), ("Invert", 0.2, 0)), (("ShearY", 0.9, 8), ("Invert", 0.7, 0)),
        (("Equalize", 0.6, 0), ("Solarize", 0.6, 6)), (("Invert", 0.9, 0), ("Equalize", 0.6, 0)),
        (("Equalize", 0.6, 0), ("Rotate", 0.9, 3)), (("ShearX", 0.9, 4), ("AutoContrast", 0.8, 0)),
        (("ShearY", 0.9, 8), ("Invert", 0.4, 0)), (("ShearY", 0.9, 5), ("Solarize", 0.2, 6)),
        (("Invert", 0.9, 0), ("AutoContrast", 0.8, 0)), (("Equalize", 0.6, 0), ("Rotate", 0.9, 3)),
        (("ShearX", 0.9, 4), ("Solarize", 0.3, 3)), (("ShearY", 0.8, 8), ("Invert", 0.7, 0)),
        (("Equalize", 0.9, 0), ("TranslateY", 0.6, 6)), (("Invert", 0.9, 0), ("Equalize", 0.6, 0)),
        (("Contrast", 0.3, 3), ("Rotate", 0.8, 4)), (("Invert", 0.8, 0), ("TranslateY", 0.0, 2)),
        (("ShearY", 0.7, 6), ("Solarize", 0.4, 8)), (("Invert", 0.6, 0), ("Rotate", 0.8, 4)),
        (("ShearY", 0.3, 7), ("TranslateX", 0.9, 3)), (("ShearX", 0.1, 6), ("Invert", 0.6, 0)),
        (("Solarize", 0.7, 2), ("TranslateY", 0.6, 7)), (("ShearY", 0.8, 4), ("Invert", 0.8, 0)),
        (("ShearX", 0.7, 9), ("TranslateY", 0.8, 3)), (("ShearY", 0.8, 5), ("AutoContrast", 0.7, 0)),
        (("ShearX", 0.7, 2), ("Invert", 0.1, 0)),
    ],
}


# --- batched application -----------------------------------------------------------------------

def apply_ops(x: Tensor, names: list[str], table: dict[str, Entry], op_index: Tensor, level: Tensor,
              apply: Tensor, gen: torch.Generator) -> Tensor:
    """Apply to image i the op names[op_index[i]] at `level[i]` where apply[i]; images that
    drew the same op go through it together. Signed ops flip sign with probability 1/2."""
    signs = torch.where(torch.rand(len(x), generator=gen, device=x.device) < 0.5, -1.0, 1.0)
    out = x.clone()
    size = x.shape[-1]
    for k in torch.unique(op_index[apply]).tolist():
        idx = torch.nonzero(apply & (op_index == k)).squeeze(1)
        entry = table[names[k]]
        v = entry.value(level[idx], size) if entry.value else torch.zeros(len(idx), device=x.device)
        if entry.signed:
            v = v * signs[idx]
        out[idx] = entry.fn(x[idx], v, gen)
    return out


def rand_augment(x: Tensor, num_ops: int, magnitude: float, gen: torch.Generator, variant: str = "augreg",
                 mstd: float = 0.0, prob: float | None = None) -> Tensor:
    """RandAugment: `num_ops` layers, each image drawing one op per layer uniformly from the
    variant's list, at level magnitude (+ N(0, mstd) noise, clipped to [0, max(10, magnitude)])."""
    table, default_prob = RANDAUGMENT[variant]
    p = default_prob if prob is None else prob
    names = list(table)
    b = x.shape[0]
    for _ in range(num_ops):
        op_index = torch.randint(len(names), (b,), generator=gen, device=x.device)
        level = torch.full((b,), float(magnitude), device=x.device)
        if mstd > 0:
            level = level + mstd * torch.randn(b, generator=gen, device=x.device)
        level = level.clamp(0, max(10.0, float(magnitude)))
        apply = torch.rand(b, generator=gen, device=x.device) < p
        x = apply_ops(x, names, table, op_index, level, apply, gen)
    return x


def auto_augment(x: Tensor, policy: str, gen: torch.Generator) -> Tensor:
    """AutoAugment: each image draws one of the policy's 25 sub-policies and applies its two
    (op, probability, magnitude bin) steps in order."""
    subs = POLICIES[policy]
    names = list(AUTO)
    b = x.shape[0]
    choice = torch.randint(len(subs), (b,), generator=gen, device=x.device)
    for step in range(2):
        ops = torch.tensor([names.index(s[step][0]) for s in subs], device=x.device)
        probs = torch.tensor([s[step][1] for s in subs], device=x.device)
        bins = torch.tensor([float(s[step][2]) for s in subs], device=x.device)
        apply = torch.rand(b, generator=gen, device=x.device) < probs[choice]
        x = apply_ops(x, names, AUTO, ops[choice], bins[choice], apply, gen)
    return x
