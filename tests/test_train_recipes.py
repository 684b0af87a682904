"""Every recipe file resolves to the values of docs/PAPERS.md; overrides are typed and every value is
range-checked when the recipe is resolved."""
from __future__ import annotations

from dataclasses import fields

import pytest

from vitgraph.cli import main
from vitgraph.diagnostics import UserError
from vitgraph.train.recipes import RANGES, Recipe, load_recipe, recipe_names

AUGREG_PRESETS = {"none": (0, 0, 0.0), "light1": (2, 0, 0.0), "light2": (2, 10, 0.2), "medium1": (2, 15, 0.2),
                  "medium2": (2, 15, 0.5), "strong1": (2, 20, 0.5), "strong2": (2, 20, 0.8)}


def test_all_recipes_present_and_valid():
    names = recipe_names()
    for name in (*AUGREG_PRESETS, "augreg", "deit", "small-datasets", "binaryvit", "digits"):
        assert name in names
    for name in names:
        assert load_recipe(name).description


@pytest.mark.parametrize("name", sorted(AUGREG_PRESETS))
def test_augreg_presets(name):
    r = load_recipe(name)
    n, m, alpha = AUGREG_PRESETS[name]
    assert (r.randaug_n, r.randaug_m, r.mixup_alpha) == (n, m, alpha)
    assert r.randaug_variant == "augreg" and r.cutmix_alpha == 0
    # the shared AugReg base
    assert (r.batch_size, r.lr, r.warmup_steps, r.grad_clip, r.loss, r.crop, r.flip) == \
        (4096, 1e-3, 10_000, 1.0, "sigmoid", "rrc", True)
    assert r.weight_decay in (0.1, 0.03) and r.spec["drop_path"] in (0.0, 0.1)


def test_deit():
    r = load_recipe("deit")
    assert (r.optimizer, r.lr, r.lr_base_batch, r.weight_decay, r.epochs, r.warmup_epochs, r.min_lr) == \
        ("adamw", 5e-4, 512, 0.05, 300, 5, 1e-5)
    assert r.effective_lr() == pytest.approx(5e-4 * r.batch_size / 512)
    assert (r.label_smoothing, r.randaug_n, r.randaug_m, r.randaug_mstd, r.randaug_variant) == (0.1, 2, 9, 0.5, "timm")
    assert (r.erase_prob, r.erase_mode, r.mixup_alpha, r.cutmix_alpha, r.mix_switch_prob) == \
        (0.25, "pixel", 0.8, 1.0, 0.5)
    assert (r.repeats, r.repeats_truncate, r.ema_decay, r.eval_crop_pct) == (3, True, 0.99996, 0.875)
    assert (r.distill_alpha, r.distill_tau, r.spec["drop_path"]) == (0.5, 1.0, 0.1)


def test_small_datasets():
    r = load_recipe("small-datasets")
    assert (r.optimizer, r.lr, r.weight_decay, r.batch_size, r.epochs, r.warmup_epochs, r.min_lr, r.schedule) == \
        ("adamw", 1e-3, 0.05, 128, 100, 10, 1e-6, "cosine")
    assert (r.label_smoothing, r.autoaugment, r.erase_prob, r.crop, r.crop_padding, r.flip) == \
        (0.1, "auto", 0.25, "pad", 4, True)
    assert (r.mixup_alpha, r.cutmix_alpha, r.mix_prob, r.mix_switch_prob) == (1.0, 1.0, 0.5, 0.5)
    assert (r.repeats, r.repeats_truncate, r.spec["drop_path"], r.no_decay_1d) == (3, False, 0.1, False)


def test_binaryvit():
    r = load_recipe("binaryvit")
    assert (r.optimizer, r.lr, r.lr_base_batch, r.weight_decay, r.schedule, r.warmup_epochs) == \
        ("adamw", 5e-4, 512, 0.0, "cosine", 0)
    assert (r.distill, r.distill_tau, r.spec["drop_path"], r.crop, r.flip) == ("kd", 1.0, 0.0, "rrc", True)
    assert (r.randaug_n, r.autoaugment, r.erase_prob, r.mixup_alpha, r.cutmix_alpha) == (0, "", 0.0, 0.0, 0.0)
    assert r.effective_lr() == pytest.approx(5e-4)


