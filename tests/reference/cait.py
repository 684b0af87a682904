"""Reference CaiT ("Going deeper with Image Transformers", Touvron et al. 2021) in two
forms, written as plain PyTorch:

* `official`: the small-datasets paper's code (aanna0701/SPT_LSA_ViT models/cait.py):
  bias-free to_q / to_kv, talking heads as bias-free matrices (einsum over the head axis),
  LayerScale on both branches, and class layers that normalise only the class token and
  read keys and values from the raw patch tokens (no class token among them); with LSA a
  learnable per-head temperature everywhere and, in the self-attention layers, each
  token's score with itself set to -1e-9 before the head mixing;
* `timm`: timm's Cait: a fused qkv with bias, talking heads as Linear(h, h) with bias,
  class attention with q / k / v of the normalised [cls, patches]; optionally with LSA
  (temperature, diagonal value, and the class token's score with itself masked).

Stochastic depth is left out: compare with drop_path=0. Keys are the specs' (timm's for
the timm form)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from .vit import Mlp, PatchEmbed, ShiftedPatchTokenization


@dataclass
class CaiTConfig:
    image: int = 32
    patch: int = 8
    in_chans: int = 3
    dim: int = 192
    depth: int = 24
    cls_depth: int = 2
    heads: int = 4
    head_dim: int = 64
    mlp_hidden: int = 384
    eps: float = 1e-5
    classes: int = 10
    official: bool = True     # the small-datasets code's form; False: timm's
    spt: bool = False
    lsa: bool = False
    diagonal: float = -1e-9   # LSA: a token's score with itself in the self-attention layers
    cls_name: str = "cls_blocks"
    init_values: float | None = None  # None: the official depth rule


def official_layer_scale(depth: int) -> float:
    """The official code's LayerScale start for layer number `depth` (1-based)."""
    if depth <= 18:
        return 0.1
    if depth <= 24:
        return 1e-5
    return 1e-6


