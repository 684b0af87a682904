"""BinaryViT's binary forms as ONNX, in eval semantics (Le & Li 2023; official code
Phuoc-Hoan-Le/BinaryViT transformer/modeling_qvit_extra_res_pyramid.py and utils_quant.py):

* binary weights are folded at export to +-1 times their per-output-channel scale
  (linear rows centred, convs not), and the BatchNorm that directly follows each binary
  linear or conv is folded into that scale and a bias, as is RPReLU's input shift;
* binary activations are ONNX Sign (Sign(0) = 0, like torch.sign);
* binary attention signs q, k, v and quantizes the softmax as round(p / alpha)
  .clamp(0, 1) * alpha (Round is half-to-even in both ONNX and torch).

A binary linear unit (BLU) at prefix P is RPReLU(BN(BinLinear(x + P.move)) + shortcut(x)),
with RPReLU(y) = PReLU(y - shift_in, slope) + shift_out.
"""
from __future__ import annotations

import numpy as np

from vitgraph.ir import Node, TensorType

from ._onnx_graph import binary_conv, binary_linear
from ._onnx_lower import FOLDED, Lowering, attention_dims


def rprelu(L: Lowering, y: str, prefix: str, out: str | None = None) -> str:
    """PReLU(y, P.slope) + P.shift_out, for a y whose bias already subtracted P.shift_in.
    PReLU is written where(y > 0, y, y * slope), as in torch: onnxruntime has no float64
    PRelu kernel, and one graph for both dtypes lets the float64 parity tests vouch for
    the float32 model."""
    g = L.g
    negative = g.mul(y, g.weight(f"{prefix}.slope", L.w[f"{prefix}.slope"]))
    y = g.op("Where", g.op("Greater", y, g.scalar(0.0)), y, negative)
    return g.add(y, g.weight(f"{prefix}.shift_out", L.w[f"{prefix}.shift_out"]), out=out)


def binary_matmul(L: Lowering, h: str, name: str, weight: np.ndarray, bias: np.ndarray | None,
                  norm: str, shift_in: str, out: str | None = None) -> str:
    """h @ W^T + bias, then BatchNorm `norm` (eps 1e-5) and - shift_in, all folded into one
    weight W * s (per output row) and one bias (bias * s + t - shift_in)."""
    scale, shift = L.w.batchnorm(norm, 1e-5)
    folded_bias = (shift if bias is None else bias * scale + shift) - L.w[shift_in]
    weight = weight * scale.reshape((-1,) + (1,) * (weight.ndim - 1))
    return L.linear(h, f"{name}.weight{FOLDED}", weight, f"{name}.bias{FOLDED}", folded_bias, out)


def blu(L: Lowering, prefix: str, x: str, shortcut: str, binary: frozenset[str], out: str | None = None) -> str:
    """RPReLU(BN(BinLinear(x + move)) + shortcut)."""
    g = L.g
    with g.scope(prefix.rsplit(".", 1)[-1]):
        h = g.add(x, g.weight(f"{prefix}.move", L.w[f"{prefix}.move"]))
        if "activations" in binary:
            h = g.op("Sign", h)
        weight = L.w[f"{prefix}.weight"]
        if "weights" in binary:
            weight = binary_linear(weight)
        y = binary_matmul(L, h, prefix, weight, L.w.get(f"{prefix}.bias"), f"{prefix}.norm", f"{prefix}.act.shift_in")
        return rprelu(L, g.add(y, shortcut), f"{prefix}.act", out)


