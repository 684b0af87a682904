"""Spec text -> AST. The lark Transformer here only builds dataclasses; meaning is
checked in lower.py, so that every statement is judged by one table of word schemas.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any, Union

import lark
from lark import Lark, Token, Transformer_NonRecursive, v_args

from .diagnostics import Span, SpecError, split_lines


# Limits that keep every spec parseable and checkable in bounded time and stack: literals
# no longer than these (a dimension of 10^15 is already no model), expressions no deeper.
MAX_INT = 10**15
MAX_DEPTH = 100


@dataclass(frozen=True)
class Arg:
    """One argument of a statement. kind: int, float, string, word, arrow, kernel, expr."""

    kind: str
    value: Any  # int | float | str | (h, w) for kernels | (op, operand, ...) for expr
    span: Span = field(compare=False)
    depth: int = field(default=0, compare=False)  # how deeply an expression nests

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
class _Build(Transformer_NonRecursive):
    def __init__(self, file: str) -> None:
        super().__init__()
        self.file = file

    def _leaf(self, kind: str, tok: Token, value: Any) -> Arg:
        return Arg(kind, value, _tok_span(self.file, tok))

    def _number(self, tok: Token, negative: bool = False) -> Arg:
        """An integer or float literal, range-checked with its position."""
        text = str(tok)
        span = _tok_span(self.file, tok)
        if text.isdigit():
            if len(text) > len(str(MAX_INT)) or int(text) > MAX_INT:
                raise SpecError(f"integer {text[:20]}{'...' if len(text) > 20 else ''} is too large", span,
                                [f"expected at most {MAX_INT:.0e}"])
            return Arg("int", -int(text) if negative else int(text), span)
        value = float(text)
        if not math.isfinite(value) or abs(value) > MAX_INT:
            raise SpecError(f"number {text[:20]}{'...' if len(text) > 20 else ''} is too large", span,
                            [f"expected at most {MAX_INT:.0e} in size"])
        return Arg("float", -value if negative else value, span)

    def int(self, meta, c):  # noqa: A003 - rule names come from the grammar
        return self._number(c[0])

    def float(self, meta, c):  # noqa: A003
        return self._number(c[0])

    def string(self, meta, c):
        return self._leaf("string", c[0], c[0][1:-1])

    def word(self, meta, c):
        return self._leaf("word", c[0], str(c[0]))

    def arrow(self, meta, c):
        return self._leaf("arrow", c[0], "->")

    def kernel(self, meta, c):
        h, w = (self._number(Token("INT", side, c[0].start_pos, c[0].line, c[0].column, c[0].end_line,
                                    c[0].end_column, c[0].end_pos)).value for side in str(c[0]).split("x"))
        return self._leaf("kernel", c[0], (h, w))

    def neg_int(self, meta, c):
        return self._number(c[0], negative=True)

    def neg_float(self, meta, c):
        return self._number(c[0], negative=True)

    def paren(self, meta, c):
        return c[0]

    def _expr(self, meta: Any, op: str, *parts: Arg) -> Arg:
        depth = 1 + max(p.depth for p in parts)
        span = _meta_span(self.file, meta)
        if depth > MAX_DEPTH:
            raise SpecError(f"this expression nests more than {MAX_DEPTH} operations deep", span,
                            ["expected a shorter expression, or parameters for its parts"])
        return Arg("expr", (op, *parts), span, depth)

    def neg(self, meta, c):
        return self._expr(meta, "neg", c[0])

    def mod(self, meta, c):
        return self._binop("%", meta, c)

    def compare(self, meta, c):
        return self._expr(meta, str(c[1]), c[0], c[2])

    def ifelse(self, meta, c):
        then, test, other = c
        return self._expr(meta, "if", test, then, other)

    def alias(self, meta, c):
        return (".".join(str(t) for t in c), _meta_span(self.file, meta))

    def _binop(self, op: str, meta, c) -> Arg:
        return self._expr(meta, op, c[0], c[1])

    def add(self, meta, c):
        return self._binop("+", meta, c)

    def sub(self, meta, c):
        return self._binop("-", meta, c)

    def mul(self, meta, c):
        return self._binop("*", meta, c)

    def div(self, meta, c):
        return self._binop("/", meta, c)

    def floordiv(self, meta, c):
        return self._binop("//", meta, c)

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
        lines = split_lines(text.rstrip("\n")) or [""]
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
    _check_nesting(text, file)
    try:
        tree = _parser().parse(text if text.endswith("\n") else text + "\n")
    except lark.exceptions.UnexpectedInput as e:
        raise _syntax_error(text, file, e) from None
    try:
        return Module(file, _Build(file).transform(tree))
    except lark.exceptions.VisitError as e:  # a range check inside the transformer
        if isinstance(e.orig_exc, SpecError):
            raise e.orig_exc from None
        raise


MAX_BRACES, MAX_PARENS = 8, MAX_DEPTH


def _check_nesting(text: str, file: str) -> None:
    """Braces and parentheses nest no deeper than the language needs (a model body holds
    block bodies; expressions nest MAX_DEPTH deep), so the parser and the checks never run
    out of stack. Strings and comments are skipped."""
    depth = {"{": 0, "(": 0}
    limit = {"{": MAX_BRACES, "(": MAX_PARENS}
    closing = {"}": "{", ")": "("}
    line, col, in_string, in_comment = 1, 0, False, False
    for ch in text:
        col += 1
        if ch == "\n":
            line, col, in_string, in_comment = line + 1, 0, False, False
        elif in_comment or (in_string and ch != '"'):
            continue
        elif ch == '"':
            in_string = not in_string
        elif ch == "#":
            in_comment = True
        elif ch in depth:
            depth[ch] += 1
            if depth[ch] > limit[ch]:
                what = "bodies in braces" if ch == "{" else "parentheses"
                raise SpecError(f"{what} nest more than {limit[ch]} deep here", Span(file, line, col, line, col + 1),
                                ["a model body holds block bodies; nothing in the language nests deeper"
                                 if ch == "{" else "expected a shorter expression, or parameters for its parts"])
        elif ch in closing and depth[closing[ch]]:
            depth[closing[ch]] -= 1