class TalkingHeadAttention(nn.Module):
    """Self-attention with talking heads: scores mixed across heads before the softmax,
    probabilities mixed after it."""

    def __init__(self, cfg: CaiTConfig) -> None:
        super().__init__()
        self.cfg, h, inner = cfg, cfg.heads, cfg.heads * cfg.head_dim
        if cfg.official:
            self.to_q = nn.Linear(cfg.dim, inner, bias=False)
            self.to_kv = nn.Linear(cfg.dim, 2 * inner, bias=False)
            self.mix_heads_pre_attn = nn.Parameter(torch.randn(h, h))
            self.mix_heads_post_attn = nn.Parameter(torch.randn(h, h))
        else:
            self.qkv = nn.Linear(cfg.dim, 3 * inner)
            self.proj_l = nn.Linear(h, h)
            self.proj_w = nn.Linear(h, h)
        self.proj = nn.Linear(inner, cfg.dim)
        if cfg.lsa:
            self.temperature = nn.Parameter(torch.full((h,), cfg.head_dim ** -0.5))

    def split(self, t: torch.Tensor) -> torch.Tensor:
        B, N, _ = t.shape
        return t.reshape(B, N, self.cfg.heads, self.cfg.head_dim).permute(0, 2, 1, 3)

    def mix(self, a: torch.Tensor, pre: bool) -> torch.Tensor:
        if self.cfg.official:
            m = self.mix_heads_pre_attn if pre else self.mix_heads_post_attn
            return torch.einsum("bhij,hg->bgij", a, m)
        layer = self.proj_l if pre else self.proj_w
        return layer(a.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    def scores(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        dots = torch.einsum("bhid,bhjd->bhij", q, k)
        if not self.cfg.lsa:
            return dots * self.cfg.head_dim ** -0.5
        return dots * self.temperature.view(1, -1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        if self.cfg.official:
            q, (k, v) = self.to_q(x), self.to_kv(x).chunk(2, dim=-1)
        else:
            q, k, v = self.qkv(x).chunk(3, dim=-1)
        dots = self.scores(self.split(q), self.split(k))
        if self.cfg.lsa:
            dots = dots.clone()
            idx = torch.arange(N)
            dots[:, :, idx, idx] = self.cfg.diagonal
        attn = self.mix(self.mix(dots, pre=True).softmax(dim=-1), pre=False)
        out = torch.einsum("bhij,bhjd->bhid", attn, self.split(v))
        return self.proj(out.permute(0, 2, 1, 3).reshape(B, N, -1))


class ClassAttention(TalkingHeadAttention):
    """Queries of the class token only. Official: keys and values of the raw patch
    tokens, talking heads, no mask; timm: q / k / v of the normalised [cls, patches]."""

    def __init__(self, cfg: CaiTConfig) -> None:
        nn.Module.__init__(self)
        self.cfg, inner = cfg, cfg.heads * cfg.head_dim
        if cfg.official:
            self.to_q = nn.Linear(cfg.dim, inner, bias=False)
            self.to_kv = nn.Linear(cfg.dim, 2 * inner, bias=False)
            self.mix_heads_pre_attn = nn.Parameter(torch.randn(cfg.heads, cfg.heads))
            self.mix_heads_post_attn = nn.Parameter(torch.randn(cfg.heads, cfg.heads))
        else:
            self.q = nn.Linear(cfg.dim, inner)
            self.k = nn.Linear(cfg.dim, inner)
            self.v = nn.Linear(cfg.dim, inner)
        self.proj = nn.Linear(inner, cfg.dim)
        if cfg.lsa:
            self.temperature = nn.Parameter(torch.full((cfg.heads,), cfg.head_dim ** -0.5))

    def forward(self, cls: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        B = cls.shape[0]
        if self.cfg.official:
            q, (k, v) = self.to_q(cls), self.to_kv(context).chunk(2, dim=-1)
        else:
            q, k, v = self.q(cls), self.k(context), self.v(context)
        dots = self.scores(self.split(q), self.split(k))  # (B, H, 1, N)
        if self.cfg.official:
            attn = self.mix(self.mix(dots, pre=True).softmax(dim=-1), pre=False)
        else:
            if self.cfg.lsa:  # the class token is its own first key
                dots = dots.clone()
                dots[..., 0] = float("-inf")
            attn = dots.softmax(dim=-1)
        out = torch.einsum("bhij,bhjd->bhid", attn, self.split(v))
        return self.proj(out.permute(0, 2, 1, 3).reshape(B, 1, -1))


class LayerScaleBlock(nn.Module):
    def __init__(self, cfg: CaiTConfig, depth: int, attention: type[nn.Module]) -> None:
        super().__init__()
        init = official_layer_scale(depth) if cfg.init_values is None else cfg.init_values
        self.official = cfg.official
        self.norm1 = nn.LayerNorm(cfg.dim, eps=cfg.eps)
        self.attn = attention(cfg)
        self.gamma_1 = nn.Parameter(torch.full((cfg.dim,), init))
        self.norm2 = nn.LayerNorm(cfg.dim, eps=cfg.eps)
        self.mlp = Mlp(cfg)
        self.gamma_2 = nn.Parameter(torch.full((cfg.dim,), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.gamma_1 * self.attn(self.norm1(x))
        return x + self.gamma_2 * self.mlp(self.norm2(x))


class ClassBlock(LayerScaleBlock):
    def forward(self, cls: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if self.official:
            cls = cls + self.gamma_1 * self.attn(self.norm1(cls), patches)
        else:
            u = self.norm1(torch.cat([cls, patches], dim=1))
            cls = cls + self.gamma_1 * self.attn(u[:, :1], u)
        return cls + self.gamma_2 * self.mlp(self.norm2(cls))


class CaiT(nn.Module):
    def __init__(self, cfg: CaiTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        embed = ShiftedPatchTokenization if cfg.spt else PatchEmbed
        self.patch_embed = embed(cfg.in_chans, cfg.dim, cfg.patch)
        self.pos_embed = nn.Parameter(torch.zeros(1, (cfg.image // cfg.patch) ** 2, cfg.dim))
        self.blocks = nn.ModuleList(LayerScaleBlock(cfg, i + 1, TalkingHeadAttention) for i in range(cfg.depth))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.add_module(cfg.cls_name, nn.ModuleList(ClassBlock(cfg, i + 1, ClassAttention)
                                                    for i in range(cfg.cls_depth)))
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.eps)
        self.head = nn.Linear(cfg.dim, cfg.classes)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(img) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        for block in getattr(self, self.cfg.cls_name):
            cls = block(cls, x)
        return self.head(self.norm(cls)[:, 0])
