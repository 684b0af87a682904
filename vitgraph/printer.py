"""The canonical text form of the IR: a header, then one node per line with its name,
output type, op, attributes, inputs and source location, e.g.

    %7 blocks.0.attn: f32[B,65,192] = attention[heads=12, head_dim=16, lsa=true](%6)  # sl_vit.vg:9:9
"""
from __future__ import annotations

from typing import Any

from .ir import Graph, Node
from .ops import attrs_dict


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, tuple):
        if v and all(isinstance(x, tuple) and len(x) == 2 for x in v):
            return "[" + ",".join(f"{a}x{b}" for a, b in v) + "]"
        return "[" + ",".join(_fmt(x) for x in v) + "]"
    return str(v)


def format_node(node: Node) -> str:
    attrs = ", ".join(f"{k}={_fmt(v)}" for k, v in attrs_dict(node).items()
                      if v is not None and not (k == "binary" and not v))
    args = ", ".join(f"%{i}" for i in node.inputs)
    loc = f"  # {node.span.short}" if node.span else ""
    op = node.op.name + (f"[{attrs}]" if attrs else "")
    return f"%{node.id} {node.name}: {node.out} = {op}({args}){loc}"


def format_graph(graph: Graph) -> str:
    spec = graph.spec
    head = f"graph {graph.name}"
    if spec is not None:
        params = " ".join(f"{k}={_fmt(v)}" for k, v in spec.params.items())
        head += f"  # {params}"
    if graph.init is not None:
        head += f"  init {graph.init}"
    return "\n".join([head] + [format_node(n) for n in graph]) + "\n"
