"""The ONNX backend: a checked vitgraph IR -> an onnx.ModelProto for onnxruntime on the CPU.

The IR is lowered straight to ONNX nodes with onnx.helper, not by tracing the torch
module: first the inference passes over the IR (vitgraph/passes/: dead-token
elimination), then one standard form per op unit (backends/_onnx_lower.py,
backends/_onnx_binary.py), then the passes over the ONNX graph (backends/onnx_passes/:
constant and BatchNorm folding, onnxruntime's fusions). Opset 17, a symbolic batch axis,
ONNX node names that start with the IR node's name and initializers named by the
state-dict keys (THE CONTRACT in vitgraph/ops/; folded ones carry the suffix ":folded").
Eval-mode semantics: drop-path is the identity, BatchNorm uses its running statistics, a
distilled DeiT averages its two heads' logits (Touvron et al. 2020), and BinaryViT's
binary layers (Le & Li 2023) are +-scale weights and Sign in the standard form.

A spec with binary weights is deployed as binary by default (`binary=True`, the BINARY
passes): 1-bit weights in the file, integer matmuls for every binary product, a leaner
elementwise graph; metadata "form" says "binary", and "binary_matmuls" which kernel each
product got. `binary=False` keeps float32 +-scale weights and float matmuls ("float").

    model = vitgraph.to_onnx(graph, state_dict)      # state_dict: torch tensors or numpy
    session = make_session(model)                    # tuned onnxruntime CPU session
    logits = session.run(None, {"input": images})[0]

With `fused=True` (the default for float32), full-precision attention becomes
onnxruntime's com.microsoft.Attention kernel (QKV projection and attention in one node;
MultiHeadAttention where only the class tokens' queries are live) and the MLP's bias +
GELU com.microsoft.BiasGelu; `fused=False` keeps standard ONNX ops only, for other
runtimes and for float64. Either way, after the last attention of a cls/distill-head
model only the tokens the head reads are computed (the logits are unchanged). What each
pass changed is in the model's metadata ("passes").
"""
from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import onnx
from onnx import helper

from vitgraph.counting import count, weight_bytes
from vitgraph.diagnostics import UserError
from vitgraph.fileio import write_atomic
from vitgraph.ir import Graph

from vitgraph.passes import run_inference

from ._onnx_graph import OPSET, OnnxGraph, Weights
from ._onnx_lower import lower
from .onnx_passes import Export, pass_names, run_passes

# onnxruntime fusions whose CPU kernels measured slower than what they replace: its
# SkipLayerNormalization took ~5x the time of the Add + LayerNormalization it fuses
# (onnxruntime 1.32, (1, 197, 192) float32, one thread)
SLOW_FUSIONS = ("SkipLayerNormFusion",)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

__all__ = ["to_onnx", "make_session", "packed_sizes", "build_command", "Preprocessing", "preprocessing",
           "form", "IMAGENET_MEAN", "IMAGENET_STD"]


def to_onnx(graph: Graph, state_dict: Mapping[str, Any] | None = None, *, mean: Sequence[float] = IMAGENET_MEAN,
            std: Sequence[float] = IMAGENET_STD, class_names: Sequence[str] | None = None,
            fused: bool | None = None, dtype: str = "float32", seed: int = 0,
            binary: bool | None = None, passes: Sequence[str] | None = None) -> onnx.ModelProto:
    """Lower a checked graph to ONNX. `state_dict` (torch tensors or numpy arrays) must
    have exactly the keys and shapes of `param_table(graph) | buffer_table(graph)`; None
    initialises per the contract (deterministic in `seed`). `mean`, `std` and
    `class_names` go into the model's metadata for whoever preprocesses its input.
    `binary` (default: whether the graph has binary weights) deploys binary layers as
    binary: 1-bit weights, integer matmuls and a leaner elementwise graph (the BINARY
    passes); False keeps them as float32 +-scale weights and float matmuls. `passes`
    (names in backends/onnx_passes/) replaces the passes that `fused` and `binary`
    choose, for measuring them one at a time."""
    dt = np.dtype(dtype)
    if dt not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, not {dtype}")
    fused = dt == np.float32 if fused is None else fused
    binary = has_binary_weights(graph) if binary is None else binary
    if fused and dt != np.float32:
        raise ValueError("onnxruntime's fused kernels are float32 only: use fused=False with float64")
    names = [f"class_{i}" for i in range(graph.classes)] if class_names is None else list(class_names)
    if len(names) != graph.classes:
        raise UserError(f"{len(names)} class names for a model with {graph.classes} classes")
    weights = Weights(graph, state_dict, seed)
    inference, report = run_inference(graph)
    g = OnnxGraph(dt)
    values = lower(inference, g, weights).values
    unread = weights.unread()
    if unread:
        raise RuntimeError(f"ONNX backend bug: parameters not lowered: {unread[:5]}")
    c, h, w = graph.image
    inputs = [helper.make_tensor_value_info("input", g.elem_type, ["batch", c, h, w])]
    export = Export(g, inference, values, fused=fused, inputs=tuple(inputs))
    report += run_passes(export, pass_names(fused, binary) if passes is None else tuple(passes))
    outputs = [helper.make_tensor_value_info("logits", g.elem_type, ["batch", graph.classes])]
    doc = f"vitgraph {graph.name} ({graph.spec.path if graph.spec else 'spec text'})"
    metadata = _metadata(graph, mean, std, names, fused, dt) | {"form": "binary" if binary else "float"}
    metadata.update(export.notes)
    # IR node name -> the ONNX value of its output; for values that hold only the leading
    # tokens that the head reads (dead-token elimination), how many
    metadata["ir_values"] = json.dumps(values)
    trained = {n.name: n.out for n in graph}
    metadata["ir_values_pruned"] = json.dumps({n.name: n.out.tokens for n in inference if n.name in trained
                                               and n.out.rank == 3 and n.out.tokens < trained[n.name].tokens})
    metadata["passes"] = json.dumps(report)
    return g.model(inputs, outputs, graph.name, metadata, doc)


