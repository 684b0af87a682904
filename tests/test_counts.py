"""Counts against the papers' published figures (PAPERS.md), within 1%.

Convention: one multiply-accumulate = 1, attention matmuls included; BOPs are binary MACs;
OPs = MACs + BOPs/64."""
from __future__ import annotations

import json

import pytest

import vitgraph
from vitgraph.cli import main
from vitgraph.counting import weight_bytes


def near(value: float, published: float, tol: float = 0.01) -> bool:
    return abs(value - published) <= tol * published


@pytest.mark.parametrize("spec,params,gmacs", [
    ("deit_tiny", 5.72e6, 1.26e9), ("deit_small", 22.05e6, 4.61e9), ("deit_base", 86.57e6, 17.58e9)])
def test_deit_params_and_macs(spec: str, params: float, gmacs: float) -> None:
    t = vitgraph.count(vitgraph.compile(f"specs/{spec}.vg")).total
    assert near(t.params, params), t.params
    assert near(t.macs, gmacs), t.macs
    assert t.bops == 0


@pytest.mark.parametrize("spec,params", [
    ("deit_tiny_distilled", 5.91e6), ("deit_small_distilled", 22.44e6), ("deit_base_distilled", 87.34e6)])
def test_distilled_params(spec: str, params: float) -> None:
    assert near(vitgraph.count(vitgraph.compile(f"specs/{spec}.vg")).total.params, params)


@pytest.mark.parametrize("spec,patch,params,macs", [
    ("vit_large", 16, 304.33e6, 61.6e9), ("deit_base", 32, 88.22e6, 4.41e9), ("deit_small", 32, 22.88e6, 1.15e9)])
def test_augreg_sweep_sizes(spec: str, patch: int, params: float, macs: float) -> None:
    """AugReg's ViT-L/16 and the /32 models of its size sweep (`--set patch=32`), against
    timm's vit_large_patch16_224, vit_base_patch32_224, vit_small_patch32_224 (parameters
    as counted on timm's models, 304,326,632, 88,224,232 and 22,878,952; MACs as timm's
    table gives them, attention matmuls included)."""
    t = vitgraph.count(vitgraph.compile(f"specs/{spec}.vg", patch=patch)).total
    assert near(t.params, params, 1e-4) and near(t.macs, macs), t


@pytest.mark.parametrize("spec,macs", [("vit", 189.8e6), ("sl_vit", 199.2e6)])
def test_small_dataset_vits_at_64px(spec: str, macs: float) -> None:
    t = vitgraph.count(vitgraph.compile(f"specs/{spec}.vg", image=64, patch=8, classes=200)).total
    assert near(t.macs, macs), t.macs


@pytest.mark.parametrize("spec,params,macs", [("vit", 2.69e6, 187.7e6), ("sl_vit", 2.73e6, 190.1e6)])
def test_small_dataset_vits_at_32px(spec: str, params: float, macs: float) -> None:
    t = vitgraph.count(vitgraph.compile(f"specs/{spec}.vg")).total
    assert near(t.params, params) and near(t.macs, macs), t


def test_pit_at_64px_is_the_official_codes_count() -> None:
    """torch.utils.flop_counter on the official models/pit.py (PiT(img_size=64, patch_size=4,
    num_classes=200, dim=96, mlp_dim_ratio=2, depth=(2,6,4), heads=(2,4,8), dim_head=48))
    counts 275,346,048 MACs (FLOPs / 2) and 7,049,192 parameters; the paper prints 279.2M."""
    t = vitgraph.count(vitgraph.compile("specs/pit.vg", image=64, patch=4, classes=200)).total
    assert (t.macs, t.params) == (275_346_048, 7_049_192)
    assert abs(t.macs / 279.2e6 - 1) < 0.015  # the paper's figure, 1.4% above (README: known differences)


def test_sl_pit_at_64px() -> None:
    t = vitgraph.count(vitgraph.compile("specs/sl_pit.vg", image=64, patch=4, classes=200)).total
    assert near(t.macs, 322.9e6), t.macs


@pytest.mark.parametrize("spec,macs", [("swin", 242.3e6), ("sl_swin", 284.9e6)])
def test_small_dataset_swins_at_64px(spec: str, macs: float) -> None:
    t = vitgraph.count(vitgraph.compile(f"specs/{spec}.vg", image=64, patch=4, classes=200)).total
    assert near(t.macs, macs), t.macs


def test_swin_tiny() -> None:
    """timm's swin_tiny_patch4_window7_224: 28.29M params, 4.5 GMACs (timm's model card;
    tests/test_swin.py checks both exactly against timm's model where timm is installed)."""
    t = vitgraph.count(vitgraph.compile("specs/swin_tiny.vg")).total
    assert published(t.params) == 28.29 and near(t.macs, 4.5e9), t


def published(value: float, digits: int = 2) -> float:
    """A count in millions, rounded as the papers print it."""
    return round(value / 1e6, digits)


