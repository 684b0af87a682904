"""The op units. Everything vitgraph knows about an op lives in one module of this
package: the spec words that make it and their schemas, its typed attributes (resolved
once, at lowering), its shape rule and checks, its parameters (full state-dict keys,
shapes and initialisation roles: THE CONTRACT every backend follows), its buffers and
constants, its multiply-accumulates split into full-precision MACs and binary MACs
(BOPs), and its properties (where it may stand, whether it reads each token on its own,
which part of the model `binarize` sees it as). Backends register one lowering per op
(backends/torch_backend.py, backends/_onnx_lower.py); tests check that none is missing.

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

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Mapping

from ..diagnostics import Span, SpecError
from ..ir import Graph, Node, TensorType
from ..lang import Matched, Schema
from ..syntax import Stmt

if TYPE_CHECKING:
    import numpy as np

Shape = tuple[int, ...]

BINARY_PARTS = ("weights", "activations", "attention")
BATCHNORM_EPS = 1e-5  # BinaryViT's BatchNorms (PyTorch's default)


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


# -- parameters, buffers -------------------------------------------------------------------
@dataclass(frozen=True)
class Param:
    """One trainable tensor. `init` is a role of the model's init policy (vitgraph/init.py:
    linear.weight, linear.bias, conv.weight, conv.bias, embedding, token, table, mix) or a
    constant it starts at; `fan_in` is the fan-in of the weight a bias belongs to (PyTorch's
    default init draws the bias from it); `fan_out` replaces the fan-out PyTorch reads from a
    weight's shape (a patch embedding written as nn.Linear over flattened patches: its dim);
    `binary` marks a weight stored as 1 bit."""

    shape: Shape
    init: str | float
    fan_in: int | None = None
    binary: bool = False
    fan_out: int | None = None

    @property
    def numel(self) -> int:
        return numel(self.shape)


@dataclass(frozen=True)
class Buffer:
    """One persistent non-trainable tensor (BatchNorm running statistics), with its start."""

    shape: Shape
    fill: float = 0.0
    dtype: str = "float32"


def numel(shape: Shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def norm_params(prefix: str, dim: int) -> dict[str, Param]:
    return {f"{prefix}.weight": Param((dim,), 1.0), f"{prefix}.bias": Param((dim,), 0.0)}


def batchnorm_buffers(prefix: str, dim: int) -> dict[str, Buffer]:
    return {f"{prefix}.running_mean": Buffer((dim,)), f"{prefix}.running_var": Buffer((dim,), 1.0),
            f"{prefix}.num_batches_tracked": Buffer((), 0, "int64")}


def linear_params(prefix: str, fin: int, fout: int, bias: bool = True, binary: bool = False) -> dict[str, Param]:
    p = {f"{prefix}.weight": Param((fout, fin), "linear.weight", binary=binary)}
    if bias:
        p[f"{prefix}.bias"] = Param((fout,), "linear.bias", fan_in=fin)
    return p


def conv_params(prefix: str, cout: int, cin_per_group: int, kh: int, kw: int, bias: bool = True,
                binary: bool = False) -> dict[str, Param]:
    p = {f"{prefix}.weight": Param((cout, cin_per_group, kh, kw), "conv.weight", binary=binary)}
    if bias:
        p[f"{prefix}.bias"] = Param((cout,), "conv.bias", fan_in=cin_per_group * kh * kw)
    return p


def rprelu_params(prefix: str, dim: int) -> dict[str, Param]:
    """ReActNet's RPReLU: PReLU(x - shift_in, slope) + shift_out; slope starts at 0.25."""
    return {f"{prefix}.shift_in": Param((dim,), 0.0), f"{prefix}.slope": Param((dim,), 0.25),
            f"{prefix}.shift_out": Param((dim,), 0.0)}


def blu_params(prefix: str, fin: int, fout: int, bias: bool, binary: bool) -> dict[str, Param]:
    """BinaryViT's binary linear unit: move, (binary) linear, BatchNorm, RPReLU."""
    return {f"{prefix}.move": Param((fin,), 0.0), **linear_params(prefix, fin, fout, bias, binary),
            **norm_params(f"{prefix}.norm", fout), **rprelu_params(f"{prefix}.act", fout)}


