"""`window-attention heads H window W [shift S] [head-dim d] [qkv-bias b] [lsa]`: Swin's
window multi-head self-attention (Liu et al. 2021, "Swin Transformer: Hierarchical Vision
Transformer using Shifted Windows"; official code microsoft/Swin-Transformer, the same in
aanna0701/SPT_LSA_ViT models/swin.py and timm's swin_transformer.py).

The token grid is cut into W x W windows and each token attends to the tokens of its own
window, with a learned relative-position bias added to the scores: one row of
`relative_position_bias_table` ((2W-1)^2 rows, one column per head) for each of the
(2W-1)^2 offsets between two tokens of a window, picked by `relative_position_index`.
`shift S` first rolls the grid cyclically by S tokens up and left (and back afterwards),
so that the windows straddle the previous block's window borders; tokens that the roll
brought together from opposite edges of the grid do not attend to each other (score
-100 added, the official value). Swin alternates unshifted and shifted blocks, which a
spec says with the block `index`: `shift (window // 2 if index % 2 == 1 else 0)`.
Where the window is not smaller than the grid's side, the window becomes the side and
the shift 0 (official code and timm; per side, as timm).

`lsa` is Locality Self-Attention inside each window ("Vision Transformer for Small-Size
Datasets", Lee, Lee, Song 2021, official code models/swin.py `is_LSA`): a learnable
per-head temperature (initialised to 1/sqrt(head_dim)) in place of the fixed scale, and
each token's score with itself set to -inf after the bias and the shift mask are added.

The roll and the window partition together are one permutation of the tokens, `order`
(its inverse `inverse` puts the windows back); the bias index, the permutation and the
additive `mask` (shift and LSA) are constants of the op, computed here, not parameters
and not in the state dict."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..ir import Node, TensorType
from ..lang import Schema
from . import OpDef, Param, Resolve, linear_params, need_grid, register
from .attention import head_dim

if TYPE_CHECKING:
    import numpy as np

SHIFT_MASK = -100.0  # the score added between tokens of different regions of a shifted window (official code)
_USAGE = "window-attention heads 3 window 7 shift (window // 2 if index % 2 == 1 else 0)"


@dataclass(frozen=True)
class WindowAttentionAttrs:
    heads: int
    head_dim: int
    window: tuple[int, int]   # rows and columns of a window (the grid's side where that is smaller)
    shift: tuple[int, int]    # the cyclic shift up and left (0 where the window covers the grid's side)
    qkv_bias: bool = True
    lsa: bool = False

    @property
    def inner(self) -> int:
        return self.heads * self.head_dim

    @property
    def area(self) -> int:
        """Tokens in one window."""
        return self.window[0] * self.window[1]

    @property
    def table_rows(self) -> int:
        """Relative offsets between two tokens of a window: (2 Wh - 1)(2 Ww - 1)."""
        return (2 * self.window[0] - 1) * (2 * self.window[1] - 1)


def fit_window(r: Resolve, grid: tuple[int, int], window: int, shift: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """The window and shift on each side of the grid: a side no longer than the window is
    one window, unshifted; elsewhere the window must divide the side and the shift be
    smaller than the window."""
    sides = [(side, 0) if side <= window else (window, shift) for side in grid]
    for side, (w, s) in zip(grid, sides):
        if side % w:
            raise r.error(f"window {window} does not divide the token grid {grid[0]}x{grid[1]}",
                          f"expected a window that divides {side}, or one at least {side} (one window then "
                          "covers the grid)", at="window")
        if s >= w:
            raise r.error(f"shift {shift} is not smaller than the window {w}",
                          f"expected a shift in [0, {w}), Swin's is window // 2", at="shift")
    return (sides[0][0], sides[1][0]), (sides[0][1], sides[1][1])


def window_count(a: WindowAttentionAttrs, grid: tuple[int, int]) -> int:
    return (grid[0] // a.window[0]) * (grid[1] // a.window[1])


def permutes(a: WindowAttentionAttrs, grid: tuple[int, int]) -> bool:
    """Whether the windows reorder the tokens (several windows, or a shift)."""
    return window_count(a, grid) > 1 or any(a.shift)


def masked(a: WindowAttentionAttrs) -> bool:
    """Whether scores get an additive mask beside the bias (a shift, or LSA's diagonal)."""
    return any(a.shift) or a.lsa


@register
class WindowAttention(OpDef):
    """Swin's (shifted) window attention with relative position bias; LSA inside windows."""

    name = "window-attention"
    words = {"window-attention": Schema(
        (), {"heads": "int", "head-dim": "int", "window": "int", "shift": "num", "qkv-bias": "bool"},
        frozenset({"lsa"}), usage=_USAGE)}
    role = "mixer"
    family = "window-attention"
    key = "attn"
    Attrs = WindowAttentionAttrs

    @classmethod
    def resolve(cls, r: Resolve) -> WindowAttentionAttrs:
        for need in ("heads", "window"):
            if need not in r.args:
                raise r.error(f"'{r.word}' is missing its {need}", f"expected `{_USAGE}`")
        x = r.ins[0]
        if x.rank == 3 and x.prefix:
            raise r.error(f"window attention reads a grid of patch tokens, but the stream has {x.prefix} class "
                          "token(s)", "expected no `tokens` statement (Swin has no class token) and `head gap`")
        if x.rank != 3 or x.grid is None:
            raise r.error(f"window attention needs a grid of patch tokens, but its input is {x}")
        shift = r.args.get("shift", 0.0)
        if shift != int(shift):
            raise r.error(f"shift {shift:g} is not a whole number of tokens", "expected e.g. `shift (window // 2)`",
                          at="shift")
        window, shift_2d = fit_window(r, x.grid, r.args["window"], int(shift))
        if "lsa" in r.args and window == (1, 1):
            raise r.error(f"lsa masks each token's score with itself, and the 1x1 windows here (token grid "
                          f"{x.grid[0]}x{x.grid[1]}) hold no other token",
                          "expected windows of more than one token, or no lsa", at="lsa")
        return WindowAttentionAttrs(r.args["heads"], head_dim(r, x.dim), window, shift_2d,
                                    r.args.get("qkv-bias", True), "lsa" in r.args)

    @classmethod
    def shape(cls, node: Node, ins: list[TensorType]) -> TensorType:
        need_grid(node, ins[0], "window attention")
        return ins[0]

    @classmethod
    def params(cls, node: Node, ins: list[TensorType]) -> dict[str, Param]:
        a, d, n = node.attrs, ins[0].dim, node.name
        out = {f"{n}.relative_position_bias_table": Param((a.table_rows, a.heads), "table"),
               **linear_params(f"{n}.qkv", d, 3 * a.inner, a.qkv_bias), **linear_params(f"{n}.proj", a.inner, d)}
        if a.lsa:
            out[f"{n}.temperature"] = Param((a.heads,), a.head_dim ** -0.5)
        return out

    @classmethod
    def constants(cls, node: Node, ins: list[TensorType]) -> "dict[str, np.ndarray]":
        a, grid = node.attrs, ins[0].grid
        out = {"relative_position_index": relative_position_index(a.window)}
        if permutes(a, grid):
            order = token_order(a, grid)
            out["order"], out["inverse"] = order, order.argsort()
        if masked(a):
            out["mask"] = score_mask(a, grid)
        return out

    @classmethod
    def macs(cls, node: Node, ins: list[TensorType]) -> tuple[int, int]:
        x, a = ins[0], node.attrs
        n, d = x.tokens, x.dim
        linear = n * d * 3 * a.inner + n * a.inner * d
        return (linear + 2 * n * a.area * a.inner, 0)  # each query meets the keys of its window


# -- the constants ----------------------------------------------------------------------------
def relative_position_index(window: tuple[int, int]) -> "np.ndarray":
    """(n, n) int64, n = Wh*Ww: the table row of the offset from token j to token i of a
    window (row-major), (hi - hj + Wh - 1) * (2 Ww - 1) + (wi - wj + Ww - 1)."""
    import numpy as np

    wh, ww = window
    rows, cols = np.divmod(np.arange(wh * ww), ww)
    dr = rows[:, None] - rows[None, :] + wh - 1
    dc = cols[:, None] - cols[None, :] + ww - 1
    return (dr * (2 * ww - 1) + dc).astype(np.int64)


def _window_major(a: WindowAttentionAttrs, grid: tuple[int, int]) -> "tuple[np.ndarray, np.ndarray]":
    """Row and column, on the rolled grid, of each token in window order (windows
    row-major, tokens row-major inside each window): two (N,) arrays."""
    import numpy as np

    (gh, gw), (wh, ww) = grid, a.window
    r = np.arange(gh).reshape(gh // wh, 1, wh, 1)
    c = np.arange(gw).reshape(1, gw // ww, 1, ww)
    shape = (gh // wh, gw // ww, wh, ww)
    return np.broadcast_to(r, shape).ravel(), np.broadcast_to(c, shape).ravel()


def token_order(a: WindowAttentionAttrs, grid: tuple[int, int]) -> "np.ndarray":
    """(N,) int64: the index of the input token at each position of the window-ordered,
    rolled grid. Rolling by -shift puts input token (i + s) mod H at row i."""
    import numpy as np

    rows, cols = _window_major(a, grid)
    return (((rows + a.shift[0]) % grid[0]) * grid[1] + (cols + a.shift[1]) % grid[1]).astype(np.int64)


def _region(index: "np.ndarray", side: int, window: int, shift: int) -> "np.ndarray":
    """The official mask's region of each row (column) of the rolled grid: [0, side-W),
    [side-W, side-S), [side-S, side) -> 0, 1, 2."""
    return (index >= side - window).astype(int) + (index >= side - shift).astype(int) if shift else 0 * index


def score_mask(a: WindowAttentionAttrs, grid: tuple[int, int]) -> "np.ndarray":
    """(nW, 1, n, n) float32, added to the scores of each window (broadcast over heads):
    -100 between tokens that the roll brought from different regions, -inf on the
    diagonal under LSA, 0 elsewhere. Unshifted: (1, 1, n, n)."""
    import numpy as np

    n = a.area
    if any(a.shift):
        rows, cols = _window_major(a, grid)
        region = (_region(rows, grid[0], a.window[0], a.shift[0]) * 3
                  + _region(cols, grid[1], a.window[1], a.shift[1])).reshape(-1, n)   # (nW, n)
        mask = np.where(region[:, :, None] != region[:, None, :], SHIFT_MASK, 0.0)      # (nW, n, n)
    else:
        mask = np.zeros((1, n, n))
    if a.lsa:
        mask = np.where(np.eye(n, dtype=bool), -np.inf, mask)
    return mask[:, None].astype(np.float32)
