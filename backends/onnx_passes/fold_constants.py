"""Constant folding: every node whose inputs are all initializers (or outputs of such
nodes) is evaluated once, at export, by ONNX's reference evaluator, and the values the
rest of the graph reads become initializers: weight transposes and reshapes, BinaryViT's
binarized weights (sign of the centred weight times its mean |W|), slices of weights.
Float initializers are evaluated in float64 and stored in the model's dtype. A folded
value is named after the state-dict key it comes from, `key:folded`. Initializers in
`export.kept` (bit-packed weights, which onnxruntime unpacks once at session start) are
never folded."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from . import Export, base_name

FOLDED = ":folded"


def _constant_nodes(ex: Export) -> list[onnx.NodeProto]:
    constant = set(ex.g.initializers) - ex.kept
    found = []
    for node in ex.g.nodes:
        inputs = [i for i in node.input if i]
        if inputs and all(i in constant for i in inputs):
            found.append(node)
            constant.update(node.output)
    return found


def _anchor(value: str, producers: dict[str, onnx.NodeProto], initializers: set[str]) -> str | None:
    """The first state-dict-named initializer upstream of a constant value."""
    stack, seen = [value], set()
    while stack:
        v = stack.pop(0)
        if v in seen:
            continue
        seen.add(v)
        if v in initializers and not v.startswith("const/"):
            return base_name(v)
        node = producers.get(v)
        if node is not None:
            stack.extend(i for i in node.input if i)
    return None


def run(ex: Export) -> list[str]:
    nodes = _constant_nodes(ex)
    if not nodes:
        return []
    folded = {id(n) for n in nodes}
    produced = {o for n in nodes for o in n.output}
    needed = sorted({i for n in ex.g.nodes if id(n) not in folded for i in n.input if i in produced}
                    | (produced & set(ex.outputs)))
    read = {i for n in nodes for i in n.input if i in ex.g.initializers}
    wide = {}
    for name in read:
        arr = numpy_helper.to_array(ex.g.initializers[name])
        wide[name] = arr.astype(np.float64) if arr.dtype == np.float32 else arr
    model = helper.make_model(helper.make_graph(
        list(nodes), "fold", [], [helper.make_value_info(v, onnx.TypeProto()) for v in needed],
        [numpy_helper.from_array(a, k) for k, a in wide.items()]),
        opset_imports=[helper.make_opsetid("", 17)])
    results = ReferenceEvaluator(model).run(None, {})
    producers = {o: n for n in nodes for o in n.output}
    anchors = {v: _anchor(v, producers, set(ex.g.initializers)) for v in needed}
    ex.g.nodes[:] = [n for n in ex.g.nodes if id(n) not in folded]
    for n in nodes:
        ex.g.release_name(n.name)
    removed = ex.prune()
    rename: dict[str, str] = {}
    for value, array in zip(needed, results):
        array = np.asarray(array)
        if array.dtype == np.float64 and ex.g.dtype != np.float64:
            array = array.astype(ex.g.dtype)
        anchor = anchors[value]
        rename[value] = ex.initializer(ex.unique(anchor + FOLDED), array) if anchor else ex.g.const(array, array.dtype)
    for n in ex.g.nodes:
        for k, i in enumerate(n.input):
            if i in rename:
                n.input[k] = rename[i]
    return [f"fold_constants: {len(nodes)} nodes on constants evaluated into {len(needed)} initializers "
            f"({removed} no longer read)"]
