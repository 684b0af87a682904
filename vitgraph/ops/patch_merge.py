"""`stage D depth N downsample patch-merge`: Swin's patch merging (Liu et al. 2021; official
code microsoft/Swin-Transformer `PatchMerging`, the same in aanna0701/SPT_LSA_ViT
models/swin.py and timm): each 2x2 neighbourhood of the token grid concatenated on
channels in the order [x0, x1, x2, x3] = [(even row, even col), (odd row, even col),
(even row, odd col), (odd row, odd col)], then the model's LayerNorm over the 4C
features and a Linear(4C -> D) without bias (`norm`, `reduction`: timm's keys)."""
from __future__ import annotations

from ..ir import Node, TensorType
from . import Param, Resolve, linear_params, norm_params, register
from .downsample import Downsample, DownsampleAttrs


@register
class PatchMerge(Downsample):
    """Swin's patch merging: 2x2 neighbours concatenated, LayerNorm(4C), Linear(4C, D) without bias."""

    name = "patch-merge"
    kinds = {"patch-merge": {}}
    keeps_prefix = False

    @classmethod
    def resolve(cls, r: Resolve) -> DownsampleAttrs:
        if r.settings.norm != "layer":
            raise r.error(f"Swin's patch merging normalises with the model's LayerNorm, but the model's norm is "
                          f"{r.settings.norm}", "expected `norm layer`", at="downsample")
        return DownsampleAttrs(r.args["dim"], eps=r.settings.eps)

    @classmethod
    def params(cls, node: Node, ins: list[TensorType]) -> dict[str, Param]:
        c, n = ins[0].dim, node.name
        return {**norm_params(f"{n}.norm", 4 * c), **linear_params(f"{n}.reduction", 4 * c, node.attrs.dim, bias=False)}

    @classmethod
    def macs(cls, node: Node, ins: list[TensorType]) -> tuple[int, int]:
        return (node.out.tokens * 4 * ins[0].dim * node.attrs.dim, 0)
