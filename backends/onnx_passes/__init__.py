"""Passes over the exported ONNX graph, one per module, each `run(export) -> report`
(lines saying what it changed). The lowering (backends/_onnx_lower.py) emits one
standard form; these make it fast:

  fold_constants   evaluate constant subgraphs (weight transposes, binarized weights)
                   into initializers;
  fold_affine      fold per-channel Mul/Add/Sub chains (eval BatchNorm, RPReLU's input
                   shift, biases) into one Mul and one Add, or into the weight and bias
                   of the linear layer before them;
  fuse_attention   onnxruntime's com.microsoft.Attention (MultiHeadAttention where only
                   the class tokens' queries are live) for full-precision attention;
  fuse_bias_gelu   onnxruntime's com.microsoft.BiasGelu for bias + GELU.

The binary deployment of BinaryViT-style models (BINARY, after fold_affine):

  fast_prelu       RPReLU's where(y > 0, y, y * slope) as max(y, y * slope) (min where
                   the slopes are >= 1): exact, and vectorised in onnxruntime;
  repeat_shortcut  a shortcut that repeats x along the channels (Concat) added as a
                   broadcast instead of being written out;
  sink_shifts      per-channel constant additions (RPReLU's output shift, moves, q/k/v
                   shifts, biases) moved forward through additions and merged, so that
                   fewer Adds run on full tensors;
  binary_matmul    binary x binary products (binary layers on signed activations, Q.K^T,
                   P.V) as integer matmuls (uint8 x int8, exact int32 sums, scales after),
                   node by node where measured faster;
  pack_binary      binary weights stored at 1 bit (8 per byte) with per-channel scales in
                   float, unpacked by standard ops that onnxruntime folds at session start.

STANDARD keeps standard ONNX ops (any runtime, any dtype); FUSED adds onnxruntime's
kernels (float32, onnxruntime only).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from vitgraph.ir import Graph

from .._onnx_graph import OnnxGraph

STANDARD: tuple[str, ...] = ("fold_constants", "fold_affine")
FUSED: tuple[str, ...] = STANDARD + ("fuse_attention", "fuse_bias_gelu")
BINARY: tuple[str, ...] = ("fast_prelu", "repeat_shortcut", "sink_shifts", "binary_matmul", "pack_binary")


def pass_names(fused: bool, binary: bool) -> tuple[str, ...]:
    """The passes of an export: STANDARD, then BINARY for a binary deployment, then
    onnxruntime's fusions where fused."""
    return STANDARD + (BINARY if binary else ()) + (FUSED[len(STANDARD):] if fused else ())