# -- the settings a model's ops resolve against -----------------------------------------------
@dataclass(frozen=True)
class Settings:
    """Model-wide statements: the norm every block uses and what `binarize` covers."""

    norm: str = "layer"
    eps: float = 1e-6
    binarize: tuple[str, ...] = ()
    exempt: frozenset[str] = frozenset()
    binarize_span: Span | None = None

    def binary(self, part: str | None) -> tuple[str, ...]:
        """What `binarize` makes binary in this part of the model (blocks, transitions, ...)."""
        if part is None or part in self.exempt:
            return ()
        return self.binarize


@dataclass
class Resolve:
    """What an op's `resolve` sees: the statement and its matched arguments, the types of
    its inputs, and the model's settings."""

    stmt: Stmt
    args: Matched
    ins: list[TensorType]
    settings: Settings

    @property
    def word(self) -> str:
        return self.stmt.word

    def error(self, message: str, *notes: str, at: str | None = None) -> SpecError:
        span = self.args.spans.get(at) if at else None
        return SpecError(message, span or self.stmt.span, list(notes))


# -- the op definitions -------------------------------------------------------------------------
class OpDef:
    """One op. Subclasses fill the class attributes and override what applies; they are
    never instantiated (a node's `op` is the class itself)."""

    name: ClassVar[str]
    words: ClassVar[Mapping[str, Schema]] = {}
    # where the op's words stand: "layer" (a model body), "mixer" (a residual branch of a
    # block), "modifier" (applied to each branch of a block), "parallel" (a branch beside
    # the mixer before it), "downsample" (a stage transition), "internal" (made by the language)
    role: ClassVar[str] = "internal"
    family: ClassVar[str] = ""        # words of one family replace each other in `extends` patches
    key: ClassVar[str] = ""           # its module name inside a block (attn, mlp, affine1, ...)
    default_name: ClassVar[str] = ""  # its module name at model level, unless `as NAME` says otherwise
    binarize: ClassVar[str | None] = None  # the part `binarize ... except PART` names
    binary_forms: ClassVar[frozenset[str]] = frozenset()  # what of it can be binary
    per_token: ClassVar[bool] = False  # each output token depends on its own input token only
    once: ClassVar[bool] = False       # at most once per model
    in_blocks: ClassVar[bool] = False  # a layer word that may also stand in a block body (T2T's soft split)
    # mixers: `residual` False means the op's output replaces the stream (it carries its own
    # shortcut, as T2T's token attention); `reads_stream` means it also reads the block's
    # un-normalised stream (its inputs are then (normed, stream))
    residual: ClassVar[bool] = True
    reads_stream: ClassVar[bool] = False
    Attrs: ClassVar[type] = type(None)

    @classmethod
    def resolve(cls, r: Resolve) -> Any:
        """The node's typed attributes, every default filled in."""
        return cls.Attrs()

    @classmethod
    def member(cls, branch: int) -> str:
        """A modifier's module name in a block, on the block's branch-th residual branch."""
        return f"{cls.key}{branch}"

    @classmethod
    def shape(cls, node: Node, ins: list[TensorType]) -> TensorType:
        return ins[0]

    @classmethod
    def params(cls, node: Node, ins: list[TensorType]) -> dict[str, Param]:
        return {}

    @classmethod
    def buffers(cls, node: Node, ins: list[TensorType]) -> dict[str, Buffer]:
        return {}

    @classmethod
    def constants(cls, node: Node, ins: list[TensorType]) -> "dict[str, np.ndarray]":
        """Fixed tensors the op computes from its attributes (masks, index tables), keyed
        by their name inside the node's module; never part of the state dict."""
        return {}

    @classmethod
    def macs(cls, node: Node, ins: list[TensorType]) -> tuple[int, int]:
        """(full-precision MACs, BOPs)."""
        return (0, 0)

    @classmethod
    def describe(cls) -> str:
        return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else cls.name


