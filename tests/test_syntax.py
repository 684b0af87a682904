"""The .vg grammar: statements, separators, comments, values and spans."""
from __future__ import annotations

import pytest

from vitgraph.diagnostics import SpecError
from vitgraph.syntax import Model, Param, Use, parse


def test_items_and_values() -> None:
    m = parse('use "a.vg"\nparam image: int = 32  # c\nparam lr = 1e-3\nmodel x extends y {\n'
              "  pool-branches 3x1 1x5; head token+distill -> (classes * 2)\n}\n", "t.vg")
    use, image, lr, model = m.items
    assert isinstance(use, Use) and use.path == "a.vg"
    assert isinstance(image, Param) and image.type == "int" and image.value.value == 32
    assert lr.value.kind == "float" and lr.value.value == 1e-3
    assert isinstance(model, Model) and model.base == "y"
    pool, head = model.body
    assert [a.value for a in pool.args] == [(3, 1), (1, 5)]
    assert head.args[0].value == "token+distill" and head.args[1].kind == "arrow"
    op, left, right = head.args[2].value
    assert (op, left.value, right.value) == ("*", "classes", 2)


def test_newlines_semicolons_and_comments_separate_statements() -> None:
    a = parse("model m {\n  # only a comment\n\n  input 3 x 8 x 8\n  blocks 1 { attention heads 1; mlp ratio 2 }\n}\n")
    b = parse("model m { input 3 x 8 x 8; blocks 1 {\n attention heads 1\n mlp ratio 2\n } }")
    assert a.items[0].body == b.items[0].body


def test_spans_are_one_based() -> None:
    (model,) = parse("\nmodel m {\n    input 3 x 8 x 8\n}\n", "s.vg").items
    stmt = model.body[0]
    assert (stmt.word_span.line, stmt.word_span.column, stmt.word_span.end_column) == (3, 5, 10)
    assert str(stmt.span) == "s.vg:3:5"


@pytest.mark.parametrize("text", ["model m {", "param x =", 'use "a', "model m { input $ }"])
def test_syntax_errors_carry_a_position(text: str) -> None:
    with pytest.raises(SpecError) as e:
        parse(text, "bad.vg")
    assert e.value.span is not None and e.value.span.file == "bad.vg"