@dataclass
class Export:
    """What a pass sees: the ONNX graph being built, the eval-mode IR it came from, and
    where each IR node's output is (IR node name -> ONNX value)."""

    g: OnnxGraph
    graph: Graph
    values: dict[str, str]
    outputs: tuple[str, ...] = ("logits",)
    kept: set[str] = field(default_factory=set)  # initializers no pass may fold (packed weights)
    fused: bool = False                           # onnxruntime's com.microsoft kernels allowed
    inputs: tuple[onnx.ValueInfoProto, ...] = ()  # the graph's inputs (for shape inference)
    notes: dict[str, str] = field(default_factory=dict)  # metadata the passes add to the model
    _taken: set[str] | None = field(default=None, init=False, repr=False)

    # -- reading ------------------------------------------------------------------------
    def producers(self) -> dict[str, onnx.NodeProto]:
        return {o: n for n in self.g.nodes for o in n.output}

    def consumers(self) -> dict[str, list[onnx.NodeProto]]:
        out: dict[str, list[onnx.NodeProto]] = {}
        for n in self.g.nodes:
            for i in n.input:
                if i:
                    out.setdefault(i, []).append(n)
        return out

    def shapes(self) -> dict[str, tuple[int | str, ...]]:
        """Each value's shape by ONNX shape inference (a symbolic batch is a str); {}
        without `inputs`. Standard ops only: run it before the fusions."""
        if not self.inputs:
            return {}
        model = onnx.helper.make_model(onnx.helper.make_graph(self.g.nodes, "shapes", list(self.inputs), [],
                                                              list(self.g.initializers.values())),
                                       opset_imports=[onnx.helper.make_opsetid("", 17)])
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True).graph
        return {v.name: tuple(d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim)
                for v in list(inferred.value_info) + list(inferred.input) if v.type.tensor_type.HasField("shape")}

    def constant(self, name: str) -> np.ndarray | None:
        init = self.g.initializers.get(name)
        return None if init is None else numpy_helper.to_array(init)

    # -- writing ------------------------------------------------------------------------
    def unique(self, name: str) -> str:
        """`name`, or `name:k` for the first k that no initializer or value uses. The names
        in use are kept in a set, built once and kept up to date by put, take, initializer,
        prune and unique itself (a name it returns is taken)."""
        if self._taken is None:
            self._taken = set(self.g.initializers) | {o for n in self.g.nodes for o in n.output}
        out, k = name, 0
        while out in self._taken or out in self.g.initializers:
            k += 1
            out = f"{name}:{k}"
        self._taken.add(out)
        return out

    def initializer(self, name: str, array: np.ndarray) -> str:
        self.g.initializers[name] = numpy_helper.from_array(np.asarray(array, order="C"), name)  # 0-d stays 0-d
        if self._taken is not None:
            self._taken.add(name)
        return name

    def float_initializer(self, name: str, array: np.ndarray) -> str:
        return self.initializer(name, np.asarray(array, self.g.dtype))

    def take(self, old: list[onnx.NodeProto], drop_initializers: bool = True,
             consumers: dict[str, list[onnx.NodeProto]] | None = None) -> int:
        """Remove nodes (to be replaced where the first of them stood, see `put`), their
        names, and (unless told not to) the initializers only they read; return the position.
        A pass that keeps a `consumers` index (value -> readers, the old nodes included)
        passes it to spare a scan of the graph."""
        old_ids = {id(n) for n in old}
        at = min(i for i, n in enumerate(self.g.nodes) if id(n) in old_ids)
        read = {i for n in old for i in n.input if i in self.g.initializers}
        self.g.nodes[:] = [n for n in self.g.nodes if id(n) not in old_ids]
        if not drop_initializers:
            dropped: set[str] = set()
        elif consumers is not None:
            dropped = {i for i in read if i not in self.outputs
                       and all(id(u) in old_ids for u in consumers.get(i, []))}
        else:
            still = {i for n in self.g.nodes for i in n.input} | set(self.outputs)
            dropped = read - still
        for name in dropped:
            self.g.initializers.pop(name, None)
        for n in old:
            self.g.release_name(n.name)
        if self._taken is not None:
            self._taken.difference_update(dropped | {o for n in old for o in n.output})
        return at

    def put(self, at: int, new: list[onnx.NodeProto]) -> None:
        self.g.nodes[at:at] = new
        if self._taken is not None:
            self._taken.update(o for n in new for o in n.output)

    def node(self, op_type: str, inputs: list[str], outputs: list[str], scope: str, domain: str = "",
             **attrs: object) -> onnx.NodeProto:
        """A node named `<scope>/<OpType>` (made unique), not yet in the graph."""
        return onnx.helper.make_node(op_type, inputs, outputs, name=self.g.fresh_name(f"{scope}/{op_type}"),
                                     domain=domain or None, **attrs)

    def emitted(self, start: int) -> list[onnx.NodeProto]:
        """The nodes appended since len(g.nodes) was `start`, taken off the end."""
        new = self.g.nodes[start:]
        del self.g.nodes[start:]
        return new

    def sweep(self) -> int:
        """Drop nodes whose outputs nothing reads (and then initializers nothing reads);
        return how many nodes."""
        removed = 0
        while True:
            used = {i for n in self.g.nodes for i in n.input} | set(self.outputs)
            dead = [n for n in self.g.nodes if not any(o in used for o in n.output)]
            if not dead:
                break
            self.take(dead, drop_initializers=False)
            removed += len(dead)
        self.prune()
        return removed

    def prune(self) -> int:
        """Drop initializers that no node reads any more; return how many."""
        used = {i for n in self.g.nodes for i in n.input} | set(self.outputs)
        dead = [k for k in self.g.initializers if k not in used]
        for k in dead:
            del self.g.initializers[k]
        if self._taken is not None:
            self._taken.difference_update(dead)
        return len(dead)


def base_name(name: str) -> str:
    """The state-dict key an initializer was made from: `key:folded` -> `key`."""
    return name.split(":", 1)[0]


def run_passes(export: Export, names: tuple[str, ...]) -> list[str]:
    report: list[str] = []
    for name in names:
        report.extend(importlib.import_module(f"{__name__}.{name}").run(export))
    export.prune()
    return report
