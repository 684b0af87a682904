"""The language's values: word schemas, the parameter environment and expressions.

A word's schema lists its positional slots, its `key value` options and its bare flags;
`match` checks one statement against it and returns the typed arguments by key, with a
located message for every misuse. The schemas themselves live with the op units
(vitgraph/ops/) and with the language's own words (lower.py).

Slots: "int:key", "num:key", "lit:x", "arrow", "choice:key:a|b", "choices:key:a|b" (one
or more), "kernels:key" (one or more), "except" (the literal word, optional); a leading
"?" makes a slot optional. Option and flag types: "int", "num", "real" (any sign),
"pos" (> 0), "bool", "choice:a|b".
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from .diagnostics import Span, SpecError, suggestion
from .syntax import Arg, Stmt


@dataclass(frozen=True)
class Schema:
    slots: tuple[str, ...] = ()
    options: Mapping[str, str] = field(default_factory=dict)
    flags: frozenset[str] = frozenset()
    body: bool = False
    usage: str = ""
    exclusive: tuple[tuple[str, ...], ...] = ()  # groups of options of which one may be given


BOOLS = {"true": True, "false": False, "yes": True, "no": False}
_TYPE_NAMES = {"int": "an integer", "num": "a number", "pos": "a number", "real": "a number",
               "bool": "true or false", "str": "a string"}
RESERVED = ("index",)  # names the language binds itself (inside bodies)


def arg_type(arg: Arg) -> str:
    return {"int": "an integer", "float": "a number", "string": "a string", "word": f"the word '{arg.value}'",
            "arrow": "'->'", "kernel": f"the kernel {arg.text()}", "expr": "an expression"}[arg.kind]


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


_BINARY = {
    "+": lambda x, y: x + y, "-": lambda x, y: x - y, "*": lambda x, y: x * y,
    "<": lambda x, y: x < y, "<=": lambda x, y: x <= y, ">": lambda x, y: x > y, ">=": lambda x, y: x >= y,
    "==": lambda x, y: x == y, "!=": lambda x, y: x != y,
}


class Env:
    """Resolved parameter values and where each came from; `bind` adds names (the block
    `index`) for one body."""

    def __init__(self, values: dict[str, Any], spans: dict[str, Span | None]) -> None:
        self.values = values
        self.spans = spans

    def bind(self, **names: Any) -> "Env":
        return Env({**self.values, **names}, {**self.spans, **{k: None for k in names}})

    def value(self, arg: Arg) -> Any:
        if arg.kind in ("int", "float", "string"):
            return arg.value
        if arg.kind == "word":
            if arg.value in BOOLS:
                return BOOLS[arg.value]
            if arg.value not in self.values:
                notes = [f"parameters here: {', '.join(sorted(self.values)) or 'none'}"]
                if arg.value in RESERVED:
                    notes.append(f"'{arg.value}' is defined only inside a blocks or stage body")
                raise SpecError(f"unknown name '{arg.value}'" + suggestion(arg.value, self.values), arg.span, notes)
            return self.values[arg.value]
        if arg.kind == "expr":
            return self._expr(arg)
        raise SpecError(f"expected a value, found {arg_type(arg)}", arg.span)

    def _operand(self, part: Arg) -> Any:
        v = self.value(part)
        if not _number(v):
            raise SpecError(f"expected a number in this expression, found {v!r}", part.span)
        return v

    def _expr(self, arg: Arg) -> Any:
        op, *parts = arg.value
        if op == "if":
            test = self.value(parts[0])
            if not isinstance(test, bool):
                raise SpecError(f"expected a comparison before 'else', found {test!r}", parts[0].span)
            return self.value(parts[1] if test else parts[2])
        if op == "neg":
            return -self._operand(parts[0])
        x, y = self._operand(parts[0]), self._operand(parts[1])
        if op in _BINARY:
            out = _BINARY[op](x, y)
        elif y == 0:
            raise SpecError("division by zero", arg.span)
        elif op == "%":
            out = x % y
        elif op == "//":
            out = x // y
        else:
            out = x // y if isinstance(x, int) and isinstance(y, int) and x % y == 0 else x / y
        if isinstance(out, float) and not math.isfinite(out):
            raise SpecError(f"the expression {arg.text()} is not a finite number", arg.span)
        return out


def typed(env: Env, arg: Arg, kind: str, what: str) -> Any:
    """Evaluate `arg` and check it has type `kind` (int, num, real, bool, choice:a|b)."""
    if kind.startswith("choice:"):
        choices = kind.split(":", 1)[1].split("|")
        if arg.kind != "word" or arg.value not in choices:
            found = arg.value if arg.kind == "word" else arg.text()
            raise SpecError(f"{what} expects one of {', '.join(choices)}, found '{found}'"
                            + (suggestion(str(found), choices) if arg.kind == "word" else ""), arg.span)
        return arg.value
    if arg.kind == "arrow" or arg.kind == "kernel":
        raise SpecError(f"{what} expects {_TYPE_NAMES[kind]}, found {arg_type(arg)}", arg.span)
    v = env.value(arg)
    ok = {"int": isinstance(v, int) and not isinstance(v, bool), "num": _number(v), "pos": _number(v),
          "real": _number(v), "bool": isinstance(v, bool)}[kind]
    if not ok:
        shown = f"'{arg.value}' = {v!r}" if arg.kind == "word" and arg.value not in BOOLS else repr(v)
        raise SpecError(f"{what} expects {_TYPE_NAMES[kind]}, found {shown}", arg.span)
    if kind == "int" and v <= 0:
        raise SpecError(f"{what} expects a positive integer, found {v}", arg.span)
    if kind == "num" and v < 0:
        raise SpecError(f"{what} expects a non-negative number, found {v}", arg.span)
    if kind == "pos" and v <= 0:
        raise SpecError(f"{what} expects a positive number, found {v}", arg.span)
    return float(v) if kind in ("num", "pos", "real") else v


@dataclass(frozen=True)
class Matched:
    """A statement's arguments by key, with the span of each (for located messages)."""

    values: dict[str, Any]
    spans: dict[str, Span]

    def __contains__(self, key: str) -> bool:
        return key in self.values

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)


