"""The training loop on the embedded digits with a tiny spec: loss goes down, a seed reproduces a
run, an interrupted run resumes exactly, a NaN stops the run keeping the last good checkpoint,
distillation steps, fine-tuning to a new resolution and class count, and the train/eval CLI."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from train_helpers import write_folder, write_specs

import vitgraph
from vitgraph.backends.torch_backend import checkpoint_dict, read_checkpoint, save_atomic
from vitgraph.cli import main
from vitgraph.data.pipeline import Augmenter
from vitgraph.diagnostics import UserError
from vitgraph.train import loop
from vitgraph.train.finetune import load_pretrained
from vitgraph.train.optim import build_optimizer, build_scheduler
from vitgraph.train.recipes import load_recipe

FAST = {"warmup_epochs": "0", "lr": "3e-3", "batch_size": "128"}
# every random stream in use: crop, RandAugment, Mixup, stochastic depth
RANDOM = {**FAST, "randaug_n": "1", "randaug_m": "5", "mixup_alpha": "0.2", "spec.drop_path": "0.1"}


@pytest.fixture(scope="module")
def specs(tmp_path_factory):
    return write_specs(tmp_path_factory.mktemp("specs"))


def train(spec, out, epochs=1, overrides=FAST, **kw):
    return loop.run(str(spec), "digits", "digits", epochs=epochs, out=out, overrides=overrides, progress=False,
                    device="cpu", **kw)


def weights(path):
    return read_checkpoint(path)["model"]


def test_loss_decreases_and_run_folder(specs, tmp_path):
    result = train(specs[0], tmp_path / "run", epochs=3)
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    losses = [float(r["train_loss"]) for r in rows]
    accuracy = [float(r["train_acc"]) for r in rows]
    assert len(rows) == 3 and losses[0] > losses[1] > losses[2] and accuracy[2] > accuracy[0]
    assert 0 < result["top1"] <= result["top5"] and result["train_img_per_s"] > 0
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["recipe"]["name"] == "digits" and config["recipe"]["lr"] == 3e-3
    assert config["spec"]["params"]["image"] == 16 and config["spec"]["params"]["classes"] == 10
    assert config["dataset"]["train"] == 1437 and config["steps_per_epoch"] == 1437 // 128
    assert config["dataset"]["class_names"] == [str(d) for d in range(10)]  # what `vitgraph predict` prints
    ck = read_checkpoint(tmp_path / "run" / "last.pt")
    assert ck["epoch"] == 3 and set(ck) >= {"model", "optimizer", "scheduler", "ema", "spec", "recipe", "history"}
    assert ck["spec"]["hash"] == config["spec"]["hash"] and "tiny" in ck["spec"]["sources"][ck["spec"]["path"]]
    assert json.loads((tmp_path / "run" / "results.json").read_text())["top1"] == result["top1"]


def test_same_seed_same_weights(specs, tmp_path):
    a = train(specs[0], tmp_path / "a", overrides=RANDOM, seed=3)
    b = train(specs[0], tmp_path / "b", overrides=RANDOM, seed=3)
    wa, wb = weights(tmp_path / "a" / "last.pt"), weights(tmp_path / "b" / "last.pt")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert a["train_loss"] == b["train_loss"] and a["top1"] == b["top1"]
    c = train(specs[0], tmp_path / "c", overrides=RANDOM, seed=4)
    wc = weights(tmp_path / "c" / "last.pt")
    assert not torch.equal(wa["head.weight"], wc["head.weight"]) and c["train_loss"] != a["train_loss"]


def test_resume_after_interruption_matches_an_uninterrupted_run(specs, tmp_path, monkeypatch):
    full = train(specs[0], tmp_path / "full", epochs=2, overrides=RANDOM)
    real_step, calls = loop.train_step, []

    def dies_in_epoch_two(*args):
        calls.append(1)
        if len(calls) == 1437 // 128 + 3:  # the third step of the second epoch
            raise KeyboardInterrupt
        return real_step(*args)

    monkeypatch.setattr(loop, "train_step", dies_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        train(specs[0], tmp_path / "cut", epochs=2, overrides=RANDOM)
    monkeypatch.setattr(loop, "train_step", real_step)
    assert read_checkpoint(tmp_path / "cut" / "last.pt")["epoch"] == 1
    with pytest.raises(UserError, match="already holds a run"):
        train(specs[0], tmp_path / "cut", epochs=2, overrides=RANDOM)
    with pytest.raises(UserError, match="other settings .*lr"):
        train(specs[0], tmp_path / "cut", epochs=2, overrides={**RANDOM, "lr": "1e-3"}, resume=True)
    resumed = train(specs[0], tmp_path / "cut", epochs=2, overrides=RANDOM, resume=True)
    wf, wr = weights(tmp_path / "full" / "last.pt"), weights(tmp_path / "cut" / "last.pt")
    assert all(torch.equal(wf[k], wr[k]) for k in wf)
    assert resumed["top1"] == full["top1"] and resumed["epochs"] == 2
    rows = list(csv.DictReader(open(tmp_path / "cut" / "metrics.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2"]


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(specs, tmp_path, monkeypatch):
    real_loss, calls = loop.training_loss, []

    def goes_nan(*args, **kwargs):
        calls.append(1)
        loss = real_loss(*args, **kwargs)
        return loss * float("nan") if len(calls) > 1437 // 128 + 1 else loss

    monkeypatch.setattr(loop, "training_loss", goes_nan)
    with pytest.raises(UserError, match="NaN or infinite in epoch 2") as e:
        train(specs[0], tmp_path / "run", epochs=3)
    assert "--resume" in e.value.hint
    ck = read_checkpoint(tmp_path / "run" / "last.pt")
    assert ck["epoch"] == 1 and all(torch.isfinite(v).all() for v in ck["model"].values())


def _teacher_checkpoint(spec, path, **overrides):
    graph = vitgraph.compile(spec, **overrides)
    torch.manual_seed(11)
    save_atomic(checkpoint_dict(vitgraph.to_torch(graph), graph), path)
    return path


def test_teacher_sees_the_same_augmented_batch(specs):
    student_graph = vitgraph.compile(specs[1])
    student, teacher = vitgraph.to_torch(student_graph), vitgraph.to_torch(vitgraph.compile(specs[0])).eval()
    seen = {}
    student.register_forward_pre_hook(lambda m, a: seen.__setitem__("student", a[0]))
    teacher.register_forward_pre_hook(lambda m, a: seen.__setitem__("teacher", a[0]))
    recipe = load_recipe("digits", {"distill": "hard"})
    opt = build_optimizer(student, recipe, 1e-3)
    step = loop.Step(student, student, opt, build_scheduler(opt, recipe, 1e-3, 10, 1), recipe,
                     Augmenter(recipe, "digits", (16, 16), 3, 10, (0.5,), (0.5,), torch.device("cpu")),
                     None, teacher, None, loop.nullcontext)
    before = student.head_dist.weight.clone()
    x, t = torch.randn(4, 3, 16, 16), torch.eye(10)[:4]
    loss, correct = loop.train_step(step, x, t)
    assert torch.equal(seen["student"], seen["teacher"]) and torch.isfinite(loss)
    assert not torch.equal(before, student.head_dist.weight)  # the distillation head learns


@pytest.mark.parametrize("mode", ["soft", "hard", "kd"])
def test_training_with_a_teacher(specs, tmp_path, mode):
    teacher = _teacher_checkpoint(specs[0], tmp_path / "teacher.pt", image=16, patch=4)
    student = specs[1] if mode != "kd" else specs[0]
    result = train(student, tmp_path / mode, teacher=str(specs[0]), teacher_weights=str(teacher), distill=mode)
    assert np.isfinite(result["train_loss"])
    config = json.loads((tmp_path / mode / "config.json").read_text())
    assert config["recipe"]["distill"] == mode and config["teacher"]["weights"] == str(teacher)


def test_distillation_needs_a_teacher(specs, tmp_path):
    with pytest.raises(UserError, match="no teacher"):
        train(specs[1], tmp_path / "x", distill="soft")
    with pytest.raises(UserError, match="needs its weights"):
        train(specs[1], tmp_path / "y", distill="soft", teacher=str(specs[0]))


def test_finetune_new_resolution_and_classes(specs, tmp_path):
    source_graph = vitgraph.compile(specs[0], image=16, patch=4, classes=100)  # 4x4 grid, 100 classes
    torch.manual_seed(5)
    source = vitgraph.to_torch(source_graph)
    save_atomic(checkpoint_dict(source, source_graph), tmp_path / "src.pt")
    target_graph = vitgraph.compile(specs[0], image=32, patch=4, classes=7)  # 8x8 grid, 7 classes
    target = vitgraph.to_torch(target_graph)
    fresh_head = target.head.weight.clone()
    notes = load_pretrained(target, target_graph, str(tmp_path / "src.pt"))
    assert any("resampled pos_embed" in n for n in notes) and any("replaced head.weight" in n for n in notes)
    assert target.pos_embed.shape == (1, 65, 32)
    assert torch.equal(target.pos_embed[:, 0], source.pos_embed[:, 0])  # cls row kept
    key = "blocks.0.attn.qkv.weight"
    assert torch.equal(target.state_dict()[key], source.state_dict()[key])
    assert torch.equal(target.head.weight, fresh_head) and target.head.weight.shape == (7, 32)
    # a timm-style bare state dict at the same grid loads unchanged
    bare = {k: v.clone() for k, v in vitgraph.to_torch(target_graph).state_dict().items()}
    assert load_pretrained(target, target_graph, bare) == [] and torch.equal(target.pos_embed, bare["pos_embed"])


def test_train_from_weights(specs, tmp_path):
    _teacher_checkpoint(specs[0], tmp_path / "src.pt", image=8, patch=4, classes=100)
    result = train(specs[0], tmp_path / "run", weights=str(tmp_path / "src.pt"), spec_overrides={"image": "16"})
    notes = json.loads((tmp_path / "run" / "config.json").read_text())["notes"]
    assert any("resampled pos_embed" in n for n in notes) and any("replaced head.bias" in n for n in notes)
    assert result["top1"] > 0
    # without --set, the checkpoint's 8 pixels win over the digits recipe's 16: nothing is resampled
    train(specs[0], tmp_path / "same", weights=str(tmp_path / "src.pt"))
    config = json.loads((tmp_path / "same" / "config.json").read_text())
    assert config["spec"]["params"]["image"] == 8 and not any("resampled" in n for n in config["notes"])


def test_cli_train_and_eval(specs, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", str(specs[0]), "--dataset", "digits", "--epochs", "1", "--out", str(out), "--quiet",
                 "--device", "cpu", "--recipe-set", "warmup_epochs=0", "lr=3e-3", "--set", "image=16"])
    assert code == 0
    printed = capsys.readouterr().out
    result = json.loads(printed[printed.index("{"):])
    assert {"top1", "top5", "train_img_per_s", "run_dir"} <= set(result)
    assert main(["eval", str(specs[0]), "--weights", str(out / "best.pt"), "--dataset", "digits",
                 "--device", "cpu", "--set", "image=16"]) == 0
    line = capsys.readouterr().out
    assert f"top-1 {result['top1']:.2f}%" in line and "top-5" in line and "(360 images)" in line


def test_cli_errors_are_one_message(specs, tmp_path, capsys):
    assert main(["train", str(specs[0]), "--dataset", "cifar10", "--data-root", str(tmp_path), "--no-download",
                 "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: dataset 'cifar10' not found") and "hint:" in err and "Traceback" not in err
    assert main(["train", str(specs[0]), "--recipe-set", "lr=fast", "--out", str(tmp_path / "r")]) == 2
    assert "lr expects float" in capsys.readouterr().err


def test_streaming_image_folder_training(specs, tmp_path):
    write_folder(tmp_path / "shapes", splits=("train", "test"), classes=("a", "b", "c"), per_class=8, size=12)
    result = loop.run(str(specs[0]), str(tmp_path / "shapes"), "small-datasets", epochs=1, out=tmp_path / "run",
                      overrides={"batch_size": "8", "warmup_epochs": "0"}, data_mode="stream", workers=0,
                      progress=False, device="cpu")
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["dataset"]["in_memory"] is False and config["spec"]["classes"] == 3
    assert config["steps_per_epoch"] == 24 * 3 // 8  # repeated augmentation x3
    assert 0 <= result["top1"] <= 100


def test_ema_weights_are_tracked_and_evaluated(specs, tmp_path):
    result = train(specs[0], tmp_path / "run", overrides={**FAST, "ema_decay": "0.9"})
    assert "ema_top1" in result
    ck = read_checkpoint(tmp_path / "run" / "last.pt")
    assert not torch.equal(ck["ema"]["head.weight"], ck["model"]["head.weight"])
    m = loop.evaluate(str(specs[0]), str(tmp_path / "run" / "last.pt"), "digits", ema=True, device="cpu")
    assert m["top1"] == pytest.approx(result["ema_top1"])


def test_bf16_autocast_trains(specs, tmp_path):
    result = train(specs[0], tmp_path / "run", bf16=True)
    assert np.isfinite(result["train_loss"])


def test_resume_after_kill(specs, tmp_path):
    """SIGKILL a CLI run once its first checkpoint exists; --resume finishes it with contiguous epochs."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "vitgraph.cli", "train", str(specs[0]), "--dataset", "digits", "--out", str(out),
           "--quiet", "--device", "cpu", "--threads", "1", "--recipe-set", "warmup_epochs=0"]
    proc = subprocess.Popen([*cmd, "--epochs", "200"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (out / "last.pt").is_file() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    done = read_checkpoint(out / "last.pt")["epoch"]
    assert 1 <= done < 200
    subprocess.run([*cmd, "--epochs", str(done + 2), "--resume"], check=True, stdout=subprocess.DEVNULL)
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == list(range(1, done + 3))
    assert read_checkpoint(out / "last.pt")["epoch"] == done + 2


def test_max_steps_stops_inside_an_epoch_and_ends_the_schedule(specs, tmp_path, capsys):
    result = train(specs[0], tmp_path / "run", epochs=5, max_steps=14)  # 11 steps per epoch at batch 128
    assert (result["epochs"], result["steps"], result["stopped_by"]) == (2, 14, "max_steps")
    ck = read_checkpoint(tmp_path / "run" / "last.pt")
    assert ck["steps"] == 14 and ck["scheduler"]["last_epoch"] == 14
    recipe = load_recipe("digits", FAST)
    assert ck["optimizer"]["param_groups"][0]["lr"] == pytest.approx(recipe.min_lr)  # the cosine ended at step 14
    assert "stopped inside epoch 2, after 14 steps in all: --max-steps 14" in capsys.readouterr().out
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    assert [(r["steps"], r["cut"]) for r in rows] == [("11", "0.0"), ("14", "1.0")]


def test_minutes_is_a_wall_clock_stop_inside_the_first_epoch(specs, tmp_path):
    result = train(specs[0], tmp_path / "run", epochs=3, minutes=1e-6)  # spent after the first step
    assert (result["epochs"], result["steps"], result["stopped_by"]) == (1, 1, "minutes")
    assert read_checkpoint(tmp_path / "run" / "last.pt")["epoch"] == 1


def test_subset_is_stratified_seeded_and_checked_on_resume(specs, tmp_path):
    from vitgraph.data.datasets import load_subset

    a, b = load_subset("digits", 200, 7), load_subset("digits", 200, 7)
    assert np.array_equal(a.train.images, b.train.images) and len(a.test) == 360  # the test split stays whole
    assert np.bincount(a.train.labels).tolist() == [20] * 10
    assert not np.array_equal(a.train.images, load_subset("digits", 200, 8).train.images)
    result = train(specs[0], tmp_path / "run", subset=256)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["dataset"]["train"] == 256 and config["steps_per_epoch"] == 2 and result["subset"] == 256
    with pytest.raises(UserError, match="subset: 256 -> 512"):
        train(specs[0], tmp_path / "run", epochs=2, subset=512, resume=True)
    with pytest.raises(UserError, match="has only 1,437 training images"):
        train(specs[0], tmp_path / "big", subset=5000)


def test_checkpoint_describes_itself(specs, tmp_path):
    train(specs[0], tmp_path / "run", max_steps=3, spec_overrides={"image": "12"})
    ck = read_checkpoint(tmp_path / "run" / "best.pt")
    assert ck["dataset"]["class_names"] == [str(d) for d in range(10)] and ck["dataset"]["argument"] == "digits"
    assert len(ck["dataset"]["mean"]) == 1 and ck["overrides"] == {"image": "12"}
    assert ck["recipe"]["name"] == "digits" and ck["spec"]["params"]["image"] == 12
    assert ck["summary"]["trained"] and ck["summary"]["steps"] == 3 and ck["summary"]["dataset"] == "digits"


def test_the_run_folder_is_named_before_the_data_loads(specs, tmp_path, capsys):
    train(specs[0], tmp_path / "run", max_steps=1)
    assert capsys.readouterr().out.startswith(f"run folder: {tmp_path / 'run'}\n")


def test_checkpoint_needs_nothing_restated(specs, tmp_path, capsys):
    """A 12-pixel run: eval, build (torch, safetensors, onnx) and train --weights from its
    checkpoint alone, with neither SPEC nor --set."""
    run = tmp_path / "run"
    assert main(["train", str(specs[0]), "--set", "image=12", "--max-steps", "3", "--out", str(run), "--quiet",
                 "--recipe-set", "batch_size=128"]) == 0
    capsys.readouterr()
    assert main(["eval", "--weights", str(run / "best.pt")]) == 0
    evaluated = capsys.readouterr().out
    assert evaluated.startswith("digits: top-1 ")
    st = tmp_path / "m.safetensors"
    assert main(["build", "--weights", str(run / "best.pt"), "-o", str(st)]) == 0
    assert "input    3x12x12 -> 10 classes" in capsys.readouterr().out
    assert main(["eval", "--weights", str(st)]) == 0 and capsys.readouterr().out == evaluated
    assert main(["build", "--weights", str(st), "--backend", "onnx", "-o", str(tmp_path / "m.onnx")]) == 0
    assert "trained on digits for 1 epoch (3 steps" in capsys.readouterr().out
    assert main(["train", "--weights", str(st), "--max-steps", "2", "--out", str(tmp_path / "more"), "--quiet"]) == 0
    assert read_checkpoint(tmp_path / "more" / "last.pt")["spec"]["params"]["image"] == 12


def test_missing_inputs_are_reported_before_any_work(specs, tmp_path, capsys):
    status = main(["train", str(specs[0]), "--weights", str(tmp_path / "w.pt"), "--teacher", str(specs[1]),
                   "--teacher-weights", str(tmp_path / "t.pt"), "--dataset", "cifar10",
                   "--data-root", str(tmp_path / "nowhere"), "--no-download"])
    err = capsys.readouterr().err
    assert status == 1 and err.startswith(f"error: not found: --weights {tmp_path / 'w.pt'}, --teacher-weights ")
    assert "cifar10" not in err  # nothing was loaded
