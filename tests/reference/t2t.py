"""Reference T2T / SL-T2T as "Vision Transformer for Small-Size Datasets" (Lee, Lee, Song
2021) builds them (official code aanna0701/SPT_LSA_ViT models/t2t.py, create_model):
soft splits (nn.Unfold 3/2/1), token transformers with one head, the score scale taken
from the input width and v as the shortcut, a projection, a class token, the fixed
sinusoid position table and a backbone whose attention adds its own input (the official
Attention class with 4 heads). SL-T2T: the image patch-shifted by 1 pixel first (5C
channels) and LSA (learnable temperature, diagonal at -inf) in every attention. Three
soft splits at 64x64, two at any other size, as the official module decides. The
official module's unused `norm` is left out; stochastic depth too (compare with
drop_path=0). Module names follow vitgraph's spec (tokens_to_token.0.attn.qkv, ...)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .vit import shift


@dataclass
class T2TConfig:
    image: int = 64
    in_chans: int = 3
    classes: int = 200
    embed: int = 256
    depth: int = 12
    heads: int = 4
    mlp_ratio: float = 2.0
    token_dim: int = 64
    spt: bool = False
    lsa: bool = False


def soft_split(x: torch.Tensor) -> torch.Tensor:
    """nn.Unfold(3, stride 2, padding 1): (B, C, H, W) -> (B, H/2 * W/2, 9C)."""
    return nn.Unfold(kernel_size=3, stride=2, padding=1)(x).transpose(1, 2)


def patch_shifting(x: torch.Tensor) -> torch.Tensor:
    """PatchShifting(2): [x, left-up, right-up, left-down, right-down], shifts of 1 pixel."""
    return torch.cat([x, shift(x, 1, 1), shift(x, 1, -1), shift(x, -1, 1), shift(x, -1, -1)], dim=1)


def sinusoid(n: int, d: int) -> torch.Tensor:
    """(1, n, d): sin(p / 10000^(2i/d)) on channel 2i, cos on 2i + 1."""
    table = torch.zeros(n, d, dtype=torch.float64)
    for p in range(n):
        for j in range(d):
            angle = p / math.pow(10000, 2 * (j // 2) / d)
            table[p, j] = math.sin(angle) if j % 2 == 0 else math.cos(angle)
    return table.float().unsqueeze(0)


def scores(q: torch.Tensor, k: torch.Tensor, scale: torch.Tensor | float, lsa: bool) -> torch.Tensor:
    """Softmax-ready scores of (B, H, N, d) q and k: scaled, LSA's diagonal at -inf."""
    att = q @ k.transpose(-2, -1)
    if isinstance(scale, torch.Tensor):
        att = att * scale.view(1, -1, 1, 1)
    else:
        att = att * scale
    if lsa:
        n = att.shape[-1]
        att = att.masked_fill(torch.eye(n, dtype=torch.bool), float("-inf"))
    return att


class TokenAttention(nn.Module):
    """One head, qkv C -> D, scale C^-1/2 (LSA: learnable, starting there); returns v + proj(ctx)."""

    def __init__(self, dim: int, out: int, lsa: bool) -> None:
        super().__init__()
        self.out, self.lsa, self.scale = out, lsa, dim ** -0.5
        self.qkv = nn.Linear(dim, 3 * out, bias=False)
        self.proj = nn.Linear(out, out)
        if lsa:
            self.temperature = nn.Parameter(torch.full((1,), dim ** -0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (t.unsqueeze(1) for t in self.qkv(x).split(self.out, dim=-1))  # (B, 1, N, D)
        att = scores(q, k, self.temperature if self.lsa else self.scale, self.lsa)
        return v.squeeze(1) + self.proj((att.softmax(-1) @ v).squeeze(1))


class Attention(nn.Module):
    """The backbone's: multi-head, qkv without bias, scale (dim/heads)^-1/2; returns proj(ctx) + x."""

    def __init__(self, dim: int, heads: int, lsa: bool) -> None:
        super().__init__()
        self.heads, self.hd, self.lsa = heads, dim // heads, lsa
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)
        if lsa:
            self.temperature = nn.Parameter(torch.full((heads,), self.hd ** -0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        q, k, v = (t.view(B, N, self.heads, self.hd).transpose(1, 2) for t in self.qkv(x).split(D, dim=-1))
        att = scores(q, k, self.temperature if self.lsa else self.hd ** -0.5, self.lsa)
        y = (att.softmax(-1) @ v).transpose(1, 2).reshape(B, N, D)
        return self.proj(y) + x


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class TokenTransformer(nn.Module):
    def __init__(self, dim: int, out: int, lsa: bool) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = TokenAttention(dim, out, lsa)
        self.norm2 = nn.LayerNorm(out)
        self.mlp = Mlp(out, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attn(self.norm1(x))  # no residual: the width changes, v is the shortcut
        return x + self.mlp(self.norm2(x))


class Block(nn.Module):
    def __init__(self, cfg: T2TConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.embed)
        self.attn = Attention(cfg.embed, cfg.heads, cfg.lsa)
        self.norm2 = nn.LayerNorm(cfg.embed)
        self.mlp = Mlp(cfg.embed, int(cfg.embed * cfg.mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))  # = x + proj(...) + norm1(x)
        return x + self.mlp(self.norm2(x))


class T2TModule(nn.Module):
    """soft split -> [token transformer -> back to the grid -> soft split] x 2 (64 px) or x 1 -> project."""

    def __init__(self, cfg: T2TConfig) -> None:
        super().__init__()
        self.spt = cfg.spt
        dim = (5 if cfg.spt else 1) * cfg.in_chans * 9
        self.steps = 2 if cfg.image == 64 else 1
        for i in range(self.steps):
            self.add_module(str(i), TokenTransformer(dim, cfg.token_dim, cfg.lsa))
            dim = cfg.token_dim * 9
        self.project = nn.Linear(dim, cfg.embed)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        x = soft_split(patch_shifting(img) if self.spt else img)
        for i in range(self.steps):
            x = getattr(self, str(i))(x)
            B, N, C = x.shape
            side = math.isqrt(N)
            x = soft_split(x.transpose(1, 2).reshape(B, C, side, side))
        return self.project(x)


class T2TViT(nn.Module):
    def __init__(self, cfg: T2TConfig) -> None:
        super().__init__()
        self.tokens_to_token = T2TModule(cfg)
        side = cfg.image // (2 ** (self.tokens_to_token.steps + 1))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed))
        self.register_buffer("pos_embed", sinusoid(side * side + 1, cfg.embed), persistent=False)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.embed)
        self.head = nn.Linear(cfg.embed, cfg.classes)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        x = self.tokens_to_token(img)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x)[:, 0])
