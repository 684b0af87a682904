"""IR -> ONNX nodes, one function per op (full-precision forms; the binary forms are in
backends/_onnx_binary.py), following THE CONTRACT of vitgraph/ops.py in eval mode.

Papers: DeiT (Touvron et al. 2020) for patch embedding, tokens, attention, MLP and the
distillation head; "Vision Transformer for Small-Size Datasets" (Lee, Lee, Song 2021)
for Shifted Patch Tokenization and Locality Self-Attention; PiT (Heo et al. 2021) for
the depthwise-conv pooling; BinaryViT (Le & Li 2023) for pool branches, affine residuals
and the merging transition.

Layout choices, made for onnxruntime on the CPU and for exact shape inference:
  * tokens stay (B, N, D); every Reshape spells out all dims but the batch (0 = keep),
    so shape inference recovers the IR's shapes with a symbolic batch;
  * weights keep the state dict's names and layouts; the (out, in) -> (in, out)
    transposes are constant subgraphs that onnxruntime folds when the session loads;
  * patch embeddings, SPT and the merging conv are Reshape + Transpose + MatMul (a
    non-overlapping conv is a matmul over patches); grids are channels-last;
  * average pooling with stride 1 and zero padding (pool branches) is a banded matrix
    applied along each grid axis; stride-r pooling is a Reshape + ReduceMean;
  * dead-token elimination: after the last attention, a cls (+ distill) head's network
    computes only the 1 (2) tokens the head reads (Lowering.plan_tokens);
  * with `fused`, full-precision attention is onnxruntime's com.microsoft.Attention
    (MultiHeadAttention where only some queries are live) and bias + GELU its BiasGelu.
    (Its SkipLayerNormalization is not used: on the CPU it measured ~5x slower than the
    Add + LayerNormalization it would replace.)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from vitgraph.ir import Graph, Node, Op, TensorType

from ._onnx_graph import MS_DOMAIN, OnnxGraph, Weights, binary_conv

FOLDED = ":folded"  # suffix of initializers into which the export folded other parameters


def value_name(node: Node) -> str:
    """The ONNX value holding an IR node's output."""
    if node.op is Op.INPUT:
        return "input"
    if node.op is Op.HEAD:
        return "logits"
    return f"{node.name}/out"


