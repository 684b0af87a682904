"""Binary x binary products as integer matmuls (BinaryViT, Le & Li 2023): a binary layer's
MatMul of signed activations by a +-scale weight, Q.K^T of signed q and k, and P.V of the
quantized probabilities {0, alpha} and signed v. The signs become uint8 (sign + 1, zero
point 1; the probability levels 0/1 as they are) and int8 (+-1 weights, signed k and v),
the matmul sums exactly in int32, and the scales (the weight's per-channel scale with
BatchNorm folded in, the score scale, alpha) multiply after; the layout ops between a Sign
and its matmul move the bytes instead of the floats.

With onnxruntime's kernels (`export.fused`) a product is one com.microsoft
MatMulIntegerToFloat (u8 x s8, zero point, per-channel scale and bias in one epilogue);
with standard ops, MatMulInteger -> Cast -> Mul (the bias Add stays). Activations are
quantized by QuantizeLinear in float32 (float32-only in opset 17) and Add(1) -> Cast in
float64.

Which form each product gets was measured on this machine's CPU (AMD EPYC Zen 4 with
AVX-512 VNNI, onnxruntime 1.32; every linear and attention shape of binaryvit and
binary_deit_small at 224 px, batch 1 and 16, 1 and 2 threads, each form from float
activations: `python -m vitgraph.benchmarks.binary_kernels`, results in
benchmarks/results/binary_kernels_amd-epyc.md). Against the float MatMul on Sign
activations, the fused integer form ran 0.92-5.19x (median 3.4x) on linear layers and
2.1-4.1x on Q.K^T and P.V; the standard-ops form 0.80-4.93x (median 2.9x) and 1.7-3.8x.
The only shape under 1x was the 49 x 64 -> 64 reduction layer at batch 1 on 2 threads
(a 17 us call: ~1.5 us lost), which ran 2.2x (fused) faster as an integer matmul at
batch 16; the float Sign kernel alone (not vectorised) costs what the integer matmul
saves elsewhere. So every binary product gets the integer form; which one is in the
model's metadata ("binary_matmuls")."""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto

from vitgraph.ops import param_specs

from . import Export, base_name

MS_DOMAIN = "com.microsoft"
LAYOUT = ("Reshape", "Transpose")


@dataclass(frozen=True)
class Signed:
    """A matmul operand that is a re-layout of Sign(x): the Sign and the layout nodes."""

    sign: onnx.NodeProto
    layout: tuple[onnx.NodeProto, ...]


def _signed(r: "Rewriter", value: str) -> Signed | None:
    producers, chain = r.writer, []
    node = producers.get(value)
    while node is not None and node.op_type in LAYOUT:
        chain.append(node)
        node = producers.get(node.input[0])
    return Signed(node, tuple(reversed(chain))) if node is not None and node.op_type == "Sign" else None


def binary_weight(ex: Export, name: str, keys: set[str]) -> tuple[np.ndarray, np.ndarray] | None:
    """(signs as int8, per-column scale) of a constant (in, out) weight that is a binary
    parameter of the IR and exactly +-scale (or 0) in every column."""
    w = ex.constant(name)
    if w is None or w.ndim != 2 or w.dtype.kind != "f" or base_name(name) not in keys:
        return None
    scale = np.abs(w).max(axis=0)
    if not np.all((w == scale) | (w == -scale) | (w == 0)):
        return None
    return np.sign(w).astype(np.int8), np.where(scale > 0, scale, 1).astype(w.dtype)


def binary_keys(ex: Export) -> set[str]:
    return {k for k, p in param_specs(ex.graph).items() if p.binary}


