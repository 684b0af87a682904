"""`shift-tokenize P -> D`: Shifted Patch Tokenization ("Vision Transformer for Small-Size
Datasets", Lee, Lee, Song 2021; official code aanna0701/SPT_LSA_ViT models/SPT.py): the
image and its four diagonal half-patch shifts (zero padded) concatenated on channels
([x, left-up, right-up, left-down, right-down], 5C), cut into p x p patches flattened as
(p1, p2, c), LayerNorm over the 5Cp² features, Linear to D."""
from __future__ import annotations

from dataclasses import dataclass

from ..ir import Node, TensorType
from ..lang import Schema
from . import OpDef, Param, Resolve, linear_params, norm_params, register
from .patchify import patch_tokens

SPT_EPS = 1e-5  # the official SPT's LayerNorm keeps PyTorch's default eps


def spt_features(channels: int, patch: int) -> int:
    """The width of one shifted patch: 5 views x C channels x p x p."""
    return 5 * channels * patch * patch


@dataclass(frozen=True)
class ShiftTokenizeAttrs:
    patch: int
    dim: int
    eps: float = SPT_EPS


@register
class ShiftTokenize(OpDef):
    """Shifted Patch Tokenization: 4 diagonal half-patch shifts, concat, LayerNorm, Linear."""

    name = "shift-tokenize"
    words = {"shift-tokenize": Schema(("int:patch", "arrow", "int:dim"), usage="shift-tokenize patch -> 192")}
    role = "layer"
    family = "tokenizer"
    default_name = "patch_embed"
    Attrs = ShiftTokenizeAttrs

    @classmethod
    def resolve(cls, r: Resolve) -> ShiftTokenizeAttrs:
        return ShiftTokenizeAttrs(r.args["patch"], r.args["dim"])

    @classmethod
    def shape(cls, node: Node, ins: list[TensorType]) -> TensorType:
        return patch_tokens(node, ins[0])

    @classmethod
    def params(cls, node: Node, ins: list[TensorType]) -> dict[str, Param]:
        f = spt_features(int(ins[0].shape[1]), node.attrs.patch)
        return {**norm_params(f"{node.name}.norm", f), **linear_params(f"{node.name}.proj", f, node.attrs.dim)}

    @classmethod
    def macs(cls, node: Node, ins: list[TensorType]) -> tuple[int, int]:
        return (node.out.tokens * spt_features(int(ins[0].shape[1]), node.attrs.patch) * node.attrs.dim, 0)
