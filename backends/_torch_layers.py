"""The torch modules of the IR ops, one class per op (form), following THE CONTRACT in
vitgraph/ops.py: every class owns exactly the state-dict keys that ops.py lists under the
node's name.

Papers: DeiT (Touvron et al. 2020) for the plain blocks; "Vision Transformer for
Small-Size Datasets" (Lee, Lee, Song 2021) for SPT and LSA; PiT (Heo et al. 2021) for the
depthwise-conv pooling; BinaryViT (Le & Li 2023) for the binary forms, pool branches,
affine residuals and merging transitions.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vitgraph.ir import Node, TensorType

from ._torch_binary import (BLU, RPReLU, TokenBatchNorm, approx_sign, binary_conv_weight, quantize_probs,
                            trunc_normal_)


# -- helpers ------------------------------------------------------------------------------
def linear(fin: int, fout: int, bias: bool = True) -> nn.Linear:
    """nn.Linear with timm's init: trunc_normal(std .02) weights, zero bias."""
    layer = nn.Linear(fin, fout, bias=bias)
    trunc_normal_(layer.weight)
    if bias:
        nn.init.zeros_(layer.bias)
    return layer


def conv(cin: int, cout: int, k: int, stride: int, padding: int = 0, groups: int = 1,
         bias: bool = True) -> nn.Conv2d:
    layer = nn.Conv2d(cin, cout, k, stride, padding, groups=groups, bias=bias)
    trunc_normal_(layer.weight)
    if bias:
        nn.init.zeros_(layer.bias)
    return layer


def token_norm(kind: str, dim: int, eps: float) -> nn.Module:
    """LayerNorm or BatchNorm (over channels, statistics over batch and tokens)."""
    if kind == "layer":
        return nn.LayerNorm(dim, eps=eps)
    if kind == "batch":
        return TokenBatchNorm(dim, eps=eps, momentum=0.1)
    raise ValueError(f"unknown norm kind {kind!r}")


def to_grid(x: Tensor, grid: tuple[int, int]) -> Tensor:
    """(B, N, D) patch tokens -> (B, D, gh, gw)."""
    b, _, d = x.shape
    return x.transpose(1, 2).reshape(b, d, grid[0], grid[1])


def to_tokens(x: Tensor) -> Tensor:
    """(B, D, gh, gw) -> (B, gh*gw, D), row-major."""
    return x.flatten(2).transpose(1, 2)


