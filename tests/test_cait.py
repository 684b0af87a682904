"""CaiT (Touvron et al. 2021, "Going deeper with Image Transformers") in the language:
the small-datasets paper's `cait` / `sl_cait` (official code aanna0701/SPT_LSA_ViT
models/cait.py) and timm's `cait_xxs24`. The compiled specs against the plain-PyTorch
reference in tests/reference/cait.py (outputs and gradients), LayerScale's depth rule,
counts against the reference models, the papers and timm, dead-token elimination with
the narrowed class-attention blocks, the language's checks of the new words, and timm's
own model (skipped without timm)."""
from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import vitgraph
from reference.cait import CaiT, CaiTConfig, official_layer_scale
from vitgraph.diagnostics import SpecError
from vitgraph.ops.attention import Attention
from vitgraph.ops.class_attention import ClassAttention
from vitgraph.ops.layer_scale import LayerScale
from vitgraph.passes import dead_tokens

from test_torch_reference import assert_same, perturb
from torch_helpers import ROOT

XXS24 = dict(official=False, head_dim=48, mlp_hidden=768, eps=1e-6, cls_name="blocks_token_only", init_values=1e-5)
# timm's form with LSA everywhere: the diagonal set to -1e-9 beside timm's talking heads,
# and the class token's score with itself masked in class attention (keys all)
XXS24_LSA = (f'use "{ROOT}/specs/cait_xxs24.vg"\nmodel cait_xxs24_lsa extends cait_xxs24 {{\n'
             '    blocks { lsa diagonal -1e-9 }\n    blocks as blocks_token_only { class-attention lsa true }\n}\n')

CASES = {
    # spec, overrides, reference config
    "cait": ("specs/cait.vg", dict(image=32, patch=8, drop_path=0.0), CaiTConfig(image=32, patch=8)),
    "sl_cait": ("specs/sl_cait.vg", dict(image=32, patch=8, drop_path=0.0),
                CaiTConfig(image=32, patch=8, spt=True, lsa=True)),
    "cait_xxs24": ("specs/cait_xxs24.vg", dict(image=32, patch=16, drop_path=0.0, classes=10),
                   CaiTConfig(image=32, patch=16, **XXS24)),
    "cait_xxs24_lsa": (XXS24_LSA, dict(image=32, patch=16, drop_path=0.0, classes=10),
                       CaiTConfig(image=32, patch=16, lsa=True, **XXS24)),
}


def _compile(case: str, **extra: object) -> vitgraph.Graph:
    spec, overrides, _ = CASES[case]
    return vitgraph.compile(spec if spec.startswith("use") else ROOT / spec, **{**overrides, **extra})


def _macs(model: torch.nn.Module, image: int) -> int:
    """What torch's own FLOP counter counts for one image (2 per multiply-accumulate)."""
    with FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, image, image))
    return counter.get_total_flops() // 2


# -- the reference oracle ----------------------------------------------------------------------
@pytest.mark.parametrize("case", list(CASES))
def test_cait_matches_reference(case: str) -> None:
    """In training mode (with drop_path 0 nothing in CaiT differs in eval mode)."""
    torch.manual_seed(0)
    model = vitgraph.to_torch(_compile(case))
    perturb(model, seed=1, scale=0.02)
    image = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    assert_same(model, CaiT(CASES[case][2]), image, train=True)


def test_layer_scale_starts_by_the_official_depth_rule() -> None:
    """0.1 for layer index+1 <= 18, 1e-5 up to 24, 1e-6 beyond; each transformer counts
    its own layers (the class layers start at 0.1). Written in the spec with `index`."""
    for depth in (24, 30):
        state = vitgraph.to_torch(vitgraph.compile("specs/cait.vg", image=32, patch=8, depth=depth)).state_dict()
        for prefix, layers in (("blocks", depth), ("cls_blocks", 2)):
            for i in range(layers):
                for k in (1, 2):
                    gamma = state[f"{prefix}.{i}.gamma_{k}"]
                    assert torch.equal(gamma, torch.full((192,), official_layer_scale(i + 1))), (prefix, i, k)


