"""T2T-ViT as "Vision Transformer for Small-Size Datasets" (Lee, Lee, Song 2021) builds it
(official code aanna0701/SPT_LSA_ViT models/t2t.py, after Yuan et al. 2021's
Tokens-to-Token ViT):

* `soft-split K [stride S] [padding P] [shift s]`: nn.Unfold on the image or on a token
  grid: every K x K window (stride S, zero padding P) becomes one token of C·K·K features
  ordered (c, ki, kj), as Unfold orders them. `shift s` first concatenates the input with
  its four diagonal shifts by s pixels (zero padded) on channels, [x, left-up, right-up,
  left-down, right-down] (5C): SL-T2T's PatchShifting(2s). Written in a blocks body it
  applies to the block's stream where it stands: T2T's re-structurization of the tokens
  into their grid and the next soft split, after each token transformer.
* `token-attention -> D` / `token-lsa -> D`: the token transformer's attention: one
  head, qkv from the input width C to D, the score scale C^-1/2 (the official code takes
  head_dim = dim // num_heads from the INPUT width), proj D -> D, and v as its shortcut in
  place of the block's residual: v + proj(softmax(q kᵀ · scale) v) is the stream
  (`residual = False`). `token-lsa`: LSA's learnable temperature (starting at that
  scale) and masked diagonal (-inf). The official code sizes each LSA mask from the image
  size, (img/2)² and (img/4)² tokens in the token transformers and the final grid + 1 in
  the backbone; those are the actual token counts wherever it runs, so here each mask is
  sized by its input's tokens.
* `t2t-attention heads H ...` / `t2t-lsa heads H ...`: the backbone's attention. The
  official backbone reuses the token transformer's Attention class, whose shortcut with
  more than one head is its own input, so its blocks compute x + (attn(n) + n) with
  n = norm1(x), not x + attn(n).
* `project -> D`: the Linear from the last soft split's features to the embedding width.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..ir import Node, TensorType
from ..lang import Schema
from . import OpDef, Param, Resolve, linear_params, need_tokens, node_error, register, tokens_type
from .attention import Attention, AttentionAttrs, head_dim

if TYPE_CHECKING:
    import numpy as np

SHIFT_VIEWS = 5  # the input and its four diagonal shifts


# -- soft split --------------------------------------------------------------------------------
@dataclass(frozen=True)
class SoftSplitAttrs:
    kernel: int
    stride: int = 1
    padding: int = 0
    shift: int = 0


def split_input(node: Node, x: TensorType) -> tuple[int, int, int]:
    """(channels, height, width) of what a soft split unfolds: an image, or a token grid
    without class tokens."""
    if x.rank == 4:
        _, c, h, w = x.shape
        return int(c), int(h), int(w)
    need_tokens(node, x, "soft-split")
    if x.grid is None:
        raise node_error(node, f"soft-split needs a token grid, but {x} has none")
    if x.prefix:
        raise node_error(node, f"soft-split needs a token grid without class tokens, but its input {x} "
                               f"has {x.prefix} leading class token(s)", "expected it before `tokens cls`")
    return x.dim, x.grid[0], x.grid[1]


@register
class SoftSplit(OpDef):
    """Soft split (nn.Unfold) of the image or token grid, optionally patch-shifted first."""

    name = "soft-split"
    words = {"soft-split": Schema(("int:kernel",), {"stride": "int", "padding": "num", "shift": "int"},
                                  usage="soft-split 3 stride 2 padding 1 shift 1")}
    role = "layer"
    in_blocks = True
    family = "soft-split"
    key = "soft_split"
    default_name = "soft_split"
    Attrs = SoftSplitAttrs

    @classmethod
    def resolve(cls, r: Resolve) -> SoftSplitAttrs:
        padding = r.args.get("padding", 0)
        if padding != int(padding):
            raise r.error(f"padding {padding:g} is not a whole number of pixels", "expected e.g. `padding 1`",
                          at="padding")
        return SoftSplitAttrs(r.args["kernel"], r.args.get("stride", 1), int(padding), r.args.get("shift", 0))

    @classmethod
    def shape(cls, node: Node, ins: list[TensorType]) -> TensorType:
        a = node.attrs
        c, h, w = split_input(node, ins[0])
        if a.kernel > min(h, w) + 2 * a.padding:
            raise node_error(node, f"soft-split kernel {a.kernel} is larger than its padded input "
                                   f"{h + 2 * a.padding}x{w + 2 * a.padding}",
                             f"expected a kernel of at most {min(h, w) + 2 * a.padding}, or more padding")
        oh, ow = ((h + 2 * a.padding - a.kernel) // a.stride + 1, (w + 2 * a.padding - a.kernel) // a.stride + 1)
        views = SHIFT_VIEWS if a.shift else 1
        return tokens_type(oh * ow, views * c * a.kernel * a.kernel, (oh, ow), 0)


# -- the token transformer's attention ---------------------------------------------------------
@dataclass(frozen=True)
class TokenAttentionAttrs:
    dim: int          # q, k, v and output width (T2T's token_dim)
    scale: float      # input width ** -0.5: the score scale, and LSA's starting temperature
    qkv_bias: bool
    lsa: bool = False


def offdiag(n: int) -> "np.ndarray":
    """(n, n) bool: False on the diagonal (LSA's mask: each token's score with itself)."""
    import numpy as np

    return ~np.eye(n, dtype=bool)


@register
class TokenAttention(OpDef):
    """T2T's token-transformer attention: one head, input-width scale, v shortcut."""

    name = "token-attention"
    words = {
        "token-attention": Schema(("arrow", "int:dim"), {"qkv-bias": "bool"},
                                  usage="token-attention -> 64 qkv-bias false"),
        "token-lsa": Schema(("arrow", "int:dim"), {"qkv-bias": "bool"}, usage="token-lsa -> 64 qkv-bias false"),
    }
    role = "mixer"
    family = "token-attention"
    key = "attn"
    residual = False  # v + proj(...) is the stream: the official shortcut, since the width changes
    Attrs = TokenAttentionAttrs

    @classmethod
    def resolve(cls, r: Resolve) -> TokenAttentionAttrs:
        return TokenAttentionAttrs(r.args["dim"], r.ins[0].dim ** -0.5, r.args.get("qkv-bias", True),
                                   r.word == "token-lsa")

    @classmethod
    def shape(cls, node: Node, ins: list[TensorType]) -> TensorType:
        x = ins[0]
        need_tokens(node, x, node.op.name)
        return tokens_type(x.tokens, node.attrs.dim, x.grid, x.prefix)

    @classmethod
    def params(cls, node: Node, ins: list[TensorType]) -> dict[str, Param]:
        a, n = node.attrs, node.name
        out = {**linear_params(f"{n}.qkv", ins[0].dim, 3 * a.dim, a.qkv_bias),
               **linear_params(f"{n}.proj", a.dim, a.dim)}
        if a.lsa:
            out[f"{n}.temperature"] = Param((1,), a.scale)
        return out

    @classmethod
    def constants(cls, node: Node, ins: list[TensorType]) -> "dict[str, np.ndarray]":
        return {"offdiag": offdiag(ins[0].tokens)} if node.attrs.lsa else {}

    @classmethod
    def macs(cls, node: Node, ins: list[TensorType]) -> tuple[int, int]:
        n, c, d = ins[0].tokens, ins[0].dim, node.attrs.dim
        return (n * c * 3 * d + 2 * n * n * d + n * d * d, 0)


