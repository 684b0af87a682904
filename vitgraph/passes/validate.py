"""Structural checks on the finished graph: one input, one output (the head), unique node
names and unique parameter keys, so backends can name modules and weights after nodes."""
from __future__ import annotations

import networkx as nx

from ..diagnostics import SpecError
from ..ir import Graph
from ..ops.head import Head
from ..ops import node_buffers, node_params


def run(graph: Graph) -> Graph:
    g = graph.digraph
    if not nx.is_directed_acyclic_graph(g):
        raise SpecError("internal error: the lowered graph has a cycle")
    inputs = [n for n in graph if not n.inputs]
    if len(inputs) != 1:
        raise SpecError(f"expected exactly one input, found {len(inputs)}")
    if graph.output.op is not Head:
        raise SpecError("internal error: the graph does not end in a head")
    names: dict[str, object] = {}
    keys: dict[str, object] = {}
    for node in graph:
        if node.name in names:
            raise SpecError(f"two layers are both named '{node.name}'", node.span)
        names[node.name] = node
        for key in list(node_params(graph, node)) + list(node_buffers(graph, node)):
            if key in keys:
                raise SpecError(f"two layers both define the weight '{key}'", node.span)
            keys[key] = node
    return graph
