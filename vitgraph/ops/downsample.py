"""Pyramid stage transitions, named in a stage's header (`stage D depth N downsample KIND`):
each halves the token grid and changes the width to the stage's D.

* `pit` — PiT's pooling (naver-ai/pit, Heo et al. 2021): patch tokens through a stride-2
  depthwise 3x3 conv, the prefix (class) tokens through a Linear;
* `pit-pointwise` — the PiT of "Vision Transformer for Small-Size Datasets" (official
  code aanna0701/SPT_LSA_ViT models/pit.py: DepthWiseConv2d): the depthwise conv followed
  by a 1x1 pointwise conv;
* `spt` — Shifted Patch Tokenization as merging (the same paper's SL-PiT and SL-Swin):
  patch 2 (shift 1) on the patch tokens, prefix tokens through a Linear;
* `merge` — BinaryViT's transition (Le & Li 2023): BatchNorm, a 2x2 stride-2 conv, BatchNorm;
  binary: the conv reads sign(y + move) with binary weights, plus an AvgPool(2) shortcut
  with the channels repeated, then RPReLU; full precision (BinaryViT*): none of those."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ..ir import Node, TensorType
from . import (BATCHNORM_EPS, Buffer, OpDef, Param, Resolve, batchnorm_buffers, binary_split, conv_params, linear_params,
               need_grid, node_error, norm_params, register, rprelu_params, tokens_type)
from .shift_tokenize import SPT_EPS, spt_features


@dataclass(frozen=True)
class DownsampleAttrs:
    dim: int
    pointwise: bool = False
    eps: float | None = None   # the norm's, where the transition has one of its own
    binary: tuple[str, ...] = ()


class Downsample(OpDef):
    """A stage transition: halves the grid, changes the width."""

    role = "downsample"
    family = "downsample"
    Attrs = DownsampleAttrs
    kinds: ClassVar[dict[str, dict[str, Any]]] = {}  # downsample KIND -> attribute presets
    keeps_prefix: ClassVar[bool] = True             # class tokens carried through a Linear

    @classmethod
    def resolve(cls, r: Resolve) -> DownsampleAttrs:
        return DownsampleAttrs(r.args["dim"], **cls.kinds[r.args["kind"]])

    @classmethod
    def halved(cls, node: Node, x: TensorType) -> tuple[int, int]:
        gh, gw = need_grid(node, x, "downsample")
        if gh % 2 or gw % 2:
            raise node_error(node, f"downsample halves the token grid, but the grid {gh}x{gw} is odd",
                             "expected an even grid: choose image and patch so that image/patch is even at every stage")
        if x.prefix and not cls.keeps_prefix:
            raise node_error(node, f"{cls.name} downsampling needs patch tokens only, found {x.prefix} extra token(s)")
        return gh // 2, gw // 2

    @classmethod
    def shape(cls, node: Node, ins: list[TensorType]) -> TensorType:
        x = ins[0]
        h2, w2 = cls.halved(node, x)
        return tokens_type(x.prefix + h2 * w2, node.attrs.dim, (h2, w2), x.prefix)

    @classmethod
    def prefix_params(cls, node: Node, x: TensorType) -> dict[str, Param]:
        return linear_params(f"{node.name}.fc", x.dim, node.attrs.dim) if x.prefix else {}


@register
class PitPool(Downsample):
    """PiT pooling: depthwise 3x3 stride-2 conv (+ 1x1 pointwise conv), class tokens through a Linear."""

    name = "pit-pool"
    kinds = {"pit": {}, "pit-pointwise": {"pointwise": True}}

    @classmethod
    def shape(cls, node: Node, ins: list[TensorType]) -> TensorType:
        if node.attrs.dim % ins[0].dim:
            raise node_error(node, f"PiT pooling is a depthwise conv: stage dim {node.attrs.dim} must be a multiple "
                                   f"of {ins[0].dim}")
        return super().shape(node, ins)

    @classmethod
    def params(cls, node: Node, ins: list[TensorType]) -> dict[str, Param]:
        x, d2, n = ins[0], node.attrs.dim, node.name
        out = conv_params(f"{n}.conv", d2, 1, 3, 3)
        if node.attrs.pointwise:
            out.update(conv_params(f"{n}.pointwise", d2, d2, 1, 1))
        return {**out, **cls.prefix_params(node, x)}

    @classmethod
    def macs(cls, node: Node, ins: list[TensorType]) -> tuple[int, int]:
        x, d2 = ins[0], node.attrs.dim
        n2 = node.out.tokens - x.prefix
        pointwise = n2 * d2 * d2 if node.attrs.pointwise else 0
        return (n2 * d2 * 9 + pointwise + x.prefix * x.dim * d2, 0)


@register
class SptMerge(Downsample):
    """SPT merging (patch 2, shift 1) on the patch tokens, class tokens through a Linear."""

    name = "spt-merge"
    kinds = {"spt": {"eps": SPT_EPS}}

    @classmethod
    def params(cls, node: Node, ins: list[TensorType]) -> dict[str, Param]:
        x, n = ins[0], node.name
        f = spt_features(x.dim, 2)
        return {**norm_params(f"{n}.norm", f), **linear_params(f"{n}.proj", f, node.attrs.dim),
                **cls.prefix_params(node, x)}

    @classmethod
    def macs(cls, node: Node, ins: list[TensorType]) -> tuple[int, int]:
        x, d2 = ins[0], node.attrs.dim
        n2 = node.out.tokens - x.prefix
        return (n2 * spt_features(x.dim, 2) * d2 + x.prefix * x.dim * d2, 0)




@register
class Merge(Downsample):
    """BinaryViT's merging transition: BN, 2x2 stride-2 (binary) conv, BN (+ pooled shortcut, RPReLU)."""

    name = "merge"
    kinds = {"merge": {}}
    keeps_prefix = False
    binarize = "transitions"
    binary_forms = frozenset({"weights", "activations", "attention"})

    @classmethod
    def resolve(cls, r: Resolve) -> DownsampleAttrs:
        return DownsampleAttrs(r.args["dim"], eps=BATCHNORM_EPS, binary=r.settings.binary(cls.binarize))

    @classmethod
    def shape(cls, node: Node, ins: list[TensorType]) -> TensorType:
        out = super().shape(node, ins)
        if node.attrs.binary and node.attrs.dim % ins[0].dim:
            raise node_error(node, f"stage dim {node.attrs.dim} is not a multiple of the previous dim {ins[0].dim}",
                             "BinaryViT's merging shortcut repeats the channels")
        return out

    @classmethod
    def params(cls, node: Node, ins: list[TensorType]) -> dict[str, Param]:
        d, d2, n, b = ins[0].dim, node.attrs.dim, node.name, node.attrs.binary
        out = norm_params(f"{n}.norm0", d)
        if b:
            out[f"{n}.move"] = Param((d,), 0.0)
        out.update(conv_params(f"{n}.conv", d2, d, 2, 2, bias=False, binary="weights" in b))
        out.update(norm_params(f"{n}.norm", d2))
        if b:
            out.update(rprelu_params(f"{n}.act", d2))
        return out

    @classmethod
    def buffers(cls, node: Node, ins: list[TensorType]) -> dict[str, Buffer]:
        return {**batchnorm_buffers(f"{node.name}.norm0", ins[0].dim), **batchnorm_buffers(f"{node.name}.norm",
                                                                                             node.attrs.dim)}

    @classmethod
    def macs(cls, node: Node, ins: list[TensorType]) -> tuple[int, int]:
        return binary_split(node.attrs.binary, node.out.tokens * ins[0].dim * 4 * node.attrs.dim)


def downsample_kinds() -> dict[str, type[Downsample]]:
    """`downsample KIND` -> the op unit that implements it."""
    from . import OPS

    return {kind: op for op in OPS.values() if isinstance(op, type) and issubclass(op, Downsample)
            for kind in op.kinds}