class Rewriter:
    """Builds the integer forms, sharing each Sign's quantized copies."""

    def __init__(self, ex: Export) -> None:
        self.ex, self.g = ex, ex.g
        self.cache: dict[tuple[str, str], str] = {}
        self.forms: dict[str, str] = {}
        # who writes and reads each value of the graph as it was: a rewrite replaces a
        # product's own nodes only, so the other products still match as they did
        self.writer, self.users = ex.producers(), ex.consumers()

    def const(self, value: float | list[float], dtype: np.dtype | type) -> str:
        return self.g.const(value, dtype)

    def _quantized(self, sign: onnx.NodeProto, kind: str, new: list[onnx.NodeProto]) -> str:
        """Sign(x) as uint8 sign + 1 ("u8", zero point 1) or int8 sign ("s8"), made once.
        float32: Mul(x, 2^126) -> QuantizeLinear(2^-24) -> Clip, without the Sign kernel
        (not vectorised in onnxruntime, 4x an Add); exact for every float: the Mul takes
        every nonzero x (subnormals too) to |.| >= 2^-23 or inf, exactly, the quantizer
        to <= -2 or >= 2 (saturated), 0 to 0. float64: Cast (and Add 1) of the Sign."""
        key, ex, g = (sign.output[0], kind), self.ex, self.g
        if key not in self.cache:
            scope, out = sign.name.rsplit("/", 1)[0], ex.unique(f"{sign.output[0]}:{kind}")
            dtype = np.uint8 if kind == "u8" else np.int8
            if g.dtype == np.float32:
                big, q = ex.unique(f"{out}:big"), ex.unique(f"{out}:q")
                low = "" if kind == "u8" else self.const(-1, np.int8)
                new += [ex.node("Mul", [sign.input[0], self.const(2.0 ** 126, np.float32)], [big], scope),
                        ex.node("QuantizeLinear", [big, self.const(2.0 ** -24, np.float32),
                                                   self.const(int(kind == "u8"), dtype)], [q], scope),
                        ex.node("Clip", [q, low, self.const(2 if kind == "u8" else 1, dtype)], [out], scope)]
            elif kind == "s8":
                new.append(ex.node("Cast", [sign.output[0]], [out], scope, to=TensorProto.INT8))
            else:
                plus = ex.unique(f"{out}:plus1")
                new += [ex.node("Add", [sign.output[0], self.const(1.0, g.dtype)], [plus], scope),
                        ex.node("Cast", [plus], [out], scope, to=TensorProto.UINT8)]
            self.cache[key] = out
        return self.cache[key]

    def operand(self, s: Signed, kind: str, new: list[onnx.NodeProto]) -> str:
        """The operand re-laid out from the quantized Sign (the float layout nodes and
        the Sign are swept once nothing reads them)."""
        value = self._quantized(s.sign, kind, new)
        for node in s.layout:
            out = self.ex.unique(f"{node.output[0]}:{kind}")
            new.append(onnx.helper.make_node(node.op_type, [value, *node.input[1:]], [out],
                                              name=self.g.fresh_name(node.name + f":{kind}")))
            new[-1].attribute.extend(node.attribute)
            value = out
        return value

    def product(self, a: str, b: str, zero_a: int, scale_a: str | None, scale_b: str | None, bias: str | None,
                out: str, scope: str, new: list[onnx.NodeProto]) -> None:
        """out = (a - zero_a) @ b * scale_a * scale_b + bias, summed in int32."""
        ex, g = self.ex, self.g
        if ex.fused:
            one = self.const([1.0], np.float32)
            ins = [a, b, scale_a or one, scale_b or one, self.const(zero_a, np.uint8), "", bias or ""]
            while not ins[-1]:
                ins.pop()
            new.append(ex.node("MatMulIntegerToFloat", ins, [out], scope, MS_DOMAIN))
            g.domains.add(MS_DOMAIN)
            return
        acc, real = ex.unique(f"{out}:int32"), ex.unique(f"{out}:float")
        new += [ex.node("MatMulInteger", [a, b] + ([self.const(zero_a, np.uint8)] if zero_a else []), [acc], scope),
                ex.node("Cast", [acc], [real], scope, to=g.elem_type)]
        scales = [s for s in (scale_a, scale_b) if s]
        if not scales:
            new[-1].output[0] = out
        for i, s in enumerate(scales):
            target = out if i == len(scales) - 1 and not bias else ex.unique(f"{out}:scaled{i}")
            new.append(ex.node("Mul", [real, s], [target], scope))
            real = target
        if bias:
            new.append(ex.node("Add", [real, bias], [out], scope))


def _sole_user(r: "Rewriter", value: str, op: str) -> onnx.NodeProto | None:
    users = r.users.get(value, [])
    return users[0] if len(users) == 1 and users[0].op_type == op and value not in r.ex.outputs else None


def _const_input(ex: Export, node: onnx.NodeProto, other: str) -> str | None:
    """The input of a binary `node` that is not `other`, if it is a constant."""
    rest = [i for i in node.input if i != other]
    return rest[0] if len(rest) == 1 and ex.constant(rest[0]) is not None else None


def _linear(r: Rewriter, mm: onnx.NodeProto, keys: set[str]) -> str | None:
    """A binary layer: MatMul(re-laid-out Sign, binary weight) [+ bias]."""
    ex = r.ex
    s, found = _signed(r, mm.input[0]), binary_weight(ex, mm.input[1], keys)
    if s is None or found is None:
        return None
    signs, scale = found
    k, n = signs.shape
    add = _sole_user(r, mm.output[0], "Add")
    bias = _const_input(ex, add, mm.output[0]) if add is not None else None
    if bias is not None and ex.constant(bias).ndim != 1:
        bias = None
    scope = mm.name.rsplit("/", 1)[0]
    w = ex.initializer(ex.unique(base_name(mm.input[1]) + ":signs"), signs)
    c = ex.float_initializer(ex.unique(base_name(mm.input[1]) + ":scale"), scale)
    new: list[onnx.NodeProto] = []
    a = r.operand(s, "u8", new)
    old = [mm] + ([add] if bias and ex.fused else [])
    out = old[-1].output[0]
    at = ex.take(old, drop_initializers=False)
    r.product(a, w, 1, None, c, bias if ex.fused else None, out, scope, new)
    ex.put(at, new)
    return f"integer {'MatMulIntegerToFloat' if ex.fused else 'MatMulInteger'} u8 x s8 ({k}x{n} weight)"