def shifted_patches(x: Tensor, patch: int) -> Tensor:
    """SPT's input (official code, aanna0701/SPT_LSA_ViT models/SPT.py): the image and its
    four diagonal half-patch shifts (zero padded), cut into p x p patches flattened as
    (p1, p2, c). (B, C, H, W) -> (B, H/p * W/p, p*p*5C)."""
    s = patch // 2
    xp = F.pad(x, (s, s, s, s))  # (B, C, H+2s, W+2s)
    shifted = [x, xp[..., :-2 * s, :-2 * s], xp[..., :-2 * s, 2 * s:],
               xp[..., 2 * s:, :-2 * s], xp[..., 2 * s:, 2 * s:]]
    x5 = torch.cat(shifted, dim=1)  # (B, 5C, H, W)
    b, c5, h, w = x5.shape
    x5 = x5.reshape(b, c5, h // patch, patch, w // patch, patch)
    return x5.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // patch) * (w // patch), patch * patch * c5)


# -- PATCHIFY ------------------------------------------------------------------------------
class PatchEmbed(nn.Module):
    """Conv patch embedding (DeiT) or conv stem + norm (BinaryViT); binary when the stem is."""

    def __init__(self, node: Node, ins: list[TensorType]) -> None:
        super().__init__()
        c, p, d = int(ins[0].shape[1]), node.attr("patch"), node.attr("dim")
        self.proj = conv(c, d, p, p, bias=bool(node.attr("bias")))
        kind = node.attr("norm")
        self.norm = None if kind == "none" else token_norm(kind, d, node.attr("eps"))
        self.binary_weights = "weights" in node.binary
        self.binary_inputs = "activations" in node.binary

    def forward(self, x: Tensor) -> Tensor:
        if self.binary_inputs:
            x = approx_sign(x)
        w = binary_conv_weight(self.proj.weight) if self.binary_weights else self.proj.weight
        x = to_tokens(F.conv2d(x, w, self.proj.bias, stride=self.proj.stride))  # (B, N, D)
        return x if self.norm is None else self.norm(x)


# -- SHIFT_TOKENIZE ------------------------------------------------------------------------
class ShiftedPatchTokenize(nn.Module):
    """SPT: shifted patches -> LayerNorm(5Cp^2) -> Linear(5Cp^2, D)."""

    def __init__(self, node: Node, ins: list[TensorType]) -> None:
        super().__init__()
        c, p, d = int(ins[0].shape[1]), node.attr("patch"), node.attr("dim")
        self.patch = p
        self.norm = nn.LayerNorm(5 * c * p * p, eps=node.attr("eps", 1e-5))
        self.proj = linear(5 * c * p * p, d)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(self.norm(shifted_patches(x, self.patch)))  # (B, N, D)


# -- ATTENTION -------------------------------------------------------------------------------
def attention_dims(node: Node, dim: int) -> tuple[int, int]:
    heads = node.attr("heads")
    head_dim = node.attr("head_dim") or dim // heads
    return heads, head_dim


class Attention(nn.Module):
    """Multi-head self-attention (timm layout); LSA adds a learnable per-head temperature
    in place of the scale and masks each token's score with itself."""

    def __init__(self, node: Node, ins: list[TensorType]) -> None:
        super().__init__()
        d, n = ins[0].dim, ins[0].tokens
        self.heads, self.head_dim = attention_dims(node, d)
        inner = self.heads * self.head_dim
        self.qkv = linear(d, 3 * inner, bias=bool(node.attr("qkv_bias")))
        self.proj = linear(inner, d)
        self.lsa = bool(node.attr("lsa"))
        if self.lsa:
            self.temperature = nn.Parameter(torch.full((self.heads,), self.head_dim ** -0.5))
            self.register_buffer("offdiag", ~torch.eye(n, dtype=torch.bool), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, H, N, hd) each
        if self.lsa:
            q = q * self.temperature.to(q.dtype).view(1, -1, 1, 1)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=self.offdiag, scale=1.0)
        else:
            out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))  # (B, N, I) -> (B, N, D)


