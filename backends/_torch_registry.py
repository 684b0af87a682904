"""The torch backend's table of lowerings, one per op unit (vitgraph/ops/).

A lowering takes the GraphModule being built, the node and its input types, and returns
the callable that computes the node's output from its inputs. Most ops are a module
placed at the node's name (`module_for`); the few whose parameters sit at names fixed by
published checkpoints (cls_token, pos_embed, head_dist) register them where the contract
says (`lowering_for`). tests/test_torch_backend.py checks that every op has one.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from vitgraph.ir import Node, TensorType
from vitgraph.ops import OpDef

if TYPE_CHECKING:
    from torch import nn

    from .torch_backend import GraphModule

Lowering = Callable[["GraphModule", Node, list[TensorType]], Callable[..., Any]]
TORCH_LOWERINGS: dict[type[OpDef], Lowering] = {}


def lowering_for(op: type[OpDef]) -> Callable[[Lowering], Lowering]:
    def register(fn: Lowering) -> Lowering:
        if op in TORCH_LOWERINGS:
            raise ValueError(f"torch backend: {op.name} has two lowerings")
        TORCH_LOWERINGS[op] = fn
        return fn
    return register


def module_for(op: type[OpDef]) -> Callable[[Any], Any]:
    """Register a module class (or a factory of modules) built from (node, input types) and
    placed at the node's name."""
    def register(make: Callable[[Node, list[TensorType]], "nn.Module"]) -> Any:
        lowering_for(op)(lambda gm, node, ins: gm.place(node.name, make(node, ins)))
        return make
    return register
