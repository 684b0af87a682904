"""BinaryViT's binarization for the torch backend (Le & Li 2023, following the official
code: Phuoc-Hoan-Le/BinaryViT transformer/utils_quant.py and
modeling_qvit_extra_res_pyramid.py).

* activations: sign forward, Bi-Real's ApproxSign gradient (2 + 2x on [-1, 0],
  2 - 2x on (0, 1], 0 elsewhere);
* linear weights: rows centred, sign, times the per-output-channel mean |W| of the
  uncentred weights (detached), straight-through gradient clipped to [-1, 1];
  conv weights: the same without centring;
* attention probabilities: round(p / alpha).clamp(0, 1) * alpha with a learnable alpha
  and BiT's gradient;
* the binary linear unit (BLU): RPReLU(BN(BinLinear(x + move)) + shortcut(x)).

Parameters are created empty: the model's init policy fills them (vitgraph/init.py).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vitgraph.ops import BATCHNORM_EPS


class ApproxSign(torch.autograd.Function):
    """sign(x) forward; Bi-Real's piecewise-quadratic gradient backward."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return torch.sign(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        # 2 + 2x on [-1, 0] and 2 - 2x on (0, 1] are both 2 - 2|x|; zero outside [-1, 1]
        return grad * (2.0 - 2.0 * x.abs()).clamp_min(0.0)


def approx_sign(x: Tensor) -> Tensor:
    return ApproxSign.apply(x)


class QuantizeProbs(torch.autograd.Function):
    """BiT's 1-bit unsigned quantizer of attention probabilities with a learnable step."""

    @staticmethod
    def forward(ctx: Any, p: Tensor, alpha: Tensor) -> Tensor:
        ctx.save_for_backward(p, alpha)
        return torch.round(p / alpha).clamp(0.0, 1.0) * alpha

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor]:
        p, alpha = ctx.saved_tensors
        q = p / alpha
        big = (q > 1.0).to(grad.dtype)
        middle = 1.0 - (q < 0.0).to(grad.dtype) - big
        grad_alpha = ((middle * (q.round() - q) + big) * grad).sum().reshape(1)
        return (middle * grad).to(p.dtype), grad_alpha.to(alpha.dtype)


def quantize_probs(p: Tensor, alpha: Tensor) -> Tensor:
    return QuantizeProbs.apply(p, alpha)


def _clipped_ste(binary: Tensor, real: Tensor) -> Tensor:
    """Forward `binary`, backward the gradient of clamp(real, -1, 1); no gradient flows
    through `binary` (so its scale is detached)."""
    clipped = real.clamp(-1.0, 1.0)
    return binary.detach() - clipped.detach() + clipped


def binary_linear_weight(w: Tensor) -> Tensor:
    """(out, in) -> row-centred sign times per-row mean |W| (uncentred, detached)."""
    scale = w.abs().mean(dim=1, keepdim=True)  # (out, 1)
    centred = w - w.mean(dim=1, keepdim=True)
    return _clipped_ste(scale * torch.sign(centred), centred)


def binary_conv_weight(w: Tensor) -> Tensor:
    """(out, in, kh, kw) -> sign times per-output-channel mean |W| (detached), no centring."""
    scale = w.abs().mean(dim=(1, 2, 3), keepdim=True)  # (out, 1, 1, 1)
    return _clipped_ste(scale * torch.sign(w), w)


class RPReLU(nn.Module):
    """ReActNet's RPReLU over the last dim: PReLU(x - shift_in, slope) + shift_out."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.shift_in = nn.Parameter(torch.empty(dim))
        self.slope = nn.Parameter(torch.empty(dim))
        self.shift_out = nn.Parameter(torch.empty(dim))

    def forward(self, x: Tensor) -> Tensor:
        y = x - self.shift_in
        return torch.where(y > 0, y, y * self.slope) + self.shift_out


class TokenBatchNorm(nn.BatchNorm1d):
    """BatchNorm over the channels (last dim) of a (..., D) tensor: statistics over every
    other dim (batch and tokens)."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.reshape(-1, x.shape[-1])).reshape(x.shape)


class BLU(nn.Module):
    """Binary linear unit at prefix P: act(norm(lin(x + move)) + shortcut). Keys P.move,
    P.weight, P.bias, P.norm.*, P.act.* (see vitgraph/ops.py)."""

    def __init__(self, fin: int, fout: int, bias: bool, binary: frozenset[str]) -> None:
        super().__init__()
        self.move = nn.Parameter(torch.empty(fin))
        self.weight = nn.Parameter(torch.empty(fout, fin))
        self.bias = nn.Parameter(torch.empty(fout)) if bias else None
        self.norm = TokenBatchNorm(fout, eps=BATCHNORM_EPS)
        self.act = RPReLU(fout)
        self.binary_weights = "weights" in binary
        self.binary_inputs = "activations" in binary

    def forward(self, x: Tensor, shortcut: Tensor) -> Tensor:
        h = x + self.move
        if self.binary_inputs:
            h = approx_sign(h)
        w = binary_linear_weight(self.weight) if self.binary_weights else self.weight
        return self.act(self.norm(F.linear(h, w, self.bias)) + shortcut)
