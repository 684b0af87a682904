"""Reference-oracle tests: compiled specs against the hand-written plain-PyTorch models in
tests/reference/, loaded with the same weights by state-dict key. Outputs agree within
1e-5 in float32, and so do the gradients of the input and of every parameter (checked
again in float64, where rounding cannot hide a wrong term)."""
from __future__ import annotations

import copy

import pytest
import torch

import vitgraph
from reference.binaryvit import BinaryViT, BinaryViTConfig, StageConfig
from reference.pit import PiT, PiTConfig
from reference.swin import Swin, SwinConfig
from reference.vit import ShiftedPatchTokenization, ViTConfig, VisionTransformer
from vitgraph.backends._torch_layers import shifted_patches

from torch_helpers import ROOT

TOL = dict(atol=1e-5, rtol=1e-5)


def perturb(model: torch.nn.Module, seed: int, scale: float) -> None:
    """Move every parameter and BatchNorm statistic off its initial value so that no
    term of the forward pass is trivially zero (pool-branch scales, shifts, moves)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
            if name.endswith("alpha"):
                p.fill_(0.04)  # BiT's probability step: keep it positive and in the range of p
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=g) * 0.1)
            elif name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=g) + 0.5)


def _run(m: torch.nn.Module, x: torch.Tensor, train: bool):
    """Output parts, input gradient and parameter gradients of a fixed random projection."""
    m.train(train)
    xi = x.clone().requires_grad_(True)
    out = m(xi)
    parts = out if isinstance(out, tuple) else (out,)
    g = torch.Generator().manual_seed(7)
    loss = sum((o * torch.randn(o.shape, generator=g, dtype=o.dtype)).sum() for o in parts)
    loss.backward()
    return parts, xi.grad, {k: p.grad for k, p in m.named_parameters()}


def _compare(a, b, out_tol: dict, grad_tol) -> None:
    (pa, ga, wa), (pb, gb, wb) = a, b
    assert len(pa) == len(pb)
    for u, v in zip(pa, pb):
        torch.testing.assert_close(u, v, **out_tol)
    torch.testing.assert_close(ga, gb, **grad_tol(gb))
    assert set(wa) == set(wb)
    for k in wa:
        assert wa[k] is not None and wb[k] is not None, k
        torch.testing.assert_close(wa[k], wb[k], **grad_tol(wb[k]), msg=lambda m, k=k: f"gradient of {k}: {m}")


def assert_same(model: torch.nn.Module, ref: torch.nn.Module, x: torch.Tensor, train: bool) -> None:
    """Same weights -> same outputs (float32, within 1e-5) and same input and parameter
    gradients. Gradients are compared twice: in float32 within 1e-4 of their largest
    magnitude (rounding through a deep net, e.g. SDPA's kernel against a plain softmax
    with peaked scores, moves them by ~1e-5 of that), and in float64, where rounding
    vanishes, within 1e-9."""
    ref.load_state_dict(model.state_dict(), strict=True)
    doubles = copy.deepcopy(model).double(), copy.deepcopy(ref).double()
    a, b = _run(model, x, train), _run(ref, x, train)
    _compare(a, b, TOL, lambda g: dict(rtol=1e-4, atol=1e-4 * (1.0 + g.abs().max().item())))
    a64, b64 = _run(doubles[0], x.double(), train), _run(doubles[1], x.double(), train)
    _compare(a64, b64, dict(atol=1e-9, rtol=1e-9), lambda g: dict(rtol=1e-9, atol=1e-9 * (1.0 + g.abs().max().item())))
    if train:  # BatchNorm running statistics moved the same way
        rb = dict(ref.named_buffers())
        for k, v in model.state_dict().items():
            if "running" in k:
                torch.testing.assert_close(v, rb[k], **TOL)


def _image(seed: int, size: int = 32, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


# -- ViT / DeiT / SPT / LSA ----------------------------------------------------------------
VIT_CASES = {
    # spec file, overrides, reference config
    "deit_tiny": ("deit_tiny", dict(image=32, patch=16, drop_path=0.0, classes=10),
                  ViTConfig(image=32, patch=16, classes=10)),
    "deit_tiny_distilled": ("deit_tiny_distilled", dict(image=32, patch=16, drop_path=0.0, classes=10),
                            ViTConfig(image=32, patch=16, classes=10, distilled=True)),
    "vit": ("vit", dict(image=32, patch=8, drop_path=0.0),
            ViTConfig(image=32, patch=8, depth=9, heads=12, head_dim=16, mlp_hidden=384, qkv_bias=False,
                      eps=1e-5, classes=10)),
    "vit_spt": ("vit_spt", dict(image=32, patch=8, drop_path=0.0),
                ViTConfig(image=32, patch=8, depth=9, heads=12, head_dim=16, mlp_hidden=384, qkv_bias=False,
                          eps=1e-5, classes=10, spt=True)),
    "vit_lsa": ("vit_lsa", dict(image=32, patch=8, drop_path=0.0),
                ViTConfig(image=32, patch=8, depth=9, heads=12, head_dim=16, mlp_hidden=384, qkv_bias=False,
                          eps=1e-5, classes=10, lsa=True)),
    "sl_vit": ("sl_vit", dict(image=32, patch=4, drop_path=0.0),
               ViTConfig(image=32, patch=4, depth=9, heads=12, head_dim=16, mlp_hidden=384, qkv_bias=False,
                         eps=1e-5, classes=10, spt=True, lsa=True)),
}


@pytest.mark.parametrize("case", list(VIT_CASES))
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_vit_family_matches_reference(case, train) -> None:
    spec, overrides, cfg = VIT_CASES[case]
    torch.manual_seed(0)
    model = vitgraph.to_torch(vitgraph.compile(ROOT / f"specs/{spec}.vg", **overrides))
    perturb(model, seed=1, scale=0.02)
    assert_same(model, VisionTransformer(cfg), _image(2), train)


# naver-ai/pit's pooling (no pointwise conv), as a patch of the paper's PiT
PIT_NAVER = f'use "{ROOT}/specs/pit.vg"\nmodel pit_naver extends pit {{\n    stage downsample pit {{ }}\n}}\n'


@pytest.mark.parametrize("spec", ["pit", "sl_pit", "pit_naver"])
def test_pit_family_matches_reference(spec) -> None:
    """Pyramids: the small-datasets paper's depthwise + pointwise pooling, naver-ai/pit's
    depthwise pooling, SL-PiT's SPT merging (cls token via Linear)."""
    torch.manual_seed(0)
    source = PIT_NAVER if spec == "pit_naver" else ROOT / f"specs/{spec}.vg"
    model = vitgraph.to_torch(vitgraph.compile(source, image=32, patch=4, drop_path=0.0))
    perturb(model, seed=5, scale=0.02)
    cfg = PiTConfig(image=32, patch=4, spt_lsa=spec == "sl_pit", pointwise=spec == "pit")
    assert_same(model, PiT(cfg), _image(6), train=True)


