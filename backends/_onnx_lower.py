"""IR -> ONNX nodes in one standard form: one lowering per op unit (vitgraph/ops/),
registered with `onnx_lowering`, following THE CONTRACT in eval mode. The full-precision
forms are here, the binary ones in backends/_onnx_binary.py. What makes the model fast
(folding constants, BatchNorms and shifts into the linear layers before them,
onnxruntime's fused kernels) is done afterwards by the passes in backends/onnx_passes/.

Papers: DeiT (Touvron et al. 2020) for patch embedding, tokens, attention, MLP and the
distillation head; "Vision Transformer for Small-Size Datasets" (Lee, Lee, Song 2021)
for Shifted Patch Tokenization and Locality Self-Attention; PiT (Heo et al. 2021) for
the depthwise-conv pooling; BinaryViT (Le & Li 2023) for pool branches, affine residuals
and the merging transition.

The standard form, chosen for exact shape inference and for the passes to read:
  * tokens stay (B, N, D); every Reshape spells out all dims but the batch (0 = keep),
    so shape inference recovers the IR's shapes with a symbolic batch;
  * initializers are named by the state-dict keys and hold the state dict's values;
    what an op derives from its own parameters in eval mode (a BatchNorm's scale and
    shift, LSA's temperature in q's rows) is an initializer named `key:folded`, and what
    is derived from them by ONNX ops on constants (transposes, binarized weights) is a
    constant subgraph that the fold_constants pass evaluates;
  * a linear layer is MatMul(x, Transpose(W)) [+ Add(b)]; patch embeddings, SPT and the
    merging conv are Reshape + Transpose + MatMul (a non-overlapping conv is a matmul
    over patches); grids are channels-last;
  * average pooling with stride 1 and zero padding (pool branches) is a banded matrix
    applied along each grid axis; stride-r pooling is a Reshape + ReduceMean;
  * attention is MatMul / Softmax / MatMul; GELU is the exact erf form.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from vitgraph.ir import Graph, Node, TensorType
from vitgraph.ops import OpDef
from vitgraph.ops import attention as A
from vitgraph.ops import (add, affine, downsample, drop_path, head, input, mlp, norm, patchify, pool_branches,
                          pos_embed, shift_tokenize, tokens)
from vitgraph.ops import slice as slice_op

from ._onnx_graph import OnnxGraph, Weights

FOLDED = ":folded"  # suffix of initializers into which the export folded other parameters

Lower = Callable[["Lowering", Node, list[str], list[TensorType], str], str]
ONNX_LOWERINGS: dict[type[OpDef], Lower] = {}


def onnx_lowering(op: type[OpDef]) -> Callable[[Lower], Lower]:
    def register(fn: Lower) -> Lower:
        if op in ONNX_LOWERINGS:
            raise ValueError(f"ONNX backend: {op.name} has two lowerings")
        ONNX_LOWERINGS[op] = fn
        return fn
    return register


def value_name(node: Node) -> str:
    """The ONNX value holding an IR node's output."""
    if node.op is input.Input:
        return "input"
    if node.op is head.Head:
        return "logits"
    return f"{node.name}/out"


