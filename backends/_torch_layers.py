"""The torch modules of the op units (vitgraph/ops/), one class per op (form), each
registered for its op with `module_for`: every class owns exactly the state-dict keys
that its op unit lists under the node's name (THE CONTRACT), and reads its attributes
from the node's typed `attrs`.

Papers: DeiT (Touvron et al. 2020) for the plain blocks; "Vision Transformer for
Small-Size Datasets" (Lee, Lee, Song 2021) for SPT and LSA; PiT (Heo et al. 2021) for the
depthwise-conv pooling; BinaryViT (Le & Li 2023) for the binary forms, pool branches,
affine residuals and merging transitions.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vitgraph.ir import Node, TensorType
from vitgraph.ops import BATCHNORM_EPS
from vitgraph.ops import attention as A
from vitgraph.ops import affine, downsample, drop_path, mlp, norm, patchify, pool_branches, shift_tokenize
from vitgraph.ops import slice as slice_op

from ._torch_binary import BLU, RPReLU, TokenBatchNorm, approx_sign, binary_conv_weight, quantize_probs
from ._torch_registry import lowering_for, module_for


# -- helpers ------------------------------------------------------------------------------
# Modules are built on the meta device and their parameters drawn afterwards from the
# model's init policy (vitgraph/init.py), so no layer initialises itself.
def linear(fin: int, fout: int, bias: bool = True) -> nn.Linear:
    return nn.Linear(fin, fout, bias=bias)


def conv(cin: int, cout: int, k: int, stride: int, padding: int = 0, groups: int = 1,
         bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride, padding, groups=groups, bias=bias)


@module_for(norm.Norm)
def token_norm_module(node: Node, ins: list[TensorType]) -> nn.Module:
    return token_norm(node.attrs.kind, ins[0].dim, node.attrs.eps)


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


def diagonal_shifts(x: Tensor, s: int) -> Tensor:
    """The official PatchShifting (aanna0701/SPT_LSA_ViT models/SPT.py): x and its four
    diagonal shifts by s (crops of the zero-padded x), concatenated on channels as
    [x, left-up, right-up, left-down, right-down]. (B, C, H, W) -> (B, 5C, H, W)."""
    xp = F.pad(x, (s, s, s, s))  # (B, C, H+2s, W+2s)
    shifted = [x, xp[..., :-2 * s, :-2 * s], xp[..., :-2 * s, 2 * s:],
               xp[..., 2 * s:, :-2 * s], xp[..., 2 * s:, 2 * s:]]
    return torch.cat(shifted, dim=1)


def shifted_patches(x: Tensor, patch: int) -> Tensor:
    """SPT's input: the image and its four diagonal half-patch shifts, cut into p x p
    patches flattened as (p1, p2, c). (B, C, H, W) -> (B, H/p * W/p, p*p*5C)."""
    x5 = diagonal_shifts(x, patch // 2)  # (B, 5C, H, W)
    b, c5, h, w = x5.shape
    x5 = x5.reshape(b, c5, h // patch, patch, w // patch, patch)
    return x5.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // patch) * (w // patch), patch * patch * c5)


# -- patch embeddings --------------------------------------------------------------------------
@module_for(patchify.Patchify)
class PatchEmbed(nn.Module):
    """Conv patch embedding (DeiT) or conv stem + norm (BinaryViT); binary when the stem is."""

    def __init__(self, node: Node, ins: list[TensorType]) -> None:
        super().__init__()
        a, c = node.attrs, int(ins[0].shape[1])
        self.proj = conv(c, a.dim, a.patch, a.patch, bias=a.bias)
        self.norm = None if a.norm == "none" else token_norm(a.norm, a.dim, a.eps)
        self.binary_weights = "weights" in node.binary
        self.binary_inputs = "activations" in node.binary

    def forward(self, x: Tensor) -> Tensor:
        if self.binary_inputs:
            x = approx_sign(x)
        w = binary_conv_weight(self.proj.weight) if self.binary_weights else self.proj.weight
        x = to_tokens(F.conv2d(x, w, self.proj.bias, stride=self.proj.stride))  # (B, N, D)
        return x if self.norm is None else self.norm(x)


@module_for(shift_tokenize.ShiftTokenize)
class ShiftedPatchTokenize(nn.Module):
    """SPT: shifted patches -> LayerNorm(5Cp^2) -> Linear(5Cp^2, D)."""

    def __init__(self, node: Node, ins: list[TensorType]) -> None:
        super().__init__()
        a = node.attrs
        f = shift_tokenize.spt_features(int(ins[0].shape[1]), a.patch)
        self.patch = a.patch
        self.norm = nn.LayerNorm(f, eps=a.eps)
        self.proj = linear(f, a.dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(self.norm(shifted_patches(x, self.patch)))  # (B, N, D)


# -- attention -------------------------------------------------------------------------------
@module_for(A.Attention)
def attention_module(node: Node, ins: list[TensorType]) -> nn.Module:
    return BinaryAttention(node, ins) if node.binary else Attention(node, ins)


class Attention(nn.Module):
    """Multi-head attention (timm layout); LSA adds a learnable per-head temperature in
    place of the scale and masks each token's score with itself (the `offdiag` constant of
    the op unit). With `queries` set, only the first queries are computed. CaiT's forms
    (vitgraph/ops/attention.py, class_attention.py): separate q / kv or q / k / v
    projections, talking heads, LSA's diagonal set to a value, and class attention's keys
    and values from the raw patch tokens of the block's stream."""

    def __init__(self, node: Node, ins: list[TensorType]) -> None:
        super().__init__()
        a, d = node.attrs, ins[0].dim
        self.heads, self.head_dim, self.queries = a.heads, a.head_dim, a.queries
        self.layout = a.layout
        for part, width in A.PROJECTIONS[a.layout].items():
            self.add_module(part, linear(d, width * a.inner, bias=a.qkv_bias))
        self.proj = linear(a.inner, d)
        self.lsa = a.lsa
        if self.lsa:
            self.temperature = nn.Parameter(torch.empty(self.heads))
        self.mixes = A.TALKING_HEADS.get(a.talking_heads, ())  # (pre-softmax, post-softmax)
        for mix in self.mixes:
            if a.talking_heads == "linear":
                self.add_module(mix, linear(a.heads, a.heads))
            else:
                self.register_parameter(mix, nn.Parameter(torch.empty(a.heads, a.heads)))
        self.masked = "offdiag" in node.op.constants(node, ins)
        self.diagonal = a.diagonal
        self.explicit = bool(self.mixes) or self.diagonal is not None  # not one fused kernel
        self.context_from = node.op.context_start(node, ins[0])

    def forward(self, x: Tensor, stream: Tensor | None = None) -> Tensor:
        q, k, v = self._project(x, stream)  # (B, H, M, hd), (B, H, N, hd), (B, H, N, hd)
        if self.lsa:
            q = q * self.temperature.to(q.dtype).view(1, -1, 1, 1)
        if self.explicit:
            out = self._mixed(q if self.lsa else q * self.head_dim ** -0.5, k, v)
        elif self.lsa:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=self.offdiag, scale=1.0)
        else:
            out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(x.shape[0], q.shape[2], -1))  # (B, M, I) -> (B, M, D)

    def _heads(self, t: Tensor) -> Tensor:
        b, n, _ = t.shape
        return t.reshape(b, n, self.heads, self.head_dim).transpose(1, 2)  # (B, H, N, hd)

    def _project(self, x: Tensor, stream: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """Queries of the first `queries` tokens of x; keys and values of x, or of the
        stream's patch tokens (class attention with raw-patch keys)."""
        b, n, _ = x.shape
        if self.layout == "qkv":
            qkv = self.qkv(x).reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
            q, k, v = qkv.unbind(0)  # (B, H, N, hd) each
            if self.queries is not None:
                q = q[:, :, :self.queries]  # (B, H, M, hd)
            return q, k, v
        xq = x if self.queries is None else x[:, :self.queries]  # (B, M, D)
        context = x if self.context_from is None else stream[:, self.context_from:]  # (B, N, D)
        if self.layout == "q-kv":
            q, (k, v) = self.to_q(xq), self.to_kv(context).chunk(2, dim=-1)
        else:
            q, k, v = self.q(xq), self.k(context), self.v(context)
        return self._heads(q), self._heads(k), self._heads(v)

    def _mixed(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Scores, LSA's diagonal set to its value, talking heads around the softmax."""
        scores = q @ k.transpose(-2, -1)  # (B, H, M, N)
        if self.masked:
            scores = scores.masked_fill(~self.offdiag, self.diagonal)
        probs = self._mix(self._mix(scores, 0).softmax(dim=-1), 1)
        return probs @ v  # (B, H, M, hd)

    def _mix(self, s: Tensor, which: int) -> Tensor:
        """Talking heads (none: s itself): out[g] = sum_h W[g, h] s[h] + b[g] (timm's
        Linear), or sum_h s[h] M[h, g] (the small-datasets code's matrix)."""
        if not self.mixes:
            return s
        mix = getattr(self, self.mixes[which])
        if isinstance(mix, nn.Linear):
            return mix(s.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # heads last, mixed, back
        return torch.einsum("bhij,hg->bgij", s, mix.to(s.dtype))


class BinaryAttention(nn.Module):
    """BinaryViT's attention: q/k/v as BLUs (k, v after an optional AvgPool(r) + BLU
    reduction), learnable shifts, sign, quantized softmax, and the context shortcut
    RPReLU(BN(P V) + q + k + v) before the proj BLU."""

    def __init__(self, node: Node, ins: list[TensorType]) -> None:
        super().__init__()
        a, x, binary = node.attrs, ins[0], node.binary
        d = x.dim
        self.heads, self.head_dim = a.heads, a.head_dim
        self.grid = x.grid
        self.r = a.reduce
        self.q = BLU(d, d, a.qkv_bias, binary)
        self.k = BLU(d, d, a.qkv_bias, binary)
        self.v = BLU(d, d, a.qkv_bias, binary)
        if self.r > 1:
            self.reduce = BLU(d, d, a.qkv_bias, binary)
        self.q_shift = nn.Parameter(torch.empty(d))
        self.k_shift = nn.Parameter(torch.empty(d))
        self.v_shift = nn.Parameter(torch.empty(d))
        self.binary_attention = "attention" in binary
        if self.binary_attention:
            self.alpha = nn.Parameter(torch.empty(1))
        self.context_norm = TokenBatchNorm(d, eps=BATCHNORM_EPS)
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
@module_for(mlp.Mlp)
def mlp_module(node: Node, ins: list[TensorType]) -> nn.Module:
    return BinaryMlp(node, ins) if node.binary else Mlp(node, ins)


class Mlp(nn.Module):
    """fc1 -> GELU (erf) -> fc2."""

    def __init__(self, node: Node, ins: list[TensorType]) -> None:
        super().__init__()
        d, h = ins[0].dim, node.attrs.hidden
        self.fc1 = linear(d, h)
        self.fc2 = linear(h, d)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class BinaryMlp(nn.Module):
    """BinaryViT's MLP: two BLUs; the up-projection's shortcut repeats x along channels,
    the down-projection's averages groups of H/D consecutive channels. No GELU."""

    def __init__(self, node: Node, ins: list[TensorType]) -> None:
        super().__init__()
        d, h = ins[0].dim, node.attrs.hidden
        self.ratio = h // d
        self.fc1 = BLU(d, h, False, node.binary)
        self.fc2 = BLU(h, d, False, node.binary)

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc1(x, x.repeat(1, 1, self.ratio))  # (B, N, H)
        b, n, _ = h.shape
        return self.fc2(h, h.reshape(b, n, -1, self.ratio).mean(-1))  # (B, N, D)


# -- pool branches, affine, drop-path ---------------------------------------------------------
class Affine(nn.Module):
    """Per-channel x * scale + shift."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.empty(dim))
        self.shift = nn.Parameter(torch.empty(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale + self.shift


@module_for(affine.Affine)
def affine_module(node: Node, ins: list[TensorType]) -> nn.Module:
    return Affine(ins[0].dim)


@module_for(pool_branches.PoolBranches)
class PoolBranches(nn.Module):
    """Sum over kernels of affine(AvgPool2d_k(x)), stride 1, same padding, on the grid."""

    def __init__(self, node: Node, ins: list[TensorType]) -> None:
        super().__init__()
        d = ins[0].dim
        self.grid = ins[0].grid
        self.kernels = list(node.attrs.kernels)
        self.branches = nn.ModuleList(Affine(d) for _ in self.kernels)

    def forward(self, x: Tensor) -> Tensor:
        g = to_grid(x, self.grid)  # (B, D, gh, gw)
        out = None
        for (kh, kw), branch in zip(self.kernels, self.branches):
            pooled = F.avg_pool2d(g, (kh, kw), stride=1, padding=(kh // 2, kw // 2), count_include_pad=True)
            y = pooled * branch.scale.view(1, -1, 1, 1) + branch.shift.view(1, -1, 1, 1)
            out = y if out is None else out + y
        return to_tokens(out)


@module_for(drop_path.DropPath)
class DropPath(nn.Module):
    """Stochastic depth: per-sample keep mask scaled by 1/keep in training, identity in eval."""

    def __init__(self, node: Node, ins: list[TensorType]) -> None:
        super().__init__()
        self.rate = float(node.attrs.rate)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep


# -- stage transitions ------------------------------------------------------------------------
class PrefixLinear(nn.Module):
    """Class tokens through their own Linear (`fc`, created last, after the patch path's
    layers) beside a transition of the patch tokens."""

    def __init__(self, x: TensorType) -> None:
        super().__init__()
        self.grid, self.prefix = x.grid, x.prefix

    def prefix_linear(self, x: TensorType, d2: int) -> None:
        if self.prefix:
            self.fc = linear(x.dim, d2)

    def patches(self, x: Tensor) -> Tensor:
        return x[:, self.prefix:]

    def join(self, x: Tensor, patches: Tensor) -> Tensor:
        if not self.prefix:
            return patches
        return torch.cat([self.fc(x[:, :self.prefix]), patches], dim=1)  # (B, P + N/4, D2)


@module_for(downsample.PitPool)
class PitDownsample(PrefixLinear):
    """PiT pooling: patch tokens through a stride-2 depthwise 3x3 conv (and a 1x1 pointwise
    conv in the small-datasets paper's form)."""

    def __init__(self, node: Node, ins: list[TensorType]) -> None:
        super().__init__(ins[0])
        x, d2 = ins[0], node.attrs.dim
        self.conv = conv(x.dim, d2, 3, 2, 1, groups=x.dim)
        self.pointwise = conv(d2, d2, 1, 1) if node.attrs.pointwise else None
        self.prefix_linear(x, d2)

    def forward(self, x: Tensor) -> Tensor:
        g = self.conv(to_grid(self.patches(x), self.grid))  # (B, D2, gh/2, gw/2)
        if self.pointwise is not None:
            g = self.pointwise(g)
        return self.join(x, to_tokens(g))


@module_for(downsample.SptMerge)
class SptDownsample(PrefixLinear):
    """SPT merging (patch 2, shift 1) on the patch tokens."""

    def __init__(self, node: Node, ins: list[TensorType]) -> None:
        super().__init__(ins[0])
        f = shift_tokenize.spt_features(ins[0].dim, 2)
        self.norm = nn.LayerNorm(f, eps=node.attrs.eps)
        self.proj = linear(f, node.attrs.dim)
        self.prefix_linear(ins[0], node.attrs.dim)

    def forward(self, x: Tensor) -> Tensor:
        patches = self.proj(self.norm(shifted_patches(to_grid(self.patches(x), self.grid), 2)))  # (B, N/4, D2)
        return self.join(x, patches)


@module_for(downsample.Merge)
class MergeDownsample(nn.Module):
    """BinaryViT's stage transition: BN -> 2x2 stride-2 conv -> BN. Binary: the conv reads
    sign(y + move) with binary weights, plus an AvgPool(2) shortcut with repeated
    channels, then RPReLU. Full precision (BinaryViT*): no move, shortcut or RPReLU."""

    def __init__(self, node: Node, ins: list[TensorType]) -> None:
        super().__init__()
        x, d2, eps = ins[0], node.attrs.dim, node.attrs.eps
        self.grid, self.binary = x.grid, node.binary
        self.norm0 = TokenBatchNorm(x.dim, eps=eps)
        if self.binary:
            self.move = nn.Parameter(torch.empty(x.dim))
        self.conv = conv(x.dim, d2, 2, 2, bias=False)
        self.norm = TokenBatchNorm(d2, eps=eps)
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


# -- token ranges ---------------------------------------------------------------------------
def token_range(start: int, stop: int | None, x: Tensor) -> Tensor:
    return x[:, start:stop]  # (B, stop - start, D)


def join_tokens(*xs: Tensor) -> Tensor:
    return torch.cat(xs, dim=1)


@lowering_for(slice_op.Slice)
def _slice(gm: object, node: Node, ins: list[TensorType]) -> object:
    return functools.partial(token_range, node.attrs.start, node.attrs.stop)


@lowering_for(slice_op.Concat)
def _concat(gm: object, node: Node, ins: list[TensorType]) -> object:
    return join_tokens
