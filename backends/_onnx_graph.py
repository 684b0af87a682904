"""The small ONNX graph builder the ONNX backend writes with, and the weights it reads.

`OnnxGraph` appends onnx.helper nodes in order, names every node after the IR node being
lowered (`blocks.0.attn/q/MatMul`), keeps the initializers, and shares small integer
constants (shapes, axes, masks, pooling matrices) by value. `Weights` is the state dict
as numpy arrays, checked against the graph's parameter and buffer tables (THE CONTRACT,
vitgraph/ops/), drawn from the graph's init policy when no state dict is given; it
records which keys the lowering read, so a forgotten parameter is a bug caught at export.
"""
from __future__ import annotations

import contextlib
import hashlib
from typing import Any, Iterator, Mapping

import numpy as np
import onnx
from onnx import helper, numpy_helper

from vitgraph.diagnostics import UserError
from vitgraph.ir import Graph
from vitgraph.ops import buffer_table, param_table

OPSET = 17          # LayerNormalization arrived in opset 17
MS_DOMAIN = "com.microsoft"


class OnnxGraph:
    """Nodes, initializers and constants of one model, in the order they are added."""

    def __init__(self, dtype: np.dtype) -> None:
        self.dtype = np.dtype(dtype)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: dict[str, onnx.TensorProto] = {}
        self._scope: list[str] = []
        self._names: set[str] = set()
        self.domains: set[str] = set()

    @property
    def elem_type(self) -> int:
        return helper.np_dtype_to_tensor_dtype(self.dtype)

    @contextlib.contextmanager
    def scope(self, name: str) -> Iterator[None]:
        """Nodes added inside are named `<outer>/<name>/<OpType>`."""
        self._scope.append(name)
        try:
            yield
        finally:
            self._scope.pop()

    # -- values -------------------------------------------------------------------------
    def weight(self, name: str, array: np.ndarray) -> str:
        """A float initializer in the model's dtype; `name` is a state-dict key, or a key
        with a suffix when the export folded something into it."""
        if name in self.initializers:
            raise ValueError(f"initializer {name!r} defined twice")
        self.initializers[name] = numpy_helper.from_array(np.array(array, self.dtype, order="C"), name)
        return name

    def const(self, values: Any, dtype: Any = np.int64) -> str:
        """A constant that is no parameter (a shape, axes, a scalar, a mask, a pooling
        matrix), shared by value; large ones are named by a hash of their exact values."""
        arr = np.asarray(values, dtype)
        tag = "f" if arr.dtype.kind == "f" else "i"  # named by value, the same in float32 and float64 models
        if arr.dtype.kind in "iu" and arr.dtype != np.int64:
            tag = arr.dtype.name  # uint8 / int8 zero points
        if arr.size <= 16:
            body = "[" + ",".join(f"{v:.9g}" if tag == "f" else str(v) for v in arr.ravel()) + "]"
        else:
            exact = np.asarray(values, np.float64 if tag == "f" else np.int64)  # before rounding to dtype
            body = "#" + hashlib.sha1(exact.tobytes()).hexdigest()[:12]
        name = f"const/{tag}{list(arr.shape)}{body}"
        if name not in self.initializers:
            self.initializers[name] = numpy_helper.from_array(arr, name)
        return name

    def scalar(self, value: float) -> str:
        """A float scalar in the model's dtype."""
        return self.const(value, self.dtype)

    # -- nodes ------------------------------------------------------------------------------
    def _node_name(self, op_type: str) -> str:
        return self.fresh_name("/".join(self._scope + [op_type]))

    def fresh_name(self, base: str) -> str:
        """`base`, or `base_k` for the first k no node has; taken from now on."""
        name, k = base, 1
        while name in self._names:
            name = f"{base}_{k}"
            k += 1
        self._names.add(name)
        return name

    def release_name(self, name: str) -> None:
        """A pass removed the node of that name: the name may be given again."""
        self._names.discard(name)

    def op(self, op_type: str, *inputs: str, out: str | None = None, domain: str = "", **attrs: Any) -> str:
        """Append one single-output node; return its output value's name."""
        return self.op_n(op_type, list(inputs), 1, outs=None if out is None else [out], domain=domain,
                         **attrs)[0]

    def op_n(self, op_type: str, inputs: list[str], n_out: int, outs: list[str] | None = None,
             domain: str = "", **attrs: Any) -> list[str]:
        name = self._node_name(op_type)
        while inputs and not inputs[-1]:  # trailing optional inputs left out
            inputs = inputs[:-1]
        outs = outs or ([name] if n_out == 1 else [f"{name}:{i}" for i in range(n_out)])
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=name, domain=domain or None, **attrs))
        if domain:
            self.domains.add(domain)
        return outs

    # -- common patterns ------------------------------------------------------------------
    def reshape(self, x: str, shape: list[int], out: str | None = None) -> str:
        """Reshape with 0 = keep that dim of x (the batch) and -1 = infer."""
        return self.op("Reshape", x, self.const(shape), out=out)

    def transpose(self, x: str, perm: list[int], out: str | None = None) -> str:
        return self.op("Transpose", x, perm=perm, out=out)

    def slice(self, x: str, starts: list[int], ends: list[int], axes: list[int]) -> str:
        return self.op("Slice", x, self.const(starts), self.const(ends), self.const(axes))

    def add(self, x: str, y: str, out: str | None = None) -> str:
        return self.op("Add", x, y, out=out)

    def mul(self, x: str, y: str, out: str | None = None) -> str:
        return self.op("Mul", x, y, out=out)

    def model(self, inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto], name: str,
              metadata: Mapping[str, str], doc: str) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, name, inputs, outputs, list(self.initializers.values()))
        opsets = [helper.make_opsetid("", OPSET)] + [helper.make_opsetid(d, 1) for d in sorted(self.domains)]
        model = helper.make_model(graph, opset_imports=opsets, producer_name="vitgraph", doc_string=doc)
        model.ir_version = 8  # onnxruntime >= 1.14 reads IR 8; opset 17 needs no newer
        helper.set_model_props(model, dict(metadata))
        return model


