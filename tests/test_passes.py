"""The inference passes, one by one: dead-token elimination on the IR; constant folding,
affine folding and onnxruntime's fusions on the ONNX graph. Each changes the graph as its
docstring says, leaves the function it computes unchanged, and reports what it did."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper

import vitgraph
from onnx_helpers import TINY_FP, small_graph, torch_module
from vitgraph.backends._onnx_graph import OnnxGraph
from vitgraph.backends.onnx_backend import make_session, to_onnx
from vitgraph.backends.onnx_passes import Export, run_passes
from vitgraph.ops.attention import Attention
from vitgraph.ops.slice import Slice
from vitgraph.passes import dead_tokens, run_inference


# -- dead-token elimination (IR) ------------------------------------------------------------
def test_dead_tokens_compute_only_what_the_head_reads() -> None:
    graph = small_graph("specs/deit_tiny_distilled.vg")
    inference, report = dead_tokens.run(graph)
    last = [n for n in inference if n.op is Attention][-1]
    assert last.attrs.queries == 2 and last.out.tokens == 2
    slices = [n for n in inference if n.op is Slice]
    assert [(s.attrs.start, s.attrs.stop) for s in slices] == [(0, 2)] and len(report) == 1 and "2 token(s)" in report[0]
    assert all(n.attrs.queries is None for n in graph if n.op is Attention), "the original graph is untouched"
    # the same weights give the same logits
    trained = torch_module(graph)
    pruned = vitgraph.to_torch(inference)
    pruned.load_state_dict(trained.state_dict())
    images = torch.randn(3, *graph.image, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(pruned.eval()(images), trained.eval()(images), rtol=1e-5, atol=1e-6)


def test_dead_tokens_leave_a_gap_head_alone() -> None:
    graph = small_graph("specs/binaryvit.vg")
    inference, report = run_inference(graph)
    assert report == [] and [n.out for n in inference] == [n.out for n in graph]


# -- ONNX passes on small hand-built graphs ---------------------------------------------------
def _export(nodes: list[onnx.NodeProto], inits: dict[str, np.ndarray]) -> Export:
    g = OnnxGraph(np.float32)
    g.nodes.extend(nodes)
    for name, value in inits.items():
        g.initializers[name] = numpy_helper.from_array(value.astype(np.float32), name)
    return Export(g, vitgraph.compile(TINY_FP), {}, outputs=("y",))


def _run(ex: Export, x: np.ndarray) -> np.ndarray:
    model = ex.g.model([helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, list(x.shape))],
                       [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], "t", {}, "")
    return make_session(model, threads=1).run(None, {"x": x})[0]


def _linear_chain() -> tuple[list[onnx.NodeProto], dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    inits = {"fc.weight": rng.normal(size=(6, 4)), "fc.bias": rng.normal(size=6), "bn.scale": rng.normal(size=6),
             "bn.shift": rng.normal(size=6), "act.shift_in": rng.normal(size=6)}
    nodes = [helper.make_node("Transpose", ["fc.weight"], ["wt"], name="fc/Transpose", perm=[1, 0]),
             helper.make_node("MatMul", ["x", "wt"], ["mm"], name="fc/MatMul"),
             helper.make_node("Add", ["mm", "fc.bias"], ["a1"], name="fc/Add"),
             helper.make_node("Mul", ["a1", "bn.scale"], ["m"], name="fc/Mul"),
             helper.make_node("Add", ["m", "bn.shift"], ["a2"], name="fc/Add_1"),
             helper.make_node("Sub", ["a2", "act.shift_in"], ["y"], name="fc/Sub")]
    return nodes, inits


def test_fold_constants_evaluates_weight_transposes() -> None:
    nodes, inits = _linear_chain()
    ex = _export(nodes, inits)
    x = np.random.default_rng(1).normal(size=(2, 3, 4)).astype(np.float32)
    want = _run(_export(*_linear_chain()), x)
    report = run_passes(ex, ("fold_constants",))
    assert "Transpose" not in [n.op_type for n in ex.g.nodes] and "fc.weight" not in ex.g.initializers
    np.testing.assert_array_equal(numpy_helper.to_array(ex.g.initializers["fc.weight:folded"]),
                                  inits["fc.weight"].astype(np.float32).T)
    assert report and report[0].startswith("fold_constants: 1 nodes")
    np.testing.assert_allclose(_run(ex, x), want, rtol=1e-6)


def test_fold_constants_keeps_what_it_is_told_to() -> None:
    nodes, inits = _linear_chain()
    ex = _export(nodes, inits)
    ex.kept.add("fc.weight")
    assert run_passes(ex, ("fold_constants",)) == []
    assert "Transpose" in [n.op_type for n in ex.g.nodes]


def test_fold_affine_folds_batchnorm_and_shifts_into_the_linear_layer() -> None:
    nodes, inits = _linear_chain()
    ex = _export(nodes, inits)
    x = np.random.default_rng(1).normal(size=(2, 3, 4)).astype(np.float32)
    want = _run(_export(*_linear_chain()), x)
    report = run_passes(ex, ("fold_constants", "fold_affine"))
    assert [n.op_type for n in ex.g.nodes] == ["MatMul", "Add"]
    assert sorted(ex.g.initializers) == ["fc.bias:folded", "fc.weight:folded"]
    w = numpy_helper.to_array(ex.g.initializers["fc.weight:folded"])
    np.testing.assert_allclose(w, (inits["fc.weight"].T * inits["bn.scale"]).astype(np.float32), rtol=1e-6)
    np.testing.assert_allclose(_run(ex, x), want, rtol=1e-5, atol=1e-6)
    assert any("folded into the linear layer" in line for line in report)


def test_fold_affine_merges_a_chain_without_a_linear_layer() -> None:
    rng = np.random.default_rng(2)
    inits = {"s": rng.normal(size=5), "t": rng.normal(size=5), "c": rng.normal(size=5), "d": rng.normal(size=5)}
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="n/Relu"),
             helper.make_node("Mul", ["r", "s"], ["m"], name="n/Mul"),
             helper.make_node("Add", ["m", "t"], ["a"], name="n/Add"),
             helper.make_node("Sub", ["a", "c"], ["b"], name="n/Sub"),
             helper.make_node("Div", ["b", "d"], ["y"], name="n/Div")]
    x = rng.normal(size=(2, 5)).astype(np.float32)
    want = _run(_export(nodes, inits), x)
    ex = _export([onnx.NodeProto.FromString(n.SerializeToString()) for n in nodes], inits)
    report = run_passes(ex, ("fold_affine",))
    assert [n.op_type for n in ex.g.nodes] == ["Relu", "Mul", "Add"]
    np.testing.assert_allclose(_run(ex, x), want, rtol=1e-5, atol=1e-6)
    assert report == ["fold_affine: 1 chains of per-channel Mul/Add/Sub merged into one Mul and one Add"]


# -- the fusions, on a real export ----------------------------------------------------------
@pytest.mark.parametrize("spec", ["specs/sl_vit.vg", "specs/deit_tiny_distilled.vg"])
def test_fusions_replace_attention_and_bias_gelu_and_keep_the_logits(spec: str) -> None:
    graph = small_graph(spec)
    module = torch_module(graph)
    plain, fused = to_onnx(graph, module.state_dict(), fused=False), to_onnx(graph, module.state_dict())
    kinds = [n.op_type for n in fused.graph.node]
    attentions = sum(n.op is Attention for n in graph)
    assert kinds.count("Attention") == attentions - 1 and kinds.count("MultiHeadAttention") == 1
    assert kinds.count("BiasGelu") == attentions and "Erf" not in kinds and "Softmax" not in kinds
    meta = {p.key: p.value for p in fused.metadata_props}
    assert "fuse_attention" in meta["passes"] and "fuse_bias_gelu" in meta["passes"]
    images = np.random.default_rng(4).normal(size=(2, *graph.image)).astype(np.float32)
    a = make_session(plain).run(None, {"input": images})[0]
    b = make_session(fused).run(None, {"input": images})[0]
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5 * np.abs(a).max())
