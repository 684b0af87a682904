"""Swin's words (`window-attention`, `downsample patch-merge`) and specs (swin, sl_swin,
swin_tiny): the alternating shift written with `index`, the window fitted to small grids,
the constants the op computes (never in the state dict), ONNX parity with shifted
windows, the small-datasets paper's counts explained, located errors, and swin_tiny
against timm's swin_tiny_patch4_window7_224 (skipped without timm; to run it, install
the timm extra beside the test extras: `pip install -e '.[test,timm]'`)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import vitgraph
from onnx_helpers import relative_error, torch_module
from reference.swin import relative_position_index, shift_mask
from spec_helpers import ROOT
from vitgraph.cli import main
from vitgraph.ops import input_types
from vitgraph.ops.shift_tokenize import spt_features
from vitgraph.ops.window_attention import WindowAttention

GOLDEN = Path(__file__).parent / "golden" / "errors"


def _spec(name: str, **overrides: object) -> vitgraph.Graph:
    return vitgraph.compile(ROOT / f"specs/{name}.vg", **overrides)


def _windows(graph: vitgraph.Graph) -> dict[str, list[tuple[tuple[int, int], tuple[int, int]]]]:
    """Each stage's (window, shift) per block, in order."""
    out: dict[str, list] = {}
    for node in graph:
        if node.op is WindowAttention:
            out.setdefault(node.stage, []).append((node.attrs.window, node.attrs.shift))
    return out


# -- the shift, the window and the constants ----------------------------------------------------
FLOOR = "param w = 7\nmodel m {{\n input 3 x 32 x 32\n patchify 8 -> {dim}\n blocks 1 {{ mlp ratio 1 }}\n head gap -> 10\n}}"


def test_floor_division() -> None:
    """`//` divides and rounds down, as Python does (Swin's shift is window // 2, 3 for 7)."""
    def dim(expr: str) -> int:
        return vitgraph.compile(FLOOR.format(dim=expr)).nodes()[1].out.dim

    assert [dim("(w // 2 * 16)"), dim("(w // 2 + w % 2)"), dim("((0 - w) // 2 + 10)")] == [48, 4, 6]
    with pytest.raises(vitgraph.SpecError, match="division by zero"):
        dim("(w // 0)")


def test_blocks_alternate_plain_and_shifted_windows() -> None:
    """`shift (window // 2 if index % 2 == 1 else 0)`: 0, W//2, 0, ... inside each stage;
    where the grid is no larger than the window, the window is the grid and unshifted."""
    plain, shifted = ((4, 4), (0, 0)), ((4, 4), (2, 2))
    for name in ("swin", "sl_swin"):
        w = _windows(_spec(name, image=64, patch=4, classes=200))         # grids 16, 8, 4
        assert w == {"stages.0": [plain, shifted], "stages.1": [plain, shifted] * 3, "stages.2": [plain] * 4}, name
    t = _windows(_spec("swin_tiny"))                                       # grids 56, 28, 14, 7; window 7
    assert t["layers.0"] == [((7, 7), (0, 0)), ((7, 7), (3, 3))] and t["layers.2"][4:] == t["layers.0"]
    assert t["layers.3"] == [((7, 7), (0, 0))] * 2
    small = _windows(_spec("swin", image=32, patch=8))                    # grids 4, 2, 1
    assert [v[-1] for v in small.values()] == [((4, 4), (0, 0)), ((2, 2), (0, 0)), ((1, 1), (0, 0))]


def test_window_fits_each_side_of_a_rectangular_grid() -> None:
    g = vitgraph.compile(RECTANGLE)                                        # grid 4 x 16, window 8
    assert _windows(g)["stages.0"] == [((4, 8), (0, 0)), ((4, 8), (0, 4))]


