"""Spec text -> AST. The lark Transformer here only builds dataclasses; meaning is
checked in lower.py, so that every statement is judged by one table of word schemas.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any, Union

import lark
from lark import Lark, Token, Transformer, v_args

from .diagnostics import Span, SpecError


@dataclass(frozen=True)
class Arg:
    """One argument of a statement. kind: int, float, string, word, arrow, kernel, expr."""

    kind: str
    value: Any  # int | float | str | (h, w) for kernels | (op, operand, ...) for expr
    span: Span = field(compare=False)

    def text(self) -> str:
        if self.kind == "kernel":
            return f"{self.value[0]}x{self.value[1]}"
        if self.kind == "string":
            return f'"{self.value}"'
        if self.kind == "arrow":
            return "->"
        if self.kind == "expr":
            op, *xs = self.value
            if op == "neg":
                return f"-{xs[0].text()}"
            if op == "if":
                return f"({xs[1].text()} if {xs[0].text()} else {xs[2].text()})"
            return f"({xs[0].text()} {op} {xs[1].text()})"
        return str(self.value)


@dataclass(frozen=True)
class Stmt:
    """One statement: a word, its arguments, an optional `as NAME` (the module path its
    layers get) and an optional body in braces."""

    word: str
    args: tuple[Arg, ...]
    body: tuple["Stmt", ...] | None
    span: Span = field(compare=False)
    word_span: Span = field(compare=False)
    alias: str | None = None
    alias_span: Span | None = field(compare=False, default=None)


@dataclass(frozen=True)
class Use:
    path: str
    span: Span = field(compare=False)


@dataclass(frozen=True)
class Param:
    name: str
    type: str | None
    value: Arg
    span: Span = field(compare=False)


@dataclass(frozen=True)
class Model:
    name: str
    base: str | None
    body: tuple[Stmt, ...]
    span: Span = field(compare=False)
    name_span: Span = field(compare=False)
    base_span: Span | None = field(compare=False, default=None)


Item = Union[Use, Param, Model]


@dataclass(frozen=True)
class Module:
    file: str
    items: tuple[Item, ...]


@lru_cache(maxsize=1)
def _parser() -> Lark:
    grammar = resources.files("vitgraph").joinpath("grammar.lark").read_text()
    return Lark(grammar, parser="lalr", propagate_positions=True, maybe_placeholders=False)


def _tok_span(file: str, tok: Token) -> Span:
    return Span(file, tok.line, tok.column, tok.end_line, tok.end_column)


def _meta_span(file: str, meta: Any) -> Span:
    return Span(file, meta.line, meta.column, meta.end_line, meta.end_column)


def _is_alias(x: Any) -> bool:
    return isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], str) and isinstance(x[1], Span)


@v_args(meta=True)
class _Build(Transformer):
    def __init__(self, file: str) -> None:
        super().__init__()
        self.file = file

    def _leaf(self, kind: str, tok: Token, value: Any) -> Arg:
        return Arg(kind, value, _tok_span(self.file, tok))

    def int(self, meta, c):  # noqa: A003 - rule names come from the grammar
        return self._leaf("int", c[0], int(c[0]))

    def float(self, meta, c):  # noqa: A003
        return self._leaf("float", c[0], float(c[0]))

    def string(self, meta, c):
        return self._leaf("string", c[0], c[0][1:-1])

    def word(self, meta, c):
        return self._leaf("word", c[0], str(c[0]))

    def arrow(self, meta, c):
        return self._leaf("arrow", c[0], "->")

    def kernel(self, meta, c):
        h, w = str(c[0]).split("x")
        return self._leaf("kernel", c[0], (int(h), int(w)))

    def neg_int(self, meta, c):
        return self._leaf("int", c[0], -int(c[0]))

    def neg_float(self, meta, c):
        return self._leaf("float", c[0], -float(c[0]))

    def paren(self, meta, c):
        return c[0]

    def neg(self, meta, c):
        return Arg("expr", ("neg", c[0]), _meta_span(self.file, meta))

    def mod(self, meta, c):
        return self._binop("%", meta, c)

    def compare(self, meta, c):
        return Arg("expr", (str(c[1]), c[0], c[2]), _meta_span(self.file, meta))

    def ifelse(self, meta, c):
        then, test, other = c
        return Arg("expr", ("if", test, then, other), _meta_span(self.file, meta))

    def alias(self, meta, c):
        return (".".join(str(t) for t in c), _meta_span(self.file, meta))

    def _binop(self, op: str, meta, c) -> Arg:
        return Arg("expr", (op, c[0], c[1]), _meta_span(self.file, meta))

    def add(self, meta, c):
        return self._binop("+", meta, c)

    def sub(self, meta, c):
        return self._binop("-", meta, c)

    def mul(self, meta, c):
        return self._binop("*", meta, c)

    def div(self, meta, c):
        return self._binop("/", meta, c)

    def body(self, meta, c):
        return tuple(c)

    def stmt(self, meta, c):
        word, rest = c[0], list(c[1:])
        body = rest.pop() if rest and isinstance(rest[-1], tuple) and not _is_alias(rest[-1]) else None
        alias = rest.pop() if rest and _is_alias(rest[-1]) else (None, None)
        return Stmt(str(word), tuple(rest), body, _meta_span(self.file, meta), _tok_span(self.file, word),
                    alias[0], alias[1])

    def use(self, meta, c):
        return Use(c[0][1:-1], _tok_span(self.file, c[0]))

    def param(self, meta, c):
        name = c[0]
        ptype = str(c[1]) if len(c) == 3 else None
        return Param(str(name), ptype, c[-1], _tok_span(self.file, name))

    def model(self, meta, c):
        name, rest = c[0], c[1:]
        base = rest[0] if len(rest) == 2 else None
        return Model(
            str(name),
            str(base) if base is not None else None,
            rest[-1],
            _meta_span(self.file, meta),
            _tok_span(self.file, name),
            _tok_span(self.file, base) if base is not None else None,
        )

    def start(self, meta, c):
        return tuple(c)


# Syntax errors are labelled by example: lark finds which of these snippets fails in the
# same parser state as the user's text, and we print the label instead of parser jargon.
_EXAMPLES: dict[str, list[str]] = {
    "expected a '}' to close the model body": [
        "model m {\n input 3 x 32 x 32\n",
        "model m { blocks 2 { mlp ratio 2 }\n",
        "model m {",
    ],
    "expected a model name after 'model'": ["model {", "model 3 {"],
    "expected '{' to open the model body": ["model m\n", "model m extends b\n", "model m blocks"],
    "expected a name after 'extends'": ["model m extends {"],
    "a statement must start with a word": ["model m { 3 }", "model m { -> 3 }", 'model m { "x" }',
                                           "model m {\n    3 x 32\n}", "model m {\n input 3\n 3\n}"],
    "expected '=' and a value after the parameter name": ["param image 32", "param image\n"],
    "expected a value after '='": ["param image =\n", "param image = }"],
    "expected a quoted file name after 'use'": ["use deit\n", "use 3\n"],
    "expected 'use', 'param' or 'model' at the top level": ["input 3\n", "blocks 2 { }", "}"],
    "unbalanced parentheses in an expression": ["model m { mlp hidden (4 * 2 }", "model m { mlp hidden (4 * }",
                                                "model m { b 2 { mlp hidden (4 * 2 } }",
                                                "model m {\n b 2 { mlp hidden (4 * 2 }\n}"],
    "unexpected '}' with no open body": ["model m { input 3 } }", "model m {\n input 3\n}\n}"],
}


def _expected(e: lark.exceptions.UnexpectedInput) -> str:
    names = {
        "WORD": "a word", "NAME": "a name", "INT": "an integer", "FLOAT": "a number",
        "STRING": "a quoted string", "LBRACE": "'{'", "RBRACE": "'}'", "_SEP": "a new line or ';'",
        "EQUAL": "'='", "ARROW": "'->'", "KERNEL": "a kernel like 3x1",
        "LPAR": "'('", "RPAR": "')'", "$END": "the end of the file", "COLON": "':'",
        "MINUS": "'-'", "PLUS": "'+'", "SLASH": "'/'", "STAR": "'*'", "MODEL": "'model'",
        "USE": "'use'", "PARAM": "'param'", "EXTENDS": "'extends'", "PERCENT": "'%'", "COMPARE": "a comparison",
        "IF": "'if'", "ELSE": "'else'", "AS": "'as'", "DOT": "'.'",
    }
    first = ("RPAR", "RBRACE", "_SEP", "$END")  # what closes the construct reads best first
    exp = sorted(getattr(e, "expected", None) or getattr(e, "allowed", None) or [],
                 key=lambda t: (t not in first, first.index(t) if t in first else 0, t))
    words = [names.get(x, f"'{x.lower()}'" if x.isupper() else x) for x in exp]
    words = [w for w in dict.fromkeys(words) if not w.startswith("'__")]
    return ", ".join(words[:8])


def _syntax_error(text: str, file: str, e: lark.exceptions.UnexpectedInput) -> SpecError:
    line, col = max(e.line, 1), max(e.column, 1)
    if isinstance(e, lark.exceptions.UnexpectedCharacters):
        ch = text[e.pos_in_stream] if e.pos_in_stream < len(text) else ""
        if ch == '"':
            msg = "unterminated string: a string must close with '\"' on the same line"
        else:
            msg = f"unexpected character {ch!r}"
        span = Span(file, line, col, line, col + 1)
        return SpecError(msg, span)
    tok = getattr(e, "token", None)
    if tok is not None and tok.type == "$END":
        lines = text.splitlines() or [""]
        line = len(lines)
        col = len(lines[-1]) + 1
        found = "the end of the file"
        span = Span(file, line, max(col - 1, 1), line, col)
    elif tok is not None:
        found = "a new line" if tok.type == "_SEP" else repr(str(tok))
        end_col = tok.end_column if tok.end_line == tok.line and tok.type != "_SEP" else col + 1
        span = Span(file, line, col, line, end_col)
    else:
        found = "this"
        span = Span(file, line, col, line, col + 1)
    label = None
    try:
        label = e.match_examples(_parser().parse, _EXAMPLES, use_accepts=True)
    except Exception:  # match_examples re-parses snippets; a failure there only loses the label
        label = None
    expected = _expected(e)
    msg = f"{label}, found {found}" if label else f"unexpected {found}"
    notes = [f"expected {expected}"] if expected else []
    return SpecError(msg, span, notes)


def parse(text: str, file: str = "<spec>") -> Module:
    """Parse spec text into a Module; raise SpecError with a position on bad syntax."""
    try:
        tree = _parser().parse(text if text.endswith("\n") else text + "\n")
    except lark.exceptions.UnexpectedInput as e:
        raise _syntax_error(text, file, e) from None
    return Module(file, _Build(file).transform(tree))
