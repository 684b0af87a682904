"""Drawings of the IR: Graphviz DOT text, and SVG/PNG rendered with matplotlib (no
Graphviz binary needed). Nodes are coloured by precision and annotated with their output
shape and MACs/BOPs; residual edges are drawn as arcs beside the main chain."""
from __future__ import annotations

from pathlib import Path

from .fileio import write_atomic
from .ir import Graph, Node
from .ops import node_counts

COLOURS = {"fp": "#cfe2f3", "binary": "#f4cccc", "mixed": "#fce5cd", "free": "#eeeeee"}


def precision(node: Node) -> str:
    b = node.binary
    if not b:
        return "fp"
    return "binary" if {"weights", "activations"} <= b else "mixed"


def _label(graph: Graph, node: Node) -> str:
    c = node_counts(graph, node)
    cost = []
    if c.macs:
        cost.append(f"{c.macs / 1e6:.1f}M MACs")
    if c.bops:
        cost.append(f"{c.bops / 1e6:.1f}M BOPs")
    return f"{node.name}\n{node.op.name} {node.out}" + (f"\n{', '.join(cost)}" if cost else "")


def _fill(graph: Graph, node: Node) -> str:
    c = node_counts(graph, node)
    return COLOURS[precision(node)] if (c.params or c.macs or c.bops) else COLOURS["free"]


def to_dot(graph: Graph) -> str:
    lines = [f'digraph "{graph.name}" {{', '  rankdir=TB; node [shape=box, style="rounded,filled", fontname="Helvetica"];']
    for n in graph:
        label = _label(graph, n).replace("\n", "\\n").replace('"', '\\"')
        lines.append(f'  n{n.id} [label="{label}", fillcolor="{_fill(graph, n)}"];')
    for n in graph:
        for i in n.inputs:
            lines.append(f"  n{i} -> n{n.id};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def render_image(graph: Graph, path: Path) -> None:
    """Draw the graph top to bottom with matplotlib and save it as .svg or .png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Patch

    nodes = graph.nodes()
    row = {n.id: i for i, n in enumerate(nodes)}
    # side branches (pool-branches, distill) sit to the right of the chain
    col = {n.id: 0 for n in nodes}
    height = max(4.0, 0.62 * len(nodes))
    fig, ax = plt.subplots(figsize=(7.5, height))
    ax.set_xlim(-3.2, 4.2)
    ax.set_ylim(-len(nodes), 1)
    ax.axis("off")
    for n in nodes:
        y = -row[n.id]
        ax.add_patch(FancyBboxPatch((col[n.id] - 2.6, y - 0.27), 5.2, 0.54, boxstyle="round,pad=0.02",
                                    facecolor=_fill(graph, n), edgecolor="#555555", linewidth=0.6))
        text = _label(graph, n).replace("\n", "  |  ")
        ax.text(col[n.id], y, text, ha="center", va="center", fontsize=6.2, family="monospace")
    for n in nodes:
        for i in n.inputs:
            y0, y1 = -row[i], -row[n.id]
            if row[n.id] - row[i] == 1:
                ax.add_patch(FancyArrowPatch((0, y0 - 0.27), (0, y1 + 0.27), arrowstyle="-|>",
                                             mutation_scale=7, linewidth=0.6, color="#333333"))
            else:  # a skip connection: an arc on the right
                ax.add_patch(FancyArrowPatch((2.6, y0), (2.6, y1), connectionstyle="arc3,rad=-0.35",
                                             arrowstyle="-|>", mutation_scale=7, linewidth=0.6, color="#888888"))
    ax.legend(handles=[Patch(facecolor=COLOURS[k], edgecolor="#555555", label=k) for k in COLOURS],
              loc="upper right", fontsize=7, title="precision", title_fontsize=7)
    ax.set_title(f"{graph.name}", fontsize=10)
    try:
        write_atomic(path, lambda tmp: fig.savefig(tmp, format=Path(path).suffix[1:], bbox_inches="tight", dpi=110))
    finally:
        plt.close(fig)
