"""`norm layer|batch [eps E]` (a model setting) names the norm every block and the head
use; the norm op is what the language places before each residual branch and before the
head. LayerNorm normalises each token; BatchNorm (BinaryViT) normalises each channel
over the batch and the tokens, with running statistics."""
from __future__ import annotations

from dataclasses import dataclass

from ..ir import Node, TensorType
from . import Buffer, OpDef, Param, batchnorm_buffers, need_tokens, norm_params, register


@dataclass(frozen=True)
class NormAttrs:
    kind: str
    eps: float


@register
class Norm(OpDef):
    """LayerNorm or BatchNorm over channels."""

    name = "norm"
    per_token = True  # in eval mode (BatchNorm's running statistics); dead-token elimination runs on eval graphs
    Attrs = NormAttrs

    @classmethod
    def shape(cls, node: Node, ins: list[TensorType]) -> TensorType:
        need_tokens(node, ins[0], "a norm")
        return ins[0]

    @classmethod
    def params(cls, node: Node, ins: list[TensorType]) -> dict[str, Param]:
        return norm_params(node.name, ins[0].dim)

    @classmethod
    def buffers(cls, node: Node, ins: list[TensorType]) -> dict[str, Buffer]:
        return batchnorm_buffers(node.name, ins[0].dim) if node.attrs.kind == "batch" else {}
