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

`queries k` (set by the dead-token elimination pass, never written in specs) computes
only the first k tokens' queries: the output holds those k tokens."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..ir import Node, TensorType
from ..lang import Schema
from . import (Buffer, OpDef, Param, Resolve, batchnorm_buffers, binary_split, blu_params,
               linear_params, need_tokens, node_error, norm_params, register, rprelu_params, tokens_type)

if TYPE_CHECKING:
    import numpy as np

_OPTIONS = {"heads": "int", "head-dim": "int", "qkv-bias": "bool", "reduce": "int"}


@dataclass(frozen=True)
class AttentionAttrs:
    heads: int
    head_dim: int
    qkv_bias: bool
    lsa: bool = False
    reduce: int = 1
    queries: int | None = None
    binary: tuple[str, ...] = ()

    @property
    def inner(self) -> int:
        return self.heads * self.head_dim


def head_dim(r: Resolve, dim: int) -> int:
    """The head size: `head-dim`, or the width divided by the head count."""
    heads = r.args["heads"]
    if "head-dim" in r.args:
        return r.args["head-dim"]
    if dim % heads:
        raise r.error(f"heads {heads} does not divide dim {dim}",
                      f"expected a head count that divides {dim}, or an explicit head-dim")
    return dim // heads


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
        "attention": Schema((), _OPTIONS, usage="attention heads 6 head-dim 64 qkv-bias true reduce 1"),
        "lsa": Schema((), _OPTIONS, usage="lsa heads 12 head-dim 16"),
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
                              None, binary)

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
            out.update(linear_params(f"{n}.qkv", d, 3 * a.inner, a.qkv_bias))
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
            linear = nq * d * a.inner + n * d * 2 * a.inner + nq * a.inner * d
        else:
            linear = n * d * d + 2 * m * d * d + n * d * d + (m * d * d if a.reduce > 1 else 0)
        fp, bops = binary_split(a.binary, linear)
        matmuls = 2 * nq * m * a.inner
        if "attention" in a.binary:
            bops += matmuls
        else:
            fp += matmuls
        return (fp, bops)

