"""`affine-residual [init S]` (BinaryViT, Le & Li 2023): a per-channel affine
x * scale + shift (scale starting at S, default 0.1; shift at 0) on every residual
branch of the block, before its addition."""
from __future__ import annotations

from dataclasses import dataclass

from ..ir import Node, TensorType
from ..lang import Schema
from . import OpDef, Param, Resolve, register


@dataclass(frozen=True)
class AffineAttrs:
    init: float = 0.1


@register
class Affine(OpDef):
    """Per-channel x * scale + shift before a residual add."""

    name = "affine"
    words = {"affine-residual": Schema((), {"init": "real"}, usage="affine-residual init 0.1")}
    role = "modifier"
    key = "affine"
    per_token = True
    Attrs = AffineAttrs

    @classmethod
    def resolve(cls, r: Resolve) -> AffineAttrs:
        return AffineAttrs(r.args.get("init", 0.1))

    @classmethod
    def params(cls, node: Node, ins: list[TensorType]) -> dict[str, Param]:
        d = ins[0].dim
        return {f"{node.name}.scale": Param((d,), node.attrs.init), f"{node.name}.shift": Param((d,), 0.0)}
