"""Checkpoints: DeiT/timm-format weights load strictly, position embeddings resample,
bad checkpoints give a UserError, and `vitgraph build --backend torch` writes and reads back."""
from __future__ import annotations

import torch
import pytest

import vitgraph
from vitgraph.backends.torch_backend import load_weights, resample_pos_embed
from vitgraph.cli import main
from vitgraph.diagnostics import UserError

from torch_helpers import ROOT


def timm_deit_state_dict(dim: int, depth: int, classes: int, tokens: int, distilled: bool) -> dict[str, torch.Tensor]:
    """A state dict with the key names and shapes that timm/DeiT save for a ViT with a
    16x16 conv patch embedding and 4x MLP, filled with random values (written out here,
    independently of vitgraph.param_table)."""
    g = torch.Generator().manual_seed(1)
    shapes: dict[str, tuple[int, ...]] = {"cls_token": (1, 1, dim)}
    if distilled:
        shapes["dist_token"] = (1, 1, dim)
    shapes["pos_embed"] = (1, tokens, dim)
    shapes["patch_embed.proj.weight"] = (dim, 3, 16, 16)
    shapes["patch_embed.proj.bias"] = (dim,)
    for i in range(depth):
        b = f"blocks.{i}"
        shapes.update({f"{b}.norm1.weight": (dim,), f"{b}.norm1.bias": (dim,),
                       f"{b}.attn.qkv.weight": (3 * dim, dim), f"{b}.attn.qkv.bias": (3 * dim,),
                       f"{b}.attn.proj.weight": (dim, dim), f"{b}.attn.proj.bias": (dim,),
                       f"{b}.norm2.weight": (dim,), f"{b}.norm2.bias": (dim,),
                       f"{b}.mlp.fc1.weight": (4 * dim, dim), f"{b}.mlp.fc1.bias": (4 * dim,),
                       f"{b}.mlp.fc2.weight": (dim, 4 * dim), f"{b}.mlp.fc2.bias": (dim,)})
    shapes.update({"norm.weight": (dim,), "norm.bias": (dim,), "head.weight": (classes, dim), "head.bias": (classes,)})
    if distilled:
        shapes.update({"head_dist.weight": (classes, dim), "head_dist.bias": (classes,)})
    return {k: torch.randn(s, generator=g) for k, s in shapes.items()}


@pytest.mark.parametrize("name,distilled", [("deit_tiny", False), ("deit_tiny_distilled", True)])
def test_deit_checkpoint_loads_strictly(tmp_path, name, distilled) -> None:
    prefix = 2 if distilled else 1
    state = timm_deit_state_dict(192, 12, 1000, prefix + 14 * 14, distilled)
    path = tmp_path / "deit.pth"
    torch.save({"model": state}, path)  # the layout of the official DeiT release files
    g = vitgraph.compile(ROOT / f"specs/{name}.vg")
    model = vitgraph.to_torch(g)
    assert load_weights(model, g, path) == []
    got = model.state_dict()
    assert set(got) == set(state)
    for k, v in state.items():
        assert torch.equal(got[k], v), k
    model.load_state_dict(state, strict=True)  # and plain strict loading needs no mapping


def test_deit_checkpoint_resampled_to_smaller_image() -> None:
    state = timm_deit_state_dict(192, 12, 1000, 2 + 14 * 14, True)
    g = vitgraph.compile(ROOT / "specs/deit_tiny_distilled.vg", image=64)
    model = vitgraph.to_torch(g)
    notes = load_weights(model, g, {"model": state})
    assert notes and "pos_embed" in notes[0]
    pos = model.state_dict()["pos_embed"]
    assert pos.shape == (1, 2 + 16, 192)
    assert torch.equal(pos[:, :2], state["pos_embed"][:, :2])  # cls and dist rows kept


