"""Per-channel affine folding. A chain of Mul / Add / Sub / Div nodes whose other operand
is a constant per channel (or a scalar), each feeding only the next, is one affine
x * a + b (an eval BatchNorm, RPReLU's input shift, a bias, BinaryViT's context norm):

  * right after a MatMul by a constant weight W (a linear layer), it folds into the
    layer: MatMul(x, W * a) + b (a binary layer's weight stays +-1 times a per-channel
    scale, now BatchNorm's times its own);
  * elsewhere it becomes at most one Mul and one Add.

The chain's last value keeps its name, so nothing downstream changes. New initializers
are named after what they fold: the weight's key (`key:folded`), the bias's (or, with
none, the layer's `.bias`), the first Mul's and Add's constants."""
from __future__ import annotations

import numpy as np
import onnx

from . import Export, base_name

FOLDED = ":folded"
AFFINE = ("Mul", "Add", "Sub", "Div")


def _per_channel(c: np.ndarray | None) -> np.ndarray | None:
    """c as a vector over the last dim (or a scalar), if it broadcasts that way."""
    if c is None or c.dtype.kind != "f":
        return None
    if c.ndim == 0 or all(d == 1 for d in c.shape[:-1]):
        return c.reshape(-1) if c.ndim else c
    return None


def _as_affine(ex: Export, node: onnx.NodeProto) -> tuple[str, np.ndarray, np.ndarray, str] | None:
    """(x, a, b, name of the constant) when node computes x * a + b with a, b per channel."""
    if node.op_type not in AFFINE or len(node.input) != 2:
        return None
    consts = [_per_channel(ex.constant(i)) for i in node.input]
    if (consts[0] is None) == (consts[1] is None):
        return None
    ci = 0 if consts[0] is not None else 1
    c, x = consts[ci], node.input[1 - ci]
    one, zero = np.ones_like(c), np.zeros_like(c)
    if node.op_type == "Mul":
        return x, c, zero, node.input[ci]
    if node.op_type == "Add":
        return x, one, c, node.input[ci]
    if node.op_type == "Sub" and ci == 1:
        return x, one, -c, node.input[ci]
    if node.op_type == "Div" and ci == 1:
        return x, 1.0 / c, zero, node.input[ci]
    return None


def ir_node(node: onnx.NodeProto) -> str:
    """The IR node an ONNX node was lowered from (its name's first component)."""
    return node.name.split("/", 1)[0]


def _chains(ex: Export) -> list[list[onnx.NodeProto]]:
    """Maximal runs of affine nodes of one IR node, each feeding only the next (so every
    IR node's output value stays where the export's metadata says it is)."""
    consumers = ex.consumers()
    producers = ex.producers()
    outputs = set(ex.outputs)

    def single(value: str) -> onnx.NodeProto | None:
        users = consumers.get(value, [])
        return users[0] if len(users) == 1 and value not in outputs else None

    chains, seen = [], set()
    for node in ex.g.nodes:
        if id(node) in seen or _as_affine(ex, node) is None:
            continue
        x = _as_affine(ex, node)[0]
        prev = producers.get(x)
        if prev is not None and _as_affine(ex, prev) is not None and single(x) is node \
                and ir_node(prev) == ir_node(node):
            continue  # not the start of a chain
        chain = [node]
        while True:
            nxt = single(chain[-1].output[0])
            if nxt is None or _as_affine(ex, nxt) is None or _as_affine(ex, nxt)[0] != chain[-1].output[0] \
                    or ir_node(nxt) != ir_node(node):
                break
            chain.append(nxt)
        seen.update(id(n) for n in chain)
        chains.append(chain)
    return chains


def _compose(ex: Export, chain: list[onnx.NodeProto]) -> tuple[np.ndarray, np.ndarray, str | None, str | None]:
    """The chain as x * a + b (float64), with the names of its first Mul and Add constants."""
    a, b = np.float64(1.0), np.float64(0.0)
    mul_name = add_name = None
    for node in chain:
        _, na, nb, cname = _as_affine(ex, node)
        a, b = a * na.astype(np.float64), b * na.astype(np.float64) + nb.astype(np.float64)
        if node.op_type in ("Mul", "Div") and mul_name is None:
            mul_name = cname
        if node.op_type in ("Add", "Sub") and add_name is None:
            add_name = cname
    return np.asarray(a), np.asarray(b), mul_name, add_name


