"""BinaryViT's binary forms as ONNX, in eval semantics and the standard form (Le & Li 2023;
official code Phuoc-Hoan-Le/BinaryViT transformer/modeling_qvit_extra_res_pyramid.py and
utils_quant.py):

* a binary weight is a constant subgraph on the stored weight: Sign of the row-centred
  W (convs: not centred) times the per-output-channel mean |W| (the fold_constants pass
  evaluates it; the pack passes of a binary deployment store it at 1 bit);
* binary activations are ONNX Sign (Sign(0) = 0, like torch.sign);
* binary attention signs q, k, v and quantizes the softmax as round(p / alpha)
  .clamp(0, 1) * alpha (Round is half-to-even in both ONNX and torch);
* a binary linear unit (BLU) at prefix P is RPReLU(BN(BinLinear(x + P.move)) + shortcut(x)),
  with RPReLU(y) = PReLU(y - shift_in, slope) + shift_out: the BatchNorm is a per-channel
  Mul and Add, shift_in a Sub before the shortcut joins, which the fold_affine pass folds
  into the binary weight's scale and one bias. PReLU is written where(y > 0, y, y * slope), as in torch:
  onnxruntime has no float64 PRelu kernel, and one graph for both dtypes lets the float64
  parity tests vouch for the float32 model.
"""
from __future__ import annotations

from vitgraph.ir import Node, TensorType
from vitgraph.ops import BATCHNORM_EPS
from vitgraph.ops import downsample

from ._onnx_lower import Lowering, onnx_lowering


def binary_weight(L: Lowering, key: str, centred: bool) -> str:
    """The (in, out) value a MatMul reads of BinaryViT's binarized (out, in[, kh, kw])
    weight: sign(W - rowmean(W)) (convs: sign(W)) times the per-row mean |W|."""
    g, w = L.g, L.w[key]
    axes = list(range(1, w.ndim))
    stored = g.weight(key, w)
    centre = g.op("Sub", stored, g.op("ReduceMean", stored, axes=axes, keepdims=1)) if centred else stored
    scale = g.op("ReduceMean", g.op("Abs", stored), axes=axes, keepdims=1)          # (out, 1[, 1, 1])
    binary = g.mul(g.op("Sign", centre), scale)
    if w.ndim > 2:
        binary = g.reshape(binary, [w.shape[0], -1])                                # (out, in kh kw)
    return g.transpose(binary, [1, 0])


def shift_in(L: Lowering, y: str, prefix: str) -> str:
    """RPReLU's input shift, y - shift_in: subtracted before the residual joins (addition
    commutes), so that the fold_affine pass can fold it into the bias before it."""
    return L.g.op("Sub", y, L.g.weight(f"{prefix}.shift_in", L.w[f"{prefix}.shift_in"]))


def rprelu(L: Lowering, y: str, prefix: str, out: str | None = None) -> str:
    """PReLU(y, slope) + shift_out, for a y from which shift_in was already subtracted."""
    g = L.g
    negative = g.mul(y, g.weight(f"{prefix}.slope", L.w[f"{prefix}.slope"]))
    y = g.op("Where", g.op("Greater", y, g.scalar(0.0)), y, negative)
    return g.add(y, g.weight(f"{prefix}.shift_out", L.w[f"{prefix}.shift_out"]), out=out)


def blu(L: Lowering, prefix: str, x: str, shortcut: str, binary: frozenset[str], out: str | None = None) -> str:
    """RPReLU(BN(BinLinear(x + move)) + shortcut)."""
    g = L.g
    with g.scope(prefix.rsplit(".", 1)[-1]):
        h = g.add(x, g.weight(f"{prefix}.move", L.w[f"{prefix}.move"]))
        if "activations" in binary:
            h = g.op("Sign", h)
        key = f"{prefix}.weight"
        w = binary_weight(L, key, centred=True) if "weights" in binary else L.matrix(key)
        bias = L.w.get(f"{prefix}.bias")
        y = L.linear(h, w, None if bias is None else g.weight(f"{prefix}.bias", bias))
        y = shift_in(L, L.batchnorm(y, f"{prefix}.norm", BATCHNORM_EPS), f"{prefix}.act")
        return rprelu(L, g.add(y, shortcut), f"{prefix}.act", out)