# -- the backbone's attention --------------------------------------------------------------------
_T2T_OPTIONS = {"heads": "int", "head-dim": "int", "qkv-bias": "bool"}


@register
class T2TAttention(Attention):
    """Multi-head self-attention (or LSA) that adds its own input: the small-datasets T2T backbone's."""

    name = "t2t-attention"
    words = {
        "t2t-attention": Schema((), _T2T_OPTIONS, usage="t2t-attention heads 4 qkv-bias false"),
        "t2t-lsa": Schema((), _T2T_OPTIONS, usage="t2t-lsa heads 4 qkv-bias false"),
    }
    family = "t2t-attention"
    binarize = None
    binary_forms = frozenset()

    @classmethod
    def resolve(cls, r: Resolve) -> AttentionAttrs:
        if "heads" not in r.args:
            raise r.error(f"'{r.word}' is missing its heads", f"expected `{cls.words[r.word].usage}`")
        return AttentionAttrs(r.args["heads"], head_dim(r, r.ins[0].dim), r.args.get("qkv-bias", True),
                              r.word == "t2t-lsa")


# -- projection ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ProjectAttrs:
    dim: int


@register
class Project(OpDef):
    """Linear projection of every token to a new width (T2T's `project`)."""

    name = "project"
    words = {"project": Schema(("arrow", "int:dim"), usage="project -> 256")}
    role = "layer"
    family = "project"
    default_name = "project"
    per_token = True
    Attrs = ProjectAttrs

    @classmethod
    def resolve(cls, r: Resolve) -> ProjectAttrs:
        return ProjectAttrs(r.args["dim"])

    @classmethod
    def shape(cls, node: Node, ins: list[TensorType]) -> TensorType:
        x = ins[0]
        need_tokens(node, x, "project")
        return tokens_type(x.tokens, node.attrs.dim, x.grid, x.prefix)

    @classmethod
    def params(cls, node: Node, ins: list[TensorType]) -> dict[str, Param]:
        return linear_params(node.name, ins[0].dim, node.attrs.dim)

    @classmethod
    def macs(cls, node: Node, ins: list[TensorType]) -> tuple[int, int]:
        return (ins[0].tokens * ins[0].dim * node.attrs.dim, 0)