class BinaryAttention(nn.Module):
    """BinaryViT's attention: q/k/v as BLUs (k, v after an optional AvgPool(r) + BLU
    reduction), learnable shifts, sign, quantized softmax, and the context shortcut
    RPReLU(BN(P V) + q + k + v) before the proj BLU."""

    def __init__(self, node: Node, ins: list[TensorType]) -> None:
        super().__init__()
        x, binary = ins[0], node.binary
        d = x.dim
        self.heads, self.head_dim = attention_dims(node, d)
        self.grid = x.grid
        self.r = node.attr("reduce")
        bias = bool(node.attr("qkv_bias"))
        self.q = BLU(d, d, bias, binary)
        self.k = BLU(d, d, bias, binary)
        self.v = BLU(d, d, bias, binary)
        if self.r > 1:
            self.reduce = BLU(d, d, bias, binary)
        self.q_shift = nn.Parameter(torch.zeros(d))
        self.k_shift = nn.Parameter(torch.zeros(d))
        self.v_shift = nn.Parameter(torch.zeros(d))
        self.binary_attention = "attention" in binary
        if self.binary_attention:
            self.alpha = nn.Parameter(torch.full((1,), 0.005))
        self.context_norm = TokenBatchNorm(d, eps=1e-5)
        self.context_act = RPReLU(d)
        self.proj = BLU(d, d, False, binary)

    def _split(self, t: Tensor) -> Tensor:
        b, n, _ = t.shape
        return t.reshape(b, n, self.heads, self.head_dim).transpose(1, 2)  # (B, H, N, hd)

    def _upsample(self, t: Tensor) -> Tensor:
        """Nearest upsampling of reduced-grid tokens back to the full grid."""
        gh, gw = self.grid
        small = to_grid(t, (gh // self.r, gw // self.r))
        return to_tokens(small.repeat_interleave(self.r, dim=2).repeat_interleave(self.r, dim=3))

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        q = self.q(x, x)
        if self.r > 1:
            xr = to_tokens(F.avg_pool2d(to_grid(x, self.grid), self.r))  # (B, M, D)
            xr = self.reduce(xr, xr)
        else:
            xr = x
        k = self.k(xr, xr)
        v = self.v(xr, xr)
        qs, ks, vs = q + self.q_shift, k + self.k_shift, v + self.v_shift
        if self.binary_attention:
            qs, ks, vs = approx_sign(qs), approx_sign(ks), approx_sign(vs)
        qs, ks, vs = self._split(qs), self._split(ks), self._split(vs)
        if self.binary_attention:
            p = torch.softmax((qs @ ks.transpose(-2, -1)) * self.head_dim ** -0.5, dim=-1)  # (B, H, N, M)
            ctx = quantize_probs(p, self.alpha) @ vs
        else:
            ctx = F.scaled_dot_product_attention(qs, ks, vs)
        ctx = ctx.transpose(1, 2).reshape(b, n, d)  # (B, N, D)
        if self.r > 1:
            k, v = self._upsample(k), self._upsample(v)
        ctx = self.context_act(self.context_norm(ctx) + q + k + v)
        return self.proj(ctx, ctx)


# -- MLP -----------------------------------------------------------------------------------
class Mlp(nn.Module):
    """fc1 -> GELU (erf) -> fc2."""

    def __init__(self, node: Node, ins: list[TensorType]) -> None:
        super().__init__()
        d, h = ins[0].dim, node.attr("hidden")
        self.fc1 = linear(d, h)
        self.fc2 = linear(h, d)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class BinaryMlp(nn.Module):
    """BinaryViT's MLP: two BLUs; the up-projection's shortcut repeats x along channels,
    the down-projection's averages groups of H/D consecutive channels. No GELU."""

    def __init__(self, node: Node, ins: list[TensorType]) -> None:
        super().__init__()
        d, h = ins[0].dim, node.attr("hidden")
        self.ratio = h // d
        self.fc1 = BLU(d, h, False, node.binary)
        self.fc2 = BLU(h, d, False, node.binary)

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc1(x, x.repeat(1, 1, self.ratio))  # (B, N, H)
        b, n, _ = h.shape
        return self.fc2(h, h.reshape(b, n, -1, self.ratio).mean(-1))  # (B, N, D)


# -- POOL_BRANCHES, AFFINE, DROP_PATH ---------------------------------------------------------
class Affine(nn.Module):
    """Per-channel x * scale + shift."""

    def __init__(self, dim: int, scale: float) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((dim,), float(scale)))
        self.shift = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale + self.shift


class PoolBranches(nn.Module):
    """Sum over kernels of affine(AvgPool2d_k(x)), stride 1, same padding, on the grid."""

    def __init__(self, node: Node, ins: list[TensorType]) -> None:
        super().__init__()
        d = ins[0].dim
        self.grid = ins[0].grid
        self.kernels = [tuple(k) for k in node.attr("kernels")]
        self.branches = nn.ModuleList(Affine(d, 0.0) for _ in self.kernels)

    def forward(self, x: Tensor) -> Tensor:
        g = to_grid(x, self.grid)  # (B, D, gh, gw)
        out = None
        for (kh, kw), branch in zip(self.kernels, self.branches):
            pooled = F.avg_pool2d(g, (kh, kw), stride=1, padding=(kh // 2, kw // 2), count_include_pad=True)
            y = pooled * branch.scale.view(1, -1, 1, 1) + branch.shift.view(1, -1, 1, 1)
            out = y if out is None else out + y
        return to_tokens(out)


class DropPath(nn.Module):
    """Stochastic depth: per-sample keep mask scaled by 1/keep in training, identity in eval."""

    def __init__(self, rate: float) -> None:
        super().__init__()
        self.rate = float(rate)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep


# -- DOWNSAMPLE ------------------------------------------------------------------------------
class PitDownsample(nn.Module):
    """PiT pooling: prefix tokens through Linear, patch tokens through a stride-2
    depthwise 3x3 conv."""

    def __init__(self, node: Node, ins: list[TensorType]) -> None:
        super().__init__()
        x, d2 = ins[0], node.attr("dim")
        self.grid, self.prefix = x.grid, x.prefix
        self.conv = conv(x.dim, d2, 3, 2, 1, groups=x.dim)
        self.fc = linear(x.dim, d2)

    def forward(self, x: Tensor) -> Tensor:
        prefix, patches = x[:, :self.prefix], x[:, self.prefix:]
        patches = to_tokens(self.conv(to_grid(patches, self.grid)))  # (B, N/4, D2)
        return torch.cat([self.fc(prefix), patches], dim=1)


class SptDownsample(nn.Module):
    """SPT merging (patch 2, shift 1) on the patch tokens; prefix tokens through Linear."""

    def __init__(self, node: Node, ins: list[TensorType]) -> None:
        super().__init__()
        x, d2 = ins[0], node.attr("dim")
        self.grid, self.prefix = x.grid, x.prefix
        self.norm = nn.LayerNorm(20 * x.dim, eps=1e-5)
        self.proj = linear(20 * x.dim, d2)
        self.fc = linear(x.dim, d2)

    def forward(self, x: Tensor) -> Tensor:
        prefix, patches = x[:, :self.prefix], x[:, self.prefix:]
        patches = self.proj(self.norm(shifted_patches(to_grid(patches, self.grid), 2)))  # (B, N/4, D2)
        return torch.cat([self.fc(prefix), patches], dim=1)


class MergeDownsample(nn.Module):
    """BinaryViT's stage transition: BN -> 2x2 stride-2 conv -> BN. Binary: the conv reads
    sign(y + move) with binary weights, plus an AvgPool(2) shortcut with repeated
    channels, then RPReLU. Full precision (BinaryViT*): no move, shortcut or RPReLU."""

    def __init__(self, node: Node, ins: list[TensorType]) -> None:
        super().__init__()
        x, d2 = ins[0], node.attr("dim")
        self.grid, self.binary = x.grid, node.binary
        self.norm0 = TokenBatchNorm(x.dim, eps=1e-5)
        if self.binary:
            self.move = nn.Parameter(torch.zeros(x.dim))
        self.conv = conv(x.dim, d2, 2, 2, bias=False)
        self.norm = TokenBatchNorm(d2, eps=1e-5)
        if self.binary:
            self.act = RPReLU(d2)
        self.repeat = d2 // x.dim

    def forward(self, x: Tensor) -> Tensor:
        y = self.norm0(x)
        if not self.binary:
            return self.norm(to_tokens(self.conv(to_grid(y, self.grid))))
        g = to_grid(y, self.grid)  # (B, D, gh, gw)
        shortcut = to_tokens(F.avg_pool2d(g, 2)).repeat(1, 1, self.repeat)  # (B, N/4, D2)
        h = to_grid(y + self.move, self.grid)
        if "activations" in self.binary:
            h = approx_sign(h)
        w = binary_conv_weight(self.conv.weight) if "weights" in self.binary else self.conv.weight
        z = to_tokens(F.conv2d(h, w, stride=2))  # (B, N/4, D2)
        return self.act(self.norm(z) + shortcut)