def _upsample(L: Lowering, t: str, grid: tuple[int, int], r: int, dim: int) -> str:
    """Nearest upsampling of reduced-grid tokens (B, gh/r * gw/r, D) to (B, gh * gw, D)."""
    g = L.g
    gh, gw = grid
    t = g.reshape(t, [0, gh // r, 1, gw // r, 1, dim])                           # (B, gh/r, 1, gw/r, 1, D)
    t = g.op("Expand", t, g.const([1, 1, r, 1, r, 1]))                          # (B, gh/r, r, gw/r, r, D)
    return g.reshape(t, [0, gh * gw, dim])                                      # (B, N, D)


def binary_attention(L: Lowering, node: Node, xs: list[str], ts: list[TensorType], out: str) -> str:
    g, x, t, b, name = L.g, xs[0], ts[0], node.binary, node.name
    n, d = t.tokens, t.dim
    heads, hd = attention_dims(node, d)
    r = node.attr("reduce")
    q = blu(L, f"{name}.q", x, x, b)
    if r > 1:  # AvgPool2d(r) of x on its grid, then the reduction BLU
        gh, gw = t.grid
        xr = g.reshape(x, [0, gh // r, r, gw // r, r, d])                        # (B, gh/r, r, gw/r, r, D)
        xr = g.reshape(g.op("ReduceMean", xr, axes=[2, 4], keepdims=0), [0, (gh // r) * (gw // r), d])  # (B, M, D)
        xr = blu(L, f"{name}.reduce", xr, xr, b)
        m = (gh // r) * (gw // r)
    else:
        xr, m = x, n
    k = blu(L, f"{name}.k", xr, xr, b)
    v = blu(L, f"{name}.v", xr, xr, b)
    qs, ks, vs = (g.add(val, g.weight(f"{name}.{p}_shift", L.w[f"{name}.{p}_shift"]))
                  for val, p in ((q, "q"), (k, "k"), (v, "v")))
    if "attention" in b:
        qs, ks, vs = g.op("Sign", qs), g.op("Sign", ks), g.op("Sign", vs)
    qh = g.transpose(g.reshape(qs, [0, n, heads, hd]), [0, 2, 1, 3])             # (B, H, N, hd)
    kh = g.transpose(g.reshape(ks, [0, m, heads, hd]), [0, 2, 3, 1])             # (B, H, hd, M)
    vh = g.transpose(g.reshape(vs, [0, m, heads, hd]), [0, 2, 1, 3])             # (B, H, M, hd)
    p = g.op("Softmax", g.mul(g.op("MatMul", qh, kh), g.scalar(hd ** -0.5)), axis=-1)  # (B, H, N, M)
    if "attention" in b:
        alpha = g.weight(f"{name}.alpha", L.w[f"{name}.alpha"])
        levels = g.op("Clip", g.op("Round", g.op("Div", p, alpha)), g.scalar(0.0), g.scalar(1.0))
        p = g.mul(levels, alpha)
    ctx = g.reshape(g.transpose(g.op("MatMul", p, vh), [0, 2, 1, 3]), [0, n, d])  # (B, N, D)
    if r > 1:  # the real-valued k and v, back on the full grid
        k, v = _upsample(L, k, t.grid, r, d), _upsample(L, v, t.grid, r, d)
    scale, shift = L.w.batchnorm(f"{name}.context_norm", 1e-5)
    ctx = g.add(g.mul(ctx, g.weight(f"{name}.context_norm.weight{FOLDED}", scale)),
                g.weight(f"{name}.context_norm.bias{FOLDED}", shift - L.w[f"{name}.context_act.shift_in"]))
    ctx = rprelu(L, g.op("Sum", ctx, q, k, v), f"{name}.context_act")
    return blu(L, f"{name}.proj", ctx, ctx, b, out)


def binary_mlp(L: Lowering, node: Node, xs: list[str], ts: list[TensorType], out: str) -> str:
    """fc1 with the channels-repeated shortcut, fc2 with the group-averaged shortcut."""
    g, x, t, b = L.g, xs[0], ts[0], node.binary
    n, d, ratio = t.tokens, t.dim, node.attr("hidden") // t.dim
    h = blu(L, f"{node.name}.fc1", x, g.op("Concat", *[x] * ratio, axis=-1), b)       # (B, N, H)
    groups = g.op("ReduceMean", g.reshape(h, [0, n, d, ratio]), axes=[3], keepdims=0)  # (B, N, D)
    return blu(L, f"{node.name}.fc2", h, groups, b, out)


def merge_downsample(L: Lowering, node: Node, xs: list[str], ts: list[TensorType], out: str) -> str:
    """BinaryViT's transition: BN -> 2x2 stride-2 conv (+ BN folded in). Binary: the conv
    reads sign(y + move) with binary weights; + AvgPool(2) shortcut with channels
    repeated; RPReLU. The conv is a matmul over channels-last 2x2 patches (p1, p2, c)."""
    g, t, b, name = L.g, ts[0], node.binary, node.name
    gh, gw = t.grid
    d, d2 = t.dim, node.attr("dim")
    half = (gh // 2, gw // 2)
    y = L.batchnorm(xs[0], f"{name}.norm0", 1e-5)
    weight = L.w[f"{name}.conv.weight"]                                           # (D2, D, 2, 2)
    if not b:
        scale, shift = L.w.batchnorm(f"{name}.norm", 1e-5)
        weight = (weight * scale[:, None, None, None]).transpose(0, 2, 3, 1)     # (D2, p1, p2, D)
        return L.linear(L.patches(y, half, 2, d, channels_last=True), f"{name}.conv.weight{FOLDED}", weight,
                        f"{name}.conv.bias{FOLDED}", shift, out)
    pooled = g.op("ReduceMean", g.reshape(y, [0, half[0], 2, half[1], 2, d]), axes=[2, 4], keepdims=0)
    pooled = g.reshape(pooled, [0, half[0] * half[1], d])                        # (B, N/4, D)
    shortcut = g.op("Concat", *[pooled] * (d2 // d), axis=-1)                    # (B, N/4, D2)
    h = g.add(y, g.weight(f"{name}.move", L.w[f"{name}.move"]))
    if "activations" in b:
        h = g.op("Sign", h)
    if "weights" in b:
        weight = binary_conv(weight)
    z = binary_matmul(L, L.patches(h, half, 2, d, channels_last=True), f"{name}.conv",
                      weight.transpose(0, 2, 3, 1), None, f"{name}.norm", f"{name}.act.shift_in")  # (B, N/4, D2)
    return rprelu(L, g.add(z, shortcut), f"{name}.act", out)
