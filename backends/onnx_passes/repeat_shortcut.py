"""BinaryViT's shortcuts that repeat x along the channels (the MLP's up-projection, the
merging transition) are written by the standard form as y + Concat(x, ..., x) on the
last axis. This pass adds x as a broadcast instead, without writing out the repeated
tensor: Reshape(Reshape(y, [0, 0, r, -1]) + Unsqueeze(x, -2), [0, 0, -1]) on (B, N, r*D).
The sums are the same floats."""
from __future__ import annotations

import onnx

from . import Export


def _repeats(ex: Export, concat: onnx.NodeProto) -> bool:
    """A Concat of one value r >= 2 times along the last axis of a (B, N, D) tensor."""
    axis = next((a.i for a in concat.attribute if a.name == "axis"), None)
    return len(concat.input) >= 2 and len(set(concat.input)) == 1 and axis in (-1, 2)


def run(ex: Export) -> list[str]:
    count = 0
    for concat in [n for n in ex.g.nodes if n.op_type == "Concat" and _repeats(ex, n)]:
        users = ex.consumers().get(concat.output[0], [])
        if len(users) != 1 or users[0].op_type != "Add" or concat.output[0] in ex.outputs:
            continue
        add, x, r = users[0], concat.input[0], len(concat.input)
        y = add.input[1] if add.input[0] == concat.output[0] else add.input[0]
        scope, out, g = add.name.rsplit("/", 1)[0], add.output[0], ex.g
        ex.take([concat], drop_initializers=False)
        at = ex.take([add], drop_initializers=False)  # where the sum was: after y and x
        grouped, lifted, total = (ex.unique(f"{out}:{k}") for k in ("grouped", "lifted", "sum"))
        ex.put(at, [ex.node("Reshape", [y, g.const([0, 0, r, -1])], [grouped], scope),     # (B, N, r, D)
                    ex.node("Unsqueeze", [x, g.const([-2])], [lifted], scope),             # (B, N, 1, D)
                    ex.node("Add", [grouped, lifted], [total], scope),
                    ex.node("Reshape", [total, g.const([0, 0, -1])], [out], scope)])       # (B, N, r D)
        count += 1
    return [f"repeat_shortcut: {count} channel-repeating shortcuts added as broadcasts, not written out"] \
        if count else []