# -- weights ------------------------------------------------------------------------------
def _to_numpy(value: Any) -> np.ndarray:
    """A torch tensor or array-like as a numpy array; float32 and float64 are kept as they
    are (a CPU float32 tensor is not copied), other types widened to float64. Folding
    converts to float64 itself."""
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu()
        if str(value.dtype) not in ("torch.float32", "torch.float64"):
            value = value.double()
        value = value.numpy()
    arr = np.asarray(value)
    return arr if arr.dtype in (np.float32, np.float64) else arr.astype(np.float64)


def initial_state(graph: Graph, seed: int = 0) -> dict[str, np.ndarray]:
    """The graph's init policy (vitgraph/init.py: the same draws as the torch backend's
    with that seed) as numpy arrays."""
    from vitgraph import init

    return {k: v.numpy() for k, v in init.initial_state(graph, seed).items()}


class Weights:
    """The state dict as numpy arrays, checked against the contract's tables."""

    def __init__(self, graph: Graph, state_dict: Mapping[str, Any] | None, seed: int = 0) -> None:
        expected = param_table(graph) | buffer_table(graph)
        if state_dict is None:
            state_dict = initial_state(graph, seed)
        missing = [k for k in expected if k not in state_dict]
        unexpected = [k for k in state_dict if k not in expected]
        if missing or unexpected:
            raise UserError(f"the weights do not fit {graph.name}: {len(missing)} missing key(s) "
                            f"{_few(missing)}, {len(unexpected)} unexpected key(s) {_few(unexpected)}",
                            hint="expected a state dict of the same spec with the same --set overrides")
        self._arrays: dict[str, np.ndarray] = {}
        for key, shape in expected.items():
            arr = _to_numpy(state_dict[key])
            if tuple(arr.shape) != tuple(shape):
                raise UserError(f"weight {key} has shape {tuple(arr.shape)}, the spec expects {tuple(shape)}",
                                hint="expected a state dict of the same spec with the same --set overrides")
            self._arrays[key] = arr
        self._read: set[str] = set()

    def __getitem__(self, key: str) -> np.ndarray:
        self._read.add(key)
        return self._arrays[key]

    def get(self, key: str) -> np.ndarray | None:
        return self[key] if key in self._arrays else None

    def batchnorm(self, prefix: str, eps: float) -> tuple[np.ndarray, np.ndarray]:
        """Eval-mode BatchNorm as y = x * scale + shift (per channel), in float64."""
        weight, bias, mean, var = (self[f"{prefix}.{k}"].astype(np.float64)
                                   for k in ("weight", "bias", "running_mean", "running_var"))
        scale = weight / np.sqrt(var + eps)
        return scale, bias - mean * scale

    def ignore(self, *keys: str) -> None:
        """Mark parameters that the eval-mode network does not use as read."""
        self._read.update(keys)

    def unread(self) -> list[str]:
        return [k for k in self._arrays if k not in self._read and not k.endswith("num_batches_tracked")]


def _few(keys: list[str]) -> str:
    return "[" + ", ".join(keys[:4]) + (", ..." if len(keys) > 4 else "") + "]"
