"""Per-channel constant additions moved forward and merged. A binary model adds many
per-channel constants to full tensors: RPReLU's output shift after every PReLU, the
moves before every Sign, the q/k/v shifts, the affine residuals' and pool branches'
shifts, BatchNorm's shifts. x + c commutes with whatever only adds, averages, repeats,
re-lays out or scales x per channel, so c can travel forward until it meets another
constant (the two become one Add) or a nonlinearity (Sign, PReLU, Softmax, ...):

  push:  an Add(x, c) all of whose readers are such ops is removed; each reader reads x
         and adds c as it maps through the reader (scaled by a Mul, averaged over channel
         groups by a Reshape + ReduceMean, multiplied by a constant MatMul weight) after
         it, merged into the reader where the reader itself adds a constant;
  place: a constant left on a sum of a MatMul and something else, before a nonlinearity,
         is added to the MatMul's output instead (its bias), which the integer matmul
         (binary_matmul) adds in its epilogue for free.

Shapes come from ONNX shape inference (the pass needs the export's inputs). An IR value
that a constant moved across no longer holds the IR node's output and leaves the
export's map of IR values. Rounding: (x + a) + b becomes x + (a + b), a + b in float64."""
from __future__ import annotations

from collections import deque

import numpy as np
import onnx

from . import Export, base_name

FOLDED = ":folded"


def _attr(node: onnx.NodeProto, name: str, default: object = None) -> object:
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


