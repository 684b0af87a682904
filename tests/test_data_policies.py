"""Each RandAugment / AutoAugment op on tiny tensors against hand-computed values (and against
PIL, whose semantics the ops follow), the magnitude tables, and per-image batched choices."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import train_helpers  # noqa: F401  (one torch thread)
from PIL import Image, ImageEnhance, ImageOps

from vitgraph.data import policies as P

G = torch.Generator().manual_seed(0)


def t(values, shape=None) -> torch.Tensor:
    x = torch.tensor(values, dtype=torch.float32)
    return x.reshape(shape) if shape else x


def v(*values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def to_pil(x: torch.Tensor) -> Image.Image:
    return Image.fromarray(x.permute(1, 2, 0).numpy().astype(np.uint8))


def from_pil(im: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(im, dtype=np.float32).copy()).permute(2, 0, 1)


def rgb(seed: int, h: int = 9, w: int = 7) -> torch.Tensor:
    return torch.randint(0, 256, (1, 3, h, w), generator=torch.Generator().manual_seed(seed)).float()


# --- colour ops by hand ----------------------------------------------------------------------------

def test_invert():
    assert P.invert(t([0, 10, 255], (1, 1, 1, 3)), v(0), G).flatten().tolist() == [255, 245, 0]


def test_posterize_keeps_top_bits():
    x = t([0, 63, 64, 130, 255], (1, 1, 1, 5))
    assert P.posterize(x, v(2), G).flatten().tolist() == [0, 0, 64, 128, 192]
    assert torch.equal(P.posterize(x, v(8), G), x)


def test_solarize_inverts_at_or_above_threshold():
    x = t([10, 127, 128, 200], (1, 1, 1, 4))
    assert P.solarize(x, v(128), G).flatten().tolist() == [10, 127, 127, 55]
    assert torch.equal(P.solarize(x, v(256), G), x)


def test_solarize_add_below_128():
    x = t([10, 100, 127, 128, 250], (1, 1, 1, 5))
    assert P.solarize_add(x, v(50), G).flatten().tolist() == [60, 150, 177, 128, 250]
    assert P.solarize_add(t([120], (1, 1, 1, 1)), v(200), G).item() == 255


def test_brightness_scales_and_clamps():
    x = t([0, 11, 100, 200], (1, 1, 1, 4))
    assert P.brightness(x, v(0.5), G).flatten().tolist() == [0, 5, 50, 100]
    assert P.brightness(x, v(1.5), G).flatten().tolist() == [0, 16, 150, 255]


def test_color_zero_is_grey():
    x = t([[100], [50], [200]], (1, 3, 1, 1))
    grey = np.floor(0.299 * 100 + 0.587 * 50 + 0.114 * 200)
    assert P.color(x, v(0.0), G).flatten().tolist() == [grey] * 3
    assert torch.equal(P.color(x, v(1.0), G), x)


def test_contrast_zero_is_mean_grey():
    x = t([0, 100, 200, 255], (1, 1, 2, 2))  # one channel: grey = itself, mean 138.75
    assert P.contrast(x, v(0.0), G).flatten().tolist() == [138] * 4
    assert P.contrast(x, v(2.0), G).flatten().tolist() == [0, 61, 255, 255]  # 138.75 + 2 * (x - 138.75)


def test_sharpness_zero_smooths_the_inside_only():
    x = torch.zeros(1, 1, 3, 3)
    x[0, 0, 1, 1] = 130
    y = P.sharpness(x, v(0.0), G)
    assert y[0, 0, 1, 1] == 50  # (5 * 130) / 13 = 50
    assert y.sum() == 50  # borders keep their values (0)


def test_auto_contrast_stretches_each_channel():
    x = torch.stack([t([50, 100, 150]), t([7, 7, 7])]).reshape(1, 2, 1, 3)
    y = P.auto_contrast(x, v(0), G)
    assert y[0, 0, 0].tolist() == [0, 127, 255]  # (100 - 50) * 255 / 100 = 127.5, floored
    assert y[0, 1, 0].tolist() == [7, 7, 7]  # flat: unchanged


def test_equalize_hand_computed():
    # 510 zeros, 255 x 50, 255 x 200: step = (1020 - 255) // 255 = 3, lut[v] = (3 // 2 + #below) // 3
    x = torch.cat([torch.zeros(510), torch.full((255,), 50.0), torch.full((255,), 200.0)]).reshape(1, 1, 30, 34)
    y = P.equalize(x, v(0), G)
    assert sorted(set(y.flatten().tolist())) == [0, 170, 255]
    assert (y[x == 50] == 170).all() and (y[x == 200] == 255).all()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equalize_autocontrast_posterize_solarize_match_pil(seed):
    x = rgb(seed, 17, 13)
    im = to_pil(x[0])
    assert torch.equal(P.equalize(x, v(0), G)[0], from_pil(ImageOps.equalize(im)))
    assert torch.equal(P.auto_contrast(x, v(0), G)[0], from_pil(ImageOps.autocontrast(im)))
    assert torch.equal(P.posterize(x, v(3), G)[0], from_pil(ImageOps.posterize(im, 3)))
    assert torch.equal(P.solarize(x, v(100), G)[0], from_pil(ImageOps.solarize(im, 100)))


@pytest.mark.parametrize("name,enhancer", [("brightness", ImageEnhance.Brightness), ("color", ImageEnhance.Color),
                                           ("contrast", ImageEnhance.Contrast), ("sharpness", ImageEnhance.Sharpness)])
def test_enhance_ops_close_to_pil(name, enhancer):
    x = rgb(5, 12, 10)
    for factor in (0.3, 1.7):
        ours = getattr(P, name)(x, v(factor), G)[0]
        pil = from_pil(enhancer(to_pil(x[0])).enhance(factor))
        assert (ours - pil).abs().max() <= 2, name  # PIL's integer rounding differs by a step or two


# --- geometric ops -----------------------------------------------------------------------------------

def test_translate_x_moves_content_and_fills_grey():
    x = t(list(range(1, 13)), (1, 1, 3, 4))
    y = P.translate_x(x, v(1), G)
    assert torch.equal(y[0, 0, :, :3], x[0, 0, :, 1:])
    assert (y[0, 0, :, 3] == 128).all()
    y = P.translate_y(x, v(-2), G)
    assert torch.equal(y[0, 0, 2], x[0, 0, 0]) and (y[0, 0, :2] == 128).all()


def test_shear_x_hand_computed():
    x = t(list(range(1, 10)), (1, 1, 3, 3))
    y = P.shear_x(x, v(1.0), G)  # output (c, r) shows input column floor(c + 0.5 + (r + 0.5)) = c + r + 1
    expected = [[2, 3, 128], [6, 128, 128], [128, 128, 128]]
    assert y[0, 0].tolist() == expected


def test_rotate_90_is_counter_clockwise():
    x = t(list(range(16)), (1, 1, 4, 4))
    y = P.rotate(x, v(90.0), G)
    assert torch.equal(y[0, 0], torch.rot90(x[0, 0], 1, dims=(0, 1)))


@pytest.mark.parametrize("op,matrix", [
    ("shear_x", lambda m: (1, m, 0, 0, 1, 0)), ("shear_y", lambda m: (1, 0, 0, m, 1, 0)),
    ("translate_x", lambda m: (1, 0, m, 0, 1, 0)), ("translate_y", lambda m: (1, 0, 0, 0, 1, m))])
def test_affine_ops_match_pil(op, matrix):
    x = rgb(7, 16, 16)
    for m in (0.27, -0.3) if op.startswith("shear") else (3.0, -5.0):
        pil = to_pil(x[0]).transform((16, 16), Image.AFFINE, matrix(m), Image.NEAREST, fillcolor=(128, 128, 128))
        assert torch.equal(getattr(P, op)(x, v(m), G)[0], from_pil(pil)), (op, m)


def test_rotate_matches_pil():
    x = rgb(8, 16, 16)
    for angle in (17.0, -30.0):
        pil = to_pil(x[0]).rotate(angle, Image.NEAREST, fillcolor=(128, 128, 128))
        same = (P.rotate(x, v(angle), G)[0] == from_pil(pil)).float().mean()
        assert same > 0.99  # a pixel centre exactly on a boundary may round the other way


def test_cutout_grey_square_of_side_2v():
    x = torch.zeros(64, 1, 20, 20)
    y = P.cutout(x, torch.full((64,), 3.0), torch.Generator().manual_seed(1))
    for i in range(64):
        rows, cols = torch.nonzero(y[i, 0] == 128, as_tuple=True)
        assert len(rows) == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)  # a rectangle
        assert rows.max() - rows.min() + 1 <= 6 and cols.max() - cols.min() + 1 <= 6
    assert (y == 128).sum(dim=(1, 2, 3)).max() == 36  # unclipped squares are 6 x 6


# --- magnitude tables ----------------------------------------------------------------------------------

def test_augreg_levels_past_ten():
    level = v(10, 15, 20)
    assert P.AUGREG["Rotate"].value(level, 32).tolist() == [30, 45, 60]
    assert P.AUGREG["ShearX"].value(level, 32).tolist() == pytest.approx([0.3, 0.45, 0.6])
    assert P.AUGREG["Color"].value(level, 32).tolist() == pytest.approx([1.9, 2.8, 3.7])
    assert P.AUGREG["Posterize"].value(level, 32).tolist() == [4, 6, 8]
    assert P.AUGREG["TranslateX"].value(v(10), 224).item() == pytest.approx(100.8)
    assert P.AUGREG["Cutout"].value(v(10), 224).item() == 40
    assert len(P.AUGREG) == 16 and len(P.TIMM) == 15 and "Cutout" not in P.TIMM


def test_timm_increasing_levels():
    assert P.TIMM["PosterizeIncreasing"].value(v(0, 9, 10), 32).tolist() == [4, 1, 0]
    assert P.TIMM["SolarizeIncreasing"].value(v(0, 10), 32).tolist() == [256, 0]
    # enhance ops: factor 1 + signed level/10 * 0.9
    x = t([100], (1, 1, 1, 1))
    entry = P.TIMM["BrightnessIncreasing"]
    assert entry.signed and entry.fn(x, entry.value(v(10), 32), G).item() == 190


def test_autoaugment_bins():
    assert [P.AUTO["Posterize"].value(v(b), 32).item() for b in range(10)] == [8, 8, 7, 7, 6, 6, 5, 5, 4, 4]
    assert P.AUTO["Solarize"].value(v(0, 9), 32).tolist() == [255, 0]
    assert P.AUTO["TranslateX"].value(v(9), 331).item() == pytest.approx(150)
    assert P.AUTO["Rotate"].value(v(9), 32).item() == pytest.approx(30)


def test_policies_are_complete():
    for name, subs in P.POLICIES.items():
        assert len(subs) == 25, name
        for sub in subs:
            for op, prob, mag in sub:
                assert op in P.AUTO and 0 <= prob <= 1 and 0 <= mag <= 9
    assert P.POLICIES["cifar10"][0] == (("Invert", 0.1, 0), ("Contrast", 0.2, 6))
    assert P.POLICIES["svhn"][-1] == (("ShearX", 0.7, 2), ("Invert", 0.1, 0))


# --- batched, per-image application ----------------------------------------------------------------------

def test_apply_ops_groups_match_single_image_application():
    x = torch.randint(0, 256, (12, 3, 8, 8), generator=torch.Generator().manual_seed(3)).float()
    names = ["Posterize", "Solarize", "Equalize", "Color"]  # unsigned ops: no random sign
    op_index = torch.tensor([0, 1, 2, 3] * 3)
    level = torch.linspace(2, 9, 12)
    apply = torch.tensor([True] * 10 + [False] * 2)
    y = P.apply_ops(x, names, P.AUGREG, op_index, level, apply, torch.Generator().manual_seed(0))
    for i in range(12):
        entry = P.AUGREG[names[op_index[i]]]
        arg = entry.value(level[i:i + 1], 8) if entry.value else v(0)
        want = entry.fn(x[i:i + 1], arg, G)[0] if apply[i] else x[i]
        assert torch.equal(y[i], want), i


def test_rand_augment_chooses_per_image():
    x = torch.randint(0, 256, (1, 3, 16, 16), generator=torch.Generator().manual_seed(4)).float().expand(64, -1, -1, -1)
    y = P.rand_augment(x, 2, 9, torch.Generator().manual_seed(0), "augreg")
    distinct = {tuple(img.flatten()[:64].tolist()) for img in y}
    assert len(distinct) > 20
    assert (y == y.round()).all() and y.min() >= 0 and y.max() <= 255


def test_rand_augment_probability_zero_and_levels(monkeypatch):
    x = torch.rand(8, 3, 8, 8) * 255
    assert torch.equal(P.rand_augment(x.floor(), 2, 9, G, "augreg", prob=0.0), x.floor())
    seen = []
    real = P.apply_ops
    def spy(x, names, table, op_index, level, apply, gen):
        seen.append(level.clone())
        return real(x, names, table, op_index, level, apply, gen)

    monkeypatch.setattr(P, "apply_ops", spy)
    P.rand_augment(x, 2, 20, G, "augreg")
    assert all((lv == 20).all() for lv in seen)  # magnitude 20 is not clipped to 10
    seen.clear()
    P.rand_augment(x, 1, 9, G, "timm", mstd=0.5)
    assert seen[0].std() > 0 and seen[0].min() >= 0 and seen[0].max() <= 10


def test_auto_augment_per_image_and_valid():
    x = torch.randint(0, 256, (1, 3, 16, 16), generator=torch.Generator().manual_seed(5)).float().expand(64, -1, -1, -1)
    for policy in P.POLICIES:
        y = P.auto_augment(x, policy, torch.Generator().manual_seed(1))
        assert len({tuple(img.flatten()[:64].tolist()) for img in y}) > 10
        assert (y == y.round()).all() and y.min() >= 0 and y.max() <= 255
