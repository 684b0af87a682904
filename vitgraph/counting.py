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
    1 bit each plus one float32 scale per output channel; everything else at 4 bytes."""
    from .ops import param_specs

    total = count(graph).total
    scales = sum(p.shape[0] for p in param_specs(graph).values() if p.binary)
    packed = total.fp_params * 4 + (total.binary_params + 7) // 8 + scales * 4
    return total.params * 4, packed