def test_binaryvit() -> None:
    t = vitgraph.count(vitgraph.compile("specs/binaryvit.vg")).total
    # exactly the published 22.49M (1.29M FP + 21.20M binary): no biases on binary q/k/v or the K/V reduction
    assert (published(t.params), published(t.fp_params), published(t.binary_params)) == (22.49, 1.29, 21.20)
    assert near(t.params, 22.49e6) and near(t.binary_params, 21.20e6) and near(t.fp_params, 1.29e6, 0.02)
    assert near(t.bops, 3.82e9)
    assert near(t.ops, 0.70e8)


def test_binary_deit_small() -> None:
    t = vitgraph.count(vitgraph.compile("specs/binary_deit_small.vg")).total
    assert published(t.params) == 22.29  # exactly the published figure: no biases on binary q/k/v
    assert near(t.params, 22.29e6)
    assert near(t.bops, 4.54e9)
    assert near(t.ops, 1.29e8)


def test_binaryvit_star_moves_transitions_to_full_precision() -> None:
    bv = vitgraph.count(vitgraph.compile("specs/binaryvit.vg"))
    star = vitgraph.count(vitgraph.compile("specs/binaryvit_star.vg"))
    for s in ("stages.1", "stages.2", "stages.3"):
        assert star.by_stage[s].macs > 0 and bv.by_stage[s].macs == 0
    assert star.total.bops < bv.total.bops and star.total.ops > bv.total.ops


def test_groups_add_up_to_total() -> None:
    r = vitgraph.count(vitgraph.compile("specs/binaryvit.vg"))
    for rows in (r.by_group, r.by_stage):
        assert sum(c.params for c in rows.values()) == r.total.params
        assert sum(c.bops for c in rows.values()) == r.total.bops
    assert list(r.by_stage) == ["stem", "stages.0", "stages.1", "stages.2", "stages.3", "head"]
    assert sum(1 for g in r.by_group if g.startswith("stages.2.blocks.")) == 8


def test_param_count_equals_param_table() -> None:
    g = vitgraph.compile("specs/sl_pit.vg")
    table = vitgraph.param_table(g)
    total = sum(int(__import__("math").prod(s)) for s in table.values())
    assert total == vitgraph.count(g).total.params
    assert table["cls_token"] == (1, 1, 96) and table["stages.1.downsample.fc.weight"] == (192, 96)


def test_packed_weights_are_about_a_32nd_for_binary_weights() -> None:
    fp, packed = weight_bytes(vitgraph.compile("specs/binaryvit.vg"))
    t = vitgraph.count(vitgraph.compile("specs/binaryvit.vg")).total
    assert fp == 4 * t.params
    assert t.fp_params * 4 < packed < t.fp_params * 4 + t.binary_params / 8 + 0.2e6
    fp_d, packed_d = weight_bytes(vitgraph.compile("specs/deit_tiny.vg"))
    assert fp_d == packed_d


def test_ops_cli_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ops", "specs/binaryvit.vg", "--by", "stage", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["model"] == "binaryvit" and set(data["rows"]) >= {"stem", "stages.0", "head"}
    assert near(data["total"]["bops"], 3.82e9)


def test_ops_cli_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ops", "specs/deit_tiny.vg"]) == 0
    out = capsys.readouterr().out
    assert "blocks.11" in out and "total" in out and "5.717" in out


def test_the_readme_zoo_table_is_the_zoo() -> None:
    """Every row of the README's model-zoo table has the counts its spec gives today."""
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    lines = text[text.index("| spec | input | params (M)"):].splitlines()
    table = [line for line in lines[2:next(i for i, line in enumerate(lines) if not line.startswith("|"))]]
    assert len(table) == len(list((Path(__file__).resolve().parent.parent / "specs").glob("*.vg")))
    for row in table:
        name, _, params, macs, bops, ops = [c.strip() for c in row.strip("|").split("|")]
        t = vitgraph.count(vitgraph.compile(f"specs/{name}.vg")).total
        want = (f"{t.params / 1e6:.2f}", f"{t.macs / 1e6:,.1f}", f"{t.bops / 1e9:.2f}" if t.bops else "-",
                f"{t.ops / 1e6:,.1f}")
        assert (params, macs, bops, ops) == want, name


def test_ops_shows_the_deployed_size_per_row(capsys: pytest.CaptureFixture[str]) -> None:
    """fp32 and 1-bit MiB per stage add up to the totals, which the ONNX export's 1-bit
    weights match to within the folded BatchNorms and biases (test_binary_passes)."""
    assert main(["ops", "specs/binaryvit.vg", "--by", "stage", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    rows = data["rows_weight_bytes"]
    assert set(rows) == set(data["rows"])
    for kind in ("float32", "packed"):
        assert sum(r[kind] for r in rows.values()) == data["weight_bytes"][kind]
    assert rows["stages.3"]["packed"] * 16 < rows["stages.3"]["float32"]
    assert rows["head"]["packed"] == rows["head"]["float32"]
    assert main(["ops", "specs/binaryvit.vg", "--by", "stage"]) == 0
    out = capsys.readouterr().out
    fp, packed = weight_bytes(vitgraph.compile("specs/binaryvit.vg"))
    assert "fp32 (MiB) 1-bit (MiB)" in out and f"{fp / 2**20:.2f}        {packed / 2**20:.2f}" in out
    assert f"({fp / packed:.1f}x smaller;" in out
