"""The binary deployment's passes over the ONNX graph, each on a small hand-built graph:
it changes the graph as its docstring says, computes the same values (bit for bit
where the pass claims exactness), and reports what it did. Whole models: the deployed
form's weights are 1-bit, its binary products integer, and onnxruntime folds the
unpacking once at session start (parity with torch: test_onnx_parity.py)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import vitgraph
from onnx_helpers import SPECS, TINY_BINARY, TINY_FP, small_graph, torch_module
from vitgraph.backends._onnx_graph import OnnxGraph
from vitgraph.backends.onnx_backend import make_session, to_onnx
from vitgraph.backends.onnx_passes import Export, run_passes
from vitgraph.ops import param_specs
from vitgraph.ops.attention import Attention
from vitgraph.ops.pool_branches import PoolBranches

SPECIAL = [0.0, -0.0, 1e-45, -1e-45, 1e-38, -1e-38, 3.0, -5.0, 1e30, -1e30, np.inf, -np.inf]
BINARYVIT = small_graph(next(p for p in SPECS if p.endswith("/binaryvit.vg")))


def _export(nodes: list[onnx.NodeProto], inits: dict[str, np.ndarray], shapes: dict[str, list[int]],
            outputs: tuple[str, ...] = ("y",), dtype: type = np.float32, fused: bool = False) -> Export:
    g = OnnxGraph(dtype)
    g.nodes.extend(onnx.NodeProto.FromString(n.SerializeToString()) for n in nodes)
    for n in g.nodes:
        g.fresh_name(n.name)  # taken, as the lowering's are
    for name, value in inits.items():
        g.initializers[name] = numpy_helper.from_array(value.astype(dtype) if value.dtype.kind == "f" else value, name)
    inputs = tuple(helper.make_tensor_value_info(k, g.elem_type, v) for k, v in shapes.items())
    return Export(g, BINARYVIT, {}, outputs=outputs, fused=fused, inputs=inputs)


def _run(ex: Export, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    outputs = [helper.make_tensor_value_info(o, ex.g.elem_type, None) for o in ex.outputs]
    model = ex.g.model(list(ex.inputs), outputs, "t", {}, "")
    return make_session(model, threads=1).run(None, feeds)


def _inputs(shape: tuple[int, ...], dtype: type = np.float32, seed: int = 0) -> np.ndarray:
    """Normal draws with the special values (zeros of both signs, subnormals, huge, inf) first."""
    x = np.random.default_rng(seed).normal(size=shape).astype(dtype)
    x.reshape(-1)[:len(SPECIAL)] = SPECIAL
    return x


def _ops(ex: Export) -> list[str]:
    return [n.op_type for n in ex.g.nodes]


# -- fast_prelu ---------------------------------------------------------------------------
def _prelu(slope: np.ndarray) -> tuple[list[onnx.NodeProto], dict[str, np.ndarray]]:
    return ([helper.make_node("Mul", ["x", "slope"], ["m"], name="p/Mul"),
             helper.make_node("Greater", ["x", "zero"], ["g"], name="p/Greater"),
             helper.make_node("Where", ["g", "x", "m"], ["y"], name="p/Where")],
            {"slope": slope, "zero": np.array(0.0)})


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("slopes,ops", [([0.25, -0.5, 1.0, 0.0, 0.7, 0.1], ["Mul", "Max"]),
                                        ([1.0, 1.5, 3.0, 1.0, 2.0, 1.2], ["Mul", "Min"]),
                                        ([0.25, 1.5, -2.0, 1.0, 3.0, 0.5], ["Mul", "Mul", "Max", "Mul"])])
def test_fast_prelu_is_where_bit_for_bit(slopes: list[float], ops: list[str], dtype: type) -> None:
    nodes, inits = _prelu(np.array(slopes))
    shapes = {"x": [2, 5, 6]}
    x = _inputs((2, 5, 6), dtype)
    (want,) = _run(_export(nodes, inits, shapes, dtype=dtype), {"x": x})
    ex = _export(nodes, inits, shapes, dtype=dtype)
    report = run_passes(ex, ("fast_prelu",))
    assert _ops(ex) == ops and len(report) == 1 and report[0].startswith("fast_prelu: 1 PReLUs")
    (got,) = _run(ex, {"x": x})
    np.testing.assert_array_equal(got, want)


# -- repeat_shortcut ----------------------------------------------------------------------
def test_repeat_shortcut_adds_a_broadcast_instead_of_a_concat() -> None:
    nodes = [helper.make_node("Concat", ["x", "x", "x"], ["c"], name="s/Concat", axis=-1),
             helper.make_node("MatMul", ["x", "w"], ["t"], name="s/MatMul"),
             helper.make_node("Add", ["t", "c"], ["y"], name="s/Add")]
    inits = {"w": np.random.default_rng(1).normal(size=(4, 12))}
    shapes = {"x": [2, 3, 4]}
    x = _inputs((2, 3, 4))
    (want,) = _run(_export(nodes, inits, shapes), {"x": x})
    ex = _export(nodes, inits, shapes)
    assert run_passes(ex, ("repeat_shortcut",)) == [
        "repeat_shortcut: 1 channel-repeating shortcuts added as broadcasts, not written out"]
    assert "Concat" not in _ops(ex)
    (got,) = _run(ex, {"x": x})
    np.testing.assert_array_equal(got, want)


# -- sink_shifts --------------------------------------------------------------------------
def _blu_chain() -> tuple[list[onnx.NodeProto], dict[str, np.ndarray]]:
    """PReLU output + shift_out, read by a move + Sign + linear with that value as its
    shortcut, and by a group-average shortcut; then a second PReLU."""
    rng = np.random.default_rng(2)
    inits = {"slope": np.full(8, 0.25), "shift_out": rng.normal(size=8), "move": rng.normal(size=8),
             "w": rng.normal(size=(8, 8)), "bias": rng.normal(size=8), "groups": np.array([0, 0, 4, 2]),
             "w2": rng.normal(size=(4, 4)), "slope2": np.full(8, 0.5)}
    nodes = [helper.make_node("Mul", ["x", "slope"], ["xs"], name="a/Mul"),
             helper.make_node("Max", ["x", "xs"], ["p"], name="a/Max"),
             helper.make_node("Add", ["p", "shift_out"], ["h"], name="a/Add"),            # RPReLU's shift
             helper.make_node("Add", ["h", "move"], ["hm"], name="b/Add"),                # the next move
             helper.make_node("Sign", ["hm"], ["s"], name="b/Sign"),
             helper.make_node("MatMul", ["s", "w"], ["t"], name="b/MatMul"),
             helper.make_node("Add", ["t", "bias"], ["tb"], name="b/Add_1"),
             helper.make_node("Add", ["tb", "h"], ["z"], name="b/Add_2"),                 # the shortcut
             helper.make_node("Mul", ["z", "slope2"], ["zs"], name="b/Mul"),
             helper.make_node("Max", ["z", "zs"], ["y"], name="b/Max"),
             helper.make_node("Reshape", ["h", "groups"], ["hg"], name="c/Reshape"),      # (B, N, 4, 2)
             helper.make_node("ReduceMean", ["hg"], ["g"], name="c/ReduceMean", axes=[3], keepdims=0),
             helper.make_node("MatMul", ["g", "w2"], ["g2"], name="c/MatMul"),
             helper.make_node("Sign", ["g2"], ["y2"], name="c/Sign")]
    return nodes, inits


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sink_shifts_merges_shifts_and_makes_them_biases(dtype: type) -> None:
    nodes, inits = _blu_chain()
    shapes = {"x": [2, 3, 8]}
    x = _inputs((2, 3, 8), dtype)[..., :]
    x[~np.isfinite(x)] = 0
    want = _run(_export(nodes, inits, shapes, ("y", "y2"), dtype), {"x": x})
    ex = _export(nodes, inits, shapes, ("y", "y2"), dtype)
    ex.values = {"a": "h", "b": "y"}
    (line,) = run_passes(ex, ("sink_shifts",))
    # the shift reaches the move (merged), the linear's shortcut (then placed as its bias
    # with the bias it had) and, averaged over channel groups, the second MatMul's output
    producers = {o: n for n in ex.g.nodes for o in n.output}
    adds = [n for n in ex.g.nodes if n.op_type == "Add" and any(ex.constant(i) is not None for i in n.input)]
    assert sorted(producers[a.input[0]].op_type for a in adds) == ["MatMul", "MatMul", "Max"]
    assert line == ("sink_shifts: 3 additions of per-channel constants -> 3 (5 moved forward, 2 merged into "
                    "another, 1 placed as the bias of the MatMul before them)")
    assert ex.values == {"b": "y"}, "h no longer holds what the IR says"
    got = _run(ex, {"x": x})
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-6)


def test_sink_shifts_stops_at_what_is_not_linear_per_channel() -> None:
    """A shift read by a pooling matmul over tokens (rows differ) stays where it is."""
    nodes = [helper.make_node("Add", ["x", "c"], ["h"], name="a/Add"),
             helper.make_node("MatMul", ["band", "h"], ["y"], name="a/MatMul")]
    ex = _export(nodes, {"c": np.ones(4), "band": np.eye(3)}, {"x": [2, 3, 4]})
    assert run_passes(ex, ("sink_shifts",)) == [] and _ops(ex) == ["Add", "MatMul"]


# -- binary_matmul ----------------------------------------------------------------------------
def _binary_linear(k: int, n: int, key: str) -> tuple[list[onnx.NodeProto], dict[str, np.ndarray]]:
    """Sign(x) @ (S * c) + b with S = +-1, c per output channel (the folded form)."""
    rng = np.random.default_rng(3)
    signs = np.where(rng.normal(size=(k, n)) > 0, 1.0, -1.0)
    scale = rng.uniform(0.5, 2.0, size=n) * np.where(rng.normal(size=n) > 0, 1, -1)
    inits = {f"{key}:folded": signs * scale, "b": rng.normal(size=n)}
    nodes = [helper.make_node("Sign", ["x"], ["s"], name="l/Sign"),
             helper.make_node("MatMul", ["s", f"{key}:folded"], ["t"], name="l/MatMul"),
             helper.make_node("Add", ["t", "b"], ["y"], name="l/Add")]
    return nodes, inits


def _binary_key() -> tuple[str, int, int]:
    """The first binary linear weight of the IR: key, in, out."""
    key, p = next((key, p) for key, p in param_specs(BINARYVIT).items() if p.binary and len(p.shape) == 2)
    return key, p.shape[1], p.shape[0]


@pytest.mark.parametrize("fused,dtype,op", [(True, np.float32, "MatMulIntegerToFloat"),
                                            (False, np.float32, "MatMulInteger"),
                                            (False, np.float64, "MatMulInteger")])
def test_binary_matmul_sums_exactly_in_integers(fused: bool, dtype: type, op: str) -> None:
    key, k, n = _binary_key()
    nodes, inits = _binary_linear(k, n, key)
    x = _inputs((2, 3, k), dtype)
    ex = _export(nodes, inits, {"x": [2, 3, k]}, dtype=dtype, fused=fused)
    (line,) = run_passes(ex, ("binary_matmul",))
    ops = _ops(ex)
    assert op in ops and ("Sign" in ops) == (dtype == np.float64)  # float32 quantizes without the Sign kernel
    assert "MatMul" not in ops and ("Add" in ops) != fused   # fused: the bias is in the epilogue
    assert line == f"binary_matmul: 1 binary products: 1 integer {op} u8 x s8"
    assert json.loads(ex.notes["binary_matmuls"]) == {"l/MatMul": f"integer {op} u8 x s8 ({k}x{n} weight)"}
    (got,) = _run(ex, {"x": x})
    # the exact value: an integer sum of +-1 products, one rounding for the scale, one for the bias
    w = inits[f"{key}:folded"].astype(dtype)
    exact = (np.sign(x.astype(np.float64)) @ np.sign(w)).astype(dtype) * np.abs(w).max(0) + inits["b"].astype(dtype)
    eps = np.finfo(dtype).eps
    np.testing.assert_allclose(got, exact, rtol=2 * eps, atol=4 * eps * np.abs(exact).max())


# -- pack_binary ------------------------------------------------------------------------------
def test_pack_binary_stores_one_bit_and_computes_the_same(tmp_path: Path) -> None:
    """An int8 weight of an integer matmul and a +-scale float weight, 12 inputs (not a
    multiple of 8): stored as (out, 2) bytes; the same outputs; onnxruntime's optimized
    model has folded the unpacking away."""
    import onnxruntime as ort

    (k1, _), (k2, _) = [(key, p) for key, p in param_specs(BINARYVIT).items() if p.binary][:2]
    rng = np.random.default_rng(4)
    signs = np.where(rng.normal(size=(12, 5)) > 0, 1, -1).astype(np.int8)
    scale = rng.uniform(0.5, 2, size=5)
    inits = {f"{k1}:signs": signs, f"{k2}:folded": signs * scale, "zp": np.array(1, np.uint8)}
    nodes = [helper.make_node("MatMulInteger", ["u", f"{k1}:signs", "zp"], ["i"], name="a/MatMulInteger"),
             helper.make_node("Cast", ["i"], ["y"], name="a/Cast", to=TensorProto.FLOAT),
             helper.make_node("MatMul", ["x", f"{k2}:folded"], ["y2"], name="b/MatMul")]
    shapes = {"u": [3, 12], "x": [3, 12]}
    feeds = {"u": rng.integers(0, 3, size=(3, 12)).astype(np.uint8), "x": _inputs((3, 12), seed=5)}
    ex = _export(nodes, inits, shapes, ("y", "y2"))
    ex.inputs = (helper.make_tensor_value_info("u", TensorProto.UINT8, [3, 12]),
                 helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 12]))
    want = _run(ex, feeds)
    report = run_passes(ex, ("pack_binary",))
    assert report == ["pack_binary: 2 binary weights (0.00M) stored at 1 bit, unpacked by standard ops that "
                      "onnxruntime folds at session start"]
    bits = {k: numpy_helper.to_array(v) for k, v in ex.g.initializers.items() if k.endswith(":bits")}
    assert set(bits) == {f"{k1}:bits", f"{k2}:bits"}
    assert all(b.dtype == np.uint8 and b.shape == (5, 2) for b in bits.values())
    np.testing.assert_array_equal(bits[f"{k1}:bits"], np.packbits(signs.T > 0, axis=1))
    assert not any(k.endswith((":signs", ":folded")) for k in ex.g.initializers)
    for a, b in zip(_run(ex, feeds), want):
        np.testing.assert_array_equal(a, b)
    model = ex.g.model(list(ex.inputs), [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in ex.outputs],
                       "t", {}, "")
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    optimized = [n.op_type for n in onnx.load(tmp_path / "optimized.onnx").graph.node]
    assert sorted(optimized) == ["Cast", "MatMul", "MatMulInteger"], optimized


def test_pack_binary_keeps_weights_with_zero_signs() -> None:
    key = next(k for k, p in param_specs(BINARYVIT).items() if p.binary)
    signs = np.array([[1, 0], [-1, 1]], np.int8)
    ex = _export([helper.make_node("MatMulInteger", ["u", f"{key}:signs"], ["y"], name="a/MatMulInteger")],
                 {f"{key}:signs": signs}, {})
    assert run_passes(ex, ("pack_binary",)) == [f"pack_binary: 1 binary weights with 0 signs kept unpacked: {key}"]
    assert f"{key}:signs" in ex.g.initializers


# -- the deployed model ------------------------------------------------------------------------
def test_deployed_binaryvit_is_one_bit_and_integer() -> None:
    """Every binary weight is stored at 1 bit (bytes = one bit per binary parameter, rows
    padded to whole bytes), nothing else stores it; every binary product is an integer
    matmul; the float MatMuls left are the full-precision layers (stem, pool branches)."""
    graph = BINARYVIT
    model = to_onnx(graph, torch_module(graph).state_dict())
    inits = {i.name: i for i in model.graph.initializer}
    binary = {k: p for k, p in param_specs(graph).items() if p.binary}
    bits = {k.removesuffix(":bits"): numpy_helper.to_array(v) for k, v in inits.items() if k.endswith(":bits")}
    assert set(bits) == set(binary)
    for key, p in binary.items():
        assert bits[key].dtype == np.uint8 and bits[key].shape == (p.shape[0], -(-int(np.prod(p.shape[1:])) // 8))
    assert not [k for k in inits if k.split(":")[0] in binary and not k.endswith((":bits", ":scale"))]
    forms = json.loads({p.key: p.value for p in model.metadata_props}["binary_matmuls"])
    attentions = sum(1 for n in graph if n.op is Attention)
    assert len(forms) == len(binary) + 2 * attentions and all(f.startswith("integer") for f in forms.values())
    kinds = [n.op_type for n in model.graph.node]
    assert kinds.count("MatMulIntegerToFloat") == len(forms) and "Sign" not in kinds and "Where" not in kinds
    stem_and_pools = 1 + sum(len(n.attrs.kernels) for n in graph if n.op is PoolBranches)
    assert kinds.count("MatMul") == stem_and_pools


@pytest.mark.slow
def test_deployed_sizes_at_full_size(tmp_path: Path) -> None:
    """The issue's goals: binaryvit.onnx (224 px, 1000 classes) at most 10 MB; binary
    DeiT-S at most 1/8 of its fp32-folded export."""
    sizes = {}
    for spec in ("binaryvit", "binary_deit_small"):
        graph = vitgraph.compile(next(p for p in SPECS if p.endswith(f"/{spec}.vg")))
        for binary in (True, False):
            path = tmp_path / f"{spec}_{binary}.onnx"
            onnx.save(to_onnx(graph, binary=binary), path)
            sizes[spec, binary] = path.stat().st_size
    assert sizes["binaryvit", True] <= 10_000_000
    assert sizes["binary_deit_small", True] <= sizes["binary_deit_small", False] / 8


def test_harness_measures_binary_specs_as_deployed(tmp_path: Path) -> None:
    """The harness's CPU latency exports a binary spec's checkpoint in the deployed form
    and records it; a full-precision spec's as float."""
    import torch

    from vitgraph.benchmarks.harness import onnx_cpu_speed
    from vitgraph.benchmarks.suite import Measure

    for text, want in ((TINY_BINARY, "binary"), (TINY_FP, "float")):
        graph = vitgraph.compile(text)
        path = tmp_path / f"{want}.pt"
        torch.save({"model": torch_module(graph).state_dict()}, path)
        figures = onnx_cpu_speed(graph, path, Measure(batch=2, warmup=0, repeats=1))
        assert figures["form"] == want and figures["latency_ms"]["median"] > 0
