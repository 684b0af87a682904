"""`pool-branches 3x1 1x3 5x1 1x5` (BinaryViT, Le & Li 2023): average-pooling branches
(stride 1, same padding, padding counted) on the normalised input of the mixer written
before them, each with its own per-channel affine (scale and shift, both starting at 0),
summed into that residual branch's output."""
from __future__ import annotations

from dataclasses import dataclass

from ..ir import Node, TensorType
from ..lang import Schema
from . import OpDef, Param, Resolve, node_error, need_tokens, register


@dataclass(frozen=True)
class PoolBranchesAttrs:
    kernels: tuple[tuple[int, int], ...]


@register
class PoolBranches(OpDef):
    """BinaryViT: sum of per-branch affine(AvgPool2d_k(x))."""

    name = "pool-branches"
    words = {"pool-branches": Schema(("kernels:kernels",), usage="pool-branches 3x1 1x3 5x1 1x5")}
    role = "parallel"
    key = "pool"
    Attrs = PoolBranchesAttrs

    @classmethod
    def resolve(cls, r: Resolve) -> PoolBranchesAttrs:
        return PoolBranchesAttrs(tuple(tuple(k) for k in r.args["kernels"]))

    @classmethod
    def shape(cls, node: Node, ins: list[TensorType]) -> TensorType:
        x = ins[0]
        need_tokens(node, x, "pool-branches")
        if x.grid is None or x.prefix:
            raise node_error(node, f"pool-branches need a token grid without cls/distill tokens, found {x.prefix} "
                                   "extra token(s)", "expected a gap head and no `tokens` statement")
        gh, gw = x.grid
        for kh, kw in node.attrs.kernels:
            if kh % 2 == 0 or kw % 2 == 0:
                raise node_error(node, f"pooling kernel {kh}x{kw} has an even side; expected odd sides for same padding")
            if kh > gh or kw > gw:
                raise node_error(node, f"pooling kernel {kh}x{kw} is larger than the token grid {gh}x{gw}",
                                 f"expected kernels no larger than {gh}x{gw}: a bigger image or a smaller patch")
        return x

    @classmethod
    def params(cls, node: Node, ins: list[TensorType]) -> dict[str, Param]:
        d = ins[0].dim
        out: dict[str, Param] = {}
        for i in range(len(node.attrs.kernels)):
            out[f"{node.name}.branches.{i}.scale"] = Param((d,), 0.0)
            out[f"{node.name}.branches.{i}.shift"] = Param((d,), 0.0)
        return out