class Sinker:
    """The pass's state: shapes, and an index of the graph kept up to date as it
    rewrites (who reads and who writes each value, new nodes to put after a node, dead
    nodes), so that each step costs what it touches, not the whole graph."""

    def __init__(self, ex: Export) -> None:
        self.ex = ex
        self.shapes = ex.shapes()
        self.moved = self.merged = self.placed = 0
        self.users = ex.consumers()
        self.writer = ex.producers()
        self.after: dict[int, list[onnx.NodeProto]] = {}
        self.dead: set[int] = set()
        self.consts: dict[str, np.ndarray | None] = {}

    def const(self, name: str) -> np.ndarray | None:
        if name not in self.consts:
            self.consts[name] = self.ex.constant(name)
        return self.consts[name]

    # -- what is an offset, and how it maps through a reader ------------------------------
    def offset(self, node: onnx.NodeProto) -> tuple[str, np.ndarray] | None:
        """(x, c) when node is Add(x, c): c a float constant per channel (over x's last
        dim, or a scalar; over the last two after a split into channel groups) that
        does not change x's shape."""
        if node.op_type != "Add" or len(node.input) != 2 or id(node) in self.dead:
            return None
        consts = [self.const(i) for i in node.input]
        if (consts[0] is None) == (consts[1] is None):
            return None
        k = 0 if consts[0] is not None else 1
        x, c = node.input[1 - k], consts[k]
        shape = self.shapes.get(x)
        if c.dtype.kind != "f" or shape is None or c.ndim > len(shape):
            return None
        groups = c.ndim == 2 and len(shape) >= 3   # (groups, k) after a split of the channels
        if not (groups or np.prod(c.shape[:-1]) == 1):
            return None
        tail = shape[len(shape) - c.ndim:] if c.ndim else ()
        if any(dc != 1 and dc != dx for dc, dx in zip(c.shape, tail)):
            return None
        return x, c

    def rank(self, value: str) -> int | None:
        shape = self.shapes.get(value)
        return None if shape is None else len(shape)

    def through(self, node: onnx.NodeProto, value: str, c: np.ndarray) -> np.ndarray | None:
        """What `node` adds to its output when `value`, one of its inputs, has c added: for
        readers linear in `value` that keep its trailing layout; else None."""
        ex, op = self.ex, node.op_type
        r_in, r_out = self.rank(value), self.rank(node.output[0])
        if r_in is None or r_out is None or len(node.output) != 1:
            return None
        if op in ("Add", "Sum"):
            return c * node.input[:].count(value)
        if op == "Mul" and node.input[:].count(value) == 1:
            a = self.const(node.input[1] if node.input[0] == value else node.input[0])
            if a is None or a.dtype.kind != "f" or np.prod(a.shape[:-1]) != 1 or (c.ndim == 2 and a.size > 1):
                return None
            return c * a.reshape(-1) if a.ndim else c * a
        if node.input[0] != value:
            return None
        trailing = c.ndim  # the dims c spans, counted from the end
        if op == "Reshape":
            target = self.const(node.input[1])
            if c.size == 1:
                return c.reshape(())
            if trailing == 1 and target[-1] == c.size:
                return c
            if trailing == 1 and target[-2] > 0 and target[-1] > 0 and target[-2] * target[-1] == c.size:
                return c.reshape(int(target[-2]), int(target[-1]))        # channels split into groups
            return None
        if op == "Transpose":
            perm = list(_attr(node, "perm"))
            return c if perm[r_in - trailing:] == list(range(r_in - trailing, r_in)) else None
        if op in ("Expand", "Unsqueeze", "Slice"):
            if op == "Slice" and len(node.input) < 4:
                return None
            axes = np.array([], np.int64) if op == "Expand" else self.const(node.input[1 if op == "Unsqueeze" else 3])
            rank = r_out if op == "Unsqueeze" else r_in
            if axes is None:
                return None
            if any((int(a) % rank) >= rank - trailing for a in axes):
                return None
            return c if op != "Expand" or r_out == r_in else None
        if op == "ReduceMean":
            axes = [int(a) % r_in for a in _attr(node, "axes", list(range(r_in)))]
            keep = _attr(node, "keepdims", 1)
            inside = [a - (r_in - trailing) for a in axes if a >= r_in - trailing]
            if not inside:
                return c
            if len(inside) != len(axes):
                return None
            return c.mean(axis=tuple(inside), keepdims=bool(keep))
        if op == "MatMul" and trailing == 1 and (w := self.const(node.input[1])) is not None and w.ndim == 2:
            return c.astype(np.float64) @ w.astype(np.float64)
        return None

    # -- rewriting ------------------------------------------------------------------------
    def forget(self, value: str) -> None:
        """The value no longer holds what the IR says: drop it from the map."""
        for k in [k for k, v in self.ex.values.items() if v == value]:
            del self.ex.values[k]

    def constant(self, c: np.ndarray, merged_into: str | None = None) -> str:
        """A new shift: `key:folded` where it merges into a parameter's constant, else a
        shared constant named by value."""
        ex = self.ex
        if merged_into and not merged_into.startswith("const/"):
            name = ex.float_initializer(self.ex.unique(base_name(merged_into) + FOLDED), c)
        else:
            name = ex.g.const(c, ex.g.dtype)
        return name

    def rewire(self, node: onnx.NodeProto, old: str, new: str) -> None:
        node.input[:] = [new if i == old else i for i in node.input]
        self.users[old] = [u for u in self.users.get(old, []) if u is not node]
        self.users.setdefault(new, []).append(node)

    def remove(self, node: onnx.NodeProto) -> None:
        self.dead.add(id(node))
        for i in node.input:
            self.users[i] = [u for u in self.users.get(i, []) if u is not node]
        self.ex.g.release_name(node.name)

    def add_after(self, node: onnx.NodeProto, c: np.ndarray) -> onnx.NodeProto:
        """node's output becomes node's result + c, by a new Add under node's name."""
        ex, value = self.ex, node.output[0]
        raw = self.ex.unique(value.split(":")[0] + ":unshifted")
        node.output[0] = raw
        self.shapes[raw] = self.shapes[value]
        const = self.constant(c)
        add = ex.node("Add", [raw, const], [value], node.name.rsplit("/", 1)[0])
        self.writer[raw], self.writer[value] = node, add
        self.users[raw] = [add]
        self.users.setdefault(const, []).append(add)
        self.after.setdefault(id(node), []).insert(0, add)   # before any Add put there earlier
        return add

    def merge(self, node: onnx.NodeProto, c: np.ndarray) -> bool:
        """Add c to the constant of `node` if node is itself an offset with room for it."""
        found = self.offset(node)
        if found is None:
            return False
        k = 0 if node.input[1] == found[0] else 1
        total = found[1].astype(np.float64) + c
        if total.ndim > (self.rank(found[0]) or 0):
            return False
        old = node.input[k]
        self.rewire(node, old, self.constant(total, old))
        self.merged += 1
        return True

    def push(self, add: onnx.NodeProto) -> list[onnx.NodeProto]:
        """Move add's constant past its readers; the Adds to look at again."""
        found = self.offset(add)
        out = add.output[0]
        if found is None or out in self.ex.outputs:
            return []
        x, c = found
        readers = list(self.users.get(out, []))
        mapped = [self.through(node, out, c) for node in readers]
        if not readers or any(m is None for m in mapped):
            return []
        self.remove(add)
        self.forget(out)
        again = [self.writer[x]] if x in self.writer else []
        for node, m in zip(readers, mapped):
            self.rewire(node, out, x)
            if not np.any(m):
                continue
            if self.merge(node, m):
                again.append(node)
            else:
                again.append(self.add_after(node, m))
        self.moved += 1
        return again

    def place(self, add: onnx.NodeProto) -> bool:
        """Add(MatMul(..) + y, c) -> Add(MatMul(..), c) + y, where the MatMul is read once."""
        found = self.offset(add)
        if found is None:
            return False
        s, c = found
        total = self.writer.get(s)
        if total is None or total.op_type not in ("Add", "Sum") or len(self.users.get(s, [])) != 1 or c.ndim > 1:
            return False
        for i in total.input:
            mm = self.writer.get(i)
            if mm is not None and mm.op_type == "MatMul" and len(self.users.get(i, [])) == 1 \
                    and total.input[:].count(i) == 1 and self.const(mm.input[1]) is not None:
                self.remove(add)
                total.output[0] = add.output[0]
                self.writer[total.output[0]] = total
                self.forget(s)
                self.forget(i)
                self.add_after(mm, c)
                self.placed += 1
                return True
        return False

    def sink(self) -> None:
        work = deque(n for n in self.ex.g.nodes if n.op_type == "Add")
        while work:
            node = work.popleft()
            work.extend(n for n in self.push(node) if n.op_type == "Add")
        while any(self.place(n) for n in self.alive() if n.op_type == "Add"):
            pass
        self.ex.g.nodes[:] = self.alive()

    def alive(self) -> list[onnx.NodeProto]:
        """The nodes in order, the new ones after the node they follow, the dead left out."""
        out: list[onnx.NodeProto] = []

        def emit(node: onnx.NodeProto) -> None:
            if id(node) not in self.dead:
                out.append(node)
            for new in self.after.get(id(node), []):
                emit(new)

        for node in self.ex.g.nodes:
            emit(node)
        return out


def run(ex: Export) -> list[str]:
    s = Sinker(ex)
    if not s.shapes:
        return []
    before = sum(1 for n in ex.g.nodes if s.offset(n) is not None)
    s.sink()
    ex.prune()
    after = sum(1 for n in ex.g.nodes if s.offset(n) is not None)
    if not s.moved:
        return []
    return [f"sink_shifts: {before} additions of per-channel constants -> {after} ({s.moved} moved forward, "
            f"{s.merged} merged into another, {s.placed} placed as the bias of the MatMul before them)"]