def test_constants_are_computed_by_the_op_not_stored() -> None:
    """The bias index, the token order and the masks are buffers the op computes (the
    official code's values), never state-dict entries."""
    g = _spec("sl_swin", image=32, patch=2)
    model = vitgraph.to_torch(g)
    assert not [k for k in model.state_dict() if k.rsplit(".", 1)[-1] in ("relative_position_index", "order",
                                                                              "inverse", "mask")]
    plain, shifted = model.stages[0].blocks[0].attn, model.stages[0].blocks[1].attn
    torch.testing.assert_close(shifted.relative_position_index, relative_position_index(4))
    want = shift_mask(16, 16, 4, 2).masked_fill(torch.eye(16, dtype=torch.bool), float("-inf"))  # + LSA's diagonal
    torch.testing.assert_close(shifted.mask[:, 0], want)
    assert torch.equal(shifted.order[shifted.inverse], torch.arange(256))
    assert shifted.order[0] == 2 * 16 + 2  # the roll by -2: the first window starts at row 2, column 2
    assert torch.equal(plain.mask[0, 0], torch.full((16, 16), 0.0).fill_diagonal_(float("-inf")))
    assert "mask" not in dict(vitgraph.to_torch(_spec("swin", image=32, patch=2)).stages[0].blocks[0].attn.named_buffers())


def test_swin_starts_as_the_official_code() -> None:
    """The official code applies no init_weights: PyTorch's default Linear init
    (U(+-1/sqrt(fan_in)), biases too), trunc_normal(.02) position embedding and
    relative-position tables; LSA's temperature starts at 1/sqrt(head size 32)."""
    sd = vitgraph.to_torch(_spec("sl_swin", image=64, patch=4), generator=torch.Generator().manual_seed(0)).state_dict()
    bound = 192 ** -0.5
    for key in ("stages.1.blocks.0.attn.qkv.weight", "stages.1.blocks.0.attn.qkv.bias"):
        w = sd[key]
        assert w.abs().max() <= bound and abs(w.std().item() - bound / 3 ** 0.5) < 0.1 * bound, key
    tables = torch.cat([v.flatten() for k, v in sd.items() if k.endswith("relative_position_bias_table")])  # 4410
    for t in (tables, sd["pos_embed"]):
        assert abs(t.std().item() - 0.02) < 0.001 and t.abs().max() < 0.1
    temperatures = [v for k, v in sd.items() if k.endswith("temperature")]
    assert len(temperatures) == 12 and all(torch.equal(t, torch.full_like(t, 32 ** -0.5)) for t in temperatures)


# -- ONNX -----------------------------------------------------------------------------------------
RECTANGLE = """
model rectangle {
    input 3 x 16 x 64
    norm layer eps 1e-5
    stem conv 4 -> 16
    stage 16 depth 2 { window-attention heads 2 window 8 shift (4 if index == 1 else 0) lsa; mlp ratio 2 }
    stage 32 depth 1 downsample patch-merge { window-attention heads 4 window 8; mlp ratio 2 }
    head gap -> 10
}
"""


