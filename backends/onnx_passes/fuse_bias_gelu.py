"""onnxruntime's BiasGelu: the standard form's bias Add and exact GELU,
0.5 x (1 + erf(x / sqrt 2)) with x = y + b, become one com.microsoft.BiasGelu(y, b)."""
from __future__ import annotations

import math


from . import Export

MS_DOMAIN = "com.microsoft"


def _is(ex: Export, value: str, number: float) -> bool:
    c = ex.constant(value)
    return c is not None and c.size == 1 and abs(float(c.reshape(())) - number) < 1e-6 * max(1.0, abs(number))


def run(ex: Export) -> list[str]:
    count = 0
    for erf in [n for n in ex.g.nodes if n.op_type == "Erf"]:
        producers, consumers = ex.producers(), ex.consumers()
        div = producers.get(erf.input[0])
        if div is None or div.op_type != "Div" or not _is(ex, div.input[1], math.sqrt(2.0)):
            continue
        x = div.input[0]
        add = producers.get(x)
        bias = ex.constant(add.input[1]) if add is not None and add.op_type == "Add" else None
        if bias is None or bias.ndim != 1:
            continue
        one = consumers.get(erf.output[0], [])
        if len(one) != 1 or one[0].op_type != "Add" or not _is(ex, one[0].input[1], 1.0):
            continue
        mul = consumers.get(one[0].output[0], [])
        if len(mul) != 1 or mul[0].op_type != "Mul" or x not in mul[0].input:
            continue
        half = consumers.get(mul[0].output[0], [])
        if len(half) != 1 or half[0].op_type != "Mul" or not _is(ex, half[0].input[1], 0.5):
            continue
        if {id(u) for u in consumers.get(x, [])} != {id(div), id(mul[0])}:
            continue
        scope = add.name.rsplit("/", 1)[0]
        y, b, out = add.input[0], add.input[1], half[0].output[0]
        at = ex.take([add, div, erf, one[0], mul[0], half[0]], drop_initializers=False)
        ex.put(at, [ex.node("BiasGelu", [y, b], [out], scope, MS_DOMAIN)])
        ex.g.domains.add(MS_DOMAIN)
        count += 1
    return [f"fuse_bias_gelu: {count} bias + GELU as {MS_DOMAIN}.BiasGelu"] if count else []
