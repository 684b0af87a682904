"""`head token|gap|token+distill -> K`: the final norm, then a linear classifier on the
class token (ViT/DeiT), on the average of the patch tokens (BinaryViT, Swin), or on both
the class and the distillation token (DeiT: two heads, `head` and `head_dist`, whose
logits are averaged at inference)."""
from __future__ import annotations

from dataclasses import dataclass

from ..ir import Node, TensorType
from ..lang import Schema
from . import OpDef, Param, Resolve, linear_params, need_tokens, node_error, register


@dataclass(frozen=True)
class HeadAttrs:
    kind: str
    classes: int


def dist_name(node: Node) -> str:
    """The distillation head's module path: `head_dist` beside `head` (DeiT's key)."""
    return f"{node.name}_dist"


@register
class Head(OpDef):
    """Classifier on the cls token, the average of all tokens, or cls+distill."""

    name = "head"
    words = {"head": Schema(("choice:kind:token|gap|token+distill", "arrow", "int:classes"),
                            usage="head token -> classes")}
    role = "layer"
    default_name = "head"
    once = True
    Attrs = HeadAttrs

    @classmethod
    def resolve(cls, r: Resolve) -> HeadAttrs:
        return HeadAttrs(r.args["kind"], r.args["classes"])

    @classmethod
    def shape(cls, node: Node, ins: list[TensorType]) -> TensorType:
        x, kind = ins[0], node.attrs.kind
        need_tokens(node, x, "head")
        need = 2 if kind == "token+distill" else 1 if kind == "token" else 0
        if x.prefix < need:
            want = "`tokens cls distill`" if kind == "token+distill" else "`tokens cls`"
            raise node_error(node, f"head {kind} reads the {'distill' if need == 2 else 'cls'} token, "
                                   f"but the model has {x.prefix} extra token(s)", f"expected {want}, or `head gap`")
        return TensorType(("B", node.attrs.classes))

    @classmethod
    def params(cls, node: Node, ins: list[TensorType]) -> dict[str, Param]:
        d, k = ins[0].dim, node.attrs.classes
        out = linear_params(node.name, d, k)
        if node.attrs.kind == "token+distill":
            out.update(linear_params(dist_name(node), d, k))
        return out

    @classmethod
    def macs(cls, node: Node, ins: list[TensorType]) -> tuple[int, int]:
        heads = 2 if node.attrs.kind == "token+distill" else 1
        return (heads * ins[0].dim * node.attrs.classes, 0)
