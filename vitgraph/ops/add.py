"""The residual sum of two or more branches of the same shape."""
from __future__ import annotations

from dataclasses import dataclass

from ..ir import Node, TensorType
from . import OpDef, node_error, register


@dataclass(frozen=True)
class AddAttrs:
    pass


@register
class Add(OpDef):
    """Residual sum of two or more branches."""

    name = "add"
    per_token = True
    Attrs = AddAttrs

    @classmethod
    def shape(cls, node: Node, ins: list[TensorType]) -> TensorType:
        first = ins[0]
        for other in ins[1:]:
            if other.shape != first.shape:
                raise node_error(node, f"residual add of {first} and {other}: shapes differ")
        return first
