"""Parameter and operation counts of a checked graph: total, per block (node group) and
per stage. See ops.py for the convention (MACs, BOPs, OPs = MACs + BOPs/64)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .ir import Graph, Node
from .ops import Counts, node_counts


@dataclass(frozen=True)
class CountReport:
    total: Counts
    by_group: dict[str, Counts]
    by_stage: dict[str, Counts]

    def as_dict(self) -> dict[str, object]:
        return {"total": self.total.as_dict(),
                "by_group": {k: v.as_dict() for k, v in self.by_group.items()},
                "by_stage": {k: v.as_dict() for k, v in self.by_stage.items()}}


def count(graph: Graph) -> CountReport:
    by_group: dict[str, Counts] = {}
    by_stage: dict[str, Counts] = {}
    for node in graph:
        c = node_counts(graph, node)
        by_group[node.group] = by_group.get(node.group, Counts()) + c
        by_stage[node.stage] = by_stage.get(node.stage, Counts()) + c
    total = sum(by_group.values(), Counts())
    return CountReport(total, by_group, by_stage)


def weight_bytes(graph: Graph) -> tuple[int, int]:
    """(float32 bytes, bit-packed bytes) of the trainable weights: binary weights stored at
    1 bit each (each output channel's row padded to whole bytes, as the ONNX export
    stores them) plus one float32 scale per output channel; everything else at 4 bytes."""
    rows = weight_bytes_by(graph, lambda node: "")
    return rows[""] if rows else (0, 0)


def weight_bytes_by(graph: Graph, key: Callable[[Node], str]) -> dict[str, tuple[int, int]]:
    """weight_bytes summed per key(node) (a node's group or stage), in node order."""
    from .ops import node_params

    out: dict[str, tuple[int, int]] = {}
    for node in graph:
        fp = packed = 0
        for p in node_params(graph, node).values():
            fp += 4 * p.numel
            rows, per_row = p.shape[0], p.numel // p.shape[0]
            packed += rows * ((per_row + 7) // 8 + 4) if p.binary else 4 * p.numel
        k = key(node)
        old = out.get(k, (0, 0))
        out[k] = (old[0] + fp, old[1] + packed)
    return out
