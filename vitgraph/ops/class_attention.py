"""Class attention, `class-attention heads H [head-dim d] [keys all|raw-patches] ...`
(CaiT: Touvron et al. 2021, "Going deeper with Image Transformers", section 3): attention
whose queries are the class token(s) only, so that its output holds just those tokens.
The block then narrows to them: lower.py splits the stream into the class tokens and the
rest, the block's MLP and layer scales see the class tokens alone, and the patch tokens
rejoin unchanged at the block's end.

Keys and values come from
  * `keys all` (timm's ClassAttn, the paper): every token of the block's normalised
    stream, norm([cls, patches]);
  * `keys raw-patches` (the small-datasets paper's official models/cait.py): the patch
    tokens of the block's un-normalised stream, without the class token; its class
    blocks call attention(norm(cls), context=patches), PreNorm normalising only its first
    argument. The op therefore reads the block's raw stream beside the normalised one.

The projections default to timm's separate `q`, `k`, `v` (bias as `qkv-bias` says, true
by default); the official code's bias-free `to_q`, `to_kv` are `projections q-kv qkv-bias
false`. `talking-heads` as for `attention` (vitgraph/ops/attention.py). `lsa true`: a
learnable per-head temperature in place of the scale (the official code with is_LSA) and,
where a class token is among its own keys (`keys all`), its score with itself masked (or
set to `diagonal V`); with `keys raw-patches` no query is a key, so nothing is masked, as
in the official code."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..ir import Node, TensorType
from ..lang import Schema
from . import Resolve, need_tokens, node_error, register
from .attention import OPTIONS, Attention, AttentionAttrs, cait_forms, head_dim, pruned

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class ClassAttentionAttrs(AttentionAttrs):
    keys: str = "all"  # all | raw-patches


@register
class ClassAttention(Attention):
    """Attention of the class token(s) over the tokens (CaiT); its output is the class tokens."""

    name = "class-attention"
    words = {"class-attention": Schema(
        (), {**{k: v for k, v in OPTIONS.items() if k != "reduce"}, "keys": "choice:all|raw-patches",
             "lsa": "bool", "diagonal": "real"},
        usage="class-attention heads 4 head-dim 64 keys raw-patches projections q-kv qkv-bias false")}
    family = "class-attention"
    binarize = None
    binary_forms = frozenset()
    reads_stream = True
    Attrs = ClassAttentionAttrs

    @classmethod
    def resolve(cls, r: Resolve) -> ClassAttentionAttrs:
        if "heads" not in r.args:
            raise r.error("'class-attention' is missing its heads", f"expected `{cls.words[r.word].usage}`")
        if r.settings.binary("blocks"):
            raise r.error("class-attention has no binary form, but binarize covers the blocks",
                          "expected `binarize ... except blocks`, or self-attention blocks only")
        x = r.ins[0]
        if not x.prefix:
            raise r.error("class-attention reads the class token, but the stream has none",
                          "expected `tokens cls` before these blocks (CaiT inserts it after the self-attention blocks)")
        keys, lsa = r.args.get("keys", "all"), r.args.get("lsa", False)
        forms = cait_forms(r, (), lsa, masked=lsa and keys == "all", layout="q-k-v")
        if keys == "raw-patches" and forms["projections"] is None:
            raise r.error("keys raw-patches come from other tokens than the queries: one fused qkv linear cannot "
                          "compute both", "expected `projections q-kv` or `projections q-k-v`", at="projections")
        return ClassAttentionAttrs(r.args["heads"], head_dim(r, x.dim), r.args.get("qkv-bias", True), lsa, 1,
                                   x.prefix, (), **forms, keys=keys)

    @classmethod
    def kv_tokens(cls, node: Node, x: TensorType) -> int:
        return x.tokens - (cls.context_start(node, x) or 0)

    @classmethod
    def context_start(cls, node: Node, x: TensorType) -> int | None:
        return x.prefix if node.attrs.keys == "raw-patches" else None

    @classmethod
    def shape(cls, node: Node, ins: list[TensorType]) -> TensorType:
        x = ins[0]
        need_tokens(node, x, "class-attention")
        if x.tokens == x.prefix:
            raise node_error(node, f"class-attention needs patch tokens to attend to, but its input {x} holds only "
                                   f"{x.prefix} class token(s)")
        return pruned(x, node.attrs.queries)

    @classmethod
    def constants(cls, node: Node, ins: list[TensorType]) -> "dict[str, np.ndarray]":
        return super().constants(node, ins) if node.attrs.keys == "all" else {}
