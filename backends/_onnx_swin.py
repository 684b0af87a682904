"""ONNX lowerings of Swin's op units (Liu et al. 2021; vitgraph/ops/window_attention.py,
vitgraph/ops/patch_merge.py) in the standard form of backends/_onnx_lower.py.

Window attention: the cyclic shift and the window partition are one Gather of the tokens
by the op's `order` constant (and one by `inverse` after the windows), so the windows are
a (B, nW, n, D) reshape; the relative-position bias is a Gather of the table by the op's
index plus the op's mask, a constant subgraph on a weight that fold_constants turns into
one (nW, H, n, n) initializer; the scale (LSA: the learned temperature) is folded into
q's rows of the qkv weight. Patch merging is Reshape + Transpose (timm's order), then
LayerNorm and a MatMul."""
from __future__ import annotations

from vitgraph.ir import Node, TensorType
from vitgraph.ops import patch_merge
from vitgraph.ops import window_attention as W

from ._onnx_lower import Lowering, onnx_lowering


@onnx_lowering(W.WindowAttention)
def _window_attention(L: Lowering, node: Node, xs: list[str], ts: list[TensorType], out: str) -> str:
    g, a, t = L.g, node.attrs, ts[0]
    consts = node.op.constants(node, ts)
    nw, n, heads, hd, inner = W.window_count(a, t.grid), a.area, a.heads, a.head_dim, a.inner
    x = g.op("Gather", xs[0], g.const(consts["order"]), axis=1) if "order" in consts else xs[0]   # (B, N, D)
    q, k, v = g.op_n("Split", [L.scaled_qkv(x, node), g.const([inner] * 3)], 3, axis=-1)
    q = g.transpose(g.reshape(q, [0, nw, n, heads, hd]), [0, 1, 3, 2, 4])      # (B, nW, H, n, hd)
    k = g.transpose(g.reshape(k, [0, nw, n, heads, hd]), [0, 1, 3, 4, 2])      # (B, nW, H, hd, n)
    v = g.transpose(g.reshape(v, [0, nw, n, heads, hd]), [0, 1, 3, 2, 4])      # (B, nW, H, n, hd)
    key = f"{node.name}.relative_position_bias_table"
    table = g.weight(key, L.w[key])                                            # (rows, H)
    bias = g.op("Gather", table, g.const(consts["relative_position_index"].reshape(-1)), axis=0)  # (n n, H)
    bias = g.transpose(g.reshape(bias, [n, n, heads]), [2, 0, 1])              # (H, n, n)
    if "mask" in consts:
        bias = g.add(bias, g.const(consts["mask"], g.dtype))                   # (nW | 1, H, n, n)
    scores = g.add(g.op("MatMul", q, k), bias)                                 # (B, nW, H, n, n)
    ctx = g.op("MatMul", g.op("Softmax", scores, axis=-1), v)                  # (B, nW, H, n, hd)
    ctx = g.reshape(g.transpose(ctx, [0, 1, 3, 2, 4]), [0, t.tokens, inner])   # (B, N, I), window order
    if "inverse" in consts:
        ctx = g.op("Gather", ctx, g.const(consts["inverse"]), axis=1)          # (B, N, I)
    return L.linear_key(ctx, f"{node.name}.proj", out)


@onnx_lowering(patch_merge.PatchMerge)
def _patch_merge(L: Lowering, node: Node, xs: list[str], ts: list[TensorType], out: str) -> str:
    g, t = L.g, ts[0]
    gh, gw = t.grid
    x = g.reshape(xs[0], [0, gh // 2, 2, gw // 2, 2, t.dim])                    # (B, gh/2, dh, gw/2, dw, C)
    x = g.transpose(x, [0, 1, 3, 4, 2, 5])                                     # (B, gh/2, gw/2, dw, dh, C)
    x = g.reshape(x, [0, (gh // 2) * (gw // 2), 4 * t.dim])                    # (B, N/4, 4C): [x0, x1, x2, x3]
    x = L.layernorm(x, f"{node.name}.norm", node.attrs.eps)
    return L.linear_key(x, f"{node.name}.reduction", out)
