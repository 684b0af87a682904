"""The torch modules of T2T's op units (vitgraph/ops/t2t.py; "Vision Transformer for
Small-Size Datasets", Lee, Lee, Song 2021, official code aanna0701/SPT_LSA_ViT
models/t2t.py): the soft split, the token transformer's attention with its v shortcut,
the backbone attention that adds its input, and the projection."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vitgraph.ir import Node, TensorType
from vitgraph.ops import t2t

from ._torch_layers import Attention, diagonal_shifts, linear, to_grid
from ._torch_registry import module_for


@module_for(t2t.SoftSplit)
class SoftSplit(nn.Module):
    """nn.Unfold of the image or of the token grid (after PatchShifting when `shift`):
    (B, C, H, W) or (B, H*W, C) -> (B, L, C*k*k), features ordered (c, ki, kj)."""

    def __init__(self, node: Node, ins: list[TensorType]) -> None:
        super().__init__()
        a = node.attrs
        self.grid = ins[0].grid if ins[0].rank == 3 else None
        self.kernel, self.stride, self.padding, self.shift = a.kernel, a.stride, a.padding, a.shift

    def forward(self, x: Tensor) -> Tensor:
        if self.grid is not None:
            x = to_grid(x, self.grid)  # (B, C, gh, gw)
        if self.shift:
            x = diagonal_shifts(x, self.shift)  # (B, 5C, H, W)
        cols = F.unfold(x, self.kernel, padding=self.padding, stride=self.stride)  # (B, C k k, L)
        return cols.transpose(1, 2)


@module_for(t2t.TokenAttention)
class TokenAttention(nn.Module):
    """One head: v + proj(softmax(q kᵀ · scale) v), q, k, v of width D from the input's C;
    LSA: a learnable temperature in place of the scale and the diagonal masked out."""

    def __init__(self, node: Node, ins: list[TensorType]) -> None:
        super().__init__()
        a = node.attrs
        self.qkv = linear(ins[0].dim, 3 * a.dim, bias=a.qkv_bias)
        self.proj = linear(a.dim, a.dim)
        self.scale, self.lsa = a.scale, a.lsa
        if self.lsa:
            self.temperature = nn.Parameter(torch.empty(1))

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.qkv(x).unsqueeze(1).chunk(3, dim=-1)  # (B, 1, N, D) each
        if self.lsa:
            ctx = F.scaled_dot_product_attention(q * self.temperature.to(q.dtype), k, v, attn_mask=self.offdiag,
                                                 scale=1.0)
        else:
            ctx = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        return (v + self.proj(ctx)).squeeze(1)  # (B, N, D)


@module_for(t2t.T2TAttention)
class T2TAttention(Attention):
    """Multi-head self-attention (or LSA) plus its own input (the official shortcut)."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x) + x


@module_for(t2t.Project)
def project(node: Node, ins: list[TensorType]) -> nn.Module:
    return linear(ins[0].dim, node.attrs.dim)
