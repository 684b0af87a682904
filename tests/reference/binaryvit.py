"""Reference BinaryViT (Le & Li 2023), written after the official code
(Phuoc-Hoan-Le/BinaryViT transformer/modeling_qvit_extra_res_pyramid.py, utils_quant.py)
with vitgraph's parameter names. Covers the binary DeiT baseline (cls token, token head)
and the pyramid (conv stem + BN, spatial-reduction attention, pool branches, affine
residuals, merging transitions, GAP head). Weights and activations are binarized
everywhere except the stem and the classifier; attention optionally (Q, K, V signed,
softmax quantized); transitions optionally full precision (BinaryViT*). The straight-through estimators here are written as
detach() expressions, not autograd Functions, so they check the backend's Functions."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class StageConfig:
    dim: int
    depth: int
    heads: int
    hidden: int
    reduce: int = 1
    kernels: tuple[tuple[int, int], ...] = ()
    affine: bool = False


@dataclass
class BinaryViTConfig:
    image: int = 32
    patch: int = 4
    in_chans: int = 3
    stages: list[StageConfig] = field(default_factory=list)
    pyramid: bool = True         # names stages.S.blocks.I (else blocks.I, one stage)
    stem_norm: bool = True       # BatchNorm after the conv stem
    cls_token: bool = False      # binary DeiT: cls token and token head; else GAP head
    binary_transitions: bool = True
    binary_attention: bool = True  # sign Q, K, V and quantize the softmax (else real attention)
    classes: int = 10


def sign_ste(x: torch.Tensor) -> torch.Tensor:
    """Bi-Real's ApproxSign: forward sign(x); backward through the piecewise polynomial
    F(x) = -1 | x^2 + 2x | -x^2 + 2x | 1, whose slope is 2 + 2x, 2 - 2x, 0."""
    poly = torch.where(x < -1, -torch.ones_like(x),
                       torch.where(x < 0, x * x + 2 * x, torch.where(x < 1, -x * x + 2 * x, torch.ones_like(x))))
    return torch.sign(x).detach() + poly - poly.detach()


def binarize_linear(w: torch.Tensor) -> torch.Tensor:
    scaling = w.abs().mean(dim=1, keepdim=True).detach()
    real = w - w.mean(dim=-1, keepdim=True)
    clipped = real.clamp(-1.0, 1.0)
    return (scaling * real.sign()).detach() - clipped.detach() + clipped


def binarize_conv(w: torch.Tensor) -> torch.Tensor:
    scaling = w.abs().mean(dim=3, keepdim=True).mean(dim=2, keepdim=True).mean(dim=1, keepdim=True).detach()
    clipped = w.clamp(-1.0, 1.0)
    return (scaling * w.sign()).detach() - clipped.detach() + clipped


def quantize_probs(p: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """BiT: round(p / alpha).clamp(0, 1) * alpha; gradient to p inside [0, alpha], to alpha
    round(q) - q inside and 1 above."""
    q = (p / alpha).detach()
    middle = alpha * (q.round() - q) + p  # value round(q) * alpha; d/dp = 1, d/dalpha = round(q) - q
    return torch.where(q > 1, alpha * torch.ones_like(p), torch.where(q < 0, torch.zeros_like(p), middle))


class BN(nn.BatchNorm1d):
    """BatchNorm over the channels of (B, N, D) tokens."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