def _upsample(L: Lowering, t: str, grid: tuple[int, int], r: int, dim: int) -> str:
    """Nearest upsampling of reduced-grid tokens (B, gh/r * gw/r, D) to (B, gh * gw, D)."""
    g = L.g
    gh, gw = grid
    t = g.reshape(t, [0, gh // r, 1, gw // r, 1, dim])                           # (B, gh/r, 1, gw/r, 1, D)
    t = g.op("Expand", t, g.const([1, 1, r, 1, r, 1]))                          # (B, gh/r, r, gw/r, r, D)
    return g.reshape(t, [0, gh * gw, dim])                                      # (B, N, D)


def binary_attention(L: Lowering, node: Node, xs: list[str], ts: list[TensorType], out: str) -> str:
    g, x, t, b, name, a = L.g, xs[0], ts[0], node.binary, node.name, node.attrs
    n, d = t.tokens, t.dim
    heads, hd, r = a.heads, a.head_dim, a.reduce
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
    ctx = shift_in(L, L.batchnorm(ctx, f"{name}.context_norm", BATCHNORM_EPS), f"{name}.context_act")
    ctx = rprelu(L, g.op("Sum", ctx, q, k, v), f"{name}.context_act")
    return blu(L, f"{name}.proj", ctx, ctx, b, out)


def binary_mlp(L: Lowering, node: Node, xs: list[str], ts: list[TensorType], out: str) -> str:
    """fc1 with the channels-repeated shortcut, fc2 with the group-averaged shortcut."""
    g, x, t, b = L.g, xs[0], ts[0], node.binary
    n, d, ratio = t.tokens, t.dim, node.attrs.hidden // t.dim
    h = blu(L, f"{node.name}.fc1", x, g.op("Concat", *[x] * ratio, axis=-1), b)       # (B, N, H)
    groups = g.op("ReduceMean", g.reshape(h, [0, n, d, ratio]), axes=[3], keepdims=0)  # (B, N, D)
    return blu(L, f"{node.name}.fc2", h, groups, b, out)


@onnx_lowering(downsample.Merge)
def merge_downsample(L: Lowering, node: Node, xs: list[str], ts: list[TensorType], out: str) -> str:
    """BinaryViT's transition: BN -> 2x2 stride-2 conv -> BN. Binary: the conv reads
    sign(y + move) with binary weights; + AvgPool(2) shortcut with channels repeated;
    RPReLU. The conv is a matmul over channels-last 2x2 patches (p1, p2, c)."""
    g, t, b, name, eps = L.g, ts[0], node.binary, node.name, node.attrs.eps
    gh, gw = t.grid
    d, d2 = t.dim, node.attrs.dim
    half = (gh // 2, gw // 2)
    y = L.batchnorm(xs[0], f"{name}.norm0", eps)
    key = f"{name}.conv.weight"
    if not b:
        z = L.linear(L.patches(y, half, 2, d, channels_last=True), _channels_last(L, L.matrix(key), d, d2), None)
        return L.batchnorm(z, f"{name}.norm", eps, out)
    pooled = g.op("ReduceMean", g.reshape(y, [0, half[0], 2, half[1], 2, d]), axes=[2, 4], keepdims=0)
    pooled = g.reshape(pooled, [0, half[0] * half[1], d])                        # (B, N/4, D)
    shortcut = g.op("Concat", *[pooled] * (d2 // d), axis=-1)                    # (B, N/4, D2)
    h = g.add(y, g.weight(f"{name}.move", L.w[f"{name}.move"]))
    if "activations" in b:
        h = g.op("Sign", h)
    w = binary_weight(L, key, centred=False) if "weights" in b else L.matrix(key)  # (D kh kw, D2): c, p1, p2
    w = _channels_last(L, w, d, d2)
    z = L.linear(L.patches(h, half, 2, d, channels_last=True), w, None)         # (B, N/4, D2)
    z = shift_in(L, L.batchnorm(z, f"{name}.norm", eps), f"{name}.act")
    return rprelu(L, g.add(z, shortcut), f"{name}.act", out)


def _channels_last(L: Lowering, w: str, d: int, d2: int) -> str:
    """A conv matrix's rows (c, p1, p2) reordered to the channels-last patches' (p1, p2, c)."""
    g = L.g
    w = g.reshape(w, [d, 2, 2, d2])                                              # (c, p1, p2, D2)
    return g.reshape(g.transpose(w, [1, 2, 0, 3]), [4 * d, d2])                  # (p1 p2 c, D2)
