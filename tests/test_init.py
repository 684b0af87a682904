"""Initialisation policies (vitgraph/init.py): each policy draws the distributions it
states, per-op-kind exceptions apply to their op only, the torch and ONNX backends start
from the same draws, and every paper's spec names its policy."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import vitgraph
from vitgraph.backends._onnx_graph import initial_state
from vitgraph.init import InitSpec, Rule

# wide enough that a std is known to ~1% (2.1M weights in fc1/fc2)
WIDE = """
param classes = 10
model wide {{
    input 3 x 32 x 32
    patchify 8 -> 1024
    tokens cls
    pos-embed learned
    blocks 1 {{ attention heads 8; mlp hidden 1024 }}
    head token -> classes
    {init}
}}
"""


def _state(init: str, seed: int = 0) -> dict[str, torch.Tensor]:
    graph = vitgraph.compile(WIDE.format(init=init))
    return vitgraph.to_torch(graph, generator=torch.Generator().manual_seed(seed)).state_dict()


def _std(t: torch.Tensor) -> float:
    return t.double().std().item()


def test_timm_policy() -> None:
    """DeiT/timm: Linear weights trunc_normal(.02) (cut at +-2: in effect N(0, .02)), biases 0;
    the conv patch embedding PyTorch's default; embeddings and tokens trunc_normal(.02)."""
    sd = _state("")
    assert abs(_std(sd["blocks.0.mlp.fc1.weight"]) - 0.02) < 0.02 * 0.02
    assert abs(sd["blocks.0.mlp.fc1.weight"].mean().item()) < 1e-4
    assert not sd["blocks.0.mlp.fc1.bias"].any() and not sd["head.bias"].any()
    conv = sd["patch_embed.proj.weight"]  # fan_in 3*8*8: U(+-1/sqrt(192)), std bound/sqrt(3)
    bound = 1 / math.sqrt(192)
    assert conv.abs().max() <= bound and abs(_std(conv) - bound / math.sqrt(3)) < 0.03 * bound
    assert sd["patch_embed.proj.bias"].abs().max() <= bound and sd["patch_embed.proj.bias"].any()
    assert abs(_std(sd["pos_embed"]) - 0.02) < 0.02 * 0.1 and abs(_std(sd["cls_token"]) - 0.02) < 0.02 * 0.3


def test_xavier_policy() -> None:
    """The small-datasets paper's code: xavier_normal weights, zero biases, N(0, 1)
    position embedding and class token."""
    sd = _state("init xavier")
    w = sd["blocks.0.mlp.fc1.weight"]                           # (1024, 1024)
    assert abs(_std(w) - math.sqrt(2 / 2048)) < 0.01 * math.sqrt(2 / 2048)
    qkv = sd["blocks.0.attn.qkv.weight"]                        # (3072, 1024)
    assert abs(_std(qkv) - math.sqrt(2 / 4096)) < 0.01 * math.sqrt(2 / 4096)
    conv = sd["patch_embed.proj.weight"]                        # fan_in 192, fan_out 1024*64
    assert abs(_std(conv) - math.sqrt(2 / (192 + 1024 * 64))) < 0.03 * math.sqrt(2 / (192 + 1024 * 64))
    assert not sd["blocks.0.mlp.fc1.bias"].any() and not sd["patch_embed.proj.bias"].any()
    assert abs(_std(sd["pos_embed"]) - 1.0) < 0.01  # 5 x 1024 draws
    assert 0.8 < _std(sd["cls_token"]) < 1.2


def test_xavier_linear_patch_embedding() -> None:
    """`patchify ... fans linear`: the official ViT/CaiT embed patches with nn.Linear(c*p*p, dim),
    whose xavier std counts fan-out as dim (not dim*p*p as for a conv); PyTorch's default and
    timm's draws (fan-in only) do not change."""
    graph = vitgraph.compile(WIDE.replace("patchify 8 -> 1024", "patchify 8 -> 1024 fans linear").format(init="init xavier"))
    sd = vitgraph.to_torch(graph, generator=torch.Generator().manual_seed(0)).state_dict()
    official = torch.nn.init.xavier_normal_(torch.empty(1024, 3 * 8 * 8), generator=torch.Generator().manual_seed(0))
    expected = math.sqrt(2 / (192 + 1024))                      # 0.0406, 3.4x the conv's 0.0055
    assert abs(_std(official) - expected) < 0.01 * expected     # the formula is nn.init's
    assert abs(_std(sd["patch_embed.proj.weight"]) - expected) < 0.01 * expected
    assert sd["patch_embed.proj.weight"].shape == (1024, 3, 8, 8)  # the same map and keys
    default = vitgraph.compile(WIDE.replace("patchify 8 -> 1024", "patchify 8 -> 1024 fans linear").format(init="init torch-default"))
    conv = vitgraph.to_torch(default, generator=torch.Generator().manual_seed(0)).state_dict()["patch_embed.proj.weight"]
    assert conv.abs().max() <= 1 / math.sqrt(192)