class _Index:
    """Who produces and who reads each value, kept up to date as chains are rewritten
    (rebuilding it per chain made the pass quadratic in the graph's size)."""

    def __init__(self, ex: Export) -> None:
        self.producers = ex.producers()
        self.consumers = ex.consumers()

    def swap(self, old: list[onnx.NodeProto], new: list[onnx.NodeProto]) -> None:
        gone = {id(n) for n in old}
        for n in old:
            for i in n.input:
                self.consumers[i] = [u for u in self.consumers.get(i, []) if id(u) not in gone]
        for n in new:
            for o in n.output:
                self.producers[o] = n
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)


def _linear_before(ex: Export, index: _Index, chain: list[onnx.NodeProto]) -> onnx.NodeProto | None:
    """The MatMul by a constant (in, out) weight that feeds only this chain, if any."""
    x = _as_affine(ex, chain[0])[0]
    node = index.producers.get(x)
    if node is None or node.op_type != "MatMul" or len(index.consumers.get(x, [])) != 1 \
            or ir_node(node) != ir_node(chain[0]):
        return None
    w = ex.g.initializers.get(node.input[1])
    if w is None or len(w.dims) != 2 or node.input[0] in ex.g.initializers:
        return None
    if len(index.consumers.get(node.input[1], [])) != 1:
        return None
    return node


def run(ex: Export) -> list[str]:
    into_linear = merged = 0
    index = _Index(ex)
    for chain in _chains(ex):
        a, b, mul_name, add_name = _compose(ex, chain)
        x, out = _as_affine(ex, chain[0])[0], chain[-1].output[0]
        scope = chain[0].name.rsplit("/", 1)[0]
        linear = _linear_before(ex, index, chain)
        ops = [n.op_type for n in chain]
        if (linear is not None and ops == ["Add"]) or (linear is None and (len(chain) == 1 or ops == ["Mul", "Add"])):
            continue  # nothing to fold: a bias, an affine already in its shortest form, a lone op
        if linear is not None:
            w = ex.constant(linear.input[1]).astype(np.float64)            # (in, out)
            w_key, source = base_name(linear.input[1]), linear.input[0]
            bias_key = base_name(add_name) if add_name and not add_name.startswith("const/") else \
                w_key.removesuffix(".weight") + ".bias"
            at = ex.take([linear, *chain], consumers=index.consumers)
            w_name = ex.float_initializer(ex.unique(w_key + FOLDED), w * np.broadcast_to(a, w.shape[1:]))
            if np.any(b != 0):
                mm = ex.unique(f"{out}:linear")
                b_name = ex.float_initializer(ex.unique(bias_key + FOLDED), np.broadcast_to(b, w.shape[1:]))
                new = [ex.node("MatMul", [source, w_name], [mm], scope), ex.node("Add", [mm, b_name], [out], scope)]
            else:
                new = [ex.node("MatMul", [source, w_name], [out], scope)]
            ex.put(at, new)
            index.swap([linear, *chain], new)
            into_linear += 1
            continue
        at = ex.take(chain, consumers=index.consumers)
        new = []
        value = x
        if np.any(a != 1):
            value = out if not np.any(b != 0) else ex.unique(f"{out}:scaled")
            name = ex.float_initializer(ex.unique(base_name(mul_name or add_name) + FOLDED), a)
            new.append(ex.node("Mul", [x, name], [value], scope))
        if np.any(b != 0) or not new:
            name = ex.float_initializer(ex.unique(base_name(add_name or mul_name) + FOLDED), b)
            new.append(ex.node("Add", [value, name], [out], scope))
        ex.put(at, new)
        index.swap(chain, new)
        merged += 1
    ex.prune()
    lines = []
    if into_linear:
        lines.append(f"fold_affine: {into_linear} per-channel affine chains (BatchNorm, shifts, biases) folded "
                     "into the linear layer before them")
    if merged:
        lines.append(f"fold_affine: {merged} chains of per-channel Mul/Add/Sub merged into one Mul and one Add")
    return lines
