"""Parameter and operation counts of a checked graph: total, per block (node group) and
per stage. See ops.py for the convention (MACs, BOPs, OPs = MACs + BOPs/64)."""
from __future__ import annotations

from dataclasses import dataclass

from .ir import Graph
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


def stage_of(group: str) -> str:
    """'stages.2.blocks.1' -> 'stages.2'; 'blocks.3' -> 'blocks'; 'stem', 'head' unchanged."""
    parts = group.split(".")
    if parts[0] == "stages":
        return ".".join(parts[:2])
    return parts[0]


def count(graph: Graph) -> CountReport:
    by_group: dict[str, Counts] = {}
    for node in graph:
        by_group[node.group] = by_group.get(node.group, Counts()) + node_counts(graph, node)
    by_stage: dict[str, Counts] = {}
    for group, c in by_group.items():
        key = stage_of(group)
        by_stage[key] = by_stage.get(key, Counts()) + c
    total = sum(by_group.values(), Counts())
    return CountReport(total, by_group, by_stage)


def weight_bytes(graph: Graph) -> tuple[int, int]:
    """(float32 bytes, bit-packed bytes) of the trainable weights: binary weights stored at
    1 bit each plus one float32 scale per output channel; everything else at 4 bytes."""
    from .ops import OPS, input_types

    total = count(graph).total
    scales = 0
    for node in graph:
        ins = input_types(graph, node)
        shapes = OPS[node.op].params(node, ins)
        scales += sum(shapes[k][0] for k in OPS[node.op].binary_weights(node, ins))
    packed = total.fp_params * 4 + (total.binary_params + 7) // 8 + scales * 4
    return total.params * 4, packed
