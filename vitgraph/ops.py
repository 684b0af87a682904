"""One registry of ops. For each Op: its shape rule and checks, its parameters (full
state-dict keys and shapes, the contract every backend follows), its buffers, and its
multiply-accumulates split into full-precision MACs and binary MACs (BOPs).

Counting convention (all four papers): one multiply-accumulate = 1; the attention
matmuls Q·Kᵀ and P·V are counted; norms, softmax, activations, pooling and additions are
not. OPs = MACs + BOPs / 64 (ReActNet's convention, used by BinaryViT). A linear layer
counts as BOPs only when both its weights and its inputs are binary.

Layouts the backends share (so torch weights load into ONNX and into the reference code):
  * conv weights are (out, in/groups, kh, kw); linear weights are (out, in);
  * Shifted Patch Tokenization flattens a patch as (p1, p2, c) with the 5C channels
    ordered [x, left-up, right-up, left-down, right-down] (the official SPT code);
  * a "binary linear unit" (BLU, BinaryViT) at prefix P has P.move (in), P.weight,
    optional P.bias, P.norm.{weight,bias} (BatchNorm, + running stats) and
    P.act.{shift_in,slope,shift_out} (RPReLU): out = act(norm(lin(x + move)) + shortcut(x)).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .diagnostics import SpecError
from .ir import Graph, Node, Op, TensorType

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Counts:
    """Values that add up: parameters (all, and those stored as 1 bit), MACs and BOPs."""

    params: int = 0
    binary_params: int = 0
    macs: int = 0
    bops: int = 0

    def __add__(self, other: "Counts") -> "Counts":
        return Counts(self.params + other.params, self.binary_params + other.binary_params,
                      self.macs + other.macs, self.bops + other.bops)

    @property
    def ops(self) -> float:
        return self.macs + self.bops / 64

    @property
    def fp_params(self) -> int:
        return self.params - self.binary_params

    def as_dict(self) -> dict[str, float]:
        return {"params": self.params, "binary_params": self.binary_params,
                "fp_params": self.fp_params, "macs": self.macs, "bops": self.bops, "ops": self.ops}


def _err(node: Node, msg: str, *notes: str) -> SpecError:
    return SpecError(msg, node.span, list(notes))


def tokens_type(n: int, d: int, grid: tuple[int, int] | None, prefix: int) -> TensorType:
    return TensorType(("B", n, d), grid, prefix)


# -- parameter groups ----------------------------------------------------------------
def norm_params(prefix: str, dim: int) -> dict[str, Shape]:
    return {f"{prefix}.weight": (dim,), f"{prefix}.bias": (dim,)}


def norm_buffers(prefix: str, dim: int, kind: str) -> dict[str, Shape]:
    if kind != "batch":
        return {}
    return {f"{prefix}.running_mean": (dim,), f"{prefix}.running_var": (dim,),
            f"{prefix}.num_batches_tracked": ()}


def linear_params(prefix: str, fin: int, fout: int, bias: bool = True) -> dict[str, Shape]:
    p = {f"{prefix}.weight": (fout, fin)}
    if bias:
        p[f"{prefix}.bias"] = (fout,)
    return p


def blu_params(prefix: str, fin: int, fout: int, bias: bool) -> dict[str, Shape]:
    p = {f"{prefix}.move": (fin,)}
    p.update(linear_params(prefix, fin, fout, bias))
    p.update(norm_params(f"{prefix}.norm", fout))
    p.update({f"{prefix}.act.{k}": (fout,) for k in ("shift_in", "slope", "shift_out")})
    return p


def _numel(shape: Shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


# -- the op definitions ----------------------------------------------------------------
@dataclass(frozen=True)
class OpDef:
    shape: Callable[[Node, list[TensorType]], TensorType]
    params: Callable[[Node, list[TensorType]], dict[str, Shape]]
    buffers: Callable[[Node, list[TensorType]], dict[str, Shape]]
    binary_weights: Callable[[Node, list[TensorType]], list[str]]  # keys stored as 1 bit
    macs: Callable[[Node, list[TensorType]], tuple[int, int]]        # (fp MACs, BOPs)


def _none(node: Node, ins: list[TensorType]) -> dict[str, Shape]:
    return {}


def _no_bin(node: Node, ins: list[TensorType]) -> list[str]:
    return []


def _zero(node: Node, ins: list[TensorType]) -> tuple[int, int]:
    return (0, 0)


def _split(node: Node, macs_linear: int, binary_ok: bool = True) -> tuple[int, int]:
    """Linear-layer MACs are BOPs when both weights and activations are binary."""
    b = node.binary
    if binary_ok and "weights" in b and "activations" in b:
        return (0, macs_linear)
    return (macs_linear, 0)


# INPUT
def _input_shape(node: Node, ins: list[TensorType]) -> TensorType:
    c, h, w = node.attr("channels"), node.attr("height"), node.attr("width")
    return TensorType(("B", c, h, w))


# PATCHIFY
def _grid_of(node: Node, image: TensorType, patch: int) -> tuple[int, int]:
    _, c, h, w = image.shape
    for side, size in (("height", h), ("width", w)):
        if size % patch:
            raise _err(node, f"patch {patch} does not divide the image {side} {size}",
                       f"expected a patch size that divides {size}, e.g. "
                       + ", ".join(str(p) for p in range(2, size) if size % p == 0 and p <= 32)[:40])
    return (h // patch, w // patch)


def _patchify_shape(node: Node, ins: list[TensorType]) -> TensorType:
    gh, gw = _grid_of(node, ins[0], node.attr("patch"))
    return tokens_type(gh * gw, node.attr("dim"), (gh, gw), 0)


def _patchify_params(node: Node, ins: list[TensorType]) -> dict[str, Shape]:
    c, p, d = ins[0].shape[1], node.attr("patch"), node.attr("dim")
    out = {f"{node.name}.proj.weight": (d, c, p, p)}
    if node.attr("bias"):
        out[f"{node.name}.proj.bias"] = (d,)
    if node.attr("norm") != "none":
        out.update(norm_params(f"{node.name}.norm", d))
    return out


def _patchify_buffers(node: Node, ins: list[TensorType]) -> dict[str, Shape]:
    return norm_buffers(f"{node.name}.norm", node.attr("dim"), node.attr("norm"))


def _patchify_bin(node: Node, ins: list[TensorType]) -> list[str]:
    return [f"{node.name}.proj.weight"] if "weights" in node.binary else []


def _patchify_macs(node: Node, ins: list[TensorType]) -> tuple[int, int]:
    gh, gw = _grid_of(node, ins[0], node.attr("patch"))
    c, p, d = ins[0].shape[1], node.attr("patch"), node.attr("dim")
    return _split(node, gh * gw * c * p * p * d)


# SHIFT_TOKENIZE
def _spt_features(node: Node, ins: list[TensorType]) -> int:
    return 5 * int(ins[0].shape[1]) * node.attr("patch") ** 2


def _spt_params(node: Node, ins: list[TensorType]) -> dict[str, Shape]:
    f, d = _spt_features(node, ins), node.attr("dim")
    out = norm_params(f"{node.name}.norm", f)
    out.update(linear_params(f"{node.name}.proj", f, d))
    return out


def _spt_macs(node: Node, ins: list[TensorType]) -> tuple[int, int]:
    gh, gw = _grid_of(node, ins[0], node.attr("patch"))
    return (gh * gw * _spt_features(node, ins) * node.attr("dim"), 0)


# TOKENS
def _tokens_shape(node: Node, ins: list[TensorType]) -> TensorType:
    x = ins[0]
    k = len(node.attr("tokens"))
    return tokens_type(x.tokens + k, x.dim, x.grid, x.prefix + k)


_TOKEN_KEYS = {"cls": "cls_token", "distill": "dist_token"}


def _tokens_params(node: Node, ins: list[TensorType]) -> dict[str, Shape]:
    return {_TOKEN_KEYS[t]: (1, 1, ins[0].dim) for t in node.attr("tokens")}


# POS_EMBED
def _same(node: Node, ins: list[TensorType]) -> TensorType:
    return ins[0]


def _pos_params(node: Node, ins: list[TensorType]) -> dict[str, Shape]:
    return {node.name: (1, ins[0].tokens, ins[0].dim)}


# NORM
def _norm_params(node: Node, ins: list[TensorType]) -> dict[str, Shape]:
    return norm_params(node.name, ins[0].dim)


def _norm_buffers(node: Node, ins: list[TensorType]) -> dict[str, Shape]:
    return norm_buffers(node.name, ins[0].dim, node.attr("kind"))


# ATTENTION
def _attn_dims(node: Node, x: TensorType) -> tuple[int, int, int]:
    heads = node.attr("heads")
    head_dim = node.attr("head_dim")
    if head_dim is None:
        if x.dim % heads:
            raise _err(node, f"heads {heads} does not divide dim {x.dim}",
                       f"expected a head count that divides {x.dim}, or an explicit head-dim")
        head_dim = x.dim // heads
    return heads, head_dim, heads * head_dim


def _keys(node: Node, x: TensorType) -> int:
    r = node.attr("reduce")
    if r == 1:
        return x.tokens
    gh, gw = x.grid
    return (gh // r) * (gw // r)


def _attn_shape(node: Node, ins: list[TensorType]) -> TensorType:
    x = ins[0]
    heads, head_dim, inner = _attn_dims(node, x)
    r = node.attr("reduce")
    if node.binary and inner != x.dim:
        raise _err(node, f"binary attention needs heads x head-dim = dim, found {heads} x {head_dim} = {inner} "
                         f"for dim {x.dim}", "BinaryViT's q, k and v have a shortcut from their input")
    if r > 1:
        if not node.binary:
            raise _err(node, "reduce (spatial-reduction attention) is defined here only in BinaryViT's binary "
                             "form", "expected a `binarize` statement covering the blocks, or no reduce")
        if x.grid is None or x.prefix:
            raise _err(node, f"reduce {r} needs a token grid without cls/distill tokens, "
                             f"found {x.prefix} extra token(s)")
        gh, gw = x.grid
        if r > min(gh, gw):
            raise _err(node, f"pooling kernel {r}x{r} is larger than the token grid {gh}x{gw}",
                       f"expected reduce at most {min(gh, gw)}")
        if gh % r or gw % r:
            raise _err(node, f"reduce {r} does not divide the token grid {gh}x{gw}")
    if node.attr("lsa") and node.binary:
        raise _err(node, "lsa with binarized attention is not defined by the papers",
                   "expected `attention` in binarized blocks")
    return x


def _attn_params(node: Node, ins: list[TensorType]) -> dict[str, Shape]:
    x = ins[0]
    heads, head_dim, inner = _attn_dims(node, x)
    n, d, bias = node.name, x.dim, node.attr("qkv_bias")
    out: dict[str, Shape] = {}
    if not node.binary:
        out.update(linear_params(f"{n}.qkv", d, 3 * inner, bias))
        out.update(linear_params(f"{n}.proj", inner, d))
    else:
        for part in ("q", "k", "v"):
            out.update(blu_params(f"{n}.{part}", d, d, bias))
        if node.attr("reduce") > 1:
            out.update(blu_params(f"{n}.reduce", d, d, bias))
        out.update({f"{n}.{p}_shift": (d,) for p in ("q", "k", "v")})
        if "attention" in node.binary:
            out[f"{n}.alpha"] = (1,)
        out.update(norm_params(f"{n}.context_norm", d))
        out.update({f"{n}.context_act.{k}": (d,) for k in ("shift_in", "slope", "shift_out")})
        out.update(blu_params(f"{n}.proj", d, d, False))
    if node.attr("lsa"):
        out[f"{n}.temperature"] = (heads,)
    return out


def _attn_buffers(node: Node, ins: list[TensorType]) -> dict[str, Shape]:
    if not node.binary:
        return {}
    d, n = ins[0].dim, node.name
    parts = ["q", "k", "v", "proj"] + (["reduce"] if node.attr("reduce") > 1 else [])
    out: dict[str, Shape] = {}
    for p in parts:
        out.update(norm_buffers(f"{n}.{p}.norm", d, "batch"))
    out.update(norm_buffers(f"{n}.context_norm", d, "batch"))
    return out


def _attn_bin(node: Node, ins: list[TensorType]) -> list[str]:
    if "weights" not in node.binary:
        return []
    parts = ["q", "k", "v", "proj"] + (["reduce"] if node.attr("reduce") > 1 else [])
    return [f"{node.name}.{p}.weight" for p in parts]


def _attn_macs(node: Node, ins: list[TensorType]) -> tuple[int, int]:
    x = ins[0]
    heads, head_dim, inner = _attn_dims(node, x)
    n, d, m = x.tokens, x.dim, _keys(node, x)
    if not node.binary:
        linear = n * d * 3 * inner + n * inner * d
    else:
        linear = n * d * d + 2 * m * d * d + n * d * d + (m * d * d if node.attr("reduce") > 1 else 0)
    fp, bops = _split(node, linear)
    matmuls = 2 * n * m * inner
    if "attention" in node.binary:
        bops += matmuls
    else:
        fp += matmuls
    return (fp, bops)


# MLP
def _mlp_shape(node: Node, ins: list[TensorType]) -> TensorType:
    x, hidden = ins[0], node.attr("hidden")
    if node.binary and hidden % x.dim:
        raise _err(node, f"binary mlp hidden {hidden} is not a multiple of dim {x.dim}",
                   "BinaryViT's shortcuts repeat and average the channels")
    return x


def _mlp_params(node: Node, ins: list[TensorType]) -> dict[str, Shape]:
    d, h, n = ins[0].dim, node.attr("hidden"), node.name
    if not node.binary:
        return {**linear_params(f"{n}.fc1", d, h), **linear_params(f"{n}.fc2", h, d)}
    return {**blu_params(f"{n}.fc1", d, h, False), **blu_params(f"{n}.fc2", h, d, False)}


def _mlp_buffers(node: Node, ins: list[TensorType]) -> dict[str, Shape]:
    if not node.binary:
        return {}
    d, h, n = ins[0].dim, node.attr("hidden"), node.name
    return {**norm_buffers(f"{n}.fc1.norm", h, "batch"), **norm_buffers(f"{n}.fc2.norm", d, "batch")}


def _mlp_bin(node: Node, ins: list[TensorType]) -> list[str]:
    return [f"{node.name}.fc1.weight", f"{node.name}.fc2.weight"] if "weights" in node.binary else []


def _mlp_macs(node: Node, ins: list[TensorType]) -> tuple[int, int]:
    x = ins[0]
    return _split(node, 2 * x.tokens * x.dim * node.attr("hidden"))


# POOL_BRANCHES
def _pool_shape(node: Node, ins: list[TensorType]) -> TensorType:
    x = ins[0]
    if x.grid is None or x.prefix:
        raise _err(node, f"pool-branches need a token grid without cls/distill tokens, found {x.prefix} "
                         "extra token(s)", "expected a gap head and no `tokens` statement")
    gh, gw = x.grid
    for kh, kw in node.attr("kernels"):
        if kh % 2 == 0 or kw % 2 == 0:
            raise _err(node, f"pooling kernel {kh}x{kw} has an even side; expected odd sides for same padding")
        if kh > gh or kw > gw:
            raise _err(node, f"pooling kernel {kh}x{kw} is larger than the token grid {gh}x{gw}",
                       f"expected kernels no larger than {gh}x{gw}: a bigger image or a smaller patch")
    return x


def _pool_params(node: Node, ins: list[TensorType]) -> dict[str, Shape]:
    d = ins[0].dim
    out: dict[str, Shape] = {}
    for i in range(len(node.attr("kernels"))):
        out[f"{node.name}.branches.{i}.scale"] = (d,)
        out[f"{node.name}.branches.{i}.shift"] = (d,)
    return out


# AFFINE
def _affine_params(node: Node, ins: list[TensorType]) -> dict[str, Shape]:
    return {f"{node.name}.scale": (ins[0].dim,), f"{node.name}.shift": (ins[0].dim,)}


# ADD
def _add_shape(node: Node, ins: list[TensorType]) -> TensorType:
    first = ins[0]
    for other in ins[1:]:
        if other.shape != first.shape:
            raise _err(node, f"residual add of {first} and {other}: shapes differ")
    return first


# DOWNSAMPLE
def _down_shape(node: Node, ins: list[TensorType]) -> TensorType:
    x, kind, d2 = ins[0], node.attr("kind"), node.attr("dim")
    if x.grid is None:
        raise _err(node, "downsample needs a token grid")
    gh, gw = x.grid
    if gh % 2 or gw % 2:
        raise _err(node, f"downsample halves the token grid, but the grid {gh}x{gw} is odd",
                   "expected an even grid: choose image and patch so that image/patch is even at every stage")
    if kind == "merge":
        if x.prefix:
            raise _err(node, f"merge downsampling needs patch tokens only, found {x.prefix} extra token(s)")
        if node.binary and d2 % x.dim:
            raise _err(node, f"stage dim {d2} is not a multiple of the previous dim {x.dim}",
                       "BinaryViT's merging shortcut repeats the channels")
    if kind == "pit" and d2 % x.dim:
        raise _err(node, f"PiT pooling is a depthwise conv: stage dim {d2} must be a multiple of {x.dim}")
    if node.binary and kind != "merge":
        raise _err(node, f"a '{kind}' downsample has no binary form",
                   "expected `except transitions` in the binarize statement, or `downsample merge`")
    g2 = (gh // 2, gw // 2)
    return tokens_type(x.prefix + g2[0] * g2[1], d2, g2, x.prefix)


def _down_params(node: Node, ins: list[TensorType]) -> dict[str, Shape]:
    x, kind, d2, n = ins[0], node.attr("kind"), node.attr("dim"), node.name
    d = x.dim
    if kind == "pit":
        return {f"{n}.conv.weight": (d2, 1, 3, 3), f"{n}.conv.bias": (d2,), **linear_params(f"{n}.fc", d, d2)}
    if kind == "spt":
        f = 5 * d * 4
        return {**norm_params(f"{n}.norm", f), **linear_params(f"{n}.proj", f, d2),
                **linear_params(f"{n}.fc", d, d2)}
    out = {**norm_params(f"{n}.norm0", d)}
    if node.binary:
        out[f"{n}.move"] = (d,)
    out[f"{n}.conv.weight"] = (d2, d, 2, 2)
    out.update(norm_params(f"{n}.norm", d2))
    if node.binary:
        out.update({f"{n}.act.{k}": (d2,) for k in ("shift_in", "slope", "shift_out")})
    return out


def _down_buffers(node: Node, ins: list[TensorType]) -> dict[str, Shape]:
    if node.attr("kind") != "merge":
        return {}
    return {**norm_buffers(f"{node.name}.norm0", ins[0].dim, "batch"),
            **norm_buffers(f"{node.name}.norm", node.attr("dim"), "batch")}


def _down_bin(node: Node, ins: list[TensorType]) -> list[str]:
    return [f"{node.name}.conv.weight"] if "weights" in node.binary else []


def _down_macs(node: Node, ins: list[TensorType]) -> tuple[int, int]:
    x, kind, d2 = ins[0], node.attr("kind"), node.attr("dim")
    gh, gw = x.grid
    n2 = (gh // 2) * (gw // 2)
    if kind == "pit":
        return (n2 * d2 * 9 + x.prefix * x.dim * d2, 0)
    if kind == "spt":
        return (n2 * 20 * x.dim * d2 + x.prefix * x.dim * d2, 0)
    return _split(node, n2 * x.dim * 4 * d2)


# HEAD
def _head_shape(node: Node, ins: list[TensorType]) -> TensorType:
    x, kind = ins[0], node.attr("kind")
    if kind in ("token", "token+distill") and x.prefix < (2 if kind == "token+distill" else 1):
        want = "`tokens cls distill`" if kind == "token+distill" else "`tokens cls`"
        raise _err(node, f"head {kind} reads the {'distill' if kind == 'token+distill' else 'cls'} token, "
                         f"but the model has {x.prefix} extra token(s)", f"expected {want}, or `head gap`")
    return TensorType(("B", node.attr("classes")))


def _head_params(node: Node, ins: list[TensorType]) -> dict[str, Shape]:
    d, k = ins[0].dim, node.attr("classes")
    out = linear_params("head", d, k)
    if node.attr("kind") == "token+distill":
        out.update(linear_params("head_dist", d, k))
    return out


def _head_macs(node: Node, ins: list[TensorType]) -> tuple[int, int]:
    heads = 2 if node.attr("kind") == "token+distill" else 1
    return (heads * ins[0].dim * node.attr("classes"), 0)


OPS: dict[Op, OpDef] = {
    Op.INPUT: OpDef(_input_shape, _none, _none, _no_bin, _zero),
    Op.PATCHIFY: OpDef(_patchify_shape, _patchify_params, _patchify_buffers, _patchify_bin, _patchify_macs),
    Op.SHIFT_TOKENIZE: OpDef(_patchify_shape, _spt_params, _none, _no_bin, _spt_macs),
    Op.TOKENS: OpDef(_tokens_shape, _tokens_params, _none, _no_bin, _zero),
    Op.POS_EMBED: OpDef(_same, _pos_params, _none, _no_bin, _zero),
    Op.NORM: OpDef(_same, _norm_params, _norm_buffers, _no_bin, _zero),
    Op.ATTENTION: OpDef(_attn_shape, _attn_params, _attn_buffers, _attn_bin, _attn_macs),
    Op.MLP: OpDef(_mlp_shape, _mlp_params, _mlp_buffers, _mlp_bin, _mlp_macs),
    Op.POOL_BRANCHES: OpDef(_pool_shape, _pool_params, _none, _no_bin, _zero),
    Op.AFFINE: OpDef(_same, _affine_params, _none, _no_bin, _zero),
    Op.DROP_PATH: OpDef(_same, _none, _none, _no_bin, _zero),
    Op.ADD: OpDef(_add_shape, _none, _none, _no_bin, _zero),
    Op.DOWNSAMPLE: OpDef(_down_shape, _down_params, _down_buffers, _down_bin, _down_macs),
    Op.HEAD: OpDef(_head_shape, _head_params, _none, _no_bin, _head_macs),
}


def input_types(graph: Graph, node: Node) -> list[TensorType]:
    return [n.out for n in graph.inputs(node)]


def node_params(graph: Graph, node: Node) -> dict[str, Shape]:
    return OPS[node.op].params(node, input_types(graph, node))


def node_buffers(graph: Graph, node: Node) -> dict[str, Shape]:
    return OPS[node.op].buffers(node, input_types(graph, node))


def node_counts(graph: Graph, node: Node) -> Counts:
    ins = input_types(graph, node)
    d = OPS[node.op]
    params = d.params(node, ins)
    binary = d.binary_weights(node, ins)
    macs, bops = d.macs(node, ins)
    return Counts(sum(_numel(s) for s in params.values()), sum(_numel(params[k]) for k in binary), macs, bops)


def param_table(graph: Graph) -> dict[str, Shape]:
    """Every trainable parameter of the network: state-dict key -> shape, in node order."""
    out: dict[str, Shape] = {}
    for node in graph:
        out.update(node_params(graph, node))
    return out


def buffer_table(graph: Graph) -> dict[str, Shape]:
    """Every persistent buffer (BatchNorm running statistics): key -> shape."""
    out: dict[str, Shape] = {}
    for node in graph:
        out.update(node_buffers(graph, node))
    return out
