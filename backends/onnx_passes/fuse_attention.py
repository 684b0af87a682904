"""onnxruntime's fused attention for full-precision attention: the standard form's QKV
projection, Split, reshapes, MatMul / Softmax / MatMul (and LSA's additive mask) become
one com.microsoft.Attention node (QKV projection and attention), or, where the
dead-token pass left only the first queries live, Q, K and V MatMuls into one
com.microsoft.MultiHeadAttention. The output projection stays as it is. The scale is
already in q's rows of the weight (scale=1)."""
from __future__ import annotations

import onnx

from vitgraph.ops import attention as A

from . import Export

MS_DOMAIN = "com.microsoft"


def _scope(ex: Export, name: str) -> list[onnx.NodeProto]:
    return [n for n in ex.g.nodes if n.name.startswith(name + "/")]


def run(ex: Export) -> list[str]:
    fused = {"Attention": 0, "MultiHeadAttention": 0}
    for node in ex.graph:
        if node.op is not A.Attention or node.binary or not node.attrs.plain:  # CaiT's forms stay standard
            continue
        x = ex.values[ex.graph.inputs(node)[0].name]
        out = ex.values[node.name]
        producers = ex.producers()
        scope = _scope(ex, node.name)
        last = producers[out]
        proj = producers[last.input[0]] if last.op_type == "Add" else last     # the output projection's MatMul
        ctx = proj.input[0]
        qkv = next(n for n in scope if n.op_type == "MatMul" and n.input[0] == x)
        users = ex.consumers().get(qkv.output[0], [])
        bias = next((u.input[1] for u in users if u.op_type == "Add" and ex.constant(u.input[1]) is not None), "")
        mask = next((n.input[1] for n in scope if n.op_type == "Add" and n is not last
                     and (c := ex.constant(n.input[1])) is not None and c.ndim == 4), "")
        a, n = node.attrs, ex.graph.inputs(node)[0].out.tokens
        m, inner, w = A.query_tokens(node, ex.graph.inputs(node)[0].out), node.attrs.inner, qkv.input[1]
        keep = {id(proj), id(last)}
        at = ex.take([s for s in scope if id(s) not in keep], drop_initializers=False)
        if m == n:
            new = [ex.node("Attention", [x, w, bias, "", "", mask], [ctx], node.name, MS_DOMAIN,
                           num_heads=a.heads, scale=1.0, qkv_hidden_sizes=[inner] * 3)]
            fused["Attention"] += 1
        else:  # queries of the first m tokens, keys and values of all
            g = ex.g
            first = ex.node("Slice", [x, g.const([0]), g.const([m]), g.const([1])], [f"{ctx}:x{m}"], node.name)
            parts = []
            for i, part in enumerate("qkv"):
                sl = ex.node("Slice", [w, g.const([i * inner]), g.const([(i + 1) * inner]), g.const([1])],
                             [f"{ctx}:w{part}"], node.name)
                mm = ex.node("MatMul", [first.output[0] if part == "q" else x, sl.output[0]], [f"{ctx}:{part}"],
                             node.name)
                parts += [sl, mm]
            mha = ex.node("MultiHeadAttention", [f"{ctx}:q", f"{ctx}:k", f"{ctx}:v", bias, "", mask], [ctx],
                          node.name, MS_DOMAIN, num_heads=a.heads, scale=1.0)
            new = [first, *parts, mha]
            fused["MultiHeadAttention"] += 1
        ex.put(at, new)
        ex.g.domains.add(MS_DOMAIN)
    return [f"fuse_attention: {k} full-precision attentions as {MS_DOMAIN}.{op}" for op, k in fused.items() if k]