def test_layer_scale_defaults_to_timms_init() -> None:
    g = vitgraph.compile("model m { input 3 x 32 x 32; patchify 16 -> 8; blocks 1 { attention heads 2; mlp ratio 2;"
                         " layer-scale }; head gap -> 3 }")
    node = next(n for n in g if n.op is LayerScale)
    assert node.attrs.init == 1e-4 and node.name == "blocks.0.gamma_1"


def test_cait_starts_as_the_official_code() -> None:
    """`init xavier`: xavier-normal Linear weights (to_q and to_kv drawn as the separate
    layers they are), zero biases, N(0, 1) position embedding, class token and
    talking-heads matrices."""
    graph = vitgraph.compile("specs/cait.vg")
    state = vitgraph.to_torch(graph, generator=torch.Generator().manual_seed(0)).state_dict()

    def std(*suffixes: str) -> float:
        return torch.cat([v.flatten() for k, v in state.items() if k.endswith(suffixes)]).double().std().item()

    for suffixes, want, tol in (((".to_q.weight",), (2 / (192 + 256)) ** 0.5, 0.01),
                                ((".to_kv.weight",), (2 / (192 + 512)) ** 0.5, 0.01),
                                ((".fc1.weight",), (2 / (192 + 384)) ** 0.5, 0.01),
                                (("pos_embed",), 1.0, 0.02),
                                (("mix_heads_pre_attn", "mix_heads_post_attn"), 1.0, 0.1)):
        assert abs(std(*suffixes) - want) < tol * want, suffixes
    assert 0.5 < state["cls_token"].std() < 1.5
    assert not any(v.any() for k, v in state.items() if k.endswith(".bias"))


# -- counts ---------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["cait", "sl_cait", "cait_xxs24"])
def test_counts_are_the_reference_models(case: str) -> None:
    """Parameters, and MACs as torch's FLOP counter counts the plain-PyTorch reference (the
    attention matmuls and head mixing included), at the paper's Tiny-ImageNet size."""
    size = dict(image=64, patch=8 if case != "cait_xxs24" else 16, classes=200)
    total = vitgraph.count(_compile(case, **size)).total
    ref = CaiT(CaiTConfig(**{**vars(CASES[case][2]), **size})).eval()
    assert total.params == sum(p.numel() for p in ref.parameters())
    assert total.macs == _macs(ref, 64)


def _without_talking_heads(spec: str) -> vitgraph.Graph:
    text = (f'use "{ROOT}/specs/{spec}.vg"\nmodel plain extends {spec} {{\n'
            '    blocks { attention talking-heads none }\n    blocks as cls_blocks { class-attention talking-heads none }\n}\n')
    return vitgraph.compile(text, image=64, patch=8, classes=200)


@pytest.mark.parametrize("spec,published,spt", [("cait", 613.8e6, False), ("sl_cait", 623.3e6, True)])
def test_macs_against_the_paper(spec: str, published: float, spt: bool) -> None:
    """The paper prints 613.8M / 623.3M; the official model computes 2.7% fewer (597.5M /
    606.9M: this count, equal to torch's FLOP counter on the official code and on the
    reference). The paper's figures are this count as the authors' hand-written flops()
    convention (their released ViT code's first commit: LayerNorm at one per element, the
    feed-forward over num_patches + 1 tokens; the CaiT flops() there is commented out)
    would give: without the talking heads, plus LayerNorm elements, plus the class layers'
    MLPs over 65 tokens instead of the class token alone."""
    graph = vitgraph.compile(f"specs/{spec}.vg", image=64, patch=8, classes=200)
    macs = vitgraph.count(graph).total.macs
    talking = macs - vitgraph.count(_without_talking_heads(spec)).total.macs
    tokens, dim, hidden = 64, 192, 384
    layernorm = 24 * 2 * tokens * dim + 2 * 2 * dim + dim + (tokens * 5 * 3 * 8 * 8 if spt else 0)
    class_mlps_over_all_tokens = 2 * tokens * 2 * dim * hidden
    assert talking == 24 * 2 * tokens * tokens * 4 * 4 + 2 * 2 * tokens * 4 * 4
    assert abs(macs - talking + layernorm + class_mlps_over_all_tokens - published) < 0.05e6  # as printed
    assert 0.97 < macs / published < 0.975


