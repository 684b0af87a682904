"""Graph passes, run in the order their pipelines name them. Each pass is a module with
`run(graph)`; a pass that finds a problem raises SpecError at the node's span.

PIPELINE checks every compiled graph (`run(graph) -> graph`). INFERENCE turns a checked
graph into the eval-mode graph that exporters lower (`run(graph) -> (graph, report)`, the
report saying what the pass changed); the original graph is left as it was."""
from __future__ import annotations

import importlib

from ..ir import Graph

PIPELINE: tuple[str, ...] = ("infer_shapes", "validate")
INFERENCE: tuple[str, ...] = ("dead_tokens",)


def run_pipeline(graph: Graph, names: tuple[str, ...] = PIPELINE) -> Graph:
    for name in names:
        graph = importlib.import_module(f"{__name__}.{name}").run(graph)
    return graph


def run_inference(graph: Graph, names: tuple[str, ...] = INFERENCE) -> tuple[Graph, list[str]]:
    """The eval-mode graph and what each pass changed."""
    report: list[str] = []
    for name in names:
        graph, lines = importlib.import_module(f"{__name__}.{name}").run(graph)
        report.extend(lines)
    return graph, report
