"""The intermediate representation: a networkx DiGraph of frozen nodes behind a small
Graph type. One node is one layer of the network (a module with its own parameters, or
a parameter-free join such as a residual add); its `name` is the module path that the
backends use for submodules, state-dict keys and ONNX names.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from typing import Any, Iterator, Mapping

import networkx as nx

from .diagnostics import Span


class Op(enum.Enum):
    INPUT = "input"                # the image batch, (B, C, H, W)
    PATCHIFY = "patchify"          # p x p stride-p conv patch embedding (DeiT), or a conv stem with a norm (BinaryViT)
    SHIFT_TOKENIZE = "shift-tokenize"  # Shifted Patch Tokenization: 4 diagonal half-patch shifts, concat, LN, Linear
    TOKENS = "tokens"              # prepend learned cls (and distill) tokens
    POS_EMBED = "pos-embed"        # add a learned position embedding
    NORM = "norm"                  # LayerNorm or BatchNorm over channels
    ATTENTION = "attention"        # multi-head self-attention: plain, LSA, spatial-reduction, binary
    MLP = "mlp"                    # two-layer feed-forward (GELU; binary: RPReLU-wrapped binary linears)
    POOL_BRANCHES = "pool-branches"  # BinaryViT: sum of per-branch affine(AvgPool2d_k(x))
    AFFINE = "affine"              # per-channel x * scale + shift before a residual add
    DROP_PATH = "drop-path"        # stochastic depth on a residual branch (identity at inference)
    ADD = "add"                    # residual sum of two or more branches
    DOWNSAMPLE = "downsample"      # pyramid stage transition: PiT pooling, BinaryViT merging or SPT merging
    HEAD = "head"                  # classifier on the cls token, the average of all tokens, or cls+distill


@dataclass(frozen=True)
class TensorType:
    """Shape of one value. Batch is symbolic (B). Token tensors (B, N, D) also carry the
    patch grid (h, w) and the count of leading non-patch tokens (cls, distill)."""

    shape: tuple[int | str, ...]
    grid: tuple[int, int] | None = None
    prefix: int = 0
    dtype: str = "f32"

    def __str__(self) -> str:
        return f"{self.dtype}[{','.join(str(d) for d in self.shape)}]"

    @property
    def dim(self) -> int:
        return int(self.shape[-1])

    @property
    def tokens(self) -> int:
        return int(self.shape[1])


Attrs = tuple[tuple[str, Any], ...]


def freeze_attrs(attrs: Mapping[str, Any]) -> Attrs:
    def freeze(v: Any) -> Any:
        if isinstance(v, list):
            return tuple(freeze(x) for x in v)
        return v

    return tuple(sorted((k, freeze(v)) for k, v in attrs.items()))


@dataclass(frozen=True)
class Node:
    """One layer. `attrs` are immutable (sorted key/value pairs); `span` is where in the
    spec the node came from and takes no part in equality."""

    id: int
    op: Op
    name: str
    inputs: tuple[int, ...]
    attrs: Attrs
    group: str
    out: TensorType | None = None
    span: Span | None = field(default=None, compare=False)

    def attr(self, key: str, default: Any = None) -> Any:
        for k, v in self.attrs:
            if k == key:
                return v
        return default

    @property
    def a(self) -> dict[str, Any]:
        return dict(self.attrs)

    def with_attrs(self, **changes: Any) -> "Node":
        merged = dict(self.attrs)
        merged.update(changes)
        return replace(self, attrs=freeze_attrs(merged))

    @property
    def binary(self) -> frozenset[str]:
        """What of this node is binarized: a subset of {weights, activations, attention}."""
        return frozenset(self.attr("binary", ()))


@dataclass
class SpecInfo:
    """Where a graph came from: the model, its files, the resolved parameters."""

    model: str
    path: str
    sources: dict[str, str]
    params: dict[str, Any]
    hash: str


class Graph:
    """A checked network: nodes in a DiGraph, visited in a stable order (by id, which is
    creation order and therefore a topological order)."""

    def __init__(self, name: str, spec: SpecInfo | None = None) -> None:
        self.name = name
        self.spec = spec
        self._g = nx.DiGraph()
        self._next = 0

    # -- building -------------------------------------------------------------------
    def add(self, op: Op, name: str, inputs: tuple[int, ...] | list[int], attrs: Mapping[str, Any],
            group: str, span: Span | None) -> int:
        nid = self._next
        self._next += 1
        node = Node(nid, op, name, tuple(inputs), freeze_attrs(attrs), group, None, span)
        self._g.add_node(nid, node=node)
        for i in node.inputs:
            self._g.add_edge(i, nid)
        return nid

    def replace(self, node: Node) -> None:
        self._g.nodes[node.id]["node"] = node

    # -- reading --------------------------------------------------------------------
    def node(self, nid: int) -> Node:
        return self._g.nodes[nid]["node"]

    def nodes(self) -> list[Node]:
        return [self.node(n) for n in nx.lexicographical_topological_sort(self._g)]

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes())

    def __len__(self) -> int:
        return self._g.number_of_nodes()

    def inputs(self, node: Node) -> list[Node]:
        return [self.node(i) for i in node.inputs]

    def users(self, node: Node) -> list[Node]:
        return [self.node(i) for i in sorted(self._g.successors(node.id))]

    @property
    def input(self) -> Node:
        return next(n for n in self.nodes() if n.op is Op.INPUT)

    @property
    def output(self) -> Node:
        sinks = [self.node(n) for n in self._g.nodes if self._g.out_degree(n) == 0]
        return max(sinks, key=lambda n: n.id)

    @property
    def digraph(self) -> nx.DiGraph:
        """A read-only view of the networkx graph, for analyses and drawing."""
        return self._g.copy(as_view=True)

    def groups(self) -> list[str]:
        return list(dict.fromkeys(n.group for n in self.nodes()))

    @property
    def classes(self) -> int:
        return int(self.output.out.shape[-1])

    @property
    def image(self) -> tuple[int, int, int]:
        c, h, w = self.input.out.shape[1:]
        return int(c), int(h), int(w)