def has_binary_weights(graph: Graph) -> bool:
    """Whether any weight of the graph is binary (stored as 1 bit when deployed)."""
    from vitgraph.ops import param_specs

    return any(p.binary for p in param_specs(graph).values())


def _metadata(graph: Graph, mean: Sequence[float], std: Sequence[float], names: list[str], fused: bool,
              dtype: np.dtype) -> dict[str, str]:
    spec = graph.spec
    return {
        "spec": graph.name,
        "spec_hash": spec.hash if spec else "",
        "spec_params": json.dumps(spec.params if spec else {}),
        "input_size": json.dumps(list(graph.image)),     # [C, H, W]: resize images to H x W
        "mean": json.dumps([float(m) for m in mean]),    # per-channel, on pixels scaled to [0, 1]
        "std": json.dumps([float(s) for s in std]),
        "class_names": json.dumps(names),
        "layout": "NCHW, RGB, (pixel / 255 - mean) / std",
        "kernels": "com.microsoft fused" if fused else "standard ONNX",
        "dtype": str(dtype),
    }


@dataclass(frozen=True)
class Preprocessing:
    """What an exported model expects of its input, read from its metadata."""

    input_size: tuple[int, int, int]   # (C, H, W)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...]
    spec: str
    spec_hash: str
    dtype: str


def preprocessing(metadata: Mapping[str, str]) -> Preprocessing:
    """Parse the metadata written by to_onnx (a ModelProto's metadata_props or an
    onnxruntime session's custom_metadata_map). Raises KeyError/ValueError if absent."""
    c, h, w = (int(v) for v in json.loads(metadata["input_size"]))
    return Preprocessing((c, h, w), tuple(json.loads(metadata["mean"])), tuple(json.loads(metadata["std"])),
                         tuple(json.loads(metadata["class_names"])), metadata["spec"],
                         metadata.get("spec_hash", ""), metadata.get("dtype", "float32"))


def physical_cores() -> int:
    """Physical cores this process may run on (hyper-threads counted once)."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    cores = set()
    for cpu in cpus:
        topo = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add((topo.joinpath("physical_package_id").read_text().strip(),
                       topo.joinpath("core_id").read_text().strip()))
        except OSError:
            cores.add(("cpu", str(cpu)))
    return max(1, len(cores))


def make_session(model_or_path: onnx.ModelProto | str | os.PathLike[str], threads: int | None = None) -> Any:
    """An onnxruntime CPU session configured for inference latency: every graph
    optimisation (ORT_ENABLE_ALL), intra-op threads = physical cores (or `threads`), one
    inter-op thread, sequential execution, and no spinning between calls (the threads
    sleep instead of burning the CPU that the caller's own code needs)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads or physical_cores()
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    source = model_or_path.SerializeToString() if isinstance(model_or_path, onnx.ModelProto) else str(model_or_path)
    return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"],
                                disabled_optimizers=list(SLOW_FUSIONS))


def packed_sizes(graph: Graph) -> tuple[int, int]:
    """(float32 bytes, bit-packed bytes) of the weights: binary weights at 1 bit plus one
    float32 scale per output channel, everything else at 4 bytes (vitgraph.counting)."""
    return weight_bytes(graph)


# -- `vitgraph build SPEC --backend onnx` ------------------------------------------------------
def load_state_dict(source: Mapping[str, Any], graph: Graph, where: str) -> tuple[dict[str, Any], list[str]]:
    """A checkpoint's weights, read by the torch backend's loader (vitgraph, DeiT and timm
    checkpoints; position embeddings resampled to the spec's grid), and its notes."""
    from . import torch_backend

    module = torch_backend.to_torch(graph)
    notes = torch_backend.load_weights(module, graph, source, where)
    return module.state_dict(), notes