def match(stmt: Stmt, schema: Schema, env: Env) -> Matched:
    """Check a statement's arguments against its schema; return them by key."""
    out: dict[str, Any] = {}
    spans: dict[str, Span] = {}
    args = list(stmt.args)
    i = 0
    usage = f"expected `{schema.usage}`"
    for slot in schema.slots:
        optional = slot.startswith("?")
        slot = slot.lstrip("?")
        kind, _, rest = slot.partition(":")
        key, _, choices = rest.partition(":")
        arg = args[i] if i < len(args) else None
        if kind == "except":
            if arg is not None and arg.kind == "word" and arg.value == "except":
                out["except"] = True
                i += 1
            continue
        if kind == "choices" and optional and not out.get("except"):
            continue
        if arg is None:
            if optional:
                continue
            raise SpecError(f"'{stmt.word}' is missing its {key or slot}", stmt.span, [usage])
        if kind == "lit":
            if arg.kind != "word" or arg.value != key:
                raise SpecError(f"expected '{key}' here, found {arg_type(arg)}", arg.span, [usage])
            i += 1
        elif kind == "arrow":
            if arg.kind != "arrow":
                raise SpecError(f"expected '->' here, found {arg_type(arg)}", arg.span, [usage])
            i += 1
        elif kind == "choice":
            if optional and not (arg.kind == "word" and arg.value in choices.split("|")):
                continue
            out[key], spans[key] = typed(env, arg, f"choice:{choices}", f"'{stmt.word}'"), arg.span
            i += 1
        elif kind == "choices":
            vals = []
            allowed = choices.split("|")
            while i < len(args) and args[i].kind == "word" and args[i].value != "except":
                vals.append(typed(env, args[i], f"choice:{choices}", f"'{stmt.word}'"))
                i += 1
            if not vals:
                raise SpecError(f"'{stmt.word}' expects one or more of {', '.join(allowed)}",
                                arg.span if arg else stmt.span, [usage])
            out[key], spans[key] = tuple(vals), arg.span
        elif kind == "kernels":
            vals = []
            while i < len(args) and args[i].kind == "kernel":
                vals.append(args[i].value)
                i += 1
            if not vals:
                raise SpecError(f"'{stmt.word}' expects kernels like 3x1, found {arg_type(arg)}", arg.span, [usage])
            out[key], spans[key] = tuple(vals), arg.span
        else:
            out[key], spans[key] = typed(env, arg, kind, f"'{stmt.word}'"), arg.span
            i += 1
    given: set[str] = set()
    while i < len(args):
        arg = args[i]
        name = arg.value if arg.kind == "word" else None
        if name is not None and name in given:
            raise SpecError(f"option '{name}' of '{stmt.word}' is given twice", arg.span, [f"first at {spans[name]}"])
        given.add(name)
        if name in schema.flags:
            out[name], spans[name] = True, arg.span
            i += 1
            continue
        if name in schema.options:
            if i + 1 >= len(args):
                raise SpecError(f"option '{name}' of '{stmt.word}' needs a value", arg.span, [usage])
            out[name] = typed(env, args[i + 1], schema.options[name], f"'{name}'")
            spans[name] = Span(arg.span.file, arg.span.line, arg.span.column, args[i + 1].span.end_line,
                               args[i + 1].span.end_column)
            i += 2
            continue
        known = list(schema.options) + list(schema.flags)
        if name is not None and known:
            raise SpecError(f"'{stmt.word}' has no option '{name}'" + suggestion(name, known), arg.span,
                            [f"options of '{stmt.word}': {', '.join(known)}"])
        raise SpecError(f"unexpected {arg_type(arg)} after '{stmt.word}'", arg.span, [usage])
    if schema.body and stmt.body is None:
        raise SpecError(f"'{stmt.word}' needs a body in braces", stmt.span, [usage])
    if not schema.body and stmt.body is not None:
        raise SpecError(f"'{stmt.word}' takes no body", stmt.span)
    return Matched(out, spans)
