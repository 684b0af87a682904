"""Conv patch embeddings: `patchify P -> D` (ViT/DeiT: a p x p stride-p conv) and
`stem conv P -> D [precision fp|binary]` (BinaryViT, Swin: the same conv followed by the
model's norm). Both are one op; the stem's binary form (precision binary) signs its input
and binarizes its weights (BinaryViT's binary convs: sign(W) times the per-output-channel
mean |W|). `fans linear` initialises the conv as the nn.Linear over flattened patches that
the small-datasets code's ViT and CaiT use (xavier's fan-out is dim, not dim x p x p); the map
and its parameters are the same."""
from __future__ import annotations

from dataclasses import dataclass, replace

from ..ir import Node, TensorType
from ..lang import Schema
from . import (OpDef, Param, Resolve, batchnorm_buffers, Buffer, binary_split, conv_params, node_error, norm_params,
               register, tokens_type)


@dataclass(frozen=True)
class PatchifyAttrs:
    patch: int
    dim: int
    bias: bool = True
    norm: str = "none"          # none | layer | batch: the norm after the conv
    eps: float | None = None
    binary: tuple[str, ...] = ()
    fans: str | None = None     # linear: initialised as nn.Linear over flattened patches (fan-out dim)


def grid_of(node: Node, image: TensorType, patch: int) -> tuple[int, int]:
    """The token grid of cutting an image (B, C, H, W) into patch x patch patches."""
    if image.rank != 4:
        raise node_error(node, f"'{node.op.name}' expects an image (B, C, H, W), but its input is {image}",
                         "expected exactly one patch embedding, right after `input`")
    _, c, h, w = image.shape
    for side, size in (("height", h), ("width", w)):
        if size % patch:
            raise node_error(node, f"patch {patch} does not divide the image {side} {size}",
                             f"expected a patch size that divides {size}, e.g. "
                             + ", ".join(str(p) for p in range(2, size) if size % p == 0 and p <= 32)[:40])
    return (h // patch, w // patch)


def patch_tokens(node: Node, image: TensorType) -> TensorType:
    """The tokens of cutting `image` into the node's patch x patch patches, at its dim."""
    gh, gw = grid_of(node, image, node.attrs.patch)
    return tokens_type(gh * gw, node.attrs.dim, (gh, gw), 0)


@register
class Patchify(OpDef):
    """p x p stride-p conv patch embedding (DeiT), or a conv stem with a norm (BinaryViT, Swin)."""

    name = "patchify"
    words = {
        "patchify": Schema(("int:patch", "arrow", "int:dim"), {"bias": "bool", "fans": "choice:conv|linear"},
                           usage="patchify patch -> 192 fans linear"),
        "stem": Schema(("choice:kind:conv", "int:patch", "arrow", "int:dim"),
                       {"precision": "choice:fp|binary", "bias": "bool"}, usage="stem conv 4 -> 64 precision fp"),
    }
    role = "layer"
    family = "tokenizer"
    default_name = "patch_embed"
    binarize = "stem"
    binary_forms = frozenset({"weights", "activations"})
    Attrs = PatchifyAttrs

    @classmethod
    def resolve(cls, r: Resolve) -> PatchifyAttrs:
        a = r.args
        if r.word == "patchify":
            fans = a.get("fans", "conv")
            return PatchifyAttrs(a["patch"], a["dim"], a.get("bias", True), fans=None if fans == "conv" else fans)
        binary = ("weights", "activations") if a.get("precision", "fp") == "binary" else ()
        return PatchifyAttrs(a["patch"], a["dim"], a.get("bias", True), r.settings.norm, r.settings.eps, binary)

    @classmethod
    def shape(cls, node: Node, ins: list[TensorType]) -> TensorType:
        return patch_tokens(node, ins[0])

    @classmethod
    def params(cls, node: Node, ins: list[TensorType]) -> dict[str, Param]:
        a, c = node.attrs, int(ins[0].shape[1])
        out = conv_params(f"{node.name}.proj", a.dim, c, a.patch, a.patch, a.bias, "weights" in a.binary)
        if a.fans == "linear":  # the same map, counted as the official code's nn.Linear(c*p*p, dim)
            out[f"{node.name}.proj.weight"] = replace(out[f"{node.name}.proj.weight"], fan_out=a.dim)
        if a.norm != "none":
            out.update(norm_params(f"{node.name}.norm", a.dim))
        return out

    @classmethod
    def buffers(cls, node: Node, ins: list[TensorType]) -> dict[str, Buffer]:
        return batchnorm_buffers(f"{node.name}.norm", node.attrs.dim) if node.attrs.norm == "batch" else {}

    @classmethod
    def macs(cls, node: Node, ins: list[TensorType]) -> tuple[int, int]:
        a, c = node.attrs, int(ins[0].shape[1])
        return binary_split(a.binary, node.out.tokens * c * a.patch * a.patch * a.dim)
