"""The torch lowerings of CaiT's op units (Touvron et al. 2021, "Going deeper with Image
Transformers"): class attention is the full-precision attention module
(backends/_torch_layers.py) reading the block's stream beside its normalised input, and
LayerScale is the block's own `gamma_k` parameter (timm's key) multiplying the branch."""
from __future__ import annotations

import functools
from typing import Any, Callable

from torch import Tensor, nn

from vitgraph.ir import Node, TensorType
from vitgraph.ops.class_attention import ClassAttention
from vitgraph.ops.layer_scale import LayerScale

from ._torch_layers import Attention
from ._torch_registry import lowering_for, module_for

module_for(ClassAttention)(Attention)


def _scale(owner: nn.Module, attr: str, x: Tensor) -> Tensor:
    return getattr(owner, attr) * x


@lowering_for(LayerScale)
def _layer_scale(gm: Any, node: Node, ins: list[TensorType]) -> Callable[[Tensor], Tensor]:
    owner, leaf = gm.parameter_at(node.name, (ins[0].dim,))
    return functools.partial(_scale, owner, leaf)