@pytest.mark.parametrize("source", ["swin", "sl_swin", "rectangle"])
def test_shifted_windows_onnx_matches_torch(source: str) -> None:
    """The generic parity test sees swin and sl_swin at a size without shifts; here the
    paper's CIFAR size (grids 16, 8, 4: shifted windows in two stages) and a rectangular
    grid, with onnxruntime's fusions and with standard ops only."""
    from vitgraph.backends.onnx_backend import make_session, to_onnx

    graph = vitgraph.compile(RECTANGLE) if source == "rectangle" else _spec(source, image=32, patch=2)
    module = torch_module(graph, seed=2)
    images = torch.randn(3, *graph.image, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = module(images).numpy()
    for fused in (True, False):
        got = make_session(to_onnx(graph, module.state_dict(), fused=fused)).run(None, {"input": images.numpy()})[0]
        assert relative_error(got, want) <= 1e-4, (source, fused, relative_error(got, want))
        assert (got.argmax(1) == want.argmax(1)).all()


# -- counts ---------------------------------------------------------------------------------------
def _layernorm_elements(graph: vitgraph.Graph) -> int:
    """Elements normalised by LayerNorm over the network: the blocks' and final norms, the
    stem's, SPT's (over 5Cp^2 features) and patch merging's (over 4C)."""
    total = 0
    for node in graph:
        x, name = input_types(graph, node), node.op.name
        if name == "norm" or (name == "patchify" and node.attrs.norm == "layer"):
            total += node.out.tokens * node.out.dim
        elif name == "shift-tokenize":
            total += node.out.tokens * spt_features(int(x[0].shape[1]), node.attrs.patch)
        elif name == "spt-merge":
            total += node.out.tokens * spt_features(x[0].dim, 2)
        elif name == "patch-merge":
            total += node.out.tokens * 4 * x[0].dim
    return total


@pytest.mark.parametrize("spec,published", [("swin", 242.3e6), ("sl_swin", 284.9e6)])
def test_paper_counts_include_layernorm_elements(spec: str, published: float) -> None:
    """Our MACs are 0.16% (Swin) and 0.19% (SL-Swin) under the paper's figures
    (tests/test_counts.py pins them within 1%); the paper's counter also counted one
    operation per LayerNorm element: with those the figures agree to 0.02%."""
    g = _spec(spec, image=64, patch=4, classes=200)
    macs = vitgraph.count(g).total.macs
    assert 0.001 < 1 - macs / published < 0.002
    assert abs(macs + _layernorm_elements(g) - published) <= 2e-4 * published


# -- errors ---------------------------------------------------------------------------------------
PYRAMID = """param image = 32
model s {{
    input 3 x image x image
    norm {norm}
    stem conv 4 -> 32
    {tokens}
    stage 32 depth 2 {{ {attn}; mlp ratio 2 }}
    stage 64 depth 2 downsample patch-merge {{ window-attention heads 2 window 4; mlp ratio 2 }}
    head {head} -> 10
}}
"""


def _pyramid(attn: str = "window-attention heads 2 window 4", norm: str = "layer", tokens: str = "",
             head: str = "gap") -> str:
    return PYRAMID.format(attn=attn, norm=norm, tokens=tokens, head=head)


ERRORS = {
    "swin_window_does_not_divide_grid": _pyramid("window-attention heads 2 window 3"),
    "swin_shift_not_smaller_than_window": _pyramid("window-attention heads 2 window 4 shift 4"),
    "swin_shift_not_whole": _pyramid("window-attention heads 2 window 4 shift (4 / 3)"),
    "swin_window_attention_with_cls_token": _pyramid(tokens="tokens cls", head="token"),
    "swin_window_attention_without_window": _pyramid("window-attention heads 2"),
    "swin_patch_merge_with_batchnorm": _pyramid(norm="batch"),
    "swin_lsa_in_one_token_windows": _pyramid("window-attention heads 2 window 1 lsa"),
}


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_bad_swin_spec_message(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str], golden) -> None:
    (tmp_path / "main.vg").write_text(ERRORS[name])
    monkeypatch.chdir(tmp_path)
    assert main(["check", "main.vg"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "Traceback" not in err and err.startswith("main.vg:")
    golden(GOLDEN / f"{name}.txt", err)


# -- timm's Swin-T ----------------------------------------------------------------------------------
def test_swin_tiny_keys_are_timm_keys() -> None:
    keys = list(vitgraph.param_table(_spec("swin_tiny")))
    assert keys[:7] == ["patch_embed.proj.weight", "patch_embed.proj.bias", "patch_embed.norm.weight",
                        "patch_embed.norm.bias", "layers.0.blocks.0.norm1.weight", "layers.0.blocks.0.norm1.bias",
                        "layers.0.blocks.0.attn.relative_position_bias_table"]
    assert {"layers.1.downsample.norm.weight", "layers.1.downsample.reduction.weight", "layers.3.blocks.1.mlp.fc2.bias",
            "norm.weight", "head.fc.weight", "head.fc.bias"} <= set(keys)
    assert "layers.1.downsample.reduction.bias" not in keys and len(keys) == 173


def test_swin_tiny_loads_timm_weights_and_gives_timm_outputs() -> None:
    """timm's swin_tiny_patch4_window7_224 with random weights (every parameter moved off
    its start): its state dict loads into the spec's module with strict=True, the logits
    agree, and the parameter count and MACs are timm's exactly (MACs: torch's
    FlopCounterMode on timm's model, which counts 2 FLOPs per multiply-accumulate of every
    matmul and conv, attention's included: our convention)."""
    timm = pytest.importorskip("timm", reason="timm is not installed: pip install -e '.[test,timm]'")
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    theirs = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False).eval()
    with torch.no_grad():
        for p in theirs.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    graph = _spec("swin_tiny")
    ours = vitgraph.to_torch(graph).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = theirs(images)
        with FlopCounterMode(display=False) as flops:
            theirs(images[:1])
        got = ours(images)
    assert relative_error(got.numpy(), want.numpy()) <= 1e-5
    assert (got.argmax(1) == want.argmax(1)).all()
    counts = vitgraph.count(graph).total
    assert counts.params == sum(p.numel() for p in theirs.parameters())
    assert counts.macs == flops.get_total_flops() // 2