def binary_split(binary: tuple[str, ...] | frozenset[str], macs: int) -> tuple[int, int]:
    """Linear-layer MACs are BOPs when both weights and activations are binary."""
    if "weights" in binary and "activations" in binary:
        return (0, macs)
    return (macs, 0)


def tokens_type(n: int, d: int, grid: tuple[int, int] | None, prefix: int) -> TensorType:
    return TensorType(("B", n, d), grid, prefix)


def node_error(node: Node, message: str, *notes: str) -> SpecError:
    return SpecError(message, node.span, list(notes))


def need_tokens(node: Node, x: TensorType, what: str) -> None:
    if x.rank == 4:
        raise node_error(node, f"'{what}' needs patch tokens (B, N, D), but its input is still the image {x}",
                         "expected a patch embedding (patchify, shift-tokenize, stem or soft-split) before it")
    if x.rank != 3:
        raise node_error(node, f"'{what}' needs tokens (B, N, D), but its input is {x}")


def need_grid(node: Node, x: TensorType, what: str) -> tuple[int, int]:
    need_tokens(node, x, what)
    if x.grid is None:
        raise node_error(node, f"{what} needs a token grid, but its input {x} has none")
    return x.grid


# -- the registry --------------------------------------------------------------------------------
OPS: dict[str, type[OpDef]] = {}
WORDS: dict[str, type[OpDef]] = {}


def register(cls: type[OpDef]) -> type[OpDef]:
    """Class decorator: add an op unit to the registry (and its words to the language)."""
    if cls.name in OPS:
        raise ValueError(f"op {cls.name!r} registered twice")
    OPS[cls.name] = cls
    for word in cls.words:
        if word in WORDS:
            raise ValueError(f"word {word!r} belongs to both {WORDS[word].name} and {cls.name}")
        WORDS[word] = cls
    return cls


def words_of(role: str) -> dict[str, type[OpDef]]:
    return {w: op for w, op in WORDS.items() if op.role == role}


def attrs_dict(node: Node) -> dict[str, Any]:
    return {f.name: getattr(node.attrs, f.name) for f in dataclasses.fields(node.attrs)} \
        if dataclasses.is_dataclass(node.attrs) else {}


def input_types(graph: Graph, node: Node) -> list[TensorType]:
    return [n.out for n in graph.inputs(node)]


def node_params(graph: Graph, node: Node) -> dict[str, Param]:
    return node.op.params(node, input_types(graph, node))


def node_buffers(graph: Graph, node: Node) -> dict[str, Buffer]:
    return node.op.buffers(node, input_types(graph, node))


def node_counts(graph: Graph, node: Node) -> Counts:
    ins = input_types(graph, node)
    params = node.op.params(node, ins)
    macs, bops = node.op.macs(node, ins)
    return Counts(sum(p.numel for p in params.values()), sum(p.numel for p in params.values() if p.binary),
                  macs, bops)


def param_specs(graph: Graph) -> dict[str, Param]:
    """Every trainable parameter of the network with its shape and init role, in node order."""
    out: dict[str, Param] = {}
    for node in graph:
        out.update(node_params(graph, node))
    return out


def param_table(graph: Graph) -> dict[str, Shape]:
    """Every trainable parameter of the network: state-dict key -> shape, in node order."""
    return {k: p.shape for k, p in param_specs(graph).items()}


def buffer_specs(graph: Graph) -> dict[str, Buffer]:
    out: dict[str, Buffer] = {}
    for node in graph:
        out.update(node_buffers(graph, node))
    return out


def buffer_table(graph: Graph) -> dict[str, Shape]:
    """Every persistent buffer (BatchNorm running statistics): key -> shape."""
    return {k: b.shape for k, b in buffer_specs(graph).items()}


# The op units register themselves on import; this order is the order `vitgraph ops --list` shows.
from . import (input, patchify, shift_tokenize, tokens, pos_embed, norm, attention,  # noqa: E402,F401
               mlp, pool_branches, affine, drop_path, add, downsample, head, slice)
from . import window_attention, patch_merge  # noqa: E402,F401 - Swin
from . import class_attention, layer_scale  # noqa: E402,F401 - CaiT
from . import t2t  # noqa: E402,F401
