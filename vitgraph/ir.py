"""The intermediate representation: a networkx DiGraph of frozen nodes behind a small
Graph type. One node is one layer of the network (a module with its own parameters, or
a parameter-free join such as a residual add); its `op` is the op unit that defines it
(vitgraph/ops/), its `attrs` that unit's typed attributes, and its `name` the module
path that the backends use for submodules, state-dict keys and ONNX names.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Iterator

import networkx as nx

from .diagnostics import Span

if TYPE_CHECKING:
    from .ops import OpDef


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
    def rank(self) -> int:
        return len(self.shape)

    @property
    def dim(self) -> int:
        return int(self.shape[-1])

    @property
    def tokens(self) -> int:
        return int(self.shape[1])


@dataclass(frozen=True)
class Node:
    """One layer. `op` is its op unit (a class in vitgraph/ops/), `attrs` that unit's frozen
    attribute dataclass; `group` is the block (or stem, head, transition) it belongs to and
    `stage` the stage; `span` is where in the spec the node came from and takes no part in
    equality."""

    id: int
    op: "type[OpDef]"
    name: str
    inputs: tuple[int, ...]
    attrs: Any
    group: str
    stage: str
    out: TensorType | None = None
    span: Span | None = field(default=None, compare=False)

    @property
    def binary(self) -> frozenset[str]:
        """What of this node is binarized: a subset of {weights, activations, attention}."""
        return frozenset(getattr(self.attrs, "binary", ()))

    def with_attrs(self, **changes: Any) -> "Node":
        return replace(self, attrs=replace(self.attrs, **changes))


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
        self.init: Any = None  # the model's initialisation policy (vitgraph/init.py InitSpec)
        self._g = nx.DiGraph()
        self._next = 0

    # -- building -------------------------------------------------------------------
    def add(self, op: "type[OpDef]", name: str, inputs: tuple[int, ...] | list[int], attrs: Any,
            group: str, stage: str, span: Span | None) -> int:
        """Append a node; its output type comes from its op's shape rule (which checks it)."""
        nid = self._next
        node = Node(nid, op, name, tuple(inputs), attrs, group, stage, None, span)
        node = replace(node, out=op.shape(node, [self.node(i).out for i in node.inputs]))
        self._next += 1
        self._g.add_node(nid, node=node)
        for i in node.inputs:
            self._g.add_edge(i, nid)
        return nid

    def remove(self, nid: int) -> None:
        self._g.remove_node(nid)

    def rewire(self, node: Node) -> None:
        """Replace a node, including its inputs (the edges follow)."""
        for i in list(self._g.predecessors(node.id)):
            self._g.remove_edge(i, node.id)
        for i in node.inputs:
            self._g.add_edge(i, node.id)
        self._g.nodes[node.id]["node"] = node

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
        return next(n for n in self.nodes() if not n.inputs)

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

    def copy(self) -> "Graph":
        """A graph with the same nodes, for passes that rewrite (nodes are immutable)."""
        out = Graph(self.name, self.spec)
        out.init = self.init
        out._g = self._g.copy()
        out._next = self._next
        return out

    @property
    def classes(self) -> int:
        return int(self.output.out.shape[-1])

    @property
    def image(self) -> tuple[int, int, int]:
        c, h, w = self.input.out.shape[1:]
        return int(c), int(h), int(w)