@dataclass
class Lowering:
    graph: Graph
    g: OnnxGraph
    w: Weights
    fused: bool                      # emit onnxruntime's com.microsoft fused kernels
    values: dict[int, str] = field(default_factory=dict)       # IR node id -> ONNX value
    types: dict[int, TensorType] = field(default_factory=dict)  # IR node id -> what that value holds
    keep: dict[int, int] = field(default_factory=dict)         # IR node id -> leading tokens it computes
    _prefixes: dict[tuple[str, int], str] = field(default_factory=dict)

    # -- token pruning ------------------------------------------------------------------
    def plan_tokens(self) -> None:
        """Dead-token elimination. A cls (+ distill) head reads only the first 1 (2) tokens of
        the final norm, so every per-token op between the last attention and the head, and
        that attention's queries, need only those tokens (the attention still reads every
        token's key and value). Fills `keep` with the prunable nodes and their token count."""
        need: dict[int, int | None] = {}
        for node in reversed(self.graph.nodes()):
            wants = [_wants(user, need) for user in self.graph.users(node)]
            k = None if not wants or None in wants else max(w for w in wants if w is not None)
            need[node.id] = k
            prunable = node.op in PER_TOKEN or (node.op is Op.ATTENTION and not node.binary)
            if k is not None and prunable and k < node.out.tokens:
                self.keep[node.id] = k

    def prefix(self, x: str, t: TensorType, k: int) -> tuple[str, TensorType]:
        """The first k tokens of a (B, N, D) value (sliced once, shared)."""
        if t.tokens <= k:
            return x, t
        if (x, k) not in self._prefixes:
            self._prefixes[(x, k)] = self.g.slice(x, [0], [k], [1])              # (B, k, D)
        return self._prefixes[(x, k)], pruned(t, k)

    # -- linear layers ------------------------------------------------------------------
    def matrix(self, name: str, weight: np.ndarray) -> str:
        """(out, in[, kh, kw]) weight -> the (in, out) value a MatMul reads."""
        w = self.g.weight(name, weight)
        if weight.ndim > 2:
            w = self.g.reshape(w, [weight.shape[0], int(np.prod(weight.shape[1:]))])
        return self.g.transpose(w, [1, 0])

    def linear(self, x: str, name: str, weight: np.ndarray, bias_name: str | None, bias: np.ndarray | None,
               out: str | None = None) -> str:
        """x @ W^T + b over the last dim."""
        if bias is None:
            return self.g.op("MatMul", x, self.matrix(name, weight), out=out)
        y = self.g.op("MatMul", x, self.matrix(name, weight))
        return self.g.add(y, self.g.weight(bias_name, bias), out=out)

    def linear_key(self, x: str, prefix: str, out: str | None = None) -> str:
        """A full-precision linear whose parameters are used as stored."""
        bias = self.w.get(f"{prefix}.bias")
        return self.linear(x, f"{prefix}.weight", self.w[f"{prefix}.weight"], f"{prefix}.bias", bias, out)

    def layernorm(self, x: str, prefix: str, eps: float, out: str | None = None) -> str:
        return self.g.op("LayerNormalization", x, self.g.weight(f"{prefix}.weight", self.w[f"{prefix}.weight"]),
                         self.g.weight(f"{prefix}.bias", self.w[f"{prefix}.bias"]), axis=-1, epsilon=eps,
                         out=out)

    def batchnorm(self, x: str, prefix: str, eps: float, out: str | None = None) -> str:
        """Eval BatchNorm over the last dim as one per-channel Mul and Add."""
        scale, shift = self.w.batchnorm(prefix, eps)
        y = self.g.mul(x, self.g.weight(f"{prefix}.weight{FOLDED}", scale))
        return self.g.add(y, self.g.weight(f"{prefix}.bias{FOLDED}", shift), out=out)

    def gelu(self, x: str, bias: str | None = None, out: str | None = None) -> str:
        """Exact (erf) GELU, of x + bias when a bias is given."""
        if self.fused and bias is not None:
            return self.g.op("BiasGelu", x, bias, domain=MS_DOMAIN, out=out)
        if bias is not None:
            x = self.g.add(x, bias)
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

    def spt(self, x: str, height: int, width: int, channels: int, patch: int, prefix: str, out: str | None) -> str:
        """Shifted Patch Tokenization of a channels-last grid: shifts, patches (p1, p2, c),
        LayerNorm(5Cp^2, eps 1e-5), Linear. -> (B, H/p * W/p, D)."""
        x5 = self.shifted(x, height, width, channels, patch)
        tokens = self.patches(x5, (height // patch, width // patch), patch, 5 * channels, channels_last=True)
        return self.linear_key(self.layernorm(tokens, f"{prefix}.norm", 1e-5), f"{prefix}.proj", out=out)


# -- the ops ----------------------------------------------------------------------------------
Lower = Callable[[Lowering, Node, list[str], list[TensorType], str], str]


def _input(L: Lowering, node: Node, xs: list[str], ts: list[TensorType], out: str) -> str:
    return out  # the graph input itself


def _patchify(L: Lowering, node: Node, xs: list[str], ts: list[TensorType], out: str) -> str:
    """p x p stride-p conv (a matmul over patches) -> tokens -> norm. A BatchNorm directly
    follows the conv and is folded into it; a binary stem signs its input and uses
    per-output-channel mean |W| times sign(W)."""
    c, p, prefix, norm = int(ts[0].shape[1]), node.attr("patch"), node.name, node.attr("norm")
    x = L.g.op("Sign", xs[0]) if "activations" in node.binary else xs[0]
    tokens = L.patches(x, node.out.grid, p, c, channels_last=False)              # (B, N, C p p)
    weight, bias = L.w[f"{prefix}.proj.weight"], L.w.get(f"{prefix}.proj.bias")
    folded = "weights" in node.binary
    if folded:
        weight = binary_conv(weight)
    if norm == "batch":
        scale, shift = L.w.batchnorm(f"{prefix}.norm", node.attr("eps"))
        weight = weight * scale[:, None, None, None]
        bias = shift if bias is None else bias * scale + shift
        folded = True
    y_out = None if norm == "layer" else out
    if folded:
        y = L.linear(tokens, f"{prefix}.proj.weight{FOLDED}", weight, f"{prefix}.proj.bias{FOLDED}", bias, y_out)
    else:
        y = L.linear_key(tokens, f"{prefix}.proj", y_out)                        # (B, N, D)
    return L.layernorm(y, f"{prefix}.norm", node.attr("eps"), out) if norm == "layer" else y


def _shift_tokenize(L: Lowering, node: Node, xs: list[str], ts: list[TensorType], out: str) -> str:
    _, c, h, w = ts[0].shape
    x = L.g.transpose(xs[0], [0, 2, 3, 1])                                     # (B, H, W, C)
    return L.spt(x, int(h), int(w), int(c), node.attr("patch"), node.name, out)


_TOKEN_KEYS = {"cls": "cls_token", "distill": "dist_token"}
PER_TOKEN = frozenset({Op.NORM, Op.MLP, Op.AFFINE, Op.DROP_PATH, Op.ADD, Op.POS_EMBED})


def _wants(user: Node, need: dict[int, int | None]) -> int | None:
    """How many leading tokens `user` reads of its input (None: all of them)."""
    if user.op is Op.HEAD:
        return {"token": 1, "token+distill": 2}.get(user.attr("kind"))
    return need[user.id] if user.op in PER_TOKEN else None


def pruned(t: TensorType, k: int) -> TensorType:
    """The type of the first k tokens of t (no longer a grid)."""
    return TensorType(("B", k, t.dim), None, min(t.prefix, k), t.dtype)


def _tokens(L: Lowering, node: Node, xs: list[str], ts: list[TensorType], out: str) -> str:
    """[cls, dist, patches] as Pad(patches) + [cls, dist, 0...]: no batch-sized Expand."""
    g, k, n = L.g, len(node.attr("tokens")), ts[0].tokens
    extra = [g.weight(key, L.w[key]) for key in (_TOKEN_KEYS[t] for t in node.attr("tokens"))]
    rows = extra[0] if k == 1 else g.op("Concat", *extra, axis=1)               # (1, k, D)
    rows = g.op("Pad", rows, g.const([0, 0, 0, 0, n, 0]))                       # (1, k + N, D), folded
    padded = g.op("Pad", xs[0], g.const([0, k, 0, 0, 0, 0]))                   # (B, k + N, D)
    return g.add(padded, rows, out=out)


def _pos_embed(L: Lowering, node: Node, xs: list[str], ts: list[TensorType], out: str) -> str:
    pos = L.g.weight(node.name, L.w[node.name])                                # (1, N, D)
    if ts[0].tokens < node.out.tokens:  # pruned to the leading tokens
        pos = L.g.slice(pos, [0], [ts[0].tokens], [1])
    return L.g.add(xs[0], pos, out=out)


def _norm(L: Lowering, node: Node, xs: list[str], ts: list[TensorType], out: str) -> str:
    if node.attr("kind") == "layer":
        return L.layernorm(xs[0], node.name, node.attr("eps"), out)
    return L.batchnorm(xs[0], node.name, node.attr("eps"), out)


def attention_dims(node: Node, dim: int) -> tuple[int, int]:
    heads = node.attr("heads")
    return heads, node.attr("head_dim") or dim // heads


def _attention(L: Lowering, node: Node, xs: list[str], ts: list[TensorType], out: str) -> str:
    """Multi-head self-attention; queries of only the first `keep` tokens when the rest
    are dead (L.plan_tokens)."""
    from ._onnx_binary import binary_attention

    if node.binary:
        return binary_attention(L, node, xs, ts, out)
    g, x, n = L.g, xs[0], ts[0].tokens
    m = L.keep.get(node.id, n)  # query tokens
    heads, hd = attention_dims(node, ts[0].dim)
    inner = heads * hd
    # the score scale (LSA: the learned per-head temperature) folded into q's rows
    if node.attr("lsa"):
        scale = np.repeat(L.w[f"{node.name}.temperature"], hd)
    else:
        scale = np.full(inner, hd ** -0.5)
    rows = np.concatenate([scale, np.ones(2 * inner)])
    weight = L.w[f"{node.name}.qkv.weight"] * rows[:, None]
    bias = L.w.get(f"{node.name}.qkv.bias")
    bias = None if bias is None else bias * rows
    qkv_w, qkv_b = f"{node.name}.qkv.weight{FOLDED}", f"{node.name}.qkv.bias{FOLDED}"
    mask = None
    if node.attr("lsa"):  # a token's score with itself is masked out before softmax
        mask = g.const(np.where(np.eye(n, dtype=bool), -np.inf, 0.0)[None, None, :m], g.dtype)  # (1, 1, M, N)
    if L.fused and m == n:
        b = "" if bias is None else g.weight(qkv_b, bias)
        ctx = g.op("Attention", x, g.transpose(g.weight(qkv_w, weight), [1, 0]), b,
                   "", "", mask or "", domain=MS_DOMAIN, num_heads=heads, scale=1.0,
                   qkv_hidden_sizes=[inner, inner, inner])                          # (B, N, I)
    elif L.fused:  # queries of the first m tokens, keys and values of all
        w = g.transpose(g.weight(qkv_w, weight), [1, 0])                         # (D, 3I), folded
        q = g.op("MatMul", L.prefix(x, ts[0], m)[0], g.slice(w, [0], [inner], [1]))  # (B, M, I)
        k = g.op("MatMul", x, g.slice(w, [inner], [2 * inner], [1]))              # (B, N, I)
        v = g.op("MatMul", x, g.slice(w, [2 * inner], [3 * inner], [1]))          # (B, N, I)
        b = "" if bias is None else g.weight(qkv_b, bias)
        ctx = g.op("MultiHeadAttention", q, k, v, b, "", mask or "", domain=MS_DOMAIN, num_heads=heads,
                   scale=1.0)                                                    # (B, M, I)
    else:
        qkv = L.linear(x, qkv_w, weight, qkv_b, bias)                            # (B, N, 3I)
        q, k, v = g.op_n("Split", [qkv, g.const([inner] * 3)], 3, axis=-1)
        if m < n:
            q = g.slice(q, [0], [m], [1])                                         # (B, M, I)
        q = g.transpose(g.reshape(q, [0, m, heads, hd]), [0, 2, 1, 3])           # (B, H, M, hd)
        k = g.transpose(g.reshape(k, [0, n, heads, hd]), [0, 2, 3, 1])           # (B, H, hd, N)
        v = g.transpose(g.reshape(v, [0, n, heads, hd]), [0, 2, 1, 3])           # (B, H, N, hd)
        scores = g.op("MatMul", q, k)                                            # (B, H, M, N)
        if mask:
            scores = g.add(scores, mask)
        ctx = g.op("MatMul", g.op("Softmax", scores, axis=-1), v)                # (B, H, M, hd)
        ctx = g.reshape(g.transpose(ctx, [0, 2, 1, 3]), [0, m, inner])           # (B, M, I)
    return L.linear_key(ctx, f"{node.name}.proj", out)


def _mlp(L: Lowering, node: Node, xs: list[str], ts: list[TensorType], out: str) -> str:
    from ._onnx_binary import binary_mlp

    if node.binary:
        return binary_mlp(L, node, xs, ts, out)
    fc1 = f"{node.name}.fc1"
    h = L.g.op("MatMul", xs[0], L.matrix(f"{fc1}.weight", L.w[f"{fc1}.weight"]))  # (B, N, H)
    h = L.gelu(h, L.g.weight(f"{fc1}.bias", L.w[f"{fc1}.bias"]))
    return L.linear_key(h, f"{node.name}.fc2", out)


def _band(size: int, kernel: int) -> np.ndarray:
    """(size, size) matrix of stride-1 average pooling with zero padding kernel // 2 that
    counts the padding (count_include_pad): out[i] = sum_{|j - i| <= k//2} x[j] / k."""
    i = np.arange(size)
    return (np.abs(i[:, None] - i[None, :]) <= kernel // 2) / kernel


def _pool_branches(L: Lowering, node: Node, xs: list[str], ts: list[TensorType], out: str) -> str:
    """sum_i AvgPool_(kh,kw)(x) * scale_i + shift_i on the grid, each pooling as banded
    matmuls along H (on (B, gh, gw*D)) and along W (on (B, gh, gw, D))."""
    g, t = L.g, ts[0]
    gh, gw = t.grid
    d = t.dim
    branches, shift = [], np.zeros(d)
    for i, (kh, kw) in enumerate(node.attr("kernels")):
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


def _affine(L: Lowering, node: Node, xs: list[str], ts: list[TensorType], out: str) -> str:
    y = L.g.mul(xs[0], L.g.weight(f"{node.name}.scale", L.w[f"{node.name}.scale"]))
    return L.g.add(y, L.g.weight(f"{node.name}.shift", L.w[f"{node.name}.shift"]), out=out)


def _drop_path(L: Lowering, node: Node, xs: list[str], ts: list[TensorType], out: str) -> str:
    return xs[0]  # the identity at inference: its value is its input's


def _add(L: Lowering, node: Node, xs: list[str], ts: list[TensorType], out: str) -> str:
    return L.g.add(*xs, out=out) if len(xs) == 2 else L.g.op("Sum", *xs, out=out)


def _downsample(L: Lowering, node: Node, xs: list[str], ts: list[TensorType], out: str) -> str:
    from ._onnx_binary import merge_downsample

    kind = node.attr("kind")
    if kind == "merge":
        return merge_downsample(L, node, xs, ts, out)
    g, t, name = L.g, ts[0], node.name
    gh, gw = t.grid
    d, d2 = t.dim, node.attr("dim")
    prefix, patches = L.split_prefix(xs[0], t)
    if prefix is None:
        L.w.ignore(f"{name}.fc.weight", f"{name}.fc.bias")  # the class-token path of a model without one
    if kind == "pit":  # depthwise 3x3 stride-2 conv on the grid
        grid = g.reshape(g.transpose(patches, [0, 2, 1]), [0, d, gh, gw])       # (B, D, gh, gw)
        y = g.op("Conv", grid, g.weight(f"{name}.conv.weight", L.w[f"{name}.conv.weight"]),
                 g.weight(f"{name}.conv.bias", L.w[f"{name}.conv.bias"]), group=d, kernel_shape=[3, 3],
                 strides=[2, 2], pads=[1, 1, 1, 1])                             # (B, D2, gh/2, gw/2)
        y = g.transpose(g.reshape(y, [0, d2, (gh // 2) * (gw // 2)]), [0, 2, 1])  # (B, N/4, D2)
    else:  # "spt": SPT merging, patch 2 (shift 1), on the channels-last grid
        grid = g.reshape(patches, [0, gh, gw, d])                               # (B, gh, gw, D)
        y = L.spt(grid, gh, gw, d, 2, name, None if prefix else out)
    if prefix is None:
        return y
    return g.op("Concat", L.linear_key(prefix, f"{name}.fc"), y, axis=1, out=out)  # (B, P + N/4, D2)


def _head(L: Lowering, node: Node, xs: list[str], ts: list[TensorType], out: str) -> str:
    g, t, kind = L.g, ts[0], node.attr("kind")

    def classify(x: str, key: str, out: str | None = None) -> str:
        return g.op("Gemm", x, g.weight(f"{key}.weight", L.w[f"{key}.weight"]),
                    g.weight(f"{key}.bias", L.w[f"{key}.bias"]), transB=1, out=out)   # (B, classes)

    if kind == "gap":
        _, patches = L.split_prefix(xs[0], t)
        return classify(g.op("ReduceMean", patches, axes=[1], keepdims=0), "head", out)
    token = [g.op("Gather", xs[0], g.const(i), axis=1) for i in range(2 if kind == "token+distill" else 1)]
    if kind == "token":
        return classify(token[0], "head", out)
    both = g.add(classify(token[0], "head"), classify(token[1], "head_dist"))
    return g.mul(both, g.scalar(0.5), out=out)  # eval: the average of the two heads' logits


LOWER: dict[Op, Lower] = {
    Op.INPUT: _input,
    Op.PATCHIFY: _patchify,
    Op.SHIFT_TOKENIZE: _shift_tokenize,
    Op.TOKENS: _tokens,
    Op.POS_EMBED: _pos_embed,
    Op.NORM: _norm,
    Op.ATTENTION: _attention,
    Op.MLP: _mlp,
    Op.POOL_BRANCHES: _pool_branches,
    Op.AFFINE: _affine,
    Op.DROP_PATH: _drop_path,
    Op.ADD: _add,
    Op.DOWNSAMPLE: _downsample,
    Op.HEAD: _head,
}


def lower(graph: Graph, g: OnnxGraph, weights: Weights, fused: bool) -> dict[str, tuple[str, int | None]]:
    """Append the nodes of every IR node, in the graph's stable order. Returns IR node
    name -> (the ONNX value holding its output (a drop-path's is its input's), the number
    of leading tokens it holds when pruned, else None)."""
    L = Lowering(graph, g, weights, fused)
    L.plan_tokens()
    for node in graph:
        xs, ts = [L.values[i] for i in node.inputs], [L.types[i] for i in node.inputs]
        k = L.keep.get(node.id)
        with g.scope(node.name):
            if k is not None and node.op in PER_TOKEN:
                xs, ts = (list(v) for v in zip(*(L.prefix(x, t, k) for x, t in zip(xs, ts))))
            L.values[node.id] = LOWER[node.op](L, node, xs, ts, value_name(node))
        L.types[node.id] = node.out if k is None else pruned(node.out, k)
    return {n.name: (L.values[n.id], L.keep.get(n.id)) for n in graph}
