"""Shape inference and per-op checks: every node's output type, in topological order,
from the op units' shape rules (the builder types each node as it adds it; this pass
re-derives the types after passes that rewrite the graph). Problems (a head count that does not divide the
width, a pooling kernel wider than the grid, an odd grid before a merge) surface here,
before any tensor exists, with the span of the statement that caused them."""
from __future__ import annotations

from dataclasses import replace

from ..ir import Graph


def run(graph: Graph) -> Graph:
    for node in graph.nodes():
        ins = [n.out for n in graph.inputs(node)]
        graph.replace(replace(node, out=node.op.shape(node, ins)))
    return graph
