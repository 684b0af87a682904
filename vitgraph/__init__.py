"""vitgraph: a declarative graph-spec compiler and benchmark harness for vision transformers.

    graph = vitgraph.compile("specs/deit_tiny.vg", image=224)
    report = vitgraph.count(graph)          # params, MACs, BOPs, OPs; total, per block, per stage
    module = vitgraph.to_torch(graph)        # torch backend (imports torch on first use)
    model = vitgraph.to_onnx(graph, state_dict)

Importing vitgraph stays cheap: torch and onnx load only when a backend is asked for.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .counting import CountReport, count
from .diagnostics import SpecError, render
from .ir import Graph, Node, TensorType
from .ops import OPS, Counts, OpDef, buffer_table, param_table
from .passes import run_pipeline
from .printer import format_graph

__all__ = ["compile", "count", "to_torch", "to_onnx", "format_graph", "param_table", "buffer_table",
           "Graph", "Node", "OpDef", "OPS", "TensorType", "Counts", "CountReport", "SpecError", "render"]
__version__ = "0.1.0"


def compile(spec: str | Path, model: str | None = None, **overrides: Any) -> Graph:  # noqa: A001
    """Parse, lower and check a spec (a .vg path or spec text); return the checked graph.

    Keyword arguments override the spec's parameters (`image=64, patch=8`). Raises SpecError,
    whose `render()` gives the `file:line:col: error: ...` message with the source line."""
    from .lower import load

    graph, sources = load(spec, model, overrides)
    try:
        return run_pipeline(graph)
    except SpecError as e:
        e.sources = sources  # type: ignore[attr-defined]
        raise


def to_torch(graph: Graph, **kwargs: Any) -> Any:
    """Lower a checked graph to a torch.nn.Module (see backends/torch_backend.py)."""
    from .backends import torch_backend

    return torch_backend.to_torch(graph, **kwargs)


def to_onnx(graph: Graph, state_dict: Any = None, **kwargs: Any) -> Any:
    """Lower a checked graph straight to an onnx.ModelProto (see backends/onnx_backend.py)."""
    from .backends import onnx_backend

    return onnx_backend.to_onnx(graph, state_dict, **kwargs)