@pytest.mark.parametrize("spec,fans", [("vit", "linear"), ("vit_lsa", "linear"), ("cait", "linear"), ("pit", None)])
def test_small_datasets_specs_embed_patches_as_the_official_code(spec: str, fans: str | None) -> None:
    """models/vit.py and cait.py: Rearrange + nn.Linear; models/pit.py: nn.Conv2d."""
    graph = vitgraph.compile(f"specs/{spec}.vg")
    (node,) = [n for n in graph if n.op.name == "patchify"]
    assert node.attrs.fans == fans


def test_torch_default_policy_and_a_kind_exception() -> None:
    """PyTorch's default: U(+-1/sqrt(fan_in)) weights and biases; BinaryViT's class token
    at normal(1e-6) as a per-kind exception that touches nothing else."""
    sd = _state("init torch-default\n    init tokens normal 1e-6")
    bound = 1 / math.sqrt(1024)
    for key in ("blocks.0.mlp.fc1.weight", "blocks.0.attn.qkv.weight"):
        w = sd[key]
        assert w.abs().max() <= bound and abs(_std(w) - bound / math.sqrt(3)) < 0.01 * bound, key
    b = sd["blocks.0.mlp.fc1.bias"]
    assert b.abs().max() <= bound and b.std() > bound / 3
    assert sd["cls_token"].abs().max() < 1e-5 and sd["cls_token"].any()
    assert abs(_std(sd["pos_embed"]) - 0.02) < 0.002  # trunc_normal(.02): the exception is the tokens' only


def test_rule_for_an_op_kind_leaves_biases_to_the_policy() -> None:
    spec = InitSpec("timm", (("mlp", Rule("normal", 0.5)),))
    assert spec.rule("mlp", "linear.weight") == Rule("normal", 0.5)
    assert spec.rule("mlp", "linear.bias") == Rule("zeros")
    assert spec.rule("attention", "linear.weight") == Rule("trunc-normal", 0.02)
    assert str(spec) == "timm; mlp normal(0.5)"


def test_draws_depend_on_the_seed_only() -> None:
    a, b, c = _state("init xavier", 0), _state("init xavier", 0), _state("init xavier", 1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["blocks.0.mlp.fc1.weight"], c["blocks.0.mlp.fc1.weight"])


@pytest.mark.parametrize("spec", ["specs/binaryvit.vg", "specs/vit.vg", "specs/sl_vit.vg", "specs/deit_tiny_distilled.vg",
                                  "specs/sl_swin.vg"])
def test_torch_and_onnx_start_from_one_policy(spec: str) -> None:
    graph = vitgraph.compile(spec, **({"image": 160} if "binaryvit" in spec else {}))
    module = vitgraph.to_torch(graph, generator=torch.Generator().manual_seed(3))
    state = initial_state(graph, 3)
    assert set(state) == set(module.state_dict())
    for key, value in module.state_dict().items():
        np.testing.assert_array_equal(state[key], value.numpy(), err_msg=key)


@pytest.mark.parametrize("spec,policy", [
    ("vit", "xavier"), ("sl_vit", "xavier"), ("vit_spt", "xavier"), ("vit_lsa", "xavier"), ("pit", "xavier"),
    ("sl_pit", "xavier"), ("deit_tiny", "timm"), ("deit_base_distilled", "timm"),
    ("binary_deit_small", "torch-default; tokens normal(1e-06)"), ("binaryvit", "torch-default"),
    ("binary_deit_small_affine", "torch-default; tokens normal(1e-06)"), ("binaryvit_star", "torch-default"),
    ("swin", "torch-default"), ("sl_swin", "torch-default"), ("swin_tiny", "timm")])
def test_each_papers_spec_names_its_policy(spec: str, policy: str) -> None:
    graph = vitgraph.compile(f"specs/{spec}.vg")
    assert str(graph.init) == policy
    assert f"init {policy}" in vitgraph.format_graph(graph).splitlines()[0]
