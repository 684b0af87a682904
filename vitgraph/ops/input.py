"""`input C x H x W`: the image batch, (B, C, H, W)."""
from __future__ import annotations

from dataclasses import dataclass

from ..ir import Node, TensorType
from ..lang import Schema
from . import OpDef, Resolve, register


@dataclass(frozen=True)
class InputAttrs:
    channels: int
    height: int
    width: int


@register
class Input(OpDef):
    """The image batch, (B, C, H, W)."""

    name = "input"
    words = {"input": Schema(("int:channels", "lit:x", "int:height", "lit:x", "int:width"),
                             usage="input 3 x image x image")}
    role = "layer"
    default_name = "input"
    once = True
    Attrs = InputAttrs

    @classmethod
    def resolve(cls, r: Resolve) -> InputAttrs:
        return InputAttrs(r.args["channels"], r.args["height"], r.args["width"])

    @classmethod
    def shape(cls, node: Node, ins: list[TensorType]) -> TensorType:
        a = node.attrs
        return TensorType(("B", a.channels, a.height, a.width))
