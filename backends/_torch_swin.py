"""The torch modules of Swin's op units (Liu et al. 2021; vitgraph/ops/window_attention.py,
vitgraph/ops/patch_merge.py), with timm's parameter names. Window attention reads its
op's constants (`relative_position_index`, `order`, `inverse`, `mask`) as the buffers
GraphModule registers on it."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vitgraph.ir import Node, TensorType
from vitgraph.ops import patch_merge
from vitgraph.ops import window_attention as W

from ._torch_layers import linear
from ._torch_registry import module_for


@module_for(W.WindowAttention)
class WindowAttention(nn.Module):
    """(Shifted) window attention: the tokens permuted into windows (`order`: the cyclic
    shift and the partition), per-window attention with the relative-position bias and
    the additive `mask` (shift regions, LSA's diagonal), the windows put back
    (`inverse`), the output projection."""

    def __init__(self, node: Node, ins: list[TensorType]) -> None:
        super().__init__()
        a, x = node.attrs, ins[0]
        self.heads, self.head_dim, self.area = a.heads, a.head_dim, a.area
        self.windows = W.window_count(a, x.grid)
        self.permutes, self.masked, self.lsa = W.permutes(a, x.grid), W.masked(a), a.lsa
        self.relative_position_bias_table = nn.Parameter(torch.empty(a.table_rows, a.heads))
        self.qkv = linear(x.dim, 3 * a.inner, bias=a.qkv_bias)
        self.proj = linear(a.inner, x.dim)
        if a.lsa:
            self.temperature = nn.Parameter(torch.empty(a.heads))

    def score_bias(self) -> Tensor:
        """(nW | 1, H, n, n): the relative-position bias of each head plus the mask."""
        bias = self.relative_position_bias_table[self.relative_position_index].permute(2, 0, 1)  # (H, n, n)
        return bias + self.mask if self.masked else bias

    def forward(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        if self.permutes:
            x = x[:, self.order]  # (B, N, D), window by window on the rolled grid
        qkv = self.qkv(x).reshape(b, self.windows, self.area, 3, self.heads, self.head_dim)
        q, k, v = qkv.permute(3, 0, 1, 4, 2, 5).unbind(0)  # (B, nW, H, n, hd) each
        scale = None
        if self.lsa:
            q = q * self.temperature.to(q.dtype).view(1, 1, -1, 1, 1)
            scale = 1.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=self.score_bias().to(q.dtype), scale=scale)
        out = out.transpose(2, 3).reshape(b, n, -1)  # (B, N, I), window order
        if self.permutes:
            out = out[:, self.inverse]
        return self.proj(out)


@module_for(patch_merge.PatchMerge)
class PatchMerging(nn.Module):
    """Swin's patch merging: 2x2 neighbours [x0, x1, x2, x3] -> LayerNorm(4C) -> Linear(4C, D)."""

    def __init__(self, node: Node, ins: list[TensorType]) -> None:
        super().__init__()
        x = ins[0]
        self.grid = x.grid
        self.norm = nn.LayerNorm(4 * x.dim, eps=node.attrs.eps)
        self.reduction = linear(4 * x.dim, node.attrs.dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        b, _, c = x.shape
        gh, gw = self.grid
        x = x.reshape(b, gh // 2, 2, gw // 2, 2, c).permute(0, 1, 3, 4, 2, 5)  # (B, gh/2, gw/2, dw, dh, C)
        return self.reduction(self.norm(x.reshape(b, -1, 4 * c)))  # (B, N/4, D)
