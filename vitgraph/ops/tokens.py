"""`tokens cls [distill]`: learned class (and distillation, DeiT) tokens put before the
patch tokens, in the order [cls, dist, patches]. Their keys are DeiT's and timm's
(`cls_token`, `dist_token`). Where the statement stands is where they enter: CaiT adds
its class token after the self-attention blocks."""
from __future__ import annotations

from dataclasses import dataclass

from ..ir import Node, TensorType
from ..lang import Schema
from . import OpDef, Param, Resolve, need_tokens, register, tokens_type

TOKEN_KEYS = {"cls": "cls_token", "distill": "dist_token"}


@dataclass(frozen=True)
class TokensAttrs:
    tokens: tuple[str, ...]


@register
class Tokens(OpDef):
    """Prepend learned cls (and distill) tokens."""

    name = "tokens"
    words = {"tokens": Schema(("choices:tokens:cls|distill|none",), usage="tokens cls distill")}
    role = "layer"
    default_name = "tokens"
    once = True
    Attrs = TokensAttrs

    @classmethod
    def resolve(cls, r: Resolve) -> TokensAttrs | None:
        toks = tuple(t for t in r.args["tokens"] if t != "none")
        if toks not in ((), ("cls",), ("cls", "distill")):
            raise r.error(f"tokens {' '.join(r.args['tokens'])}: expected `tokens cls` or `tokens cls distill`")
        return TokensAttrs(toks) if toks else None  # `tokens none`: no node

    @classmethod
    def shape(cls, node: Node, ins: list[TensorType]) -> TensorType:
        x = ins[0]
        need_tokens(node, x, "tokens")
        k = len(node.attrs.tokens)
        return tokens_type(x.tokens + k, x.dim, x.grid, x.prefix + k)

    @classmethod
    def params(cls, node: Node, ins: list[TensorType]) -> dict[str, Param]:
        return {TOKEN_KEYS[t]: Param((1, 1, ins[0].dim), "token") for t in node.attrs.tokens}