def test_overrides_are_typed():
    r = load_recipe("deit", {"lr": "3e-4", "epochs": "5", "flip": "false", "spec.drop_path": "0.2",
                             "randaug_variant": "augreg"})
    assert (r.lr, r.epochs, r.flip, r.spec["drop_path"], r.randaug_variant) == (3e-4, 5, False, 0.2, "augreg")
    assert load_recipe("deit", {"epochs": 7}).epochs == 7


@pytest.mark.parametrize("overrides,message", [
    ({"lrr": "1"}, "unknown recipe key 'lrr'; did you mean 'lr'"),
    ({"epochs": "many"}, "epochs expects int"),
    ({"epochs": "2.5"}, "epochs expects int"),
    ({"crop": "square"}, "crop = 'square'; expected one of"),
    ({"flip": "maybe"}, "flip expects bool"),
])
def test_bad_overrides(overrides, message):
    with pytest.raises(UserError, match=message) as e:
        load_recipe("small-datasets", overrides)
    assert e.value.status == 2


@pytest.mark.parametrize("key,value,allowed", [
    ("eval_crop_pct", "0", "0 < eval_crop_pct <= 1"),
    ("eval_crop_pct", "1.5", "0 < eval_crop_pct <= 1"),
    ("lr", "nan", "lr > 0"),
    ("lr", "inf", "lr > 0"),
    ("lr", "-1", "lr > 0"),
    ("momentum", "-5", "0 <= momentum < 1"),
    ("epochs", "-3", "epochs >= 1"),
    ("batch_size", "0", "batch_size >= 1"),
    ("weight_decay", "-0.1", "weight_decay >= 0"),
    ("warmup_epochs", "-1", "warmup_epochs >= 0"),
    ("label_smoothing", "1", "0 <= label_smoothing < 1"),
    ("mix_prob", "1.5", "0 <= mix_prob <= 1"),
    ("ema_decay", "1", "0 <= ema_decay < 1"),
    ("rrc_scale_min", "0", "0 < rrc_scale_min <= 1"),
    ("erase_area_max", "0.01", "0.02 <= erase_area_max <= 1"),
    ("distill_tau", "0", "distill_tau > 0"),
    ("mixup_alpha", "nan", "mixup_alpha >= 0"),
])
def test_values_out_of_range_name_the_key_the_value_and_the_range(key, value, allowed):
    with pytest.raises(UserError) as e:
        load_recipe("deit", {key: value})
    shown = float(value) if key not in ("epochs", "batch_size") else int(value)
    assert e.value.message == f"recipe deit: {key} = {shown} is out of range; expected {allowed}"
    assert e.value.status == 2


def test_every_number_of_a_recipe_has_a_range():
    numbers = {f.name for f in fields(Recipe) if f.type in ("int", "float")}
    assert numbers == set(RANGES)


def test_a_bad_value_is_refused_before_any_data_is_read(tmp_path, capsys):
    """eval_crop_pct is used only when evaluating; it used to fail after a whole epoch."""
    code = main(["train", "specs/vit.vg", "--dataset", "cifar10", "--data-root", str(tmp_path), "--no-download",
                 "--recipe-set", "eval_crop_pct=0", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: recipe small-datasets: eval_crop_pct = 0.0 is out of range")
    assert "not found" not in err and not (tmp_path / "run").exists()


def test_unknown_recipe_suggests():
    with pytest.raises(UserError, match="did you mean 'deit'"):
        load_recipe("deitt")


def test_recipe_file_path_and_extends(tmp_path):
    f = tmp_path / "mine.toml"
    f.write_text('extends = "medium2"\nepochs = 3\n[spec]\ndrop_path = 0.05\n')
    r = load_recipe(str(f))
    assert (r.name, r.epochs, r.randaug_m, r.mixup_alpha, r.spec["drop_path"]) == ("mine", 3, 15, 0.5, 0.05)