def test_deit_block_matches_reference() -> None:
    """One block on its own: a one-block DeiT spec against the reference Block."""
    src = """
    model one_block {
        input 3 x 32 x 32
        patchify 8 -> 64
        tokens cls
        pos-embed learned
        norm layer eps 1e-6
        blocks 1 { attention heads 4; mlp ratio 4 }
        head token -> 10
    }"""
    model = vitgraph.to_torch(vitgraph.compile(src))
    perturb(model, seed=3, scale=0.05)
    ref = VisionTransformer(ViTConfig(image=32, patch=8, dim=64, depth=1, heads=4, mlp_hidden=256, classes=10))
    assert_same(model, ref, _image(4), train=True)


def test_spt_matches_reference_and_official_shift_directions() -> None:
    spt = vitgraph.to_torch(vitgraph.compile(ROOT / "specs/vit_spt.vg", image=16, patch=4))
    ref = ShiftedPatchTokenization(3, 192, 4)
    ref.load_state_dict({k[len("patch_embed."):]: v for k, v in spt.state_dict().items()
                         if k.startswith("patch_embed.")}, strict=True)
    x = _image(5, 16)
    torch.testing.assert_close(spt.patch_embed(x), ref(x), **TOL)
    # one bright pixel at (h, w) = (5, 6): the official crops of the zero-padded image put it at
    # (h+s, w+s) in left-up, (h+s, w-s) in right-up, (h-s, w+s) in left-down, (h-s, w-s) in right-down
    img = torch.zeros(1, 1, 16, 16)
    img[0, 0, 5, 6] = 1.0
    p, s = 4, 2
    tokens = shifted_patches(img, p)  # (1, 16, p*p*5), features ordered (p1, p2, c)
    feats = tokens.view(1, 4, 4, p, p, 5).permute(0, 5, 1, 3, 2, 4).reshape(5, 16, 16)  # (c, H, W)
    want = {0: (5, 6), 1: (5 + s, 6 + s), 2: (5 + s, 6 - s), 3: (5 - s, 6 + s), 4: (5 - s, 6 - s)}
    for c, (h, w) in want.items():
        assert feats[c, h, w] == 1.0 and feats[c].sum() == 1.0, c


def test_lsa_masks_the_diagonal_and_uses_the_temperature() -> None:
    model = vitgraph.to_torch(vitgraph.compile(ROOT / "specs/vit_lsa.vg", image=32, patch=16, drop_path=0.0))
    attn = model.blocks[0].attn
    x = torch.randn(2, 5, 192)
    with torch.no_grad():
        attn.temperature.copy_(torch.linspace(0.1, 2.0, 12))
    q, k, v = attn.qkv(x).reshape(2, 5, 3, 12, 16).permute(2, 0, 3, 1, 4)
    scores = (q @ k.transpose(-2, -1)) * attn.temperature.view(1, -1, 1, 1)
    scores = scores.masked_fill(torch.eye(5, dtype=torch.bool), -987654321.0)  # the official mask value
    want = attn.proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(2, 5, 192))
    torch.testing.assert_close(attn(x), want, **TOL)


