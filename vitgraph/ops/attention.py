"""Multi-head self-attention, `attention heads H [head-dim d] [qkv-bias b] [reduce r]`,
and Locality Self-Attention, `lsa heads H ...` (the same op with `lsa`: "Vision
Transformer for Small-Size Datasets", Lee, Lee, Song 2021: each token's score with itself
masked out before the softmax, and a learnable per-head temperature, initialised to
1/sqrt(head_dim), in place of the fixed scale).

Full precision: DeiT/timm layout (fused `qkv` linear, `proj`). Binary (BinaryViT, Le & Li
2023, official code Phuoc-Hoan-Le/BinaryViT): q, k, v are binary linear units without
bias (k and v after an optional AvgPool(r) + BLU spatial reduction of keys and values), a
learnable shift each, sign, the softmax quantized as round(p / alpha).clamp(0, 1) * alpha,
and the context shortcut RPReLU(BN(P V) + q + k + v) before the proj BLU.

CaiT's forms (Touvron et al. 2021, "Going deeper with Image Transformers"; and the
small-datasets paper's official models/cait.py): `projections q-kv|q-k-v` computes
queries, keys and values with separate linear layers (`to_q`, `to_kv`: the small-datasets
code; `q`, `k`, `v`: timm's class attention) instead of one fused `qkv`;
`talking-heads linear|matrix` mixes the heads' scores before the softmax and their
probabilities after it (Shazeer et al. 2020): timm's `proj_l`, `proj_w` Linear(h, h) with
bias (out[g] = sum_h W[g, h] s[h] + b[g]), or the small-datasets code's bias-free
`mix_heads_pre_attn`, `mix_heads_post_attn` (out[g] = sum_h s[h] M[h, g]);
`lsa ... diagonal V` sets each token's score with itself to V (after the temperature)
instead of masking it to -inf, as the official SL-CaiT code does (V = -1e-9).

`queries k` (set by the dead-token elimination pass, never written in specs) computes
only the first k tokens' queries: the output holds those k tokens."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..ir import Node, TensorType
from ..lang import Schema
from . import (Buffer, OpDef, Param, Resolve, batchnorm_buffers, binary_split, blu_params,
               linear_params, need_tokens, node_error, norm_params, register, rprelu_params, tokens_type)

if TYPE_CHECKING:
    import numpy as np

OPTIONS = {"heads": "int", "head-dim": "int", "qkv-bias": "bool", "reduce": "int",
           "projections": "choice:qkv|q-kv|q-k-v", "talking-heads": "choice:none|linear|matrix"}
# the linear layers that compute queries, keys and values in each layout, with their
# widths in multiples of heads x head-dim
PROJECTIONS = {"qkv": {"qkv": 3}, "q-kv": {"to_q": 1, "to_kv": 2}, "q-k-v": {"q": 1, "k": 1, "v": 1}}
# the head-mixing parameters of each talking-heads form: (pre-softmax, post-softmax)
TALKING_HEADS = {"linear": ("proj_l", "proj_w"), "matrix": ("mix_heads_pre_attn", "mix_heads_post_attn")}


@dataclass(frozen=True)
class AttentionAttrs:
    heads: int
    head_dim: int
    qkv_bias: bool
    lsa: bool = False
    reduce: int = 1
    queries: int | None = None
    binary: tuple[str, ...] = ()
    projections: str | None = None    # None: one fused qkv linear; else a key of PROJECTIONS
    talking_heads: str | None = None  # None, or a key of TALKING_HEADS
    diagonal: float | None = None     # LSA: None masks a token's score with itself; a value replaces it

    @property
    def inner(self) -> int:
        return self.heads * self.head_dim

    @property
    def layout(self) -> str:
        return self.projections or "qkv"

    @property
    def plain(self) -> bool:
        """The fused-qkv form with nothing between the scores and the softmax but LSA's mask
        (what onnxruntime's fused attention kernels compute)."""
        return self.projections is None and self.talking_heads is None and self.diagonal is None


def head_dim(r: Resolve, dim: int) -> int:
    """The head size: `head-dim`, or the width divided by the head count."""
    heads = r.args["heads"]
    if "head-dim" in r.args:
        return r.args["head-dim"]
    if dim % heads:
        raise r.error(f"heads {heads} does not divide dim {dim}",
                      f"expected a head count that divides {dim}, or an explicit head-dim")
    return dim // heads


def cait_forms(r: Resolve, binary: tuple[str, ...], lsa: bool, masked: bool, layout: str = "qkv") -> dict[str, Any]:
    """The statement's projections, talking heads and LSA diagonal value, checked."""
    talking = r.args.get("talking-heads", "none")
    if binary and ("projections" in r.args or talking != "none"):
        at = "projections" if "projections" in r.args else "talking-heads"
        raise r.error(f"'{at}' is a full-precision form, but these blocks are binarized",
                      "expected BinaryViT's binary attention (its own q, k and v units), or no binarize", at=at)
    if "diagonal" in r.args and not lsa:
        raise r.error("'diagonal' is LSA's: it replaces each token's score with itself",
                      "expected `lsa true`", at="diagonal")
    if masked and talking != "none" and "diagonal" not in r.args:
        raise r.error("talking heads would mix LSA's -inf diagonal mask across the heads (inf - inf)",
                      "expected `diagonal V`, the score each token gets with itself (the official SL-CaiT code: -1e-9)",
                      at="talking-heads")
    projections = r.args.get("projections", layout)
    return {"projections": None if projections == "qkv" else projections,
            "talking_heads": None if talking == "none" else talking, "diagonal": r.args.get("diagonal")}


def key_tokens(node: Node, x: TensorType) -> int:
    """How many keys each query sees: every token, or the reduced grid's."""
    r = node.attrs.reduce
    if r == 1:
        return x.tokens
    gh, gw = x.grid
    return (gh // r) * (gw // r)


def query_tokens(node: Node, x: TensorType) -> int:
    return node.attrs.queries if node.attrs.queries is not None else x.tokens


def pruned(t: TensorType, k: int) -> TensorType:
    """The type of the first k tokens of t (no longer a grid unless k covers every token)."""
    if k >= t.tokens:
        return t
    return tokens_type(k, t.dim, None, min(t.prefix, k))


@register
class Attention(OpDef):
    """Multi-head self-attention: plain, LSA, spatial-reduction, binary."""

    name = "attention"
    words = {
        "attention": Schema((), OPTIONS, usage="attention heads 6 head-dim 64 qkv-bias true reduce 1"),
        "lsa": Schema((), {**OPTIONS, "diagonal": "real"}, usage="lsa heads 12 head-dim 16 diagonal -1e-9"),
    }
    role = "mixer"
    family = "attention"
    key = "attn"
    binarize = "blocks"
    binary_forms = frozenset({"weights", "activations", "attention"})
    Attrs = AttentionAttrs

    @classmethod
    def resolve(cls, r: Resolve) -> AttentionAttrs:
        if "heads" not in r.args:
            raise r.error(f"'{r.word}' is missing its heads", f"expected `{cls.words[r.word].usage}`")
        binary = r.settings.binary(cls.binarize)
        lsa = r.word == "lsa"
        if lsa and binary:
            raise r.error("lsa with binarized attention is not defined by the papers",
                          "expected `attention` in binarized blocks")
        # BinaryViT's q, k, v (and K/V reduction) have no bias (official QuantizeLinear, bias=False)
        bias = r.args.get("qkv-bias", not binary)
        return AttentionAttrs(r.args["heads"], head_dim(r, r.ins[0].dim), bias, lsa, r.args.get("reduce", 1),
                              None, binary, **cait_forms(r, binary, lsa, masked=lsa))

    @classmethod
    def kv_tokens(cls, node: Node, x: TensorType) -> int:
        """How many tokens full-precision keys and values are computed from."""
        return x.tokens

    @classmethod
    def context_start(cls, node: Node, x: TensorType) -> int | None:
        """Where keys and values start in the block's raw stream (class attention with
        raw-patch keys), or None: they are the op's input."""
        return None

    @classmethod
    def shape(cls, node: Node, ins: list[TensorType]) -> TensorType:
        x, a = ins[0], node.attrs
        need_tokens(node, x, "attention")
        if a.binary and a.inner != x.dim:
            raise node_error(node, f"binary attention needs heads x head-dim = dim, found {a.heads} x "
                                   f"{a.head_dim} = {a.inner} for dim {x.dim}",
                             "BinaryViT's q, k and v have a shortcut from their input")
        if a.reduce > 1:
            if not a.binary:
                raise node_error(node, "reduce (spatial-reduction attention) is defined here only in BinaryViT's "
                                       "binary form", "expected a `binarize` statement covering the blocks, or no reduce")
            if x.grid is None or x.prefix:
                raise node_error(node, f"reduce {a.reduce} needs a token grid without cls/distill tokens, "
                                       f"found {x.prefix} extra token(s)")
            gh, gw = x.grid
            if a.reduce > min(gh, gw):
                raise node_error(node, f"pooling kernel {a.reduce}x{a.reduce} is larger than the token grid {gh}x{gw}",
                                 f"expected reduce at most {min(gh, gw)}")
            if gh % a.reduce or gw % a.reduce:
                raise node_error(node, f"reduce {a.reduce} does not divide the token grid {gh}x{gw}")
        if a.queries is not None and a.binary:
            raise node_error(node, "internal error: only full-precision attention computes a subset of queries")
        return pruned(x, query_tokens(node, x))

    @classmethod
    def params(cls, node: Node, ins: list[TensorType]) -> dict[str, Param]:
        a, d, n = node.attrs, ins[0].dim, node.name
        out: dict[str, Param] = {}
        if not a.binary:
            for part, width in PROJECTIONS[a.layout].items():
                out.update(linear_params(f"{n}.{part}", d, width * a.inner, a.qkv_bias))
            out.update(linear_params(f"{n}.proj", a.inner, d))
        else:
            weights = "weights" in a.binary
            for part in ("q", "k", "v"):
                out.update(blu_params(f"{n}.{part}", d, d, a.qkv_bias, weights))
            if a.reduce > 1:
                out.update(blu_params(f"{n}.reduce", d, d, a.qkv_bias, weights))
            out.update({f"{n}.{p}_shift": Param((d,), 0.0) for p in ("q", "k", "v")})
            if "attention" in a.binary:
                out[f"{n}.alpha"] = Param((1,), 0.005)
            out.update(norm_params(f"{n}.context_norm", d))
            out.update(rprelu_params(f"{n}.context_act", d))
            out.update(blu_params(f"{n}.proj", d, d, False, weights))
        if a.lsa:
            out[f"{n}.temperature"] = Param((a.heads,), a.head_dim ** -0.5)
        for mix in TALKING_HEADS.get(a.talking_heads, ()):
            if a.talking_heads == "linear":
                out.update(linear_params(f"{n}.{mix}", a.heads, a.heads))
            else:
                out[f"{n}.{mix}"] = Param((a.heads, a.heads), "mix")
        return out

    @classmethod
    def buffers(cls, node: Node, ins: list[TensorType]) -> dict[str, Buffer]:
        if not node.attrs.binary:
            return {}
        d, n = ins[0].dim, node.name
        parts = ["q", "k", "v", "proj"] + (["reduce"] if node.attrs.reduce > 1 else [])
        out: dict[str, Buffer] = {}
        for p in parts:
            out.update(batchnorm_buffers(f"{n}.{p}.norm", d))
        out.update(batchnorm_buffers(f"{n}.context_norm", d))
        return out

    @classmethod
    def constants(cls, node: Node, ins: list[TensorType]) -> "dict[str, np.ndarray]":
        if not node.attrs.lsa:
            return {}
        import numpy as np

        n = ins[0].tokens
        return {"offdiag": ~np.eye(n, dtype=bool)[:query_tokens(node, ins[0])]}  # (M, N): False on the diagonal

    @classmethod
    def macs(cls, node: Node, ins: list[TensorType]) -> tuple[int, int]:
        x, a = ins[0], node.attrs
        n, d, m, nq = x.tokens, x.dim, key_tokens(node, x), query_tokens(node, x)
        if not a.binary:
            m = cls.kv_tokens(node, x)
            linear = nq * d * a.inner + m * d * 2 * a.inner + nq * a.inner * d
        else:
            linear = n * d * d + 2 * m * d * d + n * d * d + (m * d * d if a.reduce > 1 else 0)
        fp, bops = binary_split(a.binary, linear)
        matmuls = 2 * nq * m * a.inner
        if "attention" in a.binary:
            bops += matmuls
        else:
            fp += matmuls
        if a.talking_heads:  # an h x h mix of every (query, key) score, before and after the softmax
            fp += 2 * nq * m * a.heads * a.heads
        return (fp, bops)

