"""The torch backend is fast by default: attention runs through
F.scaled_dot_product_attention (LSA included), and the modules work under bf16 autocast
and torch.compile (one graph, no breaks)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import vitgraph
from vitgraph.backends import _torch_layers
from vitgraph.ops.attention import Attention

from torch_helpers import ROOT
from test_torch_reference import TINY_BINARY_DEIT


def _vit(spec: str = "vit", **overrides) -> tuple[vitgraph.Graph, torch.nn.Module]:
    g = vitgraph.compile(ROOT / f"specs/{spec}.vg", **{"image": 32, "patch": 8, "drop_path": 0.0, **overrides})
    torch.manual_seed(0)
    return g, vitgraph.to_torch(g)


@pytest.mark.parametrize("spec", ["vit", "vit_lsa", "deit_tiny"])
def test_attention_goes_through_sdpa(monkeypatch, spec) -> None:
    calls: list[tuple[int, ...]] = []
    sdpa = F.scaled_dot_product_attention

    def counting(q, k, v, **kw):
        calls.append(tuple(q.shape))
        return sdpa(q, k, v, **kw)

    monkeypatch.setattr(_torch_layers.F, "scaled_dot_product_attention", counting)
    g, model = _vit(spec, **({"patch": 16} if spec == "deit_tiny" else {}))
    model(torch.randn(2, *g.image))
    depth = sum(1 for n in g if n.op is Attention)
    assert len(calls) == depth  # one fused call per block: no loop over heads or tokens
    heads = next(n for n in g if n.op is Attention).attrs.heads
    assert all(shape[:2] == (2, heads) for shape in calls)


@pytest.mark.parametrize("spec", ["vit", "sl_vit", "binary"])
def test_bf16_autocast_on_cpu(spec) -> None:
    if spec == "binary":
        g = vitgraph.compile(TINY_BINARY_DEIT)
        model = vitgraph.to_torch(g)
    else:
        g, model = _vit(spec)
    x = torch.randn(4, *g.image)
    model.eval()
    with torch.no_grad():
        want = model(x)
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    out.float().square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    if spec != "binary":  # binary nets flip signs under rounding: compare full precision ones only
        model.eval()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            got = model(x)
        assert torch.allclose(got.float(), want, atol=0.1 * want.abs().max().item())


def _compiled_matches_eager(g: vitgraph.Graph, model: torch.nn.Module, backend: str) -> None:
    torch._dynamo.reset()
    compiled = torch.compile(model, backend=backend, fullgraph=True)  # fullgraph: fails on any graph break
    x = torch.randn(2, *g.image)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), atol=1e-5, rtol=1e-5)
    model.train()
    grads = []
    for m in (model, compiled):
        model.zero_grad()
        m(x).square().mean().backward()
        grads.append({k: p.grad.clone() for k, p in model.named_parameters()})
    for k in grads[0]:
        torch.testing.assert_close(grads[1][k], grads[0][k], atol=1e-5, rtol=1e-4)


def test_compiles_to_one_graph_lsa_spt() -> None:
    g, model = _vit("sl_vit")
    _compiled_matches_eager(g, model, "aot_eager")


def test_compiles_to_one_graph_binary() -> None:
    g = vitgraph.compile(TINY_BINARY_DEIT)
    torch.manual_seed(0)
    _compiled_matches_eager(g, vitgraph.to_torch(g), "aot_eager")


@pytest.mark.slow
def test_inductor_compiles_vit() -> None:
    g, model = _vit("vit")
    _compiled_matches_eager(g, model, "inductor")
