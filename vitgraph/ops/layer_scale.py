"""`layer-scale [init E]` (CaiT: Touvron et al. 2021, "Going deeper with Image
Transformers", section 2): a learnable per-channel gamma that multiplies every residual
branch of the block before its addition, x + gamma * branch(norm(x)), gamma starting at
E (timm's default init_values, 1e-4, when not given). Its parameter is the block's own
`gamma_1`, `gamma_2`, ... (timm's keys: a tensor on the block, not a module).

E may vary with depth through `index`: the small-datasets paper's official code
(models/cait.py, LayerScale) starts layer index+1 <= 18 at 0.1, up to 24 at 1e-5 and
deeper ones at 1e-6:

    layer-scale init (0.1 if index < 18 else (1e-5 if index < 24 else 1e-6))
"""
from __future__ import annotations

from dataclasses import dataclass

from ..ir import Node, TensorType
from ..lang import Schema
from . import OpDef, Param, Resolve, register

TIMM_INIT = 1e-4  # timm's Cait init_values


@dataclass(frozen=True)
class LayerScaleAttrs:
    init: float = TIMM_INIT


@register
class LayerScale(OpDef):
    """Per-channel gamma on each residual branch (CaiT's LayerScale)."""

    name = "layer-scale"
    words = {"layer-scale": Schema((), {"init": "real"}, usage="layer-scale init 1e-5")}
    role = "modifier"
    key = "gamma"
    per_token = True
    Attrs = LayerScaleAttrs

    @classmethod
    def member(cls, branch: int) -> str:
        return f"gamma_{branch}"

    @classmethod
    def resolve(cls, r: Resolve) -> LayerScaleAttrs:
        return LayerScaleAttrs(r.args.get("init", TIMM_INIT))

    @classmethod
    def params(cls, node: Node, ins: list[TensorType]) -> dict[str, Param]:
        return {node.name: Param((ins[0].dim,), node.attrs.init)}
