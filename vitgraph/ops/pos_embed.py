"""`pos-embed learned|sinusoid`: a position embedding added to every token there is at
that point (ViT/DeiT: cls, dist and patches; CaiT: patches only, since its class token
comes later). `learned` is a parameter at the node's name (`pos_embed`, DeiT's and timm's
key); `sinusoid` is T2T-ViT's fixed table (a constant, not a parameter)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..ir import Node, TensorType
from ..lang import Schema
from . import OpDef, Param, Resolve, need_tokens, register

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class PosEmbedAttrs:
    kind: str = "learned"


def sinusoid_table(n: int, d: int) -> "np.ndarray":
    """(1, n, d) sinusoid position encoding: sin on even channels, cos on odd ones, the
    angle of position p and channel j being p / 10000^(2 (j // 2) / d) (T2T-ViT)."""
    import numpy as np

    pos = np.arange(n, dtype=np.float64)[:, None]
    j = np.arange(d)
    angle = pos / np.power(10000.0, 2 * (j // 2) / d)[None, :]
    table = np.where(j % 2 == 0, np.sin(angle), np.cos(angle))
    return table[None].astype(np.float32)


@register
class PosEmbed(OpDef):
    """Add a position embedding (learned, or a fixed sinusoid table)."""

    name = "pos-embed"
    words = {"pos-embed": Schema(("choice:kind:learned|sinusoid|none",), usage="pos-embed learned")}
    role = "layer"
    default_name = "pos_embed"
    per_token = True
    Attrs = PosEmbedAttrs

    @classmethod
    def resolve(cls, r: Resolve) -> PosEmbedAttrs | None:
        return PosEmbedAttrs(r.args["kind"]) if r.args["kind"] != "none" else None  # `pos-embed none`: no node

    @classmethod
    def shape(cls, node: Node, ins: list[TensorType]) -> TensorType:
        need_tokens(node, ins[0], "pos-embed")
        return ins[0]

    @classmethod
    def params(cls, node: Node, ins: list[TensorType]) -> dict[str, Param]:
        if node.attrs.kind != "learned":
            return {}
        return {node.name: Param((1, ins[0].tokens, ins[0].dim), "embedding")}

    @classmethod
    def constants(cls, node: Node, ins: list[TensorType]) -> "dict[str, np.ndarray]":
        if node.attrs.kind != "sinusoid":
            return {}
        return {"table": sinusoid_table(ins[0].tokens, ins[0].dim)}
