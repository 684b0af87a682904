"""The IR of every spec: checks, prints stably (golden files), and keeps its invariants."""
from __future__ import annotations

from pathlib import Path

import pytest

import vitgraph
from vitgraph.ops import OPS, WORDS
from vitgraph.ops.attention import Attention
from vitgraph.ops.downsample import Downsample
from vitgraph.ops.head import Head
from vitgraph.ops.input import Input
from vitgraph.ops.mlp import Mlp
from vitgraph.ops.patchify import Patchify
from vitgraph.passes import PIPELINE

from conftest import SPECS

GOLDEN = Path(__file__).parent / "golden" / "ir"


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.stem)
def test_printed_ir_is_pinned(spec: Path, golden) -> None:
    graph = vitgraph.compile(spec)
    golden(GOLDEN / f"{spec.stem}.txt", vitgraph.format_graph(graph))


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.stem)
def test_graph_invariants(spec: Path) -> None:
    graph = vitgraph.compile(spec)
    nodes = graph.nodes()
    assert [n.id for n in nodes] == sorted(n.id for n in nodes), "visit order must be stable"
    assert nodes[0].op is Input and nodes[-1].op is Head
    assert len({n.name for n in nodes}) == len(nodes)
    for n in nodes:
        assert n.out is not None and n.span is not None
        assert all(i < n.id for i in n.inputs)
    assert graph.output.out.shape == ("B", graph.spec.params["classes"])


def test_printing_is_deterministic_across_compiles() -> None:
    a = vitgraph.format_graph(vitgraph.compile("specs/binaryvit.vg"))
    b = vitgraph.format_graph(vitgraph.compile("specs/binaryvit.vg"))
    assert a == b


def test_every_op_is_one_registered_unit() -> None:
    """Each op unit is registered under its name and owns its words; every word of the
    language that makes a node belongs to exactly one unit."""
    assert all(OPS[name].name == name for name in OPS)
    assert all(word in op.words for word, op in WORDS.items())
    assert {"attention", "lsa", "mlp", "patchify", "stem", "shift-tokenize", "head", "tokens"} <= set(WORDS)


def test_pipeline_is_named() -> None:
    assert PIPELINE == ("infer_shapes", "validate")


def test_span_is_not_part_of_node_equality() -> None:
    text = Path("specs/vit.vg").read_text()
    a = vitgraph.compile("specs/vit.vg")
    b = vitgraph.compile("\n\n" + text)  # same spec, shifted two lines down
    assert a.nodes() == b.nodes()
    assert a.nodes()[1].span.line + 2 == b.nodes()[1].span.line


def test_overrides_change_shapes_and_hash() -> None:
    a = vitgraph.compile("specs/vit.vg")
    b = vitgraph.compile("specs/vit.vg", image=64, patch=8, classes=200)
    assert a.nodes()[2].out.shape == ("B", 65, 192) and b.nodes()[2].out.shape == ("B", 65, 192)
    assert b.input.out.shape == ("B", 3, 64, 64) and b.classes == 200
    assert a.spec.hash != b.spec.hash
    assert vitgraph.compile("specs/vit.vg", image="64", patch="8", classes="200").spec.hash == b.spec.hash


def test_extends_replaces_words_and_keeps_the_rest() -> None:
    g = vitgraph.compile("specs/deit_small_distilled.vg")
    assert [n.name for n in g.nodes()[:4]] == ["input", "patch_embed", "tokens", "pos_embed"]
    assert g.node(2).attrs.tokens == ("cls", "distill")
    assert g.output.attrs.kind == "token+distill"
    assert g.node(1).out.dim == 384


def test_binarize_marks_blocks_and_transitions_only() -> None:
    g = vitgraph.compile("specs/binaryvit.vg")
    star = vitgraph.compile("specs/binaryvit_star.vg")
    full = {"weights", "activations", "attention"}
    for n in g:
        if n.op in (Attention, Mlp) or issubclass(n.op, Downsample):
            assert n.binary == full, n.name
        if n.op in (Patchify, Head):
            assert not n.binary
    assert all(not n.binary for n in star if issubclass(n.op, Downsample))
    assert all(n.binary == full for n in star if n.op is Attention)


def test_spec_text_compiles_like_a_file() -> None:
    text = Path("specs/deit_tiny.vg").read_text()
    from_text = vitgraph.compile(text, image=32, patch=8)
    from_file = vitgraph.compile("specs/deit_tiny.vg", image=32, patch=8)
    assert from_text.nodes() == from_file.nodes()
    assert from_text.node(1).out.shape == ("B", 16, 192)


def test_graph_is_networkx_inside() -> None:
    import networkx as nx

    g = vitgraph.compile("specs/vit.vg")
    dg = g.digraph
    assert isinstance(dg, nx.DiGraph) and dg.number_of_nodes() == len(g)
    add = next(n for n in g if n.name == "blocks.0.add1")
    assert sorted(dg.predecessors(add.id)) == list(add.inputs)
