"""Reference Swin / SL-Swin as configured in "Vision Transformer for Small-Size Datasets"
(Lee, Lee, Song 2021), written from the semantics of its official code (aanna0701/
SPT_LSA_ViT models/swin.py, after microsoft/Swin-Transformer): the grid rolled by -shift,
cut into windows (window_partition), attention inside each window with the relative-
position bias table indexed by the pairwise offsets, the shift mask (-100 between the
regions the roll brought together) added per window, LSA's temperature on q and -inf on
each window's diagonal after the masks, the windows put back and rolled by +shift;
blocks alternate shift 0 and window // 2, and where the grid is no larger than the
window the window is the grid, unshifted. Patch merging slices the 2x2 neighbourhoods
x0 = [0::2, 0::2], x1 = [1::2, 0::2], x2 = [0::2, 1::2], x3 = [1::2, 1::2] and
concatenates them, LayerNorm(4C), Linear(4C, 2C) without bias; SL-Swin merges with SPT
(merging size 2). Module names follow vitgraph's keys for the spec (stages.i.downsample,
stages.i.blocks.j, temperature). Stochastic depth is left out: compare with drop_path=0."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from .vit import Mlp, ShiftedPatchTokenization, ViTConfig, shifted_patch_tokens


@dataclass
class SwinConfig:
    image: int = 32
    patch: int = 2
    dims: tuple[int, ...] = (96, 192, 384)
    depths: tuple[int, ...] = (2, 6, 4)
    heads: tuple[int, ...] = (3, 6, 12)
    window: int = 4
    mlp_ratio: int = 2
    classes: int = 10
    spt_lsa: bool = False


def window_partition(x: torch.Tensor, w: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * nW, w * w, C), windows row-major, tokens row-major inside."""
    B, H, W, C = x.shape
    x = x.view(B, H // w, w, W // w, w, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, w * w, C)


def window_reverse(windows: torch.Tensor, w: int, H: int, W: int) -> torch.Tensor:
    """(B * nW, w * w, C) -> (B, H, W, C)."""
    C = windows.shape[-1]
    x = windows.view(-1, H // w, W // w, w, w, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, H, W, C)


def relative_position_index(w: int) -> torch.Tensor:
    """(w*w, w*w): the table row of the offset between two tokens of a window."""
    coords = torch.stack(torch.meshgrid(torch.arange(w), torch.arange(w), indexing="ij")).flatten(1)  # (2, n)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (w - 1)                      # (n, n, 2)
    return rel[:, :, 0] * (2 * w - 1) + rel[:, :, 1]


def shift_mask(H: int, W: int, w: int, s: int) -> torch.Tensor:
    """(nW, n, n): -100 between tokens of a rolled window that come from different regions."""
    labels = torch.zeros(1, H, W, 1)
    cnt = 0
    for hs in (slice(0, -w), slice(-w, -s), slice(-s, None)):
        for ws in (slice(0, -w), slice(-w, -s), slice(-s, None)):
            labels[:, hs, ws, :] = cnt
            cnt += 1
    lw = window_partition(labels, w).squeeze(-1)         # (nW, n)
    diff = lw[:, None, :] - lw[:, :, None]
    return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)


class WindowAttention(nn.Module):
    def __init__(self, dim: int, heads: int, w: int, lsa: bool) -> None:
        super().__init__()
        self.heads, self.hd, self.w, self.lsa = heads, dim // heads, w, lsa
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * w - 1) ** 2, heads))
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)
        if lsa:
            self.temperature = nn.Parameter(torch.full((heads,), self.hd ** -0.5))
        self.register_buffer("index", relative_position_index(w), persistent=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        B_, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B_, N, 3, self.heads, self.hd).permute(2, 0, 3, 1, 4)  # (B_, H, N, hd)
        q = q * (self.temperature.view(1, -1, 1, 1) if self.lsa else self.hd ** -0.5)
        att = q @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.index.reshape(-1)].view(N, N, -1).permute(2, 0, 1)
        att = att + bias.unsqueeze(0)
        if mask is not None:
            nW = mask.shape[0]
            att = (att.view(B_ // nW, nW, self.heads, N, N) + mask[None, :, None]).view(B_, self.heads, N, N)
        if self.lsa:
            att = att.masked_fill(torch.eye(N, dtype=torch.bool), float("-inf"))
        out = (att.softmax(-1) @ v).transpose(1, 2).reshape(B_, N, C)
        return self.proj(out)


class SwinBlock(nn.Module):
    def __init__(self, dim: int, grid: int, heads: int, window: int, shift: int, mlp_ratio: int, lsa: bool) -> None:
        super().__init__()
        if grid <= window:  # the window covers the grid: no partition, no shift
            window, shift = grid, 0
        self.grid, self.w, self.s = grid, window, shift
        self.norm1 = nn.LayerNorm(dim, eps=1e-5)
        self.attn = WindowAttention(dim, heads, window, lsa)
        self.norm2 = nn.LayerNorm(dim, eps=1e-5)
        self.mlp = Mlp(ViTConfig(dim=dim, mlp_hidden=dim * mlp_ratio))
        self.register_buffer("mask", shift_mask(grid, grid, window, shift) if shift else None, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, C = x.shape
        h = self.norm1(x).view(B, self.grid, self.grid, C)
        if self.s:
            h = torch.roll(h, shifts=(-self.s, -self.s), dims=(1, 2))
        h = self.attn(window_partition(h, self.w), self.mask)
        h = window_reverse(h, self.w, self.grid, self.grid)
        if self.s:
            h = torch.roll(h, shifts=(self.s, self.s), dims=(1, 2))
        x = x + h.reshape(B, L, C)
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    def __init__(self, dim: int, out: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim, eps=1e-5)
        self.reduction = nn.Linear(4 * dim, out, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, C = x.shape
        side = int(L ** 0.5)
        x = x.view(B, side, side, C)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x.reshape(B, -1, 4 * C)))


class SptMerging(nn.Module):
    """The official ShiftedPatchTokenization(dim, 2 dim, 2) on the token grid."""

    def __init__(self, dim: int, out: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(20 * dim, eps=1e-5)
        self.proj = nn.Linear(20 * dim, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, C = x.shape
        side = int(L ** 0.5)
        return self.proj(self.norm(shifted_patch_tokens(x.transpose(1, 2).reshape(B, C, side, side), 2)))


class ConvPatchEmbed(nn.Module):
    def __init__(self, dim: int, patch: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, patch)
        self.norm = nn.LayerNorm(dim, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).flatten(2).transpose(1, 2))


class Stage(nn.Module):
    def __init__(self, blocks: list[SwinBlock], downsample: nn.Module | None) -> None:
        super().__init__()
        if downsample is not None:
            self.downsample = downsample
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "downsample"):
            x = self.downsample(x)
        for block in self.blocks:
            x = block(x)
        return x


class Swin(nn.Module):
    def __init__(self, cfg: SwinConfig) -> None:
        super().__init__()
        d0, grid = cfg.dims[0], cfg.image // cfg.patch
        self.patch_embed = ShiftedPatchTokenization(3, d0, cfg.patch) if cfg.spt_lsa else ConvPatchEmbed(d0, cfg.patch)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid, d0))
        stages = []
        for i, (dim, depth, heads) in enumerate(zip(cfg.dims, cfg.depths, cfg.heads)):
            merge = None
            if i:
                merge = (SptMerging if cfg.spt_lsa else PatchMerging)(cfg.dims[i - 1], dim)
                grid //= 2
            blocks = [SwinBlock(dim, grid, heads, cfg.window, 0 if j % 2 == 0 else cfg.window // 2, cfg.mlp_ratio,
                                cfg.spt_lsa) for j in range(depth)]
            stages.append(Stage(blocks, merge))
        self.stages = nn.ModuleList(stages)
        self.norm = nn.LayerNorm(cfg.dims[-1], eps=1e-5)
        self.head = nn.Linear(cfg.dims[-1], cfg.classes)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(img) + self.pos_embed
        for stage in self.stages:
            x = stage(x)
        return self.head(self.norm(x).mean(1))