def checkpoint_model(graph: Graph, ck: Mapping[str, Any] | None, where: str | None,
                     fused: bool | None = None, binary: bool | None = None
                     ) -> tuple[onnx.ModelProto, list[str], str]:
    """The ONNX model of a checkpoint's weights (None: the spec's initialisation), with the
    preprocessing and class names the checkpoint records (else those of the config.json beside
    it), and the weights described in the metadata ("weights", "trained"); also the notes of the
    loader and where the preprocessing came from."""
    from vitgraph.checkpoints import describe, preprocessing, trained

    state, notes = load_state_dict(ck, graph, str(where)) if ck is not None else (None, [])
    prep, origin = preprocessing(ck), f"{where}"
    if not prep and where:
        prep, origin = run_preprocessing(where), str(Path(where).with_name("config.json"))
    model = to_onnx(graph, state, fused=fused, binary=binary, **prep)
    onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props},
                                        "weights": describe(ck), "trained": json.dumps(trained(ck))})
    return model, notes, origin if prep else ""


def run_preprocessing(checkpoint: str) -> dict[str, Any]:
    """mean, std (and class_names, if recorded) of the dataset a checkpoint was trained on,
    from the config.json that `vitgraph train` writes beside it (checkpoints written before
    they described themselves); {} if there is none."""
    config = Path(checkpoint).with_name("config.json")
    try:
        dataset = json.loads(config.read_text()).get("dataset", {})
    except (OSError, ValueError, AttributeError):
        return {}
    found = {k: tuple(dataset[k]) for k in ("mean", "std") if isinstance(dataset.get(k), list)}
    if isinstance(dataset.get("class_names"), list):
        found["class_names"] = [str(c) for c in dataset["class_names"]]
    return found


def summary(graph: Graph, model: onnx.ModelProto, path: Path) -> str:
    """What `vitgraph build --backend onnx` prints: the file, ops, input, output, sizes."""
    total = count(graph).total
    fp_bytes, packed = packed_sizes(graph)
    ops = sorted({(n.domain or "ai.onnx") + "." + n.op_type for n in model.graph.node if n.domain})
    fused = f" (+ {', '.join(ops)})" if ops else ""
    c, h, w = graph.image
    size = path.stat().st_size
    return "\n".join([
        f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB): {graph.name}, spec hash "
        f"{graph.spec.hash if graph.spec else '-'}",
        f"  opset {OPSET}{fused}, {len(model.graph.node)} nodes, {len(model.graph.initializer)} initializers",
        f"  input  input[batch, {c}, {h}, {w}] float (RGB, resize to {h}x{w}, mean/std in the metadata)",
        f"  output logits[batch, {graph.classes}]",
        f"  params {total.params / 1e6:.2f}M ({total.binary_params / 1e6:.2f}M binary); weights "
        f"{fp_bytes / 2**20:.2f} MiB as float32, {packed / 2**20:.2f} MiB bit-packed",
        f"  file   {size:,} bytes, {8 * size / total.params:.2f} bits per parameter; {FORMS[form(model)]}",
    ] + [f"  pass   {line}" for line in _passes(model)])


FORMS = {"binary": "binary layers deployed as binary (1-bit weights, integer matmuls)",
         "float": "float32 weights (binary weights as +-scale, float matmuls)"}


def form(model: Any) -> str:
    """"binary" or "float": how a model exported by to_onnx runs its binary layers (a
    ModelProto, or an onnxruntime session)."""
    if hasattr(model, "get_modelmeta"):
        return model.get_modelmeta().custom_metadata_map.get("form", "float")
    return {p.key: p.value for p in model.metadata_props}.get("form", "float")


def _passes(model: onnx.ModelProto) -> list[str]:
    meta = {p.key: p.value for p in model.metadata_props}
    return json.loads(meta.get("passes", "[]"))


def build_command(graph: Graph, args: argparse.Namespace) -> int:
    """`vitgraph build [SPEC] --backend onnx [-o OUT] [--weights CKPT]`: export, check, summarise."""
    from .torch_backend import read_checkpoint

    ck = read_checkpoint(args.weights) if args.weights else None
    model, notes, origin = checkpoint_model(graph, ck, args.weights,
                                            fused=False if getattr(args, "standard_ops", False) else None,
                                            binary=False if getattr(args, "float_binary", False) else None)
    onnx.checker.check_model(model, full_check=True)
    out = Path(args.output or f"{graph.name}.onnx")
    try:
        write_atomic(out, lambda tmp: onnx.save(model, str(tmp)))
    except OSError as e:
        raise UserError(f"cannot write {out}: {e.strerror}") from None
    print(summary(graph, model, out))
    for note in notes:
        print(f"  note: {note}")
    meta = {p.key: p.value for p in model.metadata_props}
    print(f"  weights {meta['weights']}")
    if origin:
        print(f"  preprocessing (mean, std, class names) from {origin}")
    if ck is None:
        print("  note: no --weights, so the weights are the spec's initialisation (seed 0): predictions mean "
              "nothing until the model is trained (vitgraph train, then build --weights RUN/best.pt)")
    return 0

