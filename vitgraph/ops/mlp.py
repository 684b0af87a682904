"""`mlp ratio R` / `mlp hidden N`: the feed-forward branch. Full precision: fc1, GELU (erf),
fc2 (DeiT/timm). Binary (BinaryViT): two binary linear units without bias and without
GELU; the up-projection's shortcut repeats x along the channels, the down-projection's
averages groups of hidden/dim consecutive channels."""
from __future__ import annotations

from dataclasses import dataclass

from ..ir import Node, TensorType
from ..lang import Schema
from . import (Buffer, OpDef, Param, Resolve, batchnorm_buffers, binary_split, blu_params, linear_params, need_tokens,
               node_error, register)


@dataclass(frozen=True)
class MlpAttrs:
    hidden: int
    binary: tuple[str, ...] = ()


@register
class Mlp(OpDef):
    """Two-layer feed-forward (GELU; binary: RPReLU-wrapped binary linears)."""

    name = "mlp"
    words = {"mlp": Schema((), {"ratio": "num", "hidden": "int"}, usage="mlp ratio 4 | mlp hidden 1536",
                           exclusive=(("ratio", "hidden"),))}
    role = "mixer"
    family = "mlp"
    key = "mlp"
    binarize = "blocks"
    binary_forms = frozenset({"weights", "activations", "attention"})
    per_token = True
    Attrs = MlpAttrs

    @classmethod
    def resolve(cls, r: Resolve) -> MlpAttrs:
        a = r.args
        if ("ratio" in a) == ("hidden" in a):
            raise r.error("'mlp' takes exactly one of ratio or hidden", f"expected `{cls.words['mlp'].usage}`")
        hidden = a["hidden"] if "hidden" in a else round(a["ratio"] * r.ins[0].dim)
        if hidden <= 0:
            raise r.error(f"mlp ratio {a['ratio']:g} gives no hidden units for dim {r.ins[0].dim}", at="ratio")
        return MlpAttrs(hidden, r.settings.binary(cls.binarize))

    @classmethod
    def shape(cls, node: Node, ins: list[TensorType]) -> TensorType:
        x, a = ins[0], node.attrs
        need_tokens(node, x, "mlp")
        if a.binary and a.hidden % x.dim:
            raise node_error(node, f"binary mlp hidden {a.hidden} is not a multiple of dim {x.dim}",
                             "BinaryViT's shortcuts repeat and average the channels")
        return x

    @classmethod
    def params(cls, node: Node, ins: list[TensorType]) -> dict[str, Param]:
        d, h, n, b = ins[0].dim, node.attrs.hidden, node.name, node.attrs.binary
        if not b:
            return {**linear_params(f"{n}.fc1", d, h), **linear_params(f"{n}.fc2", h, d)}
        return {**blu_params(f"{n}.fc1", d, h, False, "weights" in b), **blu_params(f"{n}.fc2", h, d, False, "weights" in b)}

    @classmethod
    def buffers(cls, node: Node, ins: list[TensorType]) -> dict[str, Buffer]:
        if not node.attrs.binary:
            return {}
        d, h, n = ins[0].dim, node.attrs.hidden, node.name
        return {**batchnorm_buffers(f"{n}.fc1.norm", h), **batchnorm_buffers(f"{n}.fc2.norm", d)}

    @classmethod
    def macs(cls, node: Node, ins: list[TensorType]) -> tuple[int, int]:
        x = ins[0]
        return binary_split(node.attrs.binary, 2 * x.tokens * x.dim * node.attrs.hidden)