@dataclass
class Lowering:
    graph: Graph
    g: OnnxGraph
    w: Weights
    values: dict[int, str] = field(default_factory=dict)       # IR node id -> ONNX value

    # -- linear layers ------------------------------------------------------------------
    def matrix(self, name: str, weight: np.ndarray | None = None) -> str:
        """The (in, out) value a MatMul reads of an (out, in[, kh, kw]) weight: the state
        dict's tensor `name` (or `weight`, a derived one) reshaped and transposed."""
        weight = self.w[name] if weight is None else weight
        w = self.g.weight(name, weight)
        if weight.ndim > 2:
            w = self.g.reshape(w, [weight.shape[0], int(np.prod(weight.shape[1:]))])
        return self.g.transpose(w, [1, 0])

    def linear(self, x: str, w: str, bias: str | None, out: str | None = None) -> str:
        """x @ w [+ bias] over the last dim, `w` an (in, out) value."""
        if bias is None:
            return self.g.op("MatMul", x, w, out=out)
        return self.g.add(self.g.op("MatMul", x, w), bias, out=out)

    def linear_key(self, x: str, prefix: str, out: str | None = None) -> str:
        """A linear layer whose parameters are used as stored."""
        bias = self.w.get(f"{prefix}.bias")
        b = None if bias is None else self.g.weight(f"{prefix}.bias", bias)
        return self.linear(x, self.matrix(f"{prefix}.weight"), b, out)

    def score_scale(self, node: Node) -> np.ndarray:
        """The per-query-row score scale of an attention node: 1/sqrt(head_dim), or LSA's
        learned per-head temperature."""
        a = node.attrs
        return np.repeat(self.w[f"{node.name}.temperature"], a.head_dim) if a.lsa else np.full(a.inner, a.head_dim ** -0.5)

    def scaled_linear(self, x: str, prefix: str, rows: np.ndarray) -> str:
        """A linear layer whose output rows are scaled (the score scale in the query rows)."""
        bias = self.w.get(f"{prefix}.bias")
        b = None if bias is None else self.g.weight(f"{prefix}.bias{FOLDED}", bias * rows)
        return self.linear(x, self.matrix(f"{prefix}.weight{FOLDED}", self.w[f"{prefix}.weight"] * rows[:, None]), b)

    def scaled_qkv(self, x: str, node: Node) -> str:
        """An attention node's fused qkv linear with the score scale folded into q's rows. -> (..., 3I)."""
        return self.scaled_linear(x, f"{node.name}.qkv",
                                  np.concatenate([self.score_scale(node), np.ones(2 * node.attrs.inner)]))

    def layernorm(self, x: str, prefix: str, eps: float, out: str | None = None) -> str:
        return self.g.op("LayerNormalization", x, self.g.weight(f"{prefix}.weight", self.w[f"{prefix}.weight"]),
                         self.g.weight(f"{prefix}.bias", self.w[f"{prefix}.bias"]), axis=-1, epsilon=eps,
                         out=out)

    def batchnorm(self, x: str, prefix: str, eps: float, out: str | None = None) -> str:
        """Eval BatchNorm over the last dim as one per-channel Mul and Add."""
        scale, shift = self.w.batchnorm(prefix, eps)
        y = self.g.mul(x, self.g.weight(f"{prefix}.weight{FOLDED}", scale))
        return self.g.add(y, self.g.weight(f"{prefix}.bias{FOLDED}", shift), out=out)

    def gelu(self, x: str, out: str | None = None) -> str:
        """Exact (erf) GELU: 0.5 x (1 + erf(x / sqrt 2))."""
        e = self.g.op("Erf", self.g.op("Div", x, self.g.scalar(math.sqrt(2.0))))
        h = self.g.mul(x, self.g.add(e, self.g.scalar(1.0)))
        return self.g.mul(h, self.g.scalar(0.5), out=out)

    # -- token layouts --------------------------------------------------------------------
    def split_prefix(self, x: str, t: TensorType) -> tuple[str | None, str]:
        """(B, P + N, D) -> the P prefix tokens (None if P = 0) and the N patch tokens."""
        if not t.prefix:
            return None, x
        g = self.g
        return (g.slice(x, [0], [t.prefix], [1]), g.slice(x, [t.prefix], [t.tokens], [1]))

    def patches(self, x: str, grid: tuple[int, int], patch: int, channels: int, channels_last: bool) -> str:
        """Cut a grid into non-overlapping patch x patch patches, one token each, flattened
        (c, p1, p2) from (B, C, H, W) or (p1, p2, c) from channels-last (B, H*W, C) or
        (B, H, W, C). -> (B, gh*gw, C*p*p) with (gh, gw) = grid."""
        gh, gw = grid
        p, c = patch, channels
        if channels_last:
            x = self.g.reshape(x, [0, gh, p, gw, p, c])                          # (B, gh, p1, gw, p2, C)
            x = self.g.transpose(x, [0, 1, 3, 2, 4, 5])                          # (B, gh, gw, p1, p2, C)
        else:
            x = self.g.reshape(x, [0, c, gh, p, gw, p])                          # (B, C, gh, p1, gw, p2)
            x = self.g.transpose(x, [0, 2, 4, 1, 3, 5])                          # (B, gh, gw, C, p1, p2)
        return self.g.reshape(x, [0, gh * gw, c * p * p])                        # (B, N, C p p)

    def shifted(self, x: str, height: int, width: int, channels: int, patch: int) -> str:
        """SPT's input on a channels-last grid (B, H, W, C): x and its four diagonal
        half-patch shifts, zero padded, concatenated on channels in the order
        [x, left-up, right-up, left-down, right-down]. -> (B, H, W, 5C)."""
        s = patch // 2
        g = self.g
        xp = g.op("Pad", x, g.const([0, s, s, 0, 0, s, s, 0]))                   # (B, H+2s, W+2s, C)
        rows = {"u": (0, height), "b": (2 * s, height + 2 * s)}
        cols = {"l": (0, width), "r": (2 * s, width + 2 * s)}
        views = [g.slice(xp, [rows[r][0], cols[c][0]], [rows[r][1], cols[c][1]], [1, 2])
                 for r, c in (("u", "l"), ("u", "r"), ("b", "l"), ("b", "r"))]
        return g.op("Concat", x, *views, axis=-1)                                # (B, H, W, 5C)

    def spt(self, x: str, height: int, width: int, channels: int, patch: int, prefix: str, eps: float,
            out: str | None) -> str:
        """Shifted Patch Tokenization of a channels-last grid: shifts, patches (p1, p2, c),
        LayerNorm(5Cp^2), Linear. -> (B, H/p * W/p, D)."""
        x5 = self.shifted(x, height, width, channels, patch)
        tokens = self.patches(x5, (height // patch, width // patch), patch, 5 * channels, channels_last=True)
        return self.linear_key(self.layernorm(tokens, f"{prefix}.norm", eps), f"{prefix}.proj", out=out)


# -- the ops ----------------------------------------------------------------------------------
@onnx_lowering(input.Input)
def _input(L: Lowering, node: Node, xs: list[str], ts: list[TensorType], out: str) -> str:
    return out  # the graph input itself


@onnx_lowering(patchify.Patchify)
def _patchify(L: Lowering, node: Node, xs: list[str], ts: list[TensorType], out: str) -> str:
    """p x p stride-p conv (a matmul over patches) -> tokens -> norm. A binary stem signs
    its input and uses per-output-channel mean |W| times sign(W)."""
    from ._onnx_binary import binary_weight

    a, c, prefix = node.attrs, int(ts[0].shape[1]), node.name
    x = L.g.op("Sign", xs[0]) if "activations" in node.binary else xs[0]
    tokens = L.patches(x, node.out.grid, a.patch, c, channels_last=False)           # (B, N, C p p)
    key = f"{prefix}.proj.weight"
    w = binary_weight(L, key, centred=False) if "weights" in node.binary else L.matrix(key)
    bias = L.w.get(f"{prefix}.proj.bias")
    b = None if bias is None else L.g.weight(f"{prefix}.proj.bias", bias)
    y = L.linear(tokens, w, b, None if a.norm != "none" else out)                 # (B, N, D)
    if a.norm == "layer":
        return L.layernorm(y, f"{prefix}.norm", a.eps, out)
    if a.norm == "batch":
        return L.batchnorm(y, f"{prefix}.norm", a.eps, out)
    return y


@onnx_lowering(shift_tokenize.ShiftTokenize)
def _shift_tokenize(L: Lowering, node: Node, xs: list[str], ts: list[TensorType], out: str) -> str:
    _, c, h, w = ts[0].shape
    x = L.g.transpose(xs[0], [0, 2, 3, 1])                                     # (B, H, W, C)
    return L.spt(x, int(h), int(w), int(c), node.attrs.patch, node.name, node.attrs.eps, out)


@onnx_lowering(tokens.Tokens)
def _tokens(L: Lowering, node: Node, xs: list[str], ts: list[TensorType], out: str) -> str:
    """[cls, dist, patches] as Pad(patches) + [cls, dist, 0...]: no batch-sized Expand."""
    g, k, n = L.g, len(node.attrs.tokens), ts[0].tokens
    extra = [g.weight(key, L.w[key]) for key in (tokens.TOKEN_KEYS[t] for t in node.attrs.tokens)]
    rows = extra[0] if k == 1 else g.op("Concat", *extra, axis=1)               # (1, k, D)
    rows = g.op("Pad", rows, g.const([0, 0, 0, 0, n, 0]))                       # (1, k + N, D), folded
    padded = g.op("Pad", xs[0], g.const([0, k, 0, 0, 0, 0]))                   # (B, k + N, D)
    return g.add(padded, rows, out=out)


@onnx_lowering(pos_embed.PosEmbed)
def _pos_embed(L: Lowering, node: Node, xs: list[str], ts: list[TensorType], out: str) -> str:
    if node.attrs.kind == "learned":
        pos = L.g.weight(node.name, L.w[node.name])                              # (1, N, D)
    else:
        pos = L.g.const(node.op.constants(node, ts)["table"], L.g.dtype)
    return L.g.add(xs[0], pos, out=out)


@onnx_lowering(norm.Norm)
def _norm(L: Lowering, node: Node, xs: list[str], ts: list[TensorType], out: str) -> str:
    if node.attrs.kind == "layer":
        return L.layernorm(xs[0], node.name, node.attrs.eps, out)
    return L.batchnorm(xs[0], node.name, node.attrs.eps, out)


@onnx_lowering(A.Attention)
def _attention(L: Lowering, node: Node, xs: list[str], ts: list[TensorType], out: str) -> str:
    """Multi-head attention; queries of only the first `queries` tokens when the pass left
    the rest dead (or the class tokens' of class attention). The score scale (LSA: the
    learned per-head temperature) is folded into the query rows of the weight; LSA's
    diagonal mask is an additive -inf constant, or, with a diagonal value, a Mul by the
    off-diagonal ones and an Add of the value; talking heads mix the scores before the
    softmax and the probabilities after it."""
    from ._onnx_binary import binary_attention

    if node.binary:
        return binary_attention(L, node, xs, ts, out)
    g, a = L.g, node.attrs
    m, n, hd, inner = A.query_tokens(node, ts[0]), node.op.kv_tokens(node, ts[0]), a.head_dim, a.inner
    q, k, v = _projections(L, node, xs, ts)                                   # (B, M, I), (B, N, I) x2
    q = g.transpose(g.reshape(q, [0, m, a.heads, hd]), [0, 2, 1, 3])           # (B, H, M, hd)
    k = g.transpose(g.reshape(k, [0, n, a.heads, hd]), [0, 2, 3, 1])           # (B, H, hd, N)
    v = g.transpose(g.reshape(v, [0, n, a.heads, hd]), [0, 2, 1, 3])           # (B, H, N, hd)
    scores = g.op("MatMul", q, k)                                              # (B, H, M, N)
    offdiag = node.op.constants(node, ts).get("offdiag")
    if offdiag is not None and a.diagonal is None:  # a token's score with itself is masked out before the softmax
        scores = g.add(scores, g.const(np.where(offdiag, 0.0, -np.inf)[None, None], g.dtype))
    elif offdiag is not None:  # ... or set to the diagonal value
        scores = g.mul(scores, g.const(offdiag[None, None], g.dtype))
        scores = g.add(scores, g.const(np.where(offdiag, 0.0, a.diagonal)[None, None], g.dtype))
    probs = _mix_heads(L, node, g.op("Softmax", _mix_heads(L, node, scores, 0), axis=-1), 1)
    ctx = g.op("MatMul", probs, v)                                             # (B, H, M, hd)
    ctx = g.reshape(g.transpose(ctx, [0, 2, 1, 3]), [0, m, inner])             # (B, M, I)
    return L.linear_key(ctx, f"{node.name}.proj", out)


def _projections(L: Lowering, node: Node, xs: list[str], ts: list[TensorType]) -> tuple[str, str, str]:
    """Scaled queries of the first M tokens, keys and values: one fused qkv linear, or
    separate q / kv or q / k / v linears (class attention: keys and values of the raw
    patch tokens of the block's stream, its second input, where it says so)."""
    g, a, t, name = L.g, node.attrs, ts[0], node.name
    m, inner, scale = A.query_tokens(node, t), a.inner, L.score_scale(node)
    if a.layout == "qkv":
        qkv = L.scaled_qkv(xs[0], node)                                          # (B, N, 3I)
        q, k, v = g.op_n("Split", [qkv, g.const([inner] * 3)], 3, axis=-1)
        return (g.slice(q, [0], [m], [1]) if m < t.tokens else q), k, v
    xq = xs[0] if m == t.tokens else g.slice(xs[0], [0], [m], [1])             # (B, M, D)
    start = node.op.context_start(node, t)
    context = xs[0] if start is None else g.slice(xs[1], [start], [t.tokens], [1])  # (B, N, D)
    if a.layout == "q-kv":
        k, v = g.op_n("Split", [L.linear_key(context, f"{name}.to_kv"), g.const([inner] * 2)], 2, axis=-1)
        return L.scaled_linear(xq, f"{name}.to_q", scale), k, v
    return (L.scaled_linear(xq, f"{name}.q", scale), L.linear_key(context, f"{name}.k"),
            L.linear_key(context, f"{name}.v"))


def _mix_heads(L: Lowering, node: Node, s: str, which: int) -> str:
    """Talking heads on (B, H, M, N) (none: s itself), over the heads moved last: timm's
    Linear(h, h), or the small-datasets code's matrix M (out[g] = sum_h s[h] M[h, g])."""
    kind = node.attrs.talking_heads
    if kind is None:
        return s
    key = f"{node.name}.{A.TALKING_HEADS[kind][which]}"
    last = L.g.transpose(s, [0, 2, 3, 1])                                      # (B, M, N, H)
    if kind == "linear":
        mixed = L.linear_key(last, key)
    else:
        mixed = L.g.op("MatMul", last, L.g.weight(key, L.w[key]))
    return L.g.transpose(mixed, [0, 3, 1, 2])                                  # (B, H, M, N)


@onnx_lowering(mlp.Mlp)
def _mlp(L: Lowering, node: Node, xs: list[str], ts: list[TensorType], out: str) -> str:
    from ._onnx_binary import binary_mlp

    if node.binary:
        return binary_mlp(L, node, xs, ts, out)
    return L.linear_key(L.gelu(L.linear_key(xs[0], f"{node.name}.fc1")), f"{node.name}.fc2", out)


def _band(size: int, kernel: int) -> np.ndarray:
    """(size, size) matrix of stride-1 average pooling with zero padding kernel // 2 that
    counts the padding (count_include_pad): out[i] = sum_{|j - i| <= k//2} x[j] / k."""
    i = np.arange(size)
    return (np.abs(i[:, None] - i[None, :]) <= kernel // 2) / kernel


@onnx_lowering(pool_branches.PoolBranches)
def _pool_branches(L: Lowering, node: Node, xs: list[str], ts: list[TensorType], out: str) -> str:
    """sum_i AvgPool_(kh,kw)(x) * scale_i + shift_i on the grid, each pooling as banded
    matmuls along H (on (B, gh, gw*D)) and along W (on (B, gh, gw, D))."""
    g, t = L.g, ts[0]
    gh, gw = t.grid
    d = t.dim
    branches, shift = [], np.zeros(d)
    for i, (kh, kw) in enumerate(node.attrs.kernels):
        y = xs[0]
        if kh > 1:
            y = g.op("MatMul", g.const(_band(gh, kh), g.dtype), g.reshape(y, [0, gh, gw * d]))  # (B, gh, gw D)
        if kw > 1:
            y = g.op("MatMul", g.const(_band(gw, kw), g.dtype), g.reshape(y, [0, gh, gw, d]))   # (B, gh, gw, D)
        y = g.reshape(y, [0, gh * gw, d])                                       # (B, N, D)
        key = f"{node.name}.branches.{i}"
        branches.append(g.mul(y, g.weight(f"{key}.scale", L.w[f"{key}.scale"])))
        shift = shift + L.w[f"{key}.shift"]
    total = branches[0] if len(branches) == 1 else g.op("Sum", *branches)
    return g.add(total, g.weight(f"{node.name}.branches.0.shift{FOLDED}", shift), out=out)  # all shifts


@onnx_lowering(affine.Affine)
def _affine(L: Lowering, node: Node, xs: list[str], ts: list[TensorType], out: str) -> str:
    y = L.g.mul(xs[0], L.g.weight(f"{node.name}.scale", L.w[f"{node.name}.scale"]))
    return L.g.add(y, L.g.weight(f"{node.name}.shift", L.w[f"{node.name}.shift"]), out=out)


@onnx_lowering(drop_path.DropPath)
def _drop_path(L: Lowering, node: Node, xs: list[str], ts: list[TensorType], out: str) -> str:
    return xs[0]  # the identity at inference: its value is its input's


@onnx_lowering(add.Add)
def _add(L: Lowering, node: Node, xs: list[str], ts: list[TensorType], out: str) -> str:
    return L.g.add(*xs, out=out) if len(xs) == 2 else L.g.op("Sum", *xs, out=out)


@onnx_lowering(slice_op.Slice)
def _slice(L: Lowering, node: Node, xs: list[str], ts: list[TensorType], out: str) -> str:
    stop = ts[0].tokens if node.attrs.stop is None else node.attrs.stop
    return L.g.op("Slice", xs[0], L.g.const([node.attrs.start]), L.g.const([stop]), L.g.const([1]), out=out)


@onnx_lowering(slice_op.Concat)
def _concat(L: Lowering, node: Node, xs: list[str], ts: list[TensorType], out: str) -> str:
    return L.g.op("Concat", *xs, axis=1, out=out)


def _transition(L: Lowering, node: Node, xs: list[str], ts: list[TensorType], out: str,
                patches_fn: Callable[[str, str | None], str]) -> str:
    """A stage transition of the patch tokens, with the class tokens through `fc`."""
    prefix, patches = L.split_prefix(xs[0], ts[0])
    y = patches_fn(patches, None if prefix else out)
    if prefix is None:
        return y
    return L.g.op("Concat", L.linear_key(prefix, f"{node.name}.fc"), y, axis=1, out=out)  # (B, P + N/4, D2)


@onnx_lowering(downsample.PitPool)
def _pit_pool(L: Lowering, node: Node, xs: list[str], ts: list[TensorType], out: str) -> str:
    """Depthwise 3x3 stride-2 conv on the grid (+ the 1x1 pointwise conv)."""
    g, t, name, d2 = L.g, ts[0], node.name, node.attrs.dim
    gh, gw = t.grid

    def pool(patches: str, value: str | None) -> str:
        grid = g.reshape(g.transpose(patches, [0, 2, 1]), [0, t.dim, gh, gw])   # (B, D, gh, gw)
        y = g.op("Conv", grid, g.weight(f"{name}.conv.weight", L.w[f"{name}.conv.weight"]),
                 g.weight(f"{name}.conv.bias", L.w[f"{name}.conv.bias"]), group=t.dim, kernel_shape=[3, 3],
                 strides=[2, 2], pads=[1, 1, 1, 1])                             # (B, D2, gh/2, gw/2)
        y = g.transpose(g.reshape(y, [0, d2, (gh // 2) * (gw // 2)]), [0, 2, 1])  # (B, N/4, D2)
        return L.linear_key(y, f"{name}.pointwise", value) if node.attrs.pointwise else y

    return _transition(L, node, xs, ts, out, pool)


@onnx_lowering(downsample.SptMerge)
def _spt_merge(L: Lowering, node: Node, xs: list[str], ts: list[TensorType], out: str) -> str:
    """SPT merging, patch 2 (shift 1), on the channels-last grid."""
    t = ts[0]
    gh, gw = t.grid

    def merge(patches: str, value: str | None) -> str:
        grid = L.g.reshape(patches, [0, gh, gw, t.dim])                          # (B, gh, gw, D)
        return L.spt(grid, gh, gw, t.dim, 2, node.name, node.attrs.eps, value)

    return _transition(L, node, xs, ts, out, merge)


@onnx_lowering(head.Head)
def _head(L: Lowering, node: Node, xs: list[str], ts: list[TensorType], out: str) -> str:
    g, t, kind = L.g, ts[0], node.attrs.kind

    def classify(x: str, key: str, out: str | None = None) -> str:
        return g.op("Gemm", x, g.weight(f"{key}.weight", L.w[f"{key}.weight"]),
                    g.weight(f"{key}.bias", L.w[f"{key}.bias"]), transB=1, out=out)   # (B, classes)

    if kind == "gap":
        _, patches = L.split_prefix(xs[0], t)
        return classify(g.op("ReduceMean", patches, axes=[1], keepdims=0), node.name, out)
    token = [g.op("Gather", xs[0], g.const(i), axis=1) for i in range(2 if kind == "token+distill" else 1)]
    if kind == "token":
        return classify(token[0], node.name, out)
    both = g.add(classify(token[0], node.name), classify(token[1], head.dist_name(node)))
    return g.mul(both, g.scalar(0.5), out=out)  # eval: the average of the two heads' logits


@dataclass(frozen=True)
class Lowered:
    """Where each IR node's output is in the ONNX graph (a drop-path's is its input's)."""

    values: dict[str, str]


def lower(graph: Graph, g: OnnxGraph, weights: Weights) -> Lowered:
    """Append the nodes of every IR node, in the graph's stable order, each under the
    scope of its name."""
    from . import _onnx_binary  # noqa: F401 - registers the binary transition
    from . import _onnx_swin  # noqa: F401 - registers Swin's ops
    from . import _onnx_cait  # noqa: F401 - registers CaiT's class attention and layer scale
    from . import _onnx_t2t  # noqa: F401 - registers T2T's ops

    L = Lowering(graph, g, weights)
    for node in graph:
        lowering = ONNX_LOWERINGS.get(node.op)
        if lowering is None:
            raise NotImplementedError(f"ONNX backend: no lowering for op {node.op.name}")
        xs, ts = [L.values[i] for i in node.inputs], [n.out for n in graph.inputs(node)]
        with g.scope(node.name):
            L.values[node.id] = lowering(L, node, xs, ts, value_name(node))
    return Lowered({n.name: L.values[n.id] for n in graph})
