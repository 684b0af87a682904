"""Drawings of the IR: Graphviz DOT text, and SVG/PNG rendered with matplotlib (no
Graphviz binary needed). Nodes are coloured by precision and annotated with their output
shape and MACs/BOPs.

The image is laid out in columns, one per part of the model: the stem, each stage of a
pyramid (or the block stack of a plain ViT), the head. Inside a column, a run of identical
blocks (same words, same shapes) is drawn once, framed and marked "x N"; `expand=True` draws
every block. Residual edges are arcs beside the chain; so a 183-node BinaryViT fits a screen.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
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


_BLOCK = re.compile(r"^((?:stages\.\d+\.)?blocks\.\d+)\.")
_STAGE = re.compile(r"^(stages\.\d+)\.")


@dataclass
class Run:
    """Consecutive identical blocks of a column, drawn once: `nodes` are the first block's."""

    first: str
    last: str
    count: int
    nodes: list[Node]


@dataclass
class Column:
    """One part of the model, drawn top to bottom: single nodes and runs of blocks, in order."""

    title: str
    items: list[Node | Run] = field(default_factory=list)


def _part(name: str, seen_body: bool) -> str:
    stage = _STAGE.match(name)
    if stage:
        return stage.group(1)
    if _BLOCK.match(name):
        return "blocks"
    return "head" if seen_body else "stem"


def _signature(block: str, nodes: list[Node]) -> tuple:
    """What makes two blocks draw alike: their words and shapes (not per-depth rates)."""
    return tuple((n.name[len(block):], n.op, str(n.out)) for n in nodes)


def columns(graph: Graph, expand: bool = False) -> list[Column]:
    """The graph cut into the columns of the drawing (see the module docstring)."""
    cols: list[Column] = []
    blocks: list[tuple[str, list[Node]]] = []  # the blocks of the current column, in order
    seen_body = False

    def flush() -> None:
        runs: list[Run] = []
        for block, nodes in blocks:
            last = runs[-1] if runs else None
            if last and not expand and _signature(last.first, last.nodes) == _signature(block, nodes):
                last.count += 1
                last.last = block
            else:
                runs.append(Run(block, block, 1, nodes))
        cols[-1].items.extend(runs)
        blocks.clear()

    for node in graph.nodes():
        part = _part(node.name, seen_body)
        seen_body = seen_body or part != "stem"
        if not cols or cols[-1].title != part:
            if cols:
                flush()
            cols.append(Column(part))
        block = _BLOCK.match(node.name)
        if block:
            if not blocks or blocks[-1][0] != block.group(1):
                blocks.append((block.group(1), []))
            blocks[-1][1].append(node)
        else:
            flush()
            cols[-1].items.append(node)
    flush()
    return cols


def render_image(graph: Graph, path: Path, expand: bool = False) -> None:
    """Draw the graph in columns (see the module docstring) and save it as .svg or .png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Patch, Rectangle

    cols = columns(graph, expand)
    heights = [sum(len(i.nodes) + 1 if isinstance(i, Run) else 1 for i in c.items) for c in cols]
    rows = max(heights)
    width, step = 3.0, 0.5  # inches per column, per row
    fig, ax = plt.subplots(figsize=(max(6.0, width * len(cols)), max(3.0, step * rows + 1.2)))
    ax.set_xlim(-0.5, len(cols) - 0.5)
    ax.set_ylim(-rows - 0.3, 1.3)
    ax.axis("off")
    where: dict[int, tuple[int, float]] = {}  # node id -> (column, y), the drawn node for a repeated one
    for x, col in enumerate(cols):
        ax.text(x, 0.95, col.title, ha="center", va="center", fontsize=8, weight="bold")
        y = 0.0
        for item in col.items:
            if isinstance(item, Run):
                top = y
                if item.count > 1:
                    ax.text(x + 0.46, y - 0.05, f"{item.first} .. {item.last.rsplit('.', 1)[-1]}  × {item.count}",
                            ha="right", va="top", fontsize=6, style="italic", color="#444444")
                y -= 0.5
                for node in item.nodes:
                    _box(ax, graph, node, x, y, FancyBboxPatch, item.first)
                    where[node.id] = (x, y)
                    y -= 1
                ax.add_patch(Rectangle((x - 0.47, y + 0.55), 0.94, top - y - 0.55, fill=False,
                                       linestyle="--", linewidth=0.6, edgecolor="#777777"))
                _alias(graph, item, where)
            else:
                _box(ax, graph, item, x, y, FancyBboxPatch, "")
                where[item.id] = (x, y)
                y -= 1
    for node in graph.nodes():
        if node.id not in where:
            continue
        x1, y1 = where[node.id]
        for i in node.inputs:
            x0, y0 = where[i]
            if x0 != x1 or y0 <= y1:  # another column, or the repeat's loop back
                continue
            if abs(y0 - y1 - 1) < 1e-9 or abs(y0 - y1 - 1.5) < 1e-9:
                ax.add_patch(FancyArrowPatch((x1, y0 - 0.3), (x1, y1 + 0.3), arrowstyle="-|>",
                                             mutation_scale=6, linewidth=0.6, color="#333333"))
            else:  # a skip connection: an arc on the right
                ax.add_patch(FancyArrowPatch((x1 + 0.4, y0), (x1 + 0.4, y1), connectionstyle="arc3,rad=-0.3",
                                             arrowstyle="-|>", mutation_scale=6, linewidth=0.6, color="#888888"))
    for x in range(len(cols) - 1):  # the flow from one part to the next
        ax.annotate("", (x + 0.58, 0.95), (x + 0.42, 0.95), arrowprops={"arrowstyle": "-|>", "color": "#333333"})
    ax.legend(handles=[Patch(facecolor=COLOURS[k], edgecolor="#555555", label=k) for k in COLOURS],
              loc="lower right", fontsize=7, title="precision", title_fontsize=7)
    ax.set_title(f"{graph.name}" + ("" if expand else "  (identical blocks drawn once; --expand draws all)"),
                 fontsize=10)
    try:
        write_atomic(path, lambda tmp: fig.savefig(tmp, format=Path(path).suffix[1:], bbox_inches="tight", dpi=100))
    finally:
        plt.close(fig)


def _box(ax, graph: Graph, node: Node, x: float, y: float, patch, block: str) -> None:
    """One node: a rounded box with its name (shortened inside a block), op, shape and cost."""
    ax.add_patch(patch((x - 0.4, y - 0.3), 0.8, 0.6, boxstyle="round,pad=0.01", facecolor=_fill(graph, node),
                       edgecolor="#555555", linewidth=0.6))
    label = _label(graph, node)
    if block:
        label = label[len(block) + 1:]
    ax.text(x, y, label, ha="center", va="center", fontsize=5.5, family="monospace")


def _alias(graph: Graph, run: Run, where: dict[int, tuple[int, float]]) -> None:
    """Nodes of the blocks drawn once point at their counterparts in the drawn block, so edges
    out of the run (the next block, the next stage) start where the reader sees them."""
    if run.count == 1:
        return
    suffix = {n.name[len(run.first):]: where[n.id] for n in run.nodes}
    first, last = int(run.first.rsplit(".", 1)[1]), int(run.last.rsplit(".", 1)[1])
    stem = run.first.rsplit(".", 1)[0]
    for node in graph.nodes():
        for k in range(first + 1, last + 1):
            prefix = f"{stem}.{k}"
            if node.name.startswith(prefix + ".") and node.name[len(prefix):] in suffix:
                where[node.id] = suffix[node.name[len(prefix):]]
