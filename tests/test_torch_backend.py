"""The torch backend on every spec: state-dict contract, forward and backward."""
from __future__ import annotations

import copy

import pytest
import torch

import vitgraph
from vitgraph.backends import torch_backend

from test_torch_reference import TINY_BINARYVIT
from torch_helpers import SPECS, small_graph


def _loss(out: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor:
    return sum(o.float().pow(2).mean() for o in out) if isinstance(out, tuple) else out.float().pow(2).mean()


def test_every_op_is_lowered() -> None:
    from vitgraph.backends._torch_registry import TORCH_LOWERINGS

    missing = sorted(op.name for op in vitgraph.OPS.values() if op not in TORCH_LOWERINGS)
    assert not missing, f"ops without a torch lowering: {missing}"


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.stem)
def test_state_dict_matches_param_and_buffer_tables(spec) -> None:
    g = small_graph(spec)
    with torch.device("meta"):  # shapes only: no memory, no initialisation work
        model = vitgraph.to_torch(g)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    want = {k: tuple(s) for k, s in (vitgraph.param_table(g) | vitgraph.buffer_table(g)).items()}
    assert got == want
    params = {k for k, _ in model.named_parameters()}
    assert params == set(vitgraph.param_table(g))


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.stem)
def test_forward_backward_every_spec(spec) -> None:
    torch.manual_seed(0)
    g = small_graph(spec)
    model = vitgraph.to_torch(g).train()
    x = torch.randn(2, *g.image)
    out = model(x)
    outs = out if isinstance(out, tuple) else (out,)
    for o in outs:
        assert o.shape == (2, g.classes)
        assert torch.isfinite(o).all()
    _loss(out).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"parameters without gradient: {missing}"
    model.eval()
    with torch.no_grad():
        y = model(x)
    assert isinstance(y, torch.Tensor) and y.shape == (2, g.classes) and torch.isfinite(y).all()


TIMM_DEIT_KEYS = {"cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias",
                  "blocks.0.norm1.weight", "blocks.0.attn.qkv.weight", "blocks.0.attn.qkv.bias",
                  "blocks.0.attn.proj.weight", "blocks.0.mlp.fc1.weight", "blocks.0.mlp.fc2.bias",
                  "blocks.11.norm2.bias", "norm.weight", "norm.bias", "head.weight", "head.bias"}


@pytest.mark.parametrize("name,extra", [("deit_tiny", set()), ("deit_tiny_distilled",
                                                                 {"dist_token", "head_dist.weight", "head_dist.bias"})])
def test_deit_keys_are_timm_keys(name, extra) -> None:
    g = vitgraph.compile(f"specs/{name}.vg", image=32, patch=16)
    keys = set(vitgraph.to_torch(g).state_dict())
    assert TIMM_DEIT_KEYS | extra <= keys
    assert len(keys) == 4 + 12 * 12 + 2 + 2 + (3 if extra else 0)  # 12 tensors per block


def test_deepcopy_is_independent() -> None:
    """EMA copies and checkpoints of the whole module run their own parameters."""
    g = vitgraph.compile("specs/deit_tiny_distilled.vg", image=32, patch=16)
    model = vitgraph.to_torch(g).eval()
    ema = copy.deepcopy(model)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ema(x), model(x))
        ema.pos_embed.add_(1.0)
        ema.head_dist.bias.add_(1.0)
        assert not torch.allclose(ema(x), model(x))
    assert model.blocks[0].attn is not ema.blocks[0].attn and len(model.blocks) == 12


def test_constant_starts_follow_the_contract() -> None:
    """What no policy decides: unit norms, zero biases under timm; BinaryViT's RPReLU slope
    0.25, alpha 0.005, affine 0.1, zero moves/shifts/branches; LSA temperature hd^-0.5.
    (The policies' distributions: tests/test_init.py.)"""
    torch.manual_seed(0)
    sd = vitgraph.to_torch(vitgraph.compile(TINY_BINARYVIT % "")).state_dict()
    sd |= vitgraph.to_torch(vitgraph.compile("specs/sl_vit.vg", image=32, patch=8)).state_dict()
    for k, v in sd.items():
        leaf = k.rsplit(".", 1)[-1]
        if v.dim() >= 2 or k == "patch_embed.proj.bias":
            continue  # drawn by the policy
        if k.endswith("temperature"):
            assert torch.allclose(v, torch.full_like(v, 16 ** -0.5)), k
        elif leaf == "weight":  # LayerNorm / BatchNorm
            assert torch.equal(v, torch.ones_like(v)), k
        elif leaf == "slope":
            assert torch.equal(v, torch.full_like(v, 0.25)), k
        elif leaf == "alpha":
            assert torch.equal(v, torch.full_like(v, 0.005)), k
        elif leaf == "scale":
            want = 0.0 if ".branches." in k else 0.1
            assert torch.equal(v, torch.full_like(v, want)), k
        elif leaf in ("bias", "shift", "move", "shift_in", "shift_out", "q_shift", "k_shift", "v_shift",
                      "running_mean", "num_batches_tracked"):
            assert not v.any(), k
        elif leaf == "running_var":
            assert torch.equal(v, torch.ones_like(v)), k
        else:
            raise AssertionError(f"no expectation for {k}")