class RPReLU(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.shift_in = nn.Parameter(torch.zeros(dim))
        self.slope = nn.Parameter(torch.full((dim,), 0.25))
        self.shift_out = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.prelu((x - self.shift_in).transpose(-1, -2), self.slope).transpose(-1, -2) + self.shift_out


class BLU(nn.Module):
    """rprelu(norm(QuantizeLinear(x + move)) + shortcut)."""

    def __init__(self, fin: int, fout: int, bias: bool) -> None:
        super().__init__()
        self.move = nn.Parameter(torch.zeros(fin))
        self.weight = nn.Parameter(torch.randn(fout, fin) * 0.02)
        self.bias = nn.Parameter(torch.zeros(fout)) if bias else None
        self.norm = BN(fout)
        self.act = RPReLU(fout)

    def forward(self, x: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
        out = F.linear(sign_ste(x + self.move), binarize_linear(self.weight))
        if self.bias is not None:
            out = out + self.bias.view(1, -1).expand_as(out)
        return self.act(self.norm(out) + shortcut)


class Affine(nn.Module):
    def __init__(self, dim: int, init: float) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim) * init)
        self.shift = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, reduce: int, binary_attention: bool) -> None:
        super().__init__()
        self.heads, self.hd, self.r = heads, dim // heads, reduce
        self.binary_attention = binary_attention
        self.q, self.k, self.v = BLU(dim, dim, False), BLU(dim, dim, False), BLU(dim, dim, False)
        if reduce > 1:
            self.reduce = BLU(dim, dim, False)
        self.q_shift = nn.Parameter(torch.zeros(dim))
        self.k_shift = nn.Parameter(torch.zeros(dim))
        self.v_shift = nn.Parameter(torch.zeros(dim))
        if binary_attention:
            self.alpha = nn.Parameter(torch.tensor([0.005]))
        self.context_norm = BN(dim)
        self.context_act = RPReLU(dim)
        self.proj = BLU(dim, dim, False)

    def heads_first(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], x.shape[1], self.heads, self.hd).permute(0, 2, 1, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        q = self.q(x, x)
        h = x
        if self.r > 1:
            side = int(N ** 0.5)
            h = F.avg_pool2d(x.permute(0, 2, 1).reshape(B, C, side, side), self.r, self.r)
            h = h.reshape(B, C, -1).permute(0, 2, 1)
            h = self.reduce(h, h)
        k = self.k(h, h)
        v = self.v(h, h)
        act = sign_ste if self.binary_attention else (lambda t: t)
        qb = self.heads_first(act(q + self.q_shift))
        kb = self.heads_first(act(k + self.k_shift))
        vb = self.heads_first(act(v + self.v_shift))
        scores = torch.matmul(qb, kb.transpose(-1, -2)) / (self.hd ** 0.5)
        probs = F.softmax(scores, dim=-1)
        if self.binary_attention:
            probs = quantize_probs(probs, self.alpha)
        ctx = torch.matmul(probs, vb).permute(0, 2, 1, 3).reshape(B, N, C)
        if self.r > 1:
            side = int(N ** 0.5)
            k = F.interpolate(k.permute(0, 2, 1).reshape(B, C, side // self.r, side // self.r), size=side,
                              mode="nearest").reshape(B, C, -1).permute(0, 2, 1)
            v = F.interpolate(v.permute(0, 2, 1).reshape(B, C, side // self.r, side // self.r), size=side,
                              mode="nearest").reshape(B, C, -1).permute(0, 2, 1)
        ctx = self.context_act(self.context_norm(ctx) + q + k + v)
        return self.proj(ctx, ctx)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.ratio = hidden // dim
        self.fc1 = BLU(dim, hidden, False)
        self.fc2 = BLU(hidden, dim, False)
        self.pooling = nn.AvgPool1d(self.ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x, torch.concat([x for _ in range(self.ratio)], dim=-1))
        return self.fc2(h, self.pooling(h))


class PoolBranches(nn.Module):
    def __init__(self, dim: int, kernels: tuple[tuple[int, int], ...]) -> None:
        super().__init__()
        self.pools = [nn.AvgPool2d(k, stride=1, padding=(k[0] // 2, k[1] // 2)) for k in kernels]
        self.branches = nn.ModuleList(Affine(dim, 0.0) for _ in kernels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        side = int(N ** 0.5)
        grid = x.permute(0, 2, 1).reshape(B, C, side, side)
        out = 0
        for pool, branch in zip(self.pools, self.branches):
            out = out + branch(pool(grid).reshape(B, C, N).permute(0, 2, 1))
        return out


class Block(nn.Module):
    def __init__(self, s: StageConfig, binary_attention: bool) -> None:
        super().__init__()
        self.norm1 = BN(s.dim)
        self.attn = Attention(s.dim, s.heads, s.reduce, binary_attention)
        self.norm2 = BN(s.dim)
        self.mlp = Mlp(s.dim, s.hidden)
        if s.affine:
            self.affine1 = Affine(s.dim, 0.1)
            self.affine2 = Affine(s.dim, 0.1)
        if s.kernels:
            self.pool = PoolBranches(s.dim, s.kernels)
        self.affine = s.affine

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.attn(self.norm1(x))
        x = x + (self.affine1(a) if self.affine else a)
        h = self.norm2(x)
        m = self.mlp(h)
        out = (self.affine2(m) if self.affine else m) + x
        if hasattr(self, "pool"):
            out = out + self.pool(h)
        return out


class Merge(nn.Module):
    """BinaryPatchEmbed (binary) / PatchEmbed (BinaryViT*) of the official code, without
    the position embedding (a separate parameter here)."""

    def __init__(self, din: int, dout: int, binary: bool) -> None:
        super().__init__()
        self.binary = binary
        self.norm0 = BN(din)
        if binary:
            self.move = nn.Parameter(torch.zeros(din))
        self.conv = nn.Conv2d(din, dout, 2, 2, bias=False)
        self.norm = BN(dout)
        if binary:
            self.act = RPReLU(dout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        side = int(N ** 0.5)
        x = self.norm0(x)
        grid = x.permute(0, 2, 1).reshape(B, C, side, side)
        if not self.binary:
            return self.norm(self.conv(grid).flatten(2).transpose(1, 2))
        residual = F.avg_pool2d(grid, 2, 2).reshape(B, C, -1).permute(0, 2, 1)
        h = F.conv2d(sign_ste(grid + self.move.view(1, -1, 1, 1)), binarize_conv(self.conv.weight), stride=2)
        h = h.reshape(B, h.shape[1], -1).permute(0, 2, 1)
        residual = torch.concat([residual for _ in range(h.shape[-1] // C)], dim=-1)
        return self.act(self.norm(h) + residual)


class Stem(nn.Module):
    def __init__(self, cfg: BinaryViTConfig, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(cfg.in_chans, dim, cfg.patch, cfg.patch)
        if cfg.stem_norm:
            self.norm = BN(dim)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        x = self.proj(img).flatten(2).transpose(1, 2)
        return self.norm(x) if hasattr(self, "norm") else x


class Stage(nn.Module):
    def __init__(self, s: StageConfig, prev: StageConfig | None, tokens: int, cfg: BinaryViTConfig) -> None:
        super().__init__()
        if prev is not None:
            self.downsample = Merge(prev.dim, s.dim, cfg.binary_transitions)
            self.pos_embed = nn.Parameter(torch.zeros(1, tokens, s.dim))
        self.blocks = nn.ModuleList(Block(s, cfg.binary_attention) for _ in range(s.depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "downsample"):
            x = self.downsample(x) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return x


class BinaryViT(nn.Module):
    def __init__(self, cfg: BinaryViTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        first = cfg.stages[0]
        self.patch_embed = Stem(cfg, first.dim)
        side = cfg.image // cfg.patch
        if cfg.cls_token:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, first.dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, side * side + int(cfg.cls_token), first.dim))
        if cfg.pyramid:
            stages = []
            for i, s in enumerate(cfg.stages):
                tokens = (side >> i) ** 2
                stages.append(Stage(s, cfg.stages[i - 1] if i else None, tokens, cfg))
            self.stages = nn.ModuleList(stages)
        else:
            self.blocks = nn.ModuleList(Block(first, cfg.binary_attention) for _ in range(first.depth))
        last = cfg.stages[-1].dim
        self.norm = BN(last)
        self.head = nn.Linear(last, cfg.classes)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(img)
        if self.cfg.cls_token:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self.pos_embed
        for m in (self.stages if self.cfg.pyramid else self.blocks):
            x = m(x)
        x = self.norm(x)
        return self.head(x[:, 0] if self.cfg.cls_token else torch.mean(x, dim=1))