def _levels(r: "Rewriter", p: str) -> tuple[list[onnx.NodeProto], str, str] | None:
    """Quantized probabilities Mul(Clip(Round(Div(p, alpha)), 0, 1), alpha): (their nodes,
    the softmax output, alpha)."""
    ex, producers = r.ex, r.writer
    mul = producers.get(p)
    clip = producers.get(mul.input[0]) if mul is not None and mul.op_type == "Mul" else None
    rnd = producers.get(clip.input[0]) if clip is not None and clip.op_type == "Clip" else None
    div = producers.get(rnd.input[0]) if rnd is not None and rnd.op_type == "Round" else None
    if div is None or div.op_type != "Div" or div.input[1] != mul.input[1]:
        return None
    lo, hi = (ex.constant(i) for i in clip.input[1:3])
    if lo is None or hi is None or float(lo) != 0.0 or float(hi) != 1.0:
        return None
    return [div, rnd, clip, mul], div.input[0], div.input[1]


def _probabilities(r: Rewriter, nodes: list[onnx.NodeProto], p: str, alpha: str, new: list[onnx.NodeProto]) -> str:
    """The levels round(p / alpha).clamp(0, 1) as uint8."""
    ex, g = r.ex, r.g
    scope, out = nodes[0].name.rsplit("/", 1)[0], ex.unique(f"{nodes[-1].output[0]}:u8")
    if g.dtype == np.float32:  # QuantizeLinear: saturate(round_half_even(p / alpha)), then at most 1
        a = ex.float_initializer(ex.unique(base_name(alpha) + ":scalar"), ex.constant(alpha).reshape(()))
        q = ex.unique(f"{out}:q")
        new += [ex.node("QuantizeLinear", [p, a, r.const(0, np.uint8)], [q], scope),
                ex.node("Clip", [q, "", r.const(1, np.uint8)], [out], scope)]
        return out
    level = nodes[2].output[0]  # the float levels stay: Div, Round, Clip, then Cast
    new.append(ex.node("Cast", [level], [out], scope, to=TensorProto.UINT8))
    return out


def _attention(r: Rewriter, mm: onnx.NodeProto) -> str | None:
    """Q.K^T of two re-laid-out Signs (times the score scale), or P.V of quantized
    probabilities and a re-laid-out Sign."""
    ex = r.ex
    right = _signed(r, mm.input[1])
    if right is None or ex.constant(mm.input[1]) is not None:
        return None
    scope = mm.name.rsplit("/", 1)[0]
    new: list[onnx.NodeProto] = []
    left = _signed(r, mm.input[0])
    if left is not None:  # Q.K^T
        mul = _sole_user(r, mm.output[0], "Mul")
        scale = _const_input(ex, mul, mm.output[0]) if mul is not None else None
        if scale is not None and ex.constant(scale).size != 1:
            scale = None
        a = r.operand(left, "u8", new)
        b = r.operand(right, "s8", new)
        old = [mm] + ([mul] if scale and ex.fused else [])
        out = old[-1].output[0]
        at = ex.take(old, drop_initializers=False)
        r.product(a, b, 1, scale if ex.fused else None, None, None, out, scope, new)
        ex.put(at, new)
        return "integer Q.K^T u8 x s8"
    levels = _levels(r, mm.input[0])
    if levels is None:
        return None
    nodes, p, alpha = levels
    a = _probabilities(r, nodes, p, alpha, new)
    b = r.operand(right, "s8", new)
    drop = nodes if ex.fused or r.g.dtype == np.float32 else [nodes[-1]]
    drop = [n for n in drop if n is nodes[-1] or len(r.users.get(n.output[0], [])) == 1]
    at = ex.take(drop + [mm], drop_initializers=False)
    r.product(a, b, 0, alpha, None, None, mm.output[0], scope, new)
    ex.put(at, new)
    return "integer P.V u8 x s8"


def run(ex: Export) -> list[str]:
    return rewrite(ex, binary_keys(ex))


def rewrite(ex: Export, keys: set[str]) -> list[str]:
    """The pass on the binary layers whose weights `keys` names, and on the attention
    products (benchmarks/binary_kernels.py times the forms it emits)."""
    r = Rewriter(ex)
    for mm in [n for n in ex.g.nodes if n.op_type == "MatMul"]:
        form = _linear(r, mm, keys) if ex.constant(mm.input[1]) is not None else _attention(r, mm)
        if form is not None:
            r.forms[mm.name] = form
    ex.sweep()
    if not r.forms:
        return []
    ex.notes["binary_matmuls"] = json.dumps(r.forms)
    kinds: dict[str, int] = {}
    for form in r.forms.values():
        kind = form.split(" (")[0]
        kinds[kind] = kinds.get(kind, 0) + 1
    return [f"binary_matmul: {len(r.forms)} binary products: " + ", ".join(f"{v} {k}" for k, v in kinds.items())]
