"""T2T's op units (vitgraph/ops/t2t.py; "Vision Transformer for Small-Size Datasets", Lee,
Lee, Song 2021, official code aanna0701/SPT_LSA_ViT models/t2t.py) as standard ONNX:

* the soft split is data movement on the channels-last grid: (PatchShifting's Pad and
  crops,) Pad, then one strided Slice per kernel position, stacked last so that the
  features come out ordered (c, ki, kj) as nn.Unfold orders them;
* the token transformer's attention is MatMul / Softmax / MatMul on one head, its scale
  (LSA: its learned temperature) folded into q's rows of the qkv weight, plus v;
* the backbone's attention is the plain attention's lowering plus its input.
"""
from __future__ import annotations

import numpy as np

from vitgraph.ir import Node, TensorType
from vitgraph.ops import t2t

from ._onnx_lower import Lowering, _attention, onnx_lowering


@onnx_lowering(t2t.SoftSplit)
def _soft_split(L: Lowering, node: Node, xs: list[str], ts: list[TensorType], out: str) -> str:
    g, a = L.g, node.attrs
    c, h, w = t2t.split_input(node, ts[0])
    if ts[0].rank == 4:
        grid = g.transpose(xs[0], [0, 2, 3, 1])                                  # (B, H, W, C)
    else:
        grid = g.reshape(xs[0], [0, h, w, c])                                    # (B, H, W, C)
    if a.shift:
        grid = L.shifted(grid, h, w, c, 2 * a.shift)                             # (B, H, W, 5C)
        c *= t2t.SHIFT_VIEWS
    k, s, p = a.kernel, a.stride, a.padding
    if p:
        grid = g.op("Pad", grid, g.const([0, p, p, 0, 0, p, p, 0]))              # (B, H+2p, W+2p, C)
    oh, ow = node.out.grid
    windows = []
    for i in range(k):
        for j in range(k):  # kernel position (i, j) of every window
            ends = g.const([i + s * (oh - 1) + 1, j + s * (ow - 1) + 1])
            window = g.op("Slice", grid, g.const([i, j]), ends, g.const([1, 2]), g.const([s, s]))  # (B, oh, ow, C)
            windows.append(g.op("Unsqueeze", window, g.const([4])))                             # (B, oh, ow, C, 1)
    cols = g.op("Concat", *windows, axis=4)                                      # (B, oh, ow, C, k k)
    return g.reshape(cols, [0, oh * ow, c * k * k], out=out)                     # (B, L, C k k)


@onnx_lowering(t2t.TokenAttention)
def _token_attention(L: Lowering, node: Node, xs: list[str], ts: list[TensorType], out: str) -> str:
    g, a, name = L.g, node.attrs, node.name
    d = a.dim
    scale = L.w[f"{name}.temperature"][0] if a.lsa else a.scale
    qkv = L.scaled_linear(xs[0], f"{name}.qkv", np.concatenate([np.full(d, scale), np.ones(2 * d)]))  # (B, N, 3D)
    q, k, v = g.op_n("Split", [qkv, g.const([d] * 3)], 3, axis=-1)              # (B, N, D) each
    scores = g.op("MatMul", q, g.transpose(k, [0, 2, 1]))                       # (B, N, N)
    if a.lsa:  # a token's score with itself is masked out before the softmax
        mask = node.op.constants(node, ts)["offdiag"]
        scores = g.add(scores, g.const(np.where(mask, 0.0, -np.inf)[None], g.dtype))
    ctx = g.op("MatMul", g.op("Softmax", scores, axis=-1), v)                   # (B, N, D)
    return g.add(v, L.linear_key(ctx, f"{name}.proj"), out=out)


@onnx_lowering(t2t.T2TAttention)
def _t2t_attention(L: Lowering, node: Node, xs: list[str], ts: list[TensorType], out: str) -> str:
    return L.g.add(_attention(L, node, xs, ts, None), xs[0], out=out)


@onnx_lowering(t2t.Project)
def _project(L: Lowering, node: Node, xs: list[str], ts: list[TensorType], out: str) -> str:
    return L.linear_key(xs[0], node.name, out)