def test_resample_pos_embed_follows_the_grid() -> None:
    # patch rows hold their grid row index in channel 0 and column index in channel 1
    gh, gw = 4, 6
    rows = torch.arange(gh, dtype=torch.float32).repeat_interleave(gw)
    cols = torch.arange(gw, dtype=torch.float32).repeat(gh)
    patches = torch.stack([rows, cols, torch.full_like(rows, 3.0)], dim=-1)  # (gh*gw, 3)
    pos = torch.cat([torch.tensor([[7.0, 8.0, 9.0]]), patches])[None]  # (1, 1 + 24, 3)
    same = resample_pos_embed(pos, 1, (gh, gw), (gh, gw))
    torch.testing.assert_close(same, pos)
    out = resample_pos_embed(pos, 1, (8, 12), (gh, gw))
    assert out.shape == (1, 1 + 96, 3)
    assert torch.equal(out[0, 0], pos[0, 0])
    grid = out[0, 1:].reshape(8, 12, 3)
    torch.testing.assert_close(grid[..., 2], torch.full((8, 12), 3.0))  # a constant stays constant
    assert torch.allclose(grid[:, :1, 0], grid[:, :, 0])  # row index varies along rows only
    assert torch.allclose(grid[:1, :, 1], grid[:, :, 1])  # column index along columns only
    assert (grid[1:, 0, 0] >= grid[:-1, 0, 0]).all() and grid[-1, 0, 0] > grid[0, 0, 0] + 2
    with pytest.raises(UserError, match="not a square grid"):
        resample_pos_embed(pos[:, :-1], 1, (2, 2))


def _tiny() -> tuple[vitgraph.Graph, torch.nn.Module]:
    g = vitgraph.compile(ROOT / "specs/deit_tiny.vg", image=32, patch=16, classes=10)
    return g, vitgraph.to_torch(g)


def test_mismatched_checkpoint_names_keys_and_shapes() -> None:
    g, model = _tiny()
    state = dict(model.state_dict())
    extra = {**state, "blocks.12.norm1.weight": torch.ones(192)}
    with pytest.raises(UserError, match=r"unexpected 1: blocks\.12\.norm1\.weight"):
        load_weights(model, g, extra)
    missing = {k: v for k, v in state.items() if k != "head.bias"}
    with pytest.raises(UserError, match=r"missing 1: head\.bias"):
        load_weights(model, g, {"model": missing})
    bad = {**state, "head.weight": torch.zeros(5, 192)}
    with pytest.raises(UserError, match=r"head\.weight \(5, 192\) vs \(10, 192\)"):
        load_weights(model, g, bad)
    with pytest.raises(UserError, match="no state dict"):
        load_weights(model, g, {"epoch": 3})


def test_bare_and_dataparallel_state_dicts_load(tmp_path) -> None:
    g, model = _tiny()
    _, other = _tiny()
    torch.save({f"module.{k}": v for k, v in other.state_dict().items()}, tmp_path / "dp.pth")
    load_weights(model, g, tmp_path / "dp.pth")
    for k, v in other.state_dict().items():
        assert torch.equal(model.state_dict()[k], v)


@pytest.mark.parametrize("content", [b"not a checkpoint", b"PK\x03\x04truncated"])
def test_corrupt_checkpoint_is_a_user_error(tmp_path, capsys, content) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(content)
    rc = main(["build", str(ROOT / "specs/deit_tiny.vg"), "--set", "image=32", "patch=16",
               "--weights", str(bad), "-o", str(tmp_path / "x.pt")])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith(f"error: cannot read checkpoint {bad}") and "Traceback" not in err
    assert not (tmp_path / "x.pt").exists()


def test_build_writes_checkpoint_with_spec_and_reloads(tmp_path, capsys) -> None:
    spec = ROOT / "specs/vit_lsa.vg"
    out = tmp_path / "sub" / "vit.pt"
    assert main(["build", str(spec), "--backend", "torch", "--set", "image=32", "patch=8", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    g = vitgraph.compile(spec, image=32, patch=8)
    assert str(out) in printed and g.spec.hash in printed and f"{vitgraph.count(g).total.params:,}" in printed
    ckpt = torch.load(out, weights_only=True)
    assert ckpt["spec"]["hash"] == g.spec.hash and ckpt["spec"]["name"] == "vit_lsa"
    assert ckpt["spec"]["params"]["patch"] == 8 and "blocks { lsa }" in "".join(ckpt["spec"]["sources"].values())
    assert list(out.parent.iterdir()) == [out]  # no temporary file left behind
    # rebuilding at a larger image from this checkpoint resamples the position embedding
    out2 = tmp_path / "vit64.pt"
    assert main(["build", str(spec), "--set", "image=64", "patch=8", "--weights", str(out), "-o", str(out2)]) == 0
    printed = capsys.readouterr().out
    assert "resampled pos_embed from (1, 17, 192) to (1, 65, 192)" in printed
    assert f"built from vit_lsa (spec hash {g.spec.hash})" in printed
    reloaded = torch.load(out2, weights_only=True)["model"]
    for k, v in ckpt["model"].items():
        if k != "pos_embed":
            assert torch.equal(reloaded[k], v), k
