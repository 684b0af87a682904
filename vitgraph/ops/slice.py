"""Token ranges and their joining, on the token axis of (B, N, D) tensors; made by the
language and by passes, never written in specs.

* `slice` keeps the tokens [start, stop): dead-token elimination (vitgraph/passes/
  dead_tokens.py) cuts a residual stream to the tokens a cls/distill head reads, and a
  block whose mixer updates only the leading tokens (CaiT's class attention) splits its
  stream into those tokens and the rest;
* `concat` joins such a split again, [leading tokens, rest]."""
from __future__ import annotations

from dataclasses import dataclass

from ..ir import Node, TensorType
from . import OpDef, need_tokens, node_error, register, tokens_type


@dataclass(frozen=True)
class SliceAttrs:
    start: int = 0
    stop: int | None = None  # None: to the last token


@register
class Slice(OpDef):
    """The tokens [start, stop)."""

    name = "slice"
    per_token = True
    Attrs = SliceAttrs

    @classmethod
    def shape(cls, node: Node, ins: list[TensorType]) -> TensorType:
        x, a = ins[0], node.attrs
        need_tokens(node, x, "slice")
        stop = x.tokens if a.stop is None else a.stop
        if not 0 <= a.start < stop <= x.tokens:
            raise node_error(node, f"internal error: tokens [{a.start}, {stop}) of {x}")
        if (a.start, stop) == (0, x.tokens):
            return x
        prefix = max(0, min(x.prefix, stop) - a.start)
        grid = x.grid if a.start == x.prefix and stop == x.tokens else None  # exactly the patch tokens
        return tokens_type(stop - a.start, x.dim, grid, prefix)


@dataclass(frozen=True)
class ConcatAttrs:
    pass


@register
class Concat(OpDef):
    """Tokens of the inputs one after the other."""

    name = "concat"
    Attrs = ConcatAttrs

    @classmethod
    def shape(cls, node: Node, ins: list[TensorType]) -> TensorType:
        for x in ins:
            need_tokens(node, x, "concat")
        if len({x.dim for x in ins}) != 1:
            raise node_error(node, f"internal error: concat of widths {[x.dim for x in ins]}")
        lead, rest = ins[0], ins[1:]
        all_prefix = lead.tokens == lead.prefix and len(rest) == 1 and not rest[0].prefix
        grid = rest[0].grid if all_prefix else None
        prefix = lead.prefix if lead.tokens == lead.prefix else min(lead.prefix, lead.tokens)
        return tokens_type(sum(x.tokens for x in ins), lead.dim, grid, prefix)
