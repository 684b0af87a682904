"""Dead-token elimination, an inference pass: a cls (+ distill) head reads only the first
1 (2) tokens of the final norm, so every per-token op between the last token-mixing op
and the head, and that op's queries, need only those tokens. The pass sets the last
full-precision attention's `queries` and cuts the residual streams that join it with
`slice` nodes; the logits are unchanged (each kept token is computed exactly as before).
A gap head reads every token: nothing changes. Run on eval graphs only (it treats
BatchNorm with running statistics as per-token)."""
from __future__ import annotations

from dataclasses import replace

from ..ir import Graph, Node
from ..ops.attention import Attention
from ..ops.head import Head
from ..ops.slice import Slice, SliceAttrs
from . import infer_shapes

HEAD_READS = {"token": 1, "token+distill": 2}


def _wants(user: Node, need: dict[int, int | None]) -> int | None:
    """How many leading tokens `user` reads of its input (None: all of them)."""
    if user.op is Head:
        return HEAD_READS.get(user.attrs.kind)
    return need[user.id] if user.op.per_token else None


def _prunable(node: Node) -> bool:
    return node.op.per_token or (node.op is Attention and not node.binary)


def run(graph: Graph) -> tuple[Graph, list[str]]:
    g = graph.copy()
    need: dict[int, int | None] = {}
    for node in reversed(g.nodes()):
        wants = [_wants(user, need) for user in g.users(node)]
        need[node.id] = None if not wants or None in wants else max(w for w in wants if w is not None)
    slices: dict[tuple[int, int], int] = {}
    pruned: list[str] = []
    for node in g.nodes():
        k = need[node.id]
        if k is None or not _prunable(node) or k >= node.out.tokens:
            continue
        if node.op is Attention:
            node = replace(node, attrs=replace(node.attrs, queries=k))
        else:
            inputs = []
            for i in node.inputs:
                src = g.node(i)
                if src.out.tokens > k:
                    if (i, k) not in slices:
                        slices[(i, k)] = g.add(Slice, f"{src.name}/first{k}", (i,), SliceAttrs(0, k), src.group,
                                               src.stage, src.span)
                    i = slices[(i, k)]
                inputs.append(i)
            node = replace(node, inputs=tuple(inputs))
        g.rewire(node)
        g.replace(replace(node, out=node.op.shape(node, [g.node(i).out for i in node.inputs])))
        pruned.append(node.name)
    infer_shapes.run(g)
    report = [f"dead-token elimination: {len(pruned)} nodes from {pruned[0]} on compute the "
              f"{g.node(next(n.id for n in g if n.name == pruned[-1])).out.tokens} token(s) the head reads"] \
        if pruned else []
    return g, report
