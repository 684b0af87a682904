"""Graph passes, run in the order PIPELINE names them. Each pass is a module with
`run(graph) -> graph`; a pass that finds a problem raises SpecError at the node's span."""
from __future__ import annotations

import importlib

from ..ir import Graph

PIPELINE: tuple[str, ...] = ("infer_shapes", "validate")


def run_pipeline(graph: Graph, names: tuple[str, ...] = PIPELINE) -> Graph:
    for name in names:
        graph = importlib.import_module(f"{__name__}.{name}").run(graph)
    return graph
