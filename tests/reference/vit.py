"""Reference ViT / DeiT / SL-ViT: DeiT (Touvron et al. 2020; timm's VisionTransformer
layout) with optional Shifted Patch Tokenization and Locality Self-Attention ("Vision
Transformer for Small-Size Datasets", Lee, Lee, Song 2021; official code
aanna0701/SPT_LSA_ViT). Stochastic depth is left out: compare with drop_path=0."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class ViTConfig:
    image: int = 32
    patch: int = 16
    in_chans: int = 3
    dim: int = 192
    depth: int = 12
    heads: int = 3
    head_dim: int | None = None
    mlp_hidden: int = 768
    qkv_bias: bool = True
    eps: float = 1e-6
    classes: int = 1000
    distilled: bool = False
    spt: bool = False
    lsa: bool = False


def shift(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """out[..., h, w] = x[..., h - dy, w - dx], zero where that falls outside the image."""
    out = torch.zeros_like(x)
    H, W = x.shape[-2:]
    out[..., max(dy, 0):H + min(dy, 0), max(dx, 0):W + min(dx, 0)] = \
        x[..., max(-dy, 0):H + min(-dy, 0), max(-dx, 0):W + min(-dx, 0)]
    return out


def shifted_patch_tokens(x: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, L, p*p*5C): the image and its four diagonal half-patch shifts,
    cut into p x p patches flattened (p1, p2, c)."""
    s = p // 2
    # the official code crops a zero-padded copy: x_lu = pad(x)[:-2s, :-2s] is x moved by (+s, +s)
    x5 = torch.cat([x, shift(x, s, s), shift(x, s, -s), shift(x, -s, s), shift(x, -s, -s)], dim=1)
    B, C5 = x5.shape[:2]
    cols = F.unfold(x5, kernel_size=p, stride=p)  # (B, C5*p*p, L), rows ordered (c, p1, p2)
    L = cols.shape[-1]
    return cols.view(B, C5, p, p, L).permute(0, 4, 2, 3, 1).reshape(B, L, p * p * C5)


class ShiftedPatchTokenization(nn.Module):
    """SPT: [x, left-up, right-up, left-down, right-down] half-patch shifts -> patches
    flattened (p1, p2, c) -> LayerNorm -> Linear."""

    def __init__(self, in_chans: int, dim: int, patch: int) -> None:
        super().__init__()
        self.patch = patch
        feat = 5 * in_chans * patch * patch
        self.norm = nn.LayerNorm(feat, eps=1e-5)
        self.proj = nn.Linear(feat, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.norm(shifted_patch_tokens(x, self.patch)))


class PatchEmbed(nn.Module):
    def __init__(self, in_chans: int, dim: int, patch: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, patch, patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)  # (B, D, gh, gw)
        return x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)


class Attention(nn.Module):
    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.heads = cfg.heads
        self.hd = cfg.head_dim or cfg.dim // cfg.heads
        inner = self.heads * self.hd
        self.qkv = nn.Linear(cfg.dim, 3 * inner, bias=cfg.qkv_bias)
        self.proj = nn.Linear(inner, cfg.dim)
        self.lsa = cfg.lsa
        if cfg.lsa:
            self.temperature = nn.Parameter(torch.full((cfg.heads,), self.hd ** -0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        inner = self.heads * self.hd
        q, k, v = self.qkv(x).split(inner, dim=-1)
        q, k, v = (t.view(B, N, self.heads, self.hd).transpose(1, 2) for t in (q, k, v))
        att = q @ k.transpose(-2, -1)  # (B, H, N, N)
        if self.lsa:
            att = att * self.temperature.view(1, -1, 1, 1)
            att = att.masked_fill(torch.eye(N, dtype=torch.bool), float("-inf"))
        else:
            att = att * self.hd ** -0.5
        att = att.softmax(dim=-1)
        y = (att @ v).transpose(1, 2).reshape(B, N, inner)
        return self.proj(y)


class Mlp(nn.Module):
    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(cfg.dim, cfg.mlp_hidden)
        self.fc2 = nn.Linear(cfg.mlp_hidden, cfg.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.dim, eps=cfg.eps)
        self.attn = Attention(cfg)
        self.norm2 = nn.LayerNorm(cfg.dim, eps=cfg.eps)
        self.mlp = Mlp(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        embed = ShiftedPatchTokenization if cfg.spt else PatchEmbed
        self.patch_embed = embed(cfg.in_chans, cfg.dim, cfg.patch)
        n = (cfg.image // cfg.patch) ** 2 + (2 if cfg.distilled else 1)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        if cfg.distilled:
            self.dist_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
            self.head_dist = nn.Linear(cfg.dim, cfg.classes)
        self.pos_embed = nn.Parameter(torch.zeros(1, n, cfg.dim))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.eps)
        self.head = nn.Linear(cfg.dim, cfg.classes)

    def forward(self, img: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        x = self.patch_embed(img)
        B = x.shape[0]
        extra = [self.cls_token, self.dist_token] if self.cfg.distilled else [self.cls_token]
        x = torch.cat([t.expand(B, -1, -1) for t in extra] + [x], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        logits = self.head(x[:, 0])
        if not self.cfg.distilled:
            return logits
        dist = self.head_dist(x[:, 1])
        return (logits, dist) if self.training else (logits + dist) / 2
