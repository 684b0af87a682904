"""The exported ONNX model as a file: checker, shapes, names, metadata, initialisation,
binary folding and errors (parity of the values is in test_onnx_parity.py)."""
from __future__ import annotations

import json
import os
import re

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

import vitgraph
from onnx_helpers import SPEC_CASES, SPECS, TINY_BINARY, TINY_FP, is_binary, small_graph, torch_module
from vitgraph.backends.onnx_backend import (IMAGENET_MEAN, IMAGENET_STD, make_session, packed_sizes, preprocessing,
                                            summary, to_onnx)
from vitgraph.backends._onnx_graph import initial_state
from vitgraph.counting import weight_bytes
from vitgraph.diagnostics import UserError
from vitgraph.ir import Graph
from vitgraph.ops.attention import Attention
from vitgraph.ops.head import Head

FOLDED = ":folded"


def _spec(name: str) -> str:
    return next(p for p in SPECS if p.endswith(f"/{name}.vg"))


def _shapes(model: onnx.ModelProto) -> dict[str, list[int | str]]:
    g = model.graph
    return {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in list(g.value_info) + list(g.input) + list(g.output)}


def _ir_values(model: onnx.ModelProto) -> dict[str, str]:
    return json.loads(_metadata(model)["ir_values"])


def _metadata(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def _assert_shapes_agree(graph: Graph, model: onnx.ModelProto, inferred: onnx.ModelProto) -> None:
    """Every IR node's value has the IR's shape, or (B, k, D) where the export kept only
    the k leading tokens that a cls/distill head reads. A binary deployment moves
    constants across some IR values (sink_shifts), which then leave the map."""
    shapes, values = _shapes(inferred), _ir_values(model)
    pruned = json.loads(_metadata(model)["ir_values_pruned"])
    binary = _metadata(model)["form"] == "binary"
    kept = {n.name for n in graph if n.name in values}
    assert len(kept) == len(graph) or binary
    for node in (n for n in graph if n.name in values):
        want = ["batch" if d == "B" else d for d in node.out.shape]
        if node.name in pruned:
            want[1] = pruned[node.name]
        assert shapes.get(values[node.name]) == want, f"{node.name} ({values[node.name]})"


@pytest.mark.parametrize("path", SPEC_CASES + ["TINY_FP", "TINY_BINARY"], ids=lambda p: p.rsplit("/", 1)[-1])
def test_every_spec_passes_the_checker_and_shape_inference(path: str) -> None:
    """Standard ops: ONNX's own strict shape inference; with onnxruntime's fused kernels
    (which ONNX does not know): onnxruntime's symbolic shape inference. Either way every
    IR node's value has the IR's shape with the symbolic batch."""
    graph = vitgraph.compile({"TINY_FP": TINY_FP, "TINY_BINARY": TINY_BINARY}[path]) if path.startswith("TINY") \
        else small_graph(path)
    for binary in (False, True) if is_binary(graph) else (False,):
        plain = to_onnx(graph, fused=False, binary=binary)
        onnx.checker.check_model(plain, full_check=True)
        assert {op.domain for op in plain.opset_import} == {""} and plain.opset_import[0].version >= 17
        _assert_shapes_agree(graph, plain, onnx.shape_inference.infer_shapes(plain, check_type=True, strict_mode=True,
                                                                             data_prop=True))
        fused = to_onnx(graph, binary=binary)
        onnx.checker.check_model(fused, full_check=True)
        if binary:  # onnxruntime's symbolic shape inference does not know MatMulIntegerToFloat
            _assert_shapes_agree(graph, fused, _run_shapes(graph, fused))
        else:
            _assert_shapes_agree(graph, fused, SymbolicShapeInference.infer_shapes(fused))


def _run_shapes(graph: Graph, model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with the shapes its IR values take in onnxruntime at batch 2 as value
    infos, the batch dim named "batch"."""
    values = sorted(set(_ir_values(model).values()) - {"input", "logits"})
    probe = onnx.ModelProto.FromString(model.SerializeToString())
    probe.graph.output.extend(onnx.helper.make_empty_tensor_value_info(v) for v in values)
    images = np.zeros((2, *graph.image), np.float32)
    got = make_session(probe).run(values, {"input": images})
    del probe.graph.output[len(model.graph.output):]
    for name, array in zip(values, got):
        dims = ["batch", *array.shape[1:]]
        probe.graph.value_info.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, dims))
    return probe


def test_names_come_from_the_spec() -> None:
    """Node names start with the IR node's name; initializers are the state-dict keys,
    with the torch values where nothing was folded into them, or a key + ':folded'."""
    graph = small_graph(_spec("sl_vit"))
    module = torch_module(graph)
    state = module.state_dict()
    model = to_onnx(graph, state)
    ir_names = {n.name for n in graph}
    for node in model.graph.node:
        assert node.name.split("/")[0] in ir_names, node.name
    seen = set()
    for init in model.graph.initializer:
        if init.name.startswith("const/"):
            continue
        key = init.name.removesuffix(FOLDED)
        assert key in state, init.name
        seen.add(key)
        if not init.name.endswith(FOLDED):
            np.testing.assert_array_equal(numpy_helper.to_array(init), state[key].numpy())
    # LSA's temperature is folded into q's rows of qkv; every other parameter is exported as is
    assert seen == set(state) - {k for k in state if k.endswith(".temperature")}
    assert "blocks.0.attn.qkv.weight:folded" in {i.name for i in model.graph.initializer}


def test_dead_tokens_are_pruned_after_the_last_attention() -> None:
    """A cls head reads one token: from the last attention's queries on, the export
    computes one token (two with the distillation token); a gap head reads all."""
    for name, k in (("vit", 1), ("deit_tiny_distilled", 2), ("binaryvit", None)):
        graph = small_graph(_spec(name))
        pruned = json.loads(_metadata(to_onnx(graph))["ir_values_pruned"])
        last = [n for n in graph if n.op is Attention][-1]
        after = [n.name for n in graph if n.id >= last.id and n.op is not Head]
        if k is None:
            assert pruned == {}
        else:
            assert pruned == {n: k for n in after}, name


def test_metadata_tells_how_to_preprocess() -> None:
    graph = small_graph(_spec("deit_tiny_distilled"))
    model = to_onnx(graph)
    meta = _metadata(model)
    prep = preprocessing(meta)
    assert prep.input_size == graph.image == (3, 32, 32)
    assert prep.mean == IMAGENET_MEAN and prep.std == IMAGENET_STD
    assert prep.class_names == tuple(f"class_{i}" for i in range(10))
    assert (prep.spec, prep.spec_hash) == ("deit_tiny_distilled", graph.spec.hash)
    assert json.loads(meta["spec_params"]) == graph.spec.params
    names = [f"c{i}" for i in range(10)]
    custom = preprocessing(_metadata(to_onnx(graph, mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.2), class_names=names)))
    assert custom.mean == (0.5, 0.4, 0.3) and custom.std == (0.2, 0.2, 0.2) and custom.class_names == tuple(names)
    # the session sees the same metadata (what `vitgraph predict` reads)
    assert preprocessing(make_session(model).get_modelmeta().custom_metadata_map) == prep


def test_initialisation_follows_the_policy() -> None:
    """No state dict: the graph's init policy drawn with the seed, exactly the torch
    backend's draws (one policy, one place; the distributions: tests/test_init.py)."""
    import torch

    graph = small_graph(_spec("sl_vit"))
    a = to_onnx(graph, seed=0)
    assert a.SerializeToString() == to_onnx(graph, initial_state(graph, 0)).SerializeToString()
    assert a.SerializeToString() != to_onnx(graph, seed=1).SerializeToString()
    module = vitgraph.to_torch(graph, generator=torch.Generator().manual_seed(0))
    state = initial_state(graph, 0)
    assert set(state) == set(module.state_dict())
    for key, value in module.state_dict().items():
        np.testing.assert_array_equal(state[key], value.numpy(), err_msg=key)


def test_binary_initialisation_and_folding() -> None:
    """BinaryViT's binary weights become +-1 times a per-output-channel scale: every
    column of a folded BLU weight (in, out) takes two values, c and -c (its BatchNorm
    folded into c by fold_affine, the binarization evaluated by fold_constants)."""
    graph = vitgraph.compile(TINY_BINARY)
    state = initial_state(graph, 0)
    attn = "stages.0.blocks.0.attn"
    assert (state[f"{attn}.alpha"] == 0.005).all() and (state[f"{attn}.q.act.slope"] == 0.25).all()
    assert (state["stages.0.blocks.0.affine1.scale"] == 0.1).all()
    assert (state["stages.0.blocks.0.pool.branches.0.scale"] == 0).all()
    assert (state[f"{attn}.q.norm.running_var"] == 1).all() and (state[f"{attn}.q.move"] == 0).all()
    module = torch_module(graph)  # randomised: BN statistics, shifts and scales off their init
    sd = {k: v.double().numpy() for k, v in module.state_dict().items()}
    model = to_onnx(graph, module.state_dict(), binary=False)
    inits = {i.name: numpy_helper.to_array(i).astype(np.float64) for i in model.graph.initializer}
    for prefix in (f"{attn}.q", f"{attn}.reduce", f"{attn}.proj", "stages.0.blocks.0.mlp.fc1"):
        folded = inits[f"{prefix}.weight{FOLDED}"].T                               # (out, in)
        w = sd[f"{prefix}.weight"]
        bn = sd[f"{prefix}.norm.weight"] / np.sqrt(sd[f"{prefix}.norm.running_var"] + 1e-5)
        scale = np.abs(w).mean(1) * bn                                             # per output channel
        np.testing.assert_allclose(np.abs(folded), np.abs(scale)[:, None] * np.ones_like(w), rtol=1e-6)
        np.testing.assert_array_equal(np.sign(folded), np.sign(w - w.mean(1, keepdims=True)) * np.sign(bn)[:, None])
    conv = inits[f"stages.1.downsample.conv.weight{FOLDED}"]                       # (p1 p2 in, out): no centring
    w = sd["stages.1.downsample.conv.weight"]                                       # (out, in, p1, p2)
    want = np.sign(w.transpose(2, 3, 1, 0).reshape(conv.shape)) * np.sign(sd["stages.1.downsample.norm.weight"])
    np.testing.assert_array_equal(np.sign(conv), want)
    nodes = [n.op_type for n in to_onnx(graph, binary=False).graph.node]
    # the stem, the inputs of 9 attention and 4 MLP BLUs, q/k/v of 2 attentions, the merge conv
    assert nodes.count("Sign") == 1 + 9 + 4 + 2 * 3 + 1
    assert "BatchNormalization" not in nodes


def test_packed_size_counts_binary_weights_at_one_bit() -> None:
    graph = small_graph(_spec("binaryvit"))
    fp_bytes, packed = packed_sizes(graph)
    total = vitgraph.count(graph).total
    assert (fp_bytes, packed) == weight_bytes(graph)
    assert fp_bytes == 4 * total.params
    assert 4 * total.fp_params + total.binary_params / 8 < packed < fp_bytes / 5


def test_summary_reports_both_weight_sizes(tmp_path) -> None:  # noqa: ANN001
    graph = small_graph(_spec("binaryvit"))
    model = to_onnx(graph)
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    text = summary(graph, model, path)
    fp_bytes, packed = packed_sizes(graph)
    assert f"{fp_bytes / 2**20:.2f} MiB as float32" in text and f"{packed / 2**20:.2f} MiB bit-packed" in text
    assert re.search(r"opset 17( \(\+ [^)]*\))?, \d+ nodes", text)
    bits = 8 * path.stat().st_size / vitgraph.count(graph).total.params
    assert f"{path.stat().st_size:,} bytes, {bits:.2f} bits per parameter; binary layers deployed as binary" in text


def test_torch_and_numpy_state_dicts_give_the_same_model() -> None:
    graph = small_graph(_spec("pit"))
    state = torch_module(graph).state_dict()
    as_numpy = {k: v.numpy() for k, v in state.items()}
    assert to_onnx(graph, state).SerializeToString() == to_onnx(graph, as_numpy).SerializeToString()


def test_fused_kernels_are_used_only_when_asked() -> None:
    graph = small_graph(_spec("deit_tiny"))
    fused = {n.domain + "." + n.op_type for n in to_onnx(graph).graph.node if n.domain}
    assert fused == {"com.microsoft.Attention", "com.microsoft.MultiHeadAttention", "com.microsoft.BiasGelu"}
    assert not any(n.domain for n in to_onnx(graph, fused=False).graph.node)
    with pytest.raises(ValueError, match="float32 only"):
        to_onnx(graph, dtype="float64", fused=True)
    with pytest.raises(ValueError, match="float32 or float64"):
        to_onnx(graph, dtype="float16")


def test_weights_that_do_not_fit_are_user_errors() -> None:
    graph = small_graph(_spec("deit_tiny"))
    state = {k: v.numpy() for k, v in torch_module(graph).state_dict().items()}
    missing = dict(state)
    del missing["blocks.3.attn.qkv.bias"]
    with pytest.raises(UserError, match=r"1 missing key\(s\) \[blocks.3.attn.qkv.bias\]"):
        to_onnx(graph, missing)
    with pytest.raises(UserError, match="1 unexpected key"):
        to_onnx(graph, {**state, "extra.weight": np.zeros(3)})
    wrong = dict(state, pos_embed=np.zeros((1, 7, 192)))
    with pytest.raises(UserError, match=r"pos_embed has shape \(1, 7, 192\), the spec expects \(1, 5, 192\)"):
        to_onnx(graph, wrong)
    with pytest.raises(UserError, match="3 class names for a model with 10 classes"):
        to_onnx(graph, class_names=["a", "b", "c"])


def test_session_is_configured_for_cpu_inference() -> None:
    import onnxruntime as ort

    from vitgraph.backends.onnx_backend import physical_cores

    cores = physical_cores()
    assert 1 <= cores <= (os.cpu_count() or 1)
    session = make_session(to_onnx(small_graph(_spec("vit"))))
    opts = session.get_session_options()
    assert opts.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert (opts.intra_op_num_threads, opts.inter_op_num_threads) == (cores, 1)
    assert opts.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert make_session(to_onnx(small_graph(_spec("vit"))), threads=1).get_session_options().intra_op_num_threads == 1


def test_every_op_has_an_onnx_lowering() -> None:
    from vitgraph.backends import _onnx_binary  # noqa: F401 - registers the binary forms
    from vitgraph.backends import _onnx_swin  # noqa: F401 - registers Swin's ops
    from vitgraph.backends._onnx_lower import ONNX_LOWERINGS

    missing = sorted(op.name for op in vitgraph.OPS.values() if op not in ONNX_LOWERINGS)
    assert not missing, f"ops without an ONNX lowering: {missing}"