def test_cait_xxs24_counts_against_timm_published() -> None:
    """timm's cait_xxs24_224 card (and the CaiT paper, XXS-24): 12.0M params, 2.5 GMACs."""
    total = vitgraph.count(vitgraph.compile("specs/cait_xxs24.vg")).total
    assert abs(total.params - 12.0e6) <= 0.01 * 12.0e6 and abs(total.macs - 2.5e9) <= 0.01 * 2.5e9


# -- dead-token elimination -------------------------------------------------------------------
def test_dead_tokens_leave_the_class_attention_blocks_correct() -> None:
    """The head reads the class token: after the class-attention blocks (which narrow to it
    and join the patch tokens back) only the final norm can be cut; nothing upstream of a
    class attention is, since it reads every token; the logits stay the same."""
    graph = _compile("cait")
    inference, report = dead_tokens.run(graph)
    changed = {n.name: n for n in inference if n.id not in {m.id for m in graph} or n != graph.node(n.id)}
    assert set(changed) == {"norm", "cls_blocks.1.join/first1"}
    assert changed["norm"].out.tokens == 1 and report == [
        "dead-token elimination: 1 nodes from norm on compute the 1 token(s) the head reads"]
    assert [n.attrs for n in inference if n.op in (Attention, ClassAttention)] == \
        [n.attrs for n in graph if n.op in (Attention, ClassAttention)]
    module = vitgraph.to_torch(graph)
    perturb(module, seed=3, scale=0.02)
    pruned = vitgraph.to_torch(inference)
    pruned.load_state_dict(module.state_dict())
    images = torch.randn(3, *graph.image, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(pruned.eval()(images), module.eval()(images), rtol=1e-5, atol=1e-6)


# -- the language -------------------------------------------------------------------------------
BAD = {
    "no class token": ("blocks 1 { class-attention heads 2; mlp ratio 2 }", "the stream has none"),
    "fused raw-patch keys": ("tokens cls\n    blocks 1 { class-attention heads 2 keys raw-patches projections qkv;"
                             " mlp ratio 2 }", "one fused qkv linear cannot compute both"),
    "talking heads on a -inf mask": ("tokens cls\n    blocks 1 { lsa heads 2 talking-heads matrix; mlp ratio 2 }",
                                     "-inf diagonal mask"),
    "diagonal without lsa": ("tokens cls\n    blocks 1 { class-attention heads 2 diagonal -1e-9; mlp ratio 2 }",
                             "'diagonal' is LSA's"),
    "binary talking heads": ("tokens cls\n    blocks 1 { attention heads 2 talking-heads linear; mlp ratio 2 }\n"
                             "    binarize weights activations attention except stem head",
                             "'talking-heads' is a full-precision form"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_misuses_are_located_errors(case: str) -> None:
    body, message = BAD[case]
    text = f"model m {{\n    input 3 x 32 x 32\n    patchify 16 -> 8\n    {body}\n    head gap -> 3\n}}\n"
    with pytest.raises(SpecError, match=message) as err:
        vitgraph.compile(text)
    assert err.value.span is not None and err.value.span.line >= 4


# -- timm ------------------------------------------------------------------------------------
def test_cait_xxs24_is_timms() -> None:
    """timm's cait_xxs24_224 state dict loads with strict=True and gives the same logits;
    parameters and MACs (timm's attention on its matmul path, so that torch's counter sees
    the class attention) are timm's."""
    timm = pytest.importorskip("timm", reason="timm is not installed: pip install -e '.[test,timm]'")
    torch.manual_seed(0)
    ref = timm.create_model("cait_xxs24_224", pretrained=False, img_size=64, num_classes=10).eval()
    with torch.no_grad():
        for p in ref.parameters():  # off the init: gammas, biases and norms all matter
            p.add_(0.02 * torch.randn_like(p))
    graph = vitgraph.compile("specs/cait_xxs24.vg", image=64, classes=10)
    model = vitgraph.to_torch(graph).eval()
    model.load_state_dict(ref.state_dict(), strict=True)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(images), ref(images), rtol=1e-5, atol=1e-5)
    full = timm.create_model("cait_xxs24_224", pretrained=False).eval()
    for block in full.blocks_token_only:
        block.attn.fused_attn = False
    total = vitgraph.count(vitgraph.compile("specs/cait_xxs24.vg")).total
    assert total.params == sum(p.numel() for p in full.parameters())
    assert total.macs == _macs(full, 224)
