"""Reference PiT / SL-PiT as configured in "Vision Transformer for Small-Size Datasets"
(Lee, Lee, Song 2021): the paper's pooling layer (the class token through a Linear, the
patch tokens through a stride-2 depthwise conv with kernel 3 and padding 1, then, in the
paper's official code models/pit.py, a 1x1 pointwise conv; naver-ai/pit's own PiT stops
after the depthwise conv: `pointwise=False`), or for SL-PiT the official code's ShiftedPatchTokenization with
exist_class_t=True and merging size 2 (class token through `class_linear`, here `fc`).
Blocks come from reference/vit.py. Stochastic depth is left out."""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn as nn

from .vit import Block, PatchEmbed, ShiftedPatchTokenization, ViTConfig, shifted_patch_tokens


@dataclass
class PiTConfig:
    image: int = 32
    patch: int = 4
    dims: tuple[int, ...] = (96, 192, 384)
    depths: tuple[int, ...] = (2, 6, 4)
    heads: tuple[int, ...] = (2, 4, 8)
    mlp_ratio: int = 2
    classes: int = 10
    spt_lsa: bool = False
    pointwise: bool = True


class ConvHeadPooling(nn.Module):
    def __init__(self, din: int, dout: int, pointwise: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(din, dout, kernel_size=3, padding=1, stride=2, groups=din)
        self.pointwise = nn.Conv2d(dout, dout, kernel_size=1) if pointwise else nn.Identity()
        self.fc = nn.Linear(din, dout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cls, patches = x[:, :1], x[:, 1:]
        B, N, C = patches.shape
        side = int(N ** 0.5)
        grid = self.pointwise(self.conv(patches.transpose(1, 2).reshape(B, C, side, side)))
        return torch.cat([self.fc(cls), grid.flatten(2).transpose(1, 2)], dim=1)


class SptPooling(nn.Module):
    """SPT on the patch tokens with merging size 2 (LN `norm`, Linear `proj`); the class
    token through `fc`."""

    def __init__(self, din: int, dout: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(20 * din, eps=1e-5)
        self.proj = nn.Linear(20 * din, dout)
        self.fc = nn.Linear(din, dout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cls, patches = x[:, :1], x[:, 1:]
        B, N, C = patches.shape
        side = int(N ** 0.5)
        merged = self.proj(self.norm(shifted_patch_tokens(patches.transpose(1, 2).reshape(B, C, side, side), 2)))
        return torch.cat([self.fc(cls), merged], dim=1)


class Stage(nn.Module):
    def __init__(self, cfg: ViTConfig, depth: int, pool: nn.Module | None) -> None:
        super().__init__()
        if pool is not None:
            self.downsample = pool
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "downsample"):
            x = self.downsample(x)
        for block in self.blocks:
            x = block(x)
        return x


class PiT(nn.Module):
    def __init__(self, cfg: PiTConfig) -> None:
        super().__init__()
        base = ViTConfig(image=cfg.image, patch=cfg.patch, qkv_bias=False, eps=1e-5, classes=cfg.classes,
                         lsa=cfg.spt_lsa)
        d0 = cfg.dims[0]
        embed = ShiftedPatchTokenization if cfg.spt_lsa else PatchEmbed
        self.patch_embed = embed(3, d0, cfg.patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d0))
        self.pos_embed = nn.Parameter(torch.zeros(1, (cfg.image // cfg.patch) ** 2 + 1, d0))
        stages = []
        for i, (dim, depth, heads) in enumerate(zip(cfg.dims, cfg.depths, cfg.heads)):
            pool = None
            if i:
                pool = SptPooling(cfg.dims[i - 1], dim) if cfg.spt_lsa else \
                    ConvHeadPooling(cfg.dims[i - 1], dim, cfg.pointwise)
            stages.append(Stage(replace(base, dim=dim, heads=heads, mlp_hidden=dim * cfg.mlp_ratio), depth, pool))
        self.stages = nn.ModuleList(stages)
        self.norm = nn.LayerNorm(cfg.dims[-1], eps=1e-5)
        self.head = nn.Linear(cfg.dims[-1], cfg.classes)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(img)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for stage in self.stages:
            x = stage(x)
        return self.head(self.norm(x)[:, 0])
