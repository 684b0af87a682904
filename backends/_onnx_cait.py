"""The ONNX lowerings of CaiT's op units (Touvron et al. 2021, "Going deeper with Image
Transformers"): class attention is the full-precision attention lowering
(backends/_onnx_lower.py) with the class tokens' queries and, where it says so, keys and
values of the stream's raw patch tokens; LayerScale is a Mul by the block's `gamma_k`."""
from __future__ import annotations

from vitgraph.ir import Node, TensorType
from vitgraph.ops.class_attention import ClassAttention
from vitgraph.ops.layer_scale import LayerScale

from ._onnx_lower import Lowering, _attention, onnx_lowering

onnx_lowering(ClassAttention)(_attention)


@onnx_lowering(LayerScale)
def _layer_scale(L: Lowering, node: Node, xs: list[str], ts: list[TensorType], out: str) -> str:
    return L.g.mul(xs[0], L.g.weight(node.name, L.w[node.name]), out=out)