# -- BinaryViT -----------------------------------------------------------------------------
TINY_BINARYVIT = """
model tiny_binaryvit {
    input 3 x 32 x 32
    norm batch eps 1e-5
    stem conv 4 -> 16 precision fp
    pos-embed learned
    stage 16 depth 2 { attention heads 2 reduce 2; mlp hidden 64; pool-branches 3x1 1x3 5x1 1x5; affine-residual }
    stage 32 depth 1 downsample merge pos-embed { attention heads 2; mlp hidden 64; pool-branches 3x1 1x3; affine-residual }
    head gap -> 10
    binarize weights activations attention except stem head%s
}
"""
TINY_STAGES = [StageConfig(16, 2, 2, 64, reduce=2, kernels=((3, 1), (1, 3), (5, 1), (1, 5)), affine=True),
               StageConfig(32, 1, 2, 64, kernels=((3, 1), (1, 3)), affine=True)]

TINY_BINARY_DEIT = """
model tiny_binary_deit {
    input 3 x 32 x 32
    patchify 8 -> 48
    tokens cls
    pos-embed learned
    norm batch eps 1e-5
    blocks 2 { attention heads 2; mlp ratio 4 }
    head token -> 10
    binarize weights activations attention except stem head
}
"""


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("transitions", ["binary", "fp"])
def test_binaryvit_matches_reference(train, transitions) -> None:
    src = TINY_BINARYVIT % (" transitions" if transitions == "fp" else "")
    torch.manual_seed(0)
    model = vitgraph.to_torch(vitgraph.compile(src))
    perturb(model, seed=11, scale=0.1)
    ref = BinaryViT(BinaryViTConfig(image=32, patch=4, stages=TINY_STAGES,
                                    binary_transitions=transitions == "binary"))
    assert_same(model, ref, _image(12), train)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("attention", ["binary", "real"])
def test_binary_deit_matches_reference(train, attention) -> None:
    src = TINY_BINARY_DEIT if attention == "binary" else TINY_BINARY_DEIT.replace("activations attention", "activations")
    torch.manual_seed(0)
    model = vitgraph.to_torch(vitgraph.compile(src))
    perturb(model, seed=13, scale=0.1)
    ref = BinaryViT(BinaryViTConfig(image=32, patch=8, stages=[StageConfig(48, 2, 2, 192)], pyramid=False,
                                    stem_norm=False, cls_token=True, binary_attention=attention == "binary"))
    assert_same(model, ref, _image(14), train)


def test_binary_stem() -> None:
    """`stem conv ... precision binary` convolves sign(x) with per-channel mean|W| * sign(W)
    (no centring), with the ApproxSign gradient to the image."""
    src = TINY_BINARY_DEIT.replace("patchify 8 -> 48", "stem conv 8 -> 48 precision binary")
    g = vitgraph.compile(src)
    assert g.nodes()[1].binary == {"weights", "activations"}
    stem = vitgraph.to_torch(g).patch_embed.eval()  # BatchNorm at its initial statistics: x / sqrt(1 + eps)
    x = (torch.rand(2, 3, 32, 32) * 3 - 1.5).requires_grad_(True)
    w = stem.proj.weight
    wb = w.abs().mean(dim=(1, 2, 3), keepdim=True) * w.sign()
    want = torch.nn.functional.conv2d(x.sign(), wb, stem.proj.bias, stride=8).flatten(2).transpose(1, 2)
    out = stem(x)
    torch.testing.assert_close(out, want.detach() / (1 + 1e-5) ** 0.5, **TOL)
    out.sum().backward()
    assert torch.equal(x.grad != 0, x.detach().abs() < 1)  # ApproxSign: gradient only inside (-1, 1)
    assert (w.grad.abs() > 0).any()


# -- Swin ------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec", ["swin", "sl_swin"])
def test_swin_family_matches_reference(spec) -> None:
    """The paper's CIFAR configuration (32 px, patch 2): grids 16, 8, 4 with window 4, so
    stages 1 and 2 alternate plain and shifted windows (masks across the rolled edges) and
    in stage 3 the window is the whole grid, unshifted; patch merging (SL: SPT merging,
    LSA in every window)."""
    torch.manual_seed(0)
    model = vitgraph.to_torch(vitgraph.compile(ROOT / f"specs/{spec}.vg", image=32, patch=2, drop_path=0.0))
    perturb(model, seed=15, scale=0.02)
    assert_same(model, Swin(SwinConfig(image=32, patch=2, spt_lsa=spec == "sl_swin")), _image(16), train=True)
