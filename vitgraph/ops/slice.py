"""The leading tokens of a token tensor, (B, N, D) -> (B, k, D). Made by passes, never
written in specs: dead-token elimination (vitgraph/passes/dead_tokens.py) cuts a residual
stream down to the tokens that a cls/distill head reads."""
from __future__ import annotations

from dataclasses import dataclass

from ..ir import Node, TensorType
from . import OpDef, need_tokens, node_error, register
from .attention import pruned


@dataclass(frozen=True)
class SliceAttrs:
    tokens: int


@register
class Slice(OpDef):
    """The first k tokens."""

    name = "slice"
    per_token = True
    Attrs = SliceAttrs

    @classmethod
    def shape(cls, node: Node, ins: list[TensorType]) -> TensorType:
        need_tokens(node, ins[0], "slice")
        if not 0 < node.attrs.tokens <= ins[0].tokens:
            raise node_error(node, f"internal error: slice of {node.attrs.tokens} tokens from {ins[0]}")
        return pruned(ins[0], node.attrs.tokens)
