"""1-bit storage: every binary weight of a binary deployment (the int8 +-1 weight of an
integer matmul, or the +-scale float weight of a float MatMul) is stored as its signs
packed 8 per byte, `key:bits` (out, ceil(in / 8)) uint8, bit 1 = +1, most significant bit
first (numpy's packbits), with its per-output-channel scale in float (`key:scale`, the
BatchNorm already folded in). Standard ops unpack it: Cast(bits -> int64) indexes a
(256, 8) table of +-1 (Gather), Reshape, [Slice,] Transpose to (in, out), [Mul by the
scale]. Every input of that subgraph is an initializer, so onnxruntime's constant folding
evaluates it once when the session is created and the matmuls read the same weights as
an unpacked model. Weights with a 0 sign (an entry exactly at its row mean), which one
bit cannot hold, stay as they are and are reported."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto

from . import Export, base_name
from .binary_matmul import binary_keys, binary_weight

READERS = {"MatMul": 1, "MatMulInteger": 1, "MatMulIntegerToFloat": 1}


def _table(dtype: np.dtype) -> np.ndarray:
    """(256, 8): row b holds the +-1 of byte b's bits, most significant first."""
    bits = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1)
    return (2 * bits.astype(np.int64) - 1).astype(dtype)


def _signs(ex: Export, name: str, keys: set[str]) -> tuple[np.ndarray, np.ndarray | None] | None:
    """(signs (in, out) int8, float scale or None for an integer weight) of a binary weight."""
    w = ex.constant(name)
    if w is None or w.ndim != 2 or base_name(name) not in keys:
        return None
    if w.dtype == np.int8:
        return (w, None) if np.all(np.abs(w) <= 1) else None
    return binary_weight(ex, name, keys)


def _unpack(ex: Export, key: str, signs: np.ndarray, scale: np.ndarray | None, scope: str) -> list[onnx.NodeProto]:
    g = ex.g
    k, n = signs.shape
    bits = ex.initializer(ex.unique(f"{key}:bits"), np.packbits(signs.T > 0, axis=1))      # (out, ceil(in/8))
    ex.kept.add(bits)
    dtype = np.int8 if scale is None else g.dtype
    table = g.const(_table(dtype), dtype)
    ex.kept.add(table)
    index, rows, flat, cols = (ex.unique(f"{key}:{s}") for s in ("index", "rows", "flat", "unpacked"))
    nodes = [ex.node("Cast", [bits], [index], scope, to=TensorProto.INT64),
             ex.node("Gather", [table, index], [rows], scope, axis=0),                     # (out, in/8, 8)
             ex.node("Reshape", [rows, g.const([n, -1])], [flat], scope)]                  # (out, 8 ceil(in/8))
    if k % 8:  # the last byte's padding bits
        cut = ex.unique(f"{key}:cut")
        nodes.append(ex.node("Slice", [flat, g.const([0]), g.const([k]), g.const([1])], [cut], scope))
        flat = cut
    nodes.append(ex.node("Transpose", [flat], [cols], scope, perm=[1, 0]))                 # (in, out)
    if scale is not None:
        scaled = ex.unique(f"{key}:weight")
        s = ex.float_initializer(ex.unique(f"{key}:scale"), scale)
        nodes.append(ex.node("Mul", [cols, s], [scaled], scope))
    return nodes


def run(ex: Export) -> list[str]:
    keys = binary_keys(ex)
    packed, zeros, binary_bits = 0, [], 0
    for node in [n for n in ex.g.nodes if n.op_type in READERS]:
        name = node.input[READERS[node.op_type]]
        found = _signs(ex, name, keys)
        if found is None:
            continue
        signs, scale = found
        if np.any(signs == 0):
            zeros.append(base_name(name))
            continue
        new = _unpack(ex, base_name(name), signs, scale, node.name.rsplit("/", 1)[0])
        node.input[READERS[node.op_type]] = new[-1].output[0]
        ex.put(ex.g.nodes.index(node), new)
        packed += 1
        binary_bits += signs.size
    ex.prune()
    lines = [f"pack_binary: {packed} binary weights ({binary_bits / 1e6:.2f}M) stored at 1 bit, unpacked "
             "by standard ops that onnxruntime folds at session start"] if packed else []
    if zeros:
        lines.append(f"pack_binary: {len(zeros)} binary weights with 0 signs kept unpacked: {', '.join(zeros[:4])}"
                     + (", ..." if len(zeros) > 4 else ""))
    return lines
