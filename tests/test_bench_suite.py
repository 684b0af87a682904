"""Suite files: every suite parses, every run compiles, overrides layer as documented,
the command line narrows a suite, and shards partition its runs."""
from __future__ import annotations

from pathlib import Path

import pytest

import vitgraph
from vitgraph.benchmarks import suite as S
from vitgraph.diagnostics import UserError

from spec_helpers import ROOT

SPECS = ROOT / "specs"
SUITES = S.available_suites()


def test_the_promised_suites_exist():
    assert {"smoke", "small-datasets", "large", "binaryvit-ablation", "spt-lsa-ablation"} <= set(SUITES)


@pytest.mark.parametrize("name", SUITES)
def test_every_run_of_every_suite_compiles(name):
    """Every (spec, overrides) compiles as the harness trains it (recipe [spec] values, then the
    suite's overrides), every recipe exists, and every teacher is an earlier run of the suite."""
    from vitgraph.benchmarks.harness import plan

    suite = S.load_suite(name, SPECS)
    assert suite.runs and len({r.id for r in suite.runs}) == len(suite.runs)
    for p in plan(suite.runs):
        for key, value in p.run.overrides.items():
            assert p.graph.spec.params[key] == value, (p.run.id, key)
        assert p.graph.spec.hash == vitgraph.compile(p.run.spec_path, **p.graph.spec.params).spec.hash
        assert p.run.epochs or p.run.minutes
        if p.run.teacher:
            order = [r.id for r in suite.runs]
            teacher = f"{p.run.teacher}@{p.run.dataset}"
            assert teacher in order and order.index(teacher) < order.index(p.run.id), p.run.id


def test_suites_hold_what_the_issue_lists():
    small = S.load_suite("small-datasets", SPECS)
    assert small.datasets == ["cifar10", "cifar100", "svhn", "tiny-imagenet"]
    assert set(small.specs) == {"vit", "sl_vit", "pit", "sl_pit", "swin", "sl_swin", "cait", "sl_cait", "t2t",
                                "sl_t2t", "deit_tiny", "binary_deit_small", "binaryvit"}
    assert S.load_suite("spt-lsa-ablation", SPECS).specs == ["vit", "vit_spt", "vit_lsa", "sl_vit", "swin", "sl_swin"]
    large = S.load_suite("large", SPECS)
    assert {"deit_base_distilled", "binary_deit_small_affine", "binaryvit_star"} <= set(large.specs)
    smoke = S.load_suite("smoke", SPECS)
    assert smoke.datasets == ["digits"] and all(r.device == "cpu" for r in smoke.runs)


def test_classes_follow_the_dataset():
    runs = {r.id: r for r in S.load_suite("small-datasets", SPECS).runs}
    assert runs["vit@cifar100"].overrides["classes"] == 100
    assert runs["pit@tiny-imagenet"].overrides == {"image": 64, "classes": 200, "patch": 4}
    assert runs["sl_swin@tiny-imagenet"].overrides == {"image": 64, "classes": 200, "patch": 4}
    ablation = {r.id: r for r in S.load_suite("spt-lsa-ablation", SPECS).runs}
    assert ablation["swin@cifar10"].overrides == {"image": 32, "patch": 2, "classes": 10}
    assert runs["sl_cait@tiny-imagenet"].overrides == {"image": 64, "classes": 200, "patch": 8}
    assert runs["binaryvit@svhn"].overrides["image"] == 160


def _suite(tmp_path: Path, text: str) -> S.Suite:
    path = tmp_path / "mine.toml"
    path.write_text(text)
    return S.load_suite(str(path), SPECS)


LAYERED = """
recipe = "r"
specs = ["vit", "pit"]
datasets = ["a", "b"]
[budget]
epochs = 3
[set]
image = 32
patch = 8
[spec.pit]
set = { patch = 4 }
recipe = "other"
[dataset.b]
set = { image = 64 }
epochs = 5
[dataset.b.spec.pit]
set = { image = 48, patch = 2 }
minutes = 1.5
"""


def test_overrides_layer_from_general_to_particular(tmp_path):
    runs = {r.id: r for r in _suite(tmp_path, LAYERED).runs}
    assert [r.id for r in _suite(tmp_path, LAYERED).runs] == ["vit@a", "pit@a", "vit@b", "pit@b"]
    assert runs["vit@a"].overrides == {"image": 32, "patch": 8}
    assert runs["pit@a"].overrides == {"image": 32, "patch": 4} and runs["pit@a"].recipe == "other"
    assert runs["vit@b"].overrides == {"image": 64, "patch": 8} and runs["vit@b"].epochs == 5
    assert runs["pit@b"].overrides == {"image": 48, "patch": 2}
    assert (runs["pit@b"].epochs, runs["pit@b"].minutes) == (5, 1.5)
    assert runs["vit@a"].recipe == "r" and runs["vit@a"].epochs == 3


@pytest.mark.parametrize("text, message", [
    ('recipe = "r"\nspecs = ["vit"]\ndatasets = ["a"]\nbudgett = 1\n', "unknown key 'budgett'; did you mean 'budget'?"),
    ('recipe = "r"\nspecs = ["vit"]\ndatasets = ["a"]\n', "no budget for vit@a"),
    ('recipe = "r"\nspecs = ["vit", "pit"]\ndatasets = ["a"]\n[spec.vit]\nepochs = 2\n', "no budget for pit@a"),
    ('recipe = "r"\nspecs = ["vit"]\ndatasets = ["a"]\n[budget]\nepochs = 1.5\n', "epochs: expected a whole number, found 1.5"),
    ('specs = ["vit"]\ndatasets = ["a"]\n[budget]\nepochs = 1\n', "missing 'recipe'"),
    ('recipe = "r"\nspecs = ["vitt"]\ndatasets = ["a"]\n[budget]\nepochs = 1\n', "did you mean 'vit'?"),
    ('recipe = "r"\nspecs = ["vit"]\ndatasets = ["a"]\n[budget]\nepochs = -1\n', "expected a positive number"),
    ('recipe = "r"\nspecs = ["vit"]\ndatasets = ["a"]\n[budget]\nepochs = 1\n[dataset.b]\nset = {}\n',
     "unknown key 'b'"),
    ('recipe = "r"\nspecs = ["vit"]\ndatasets = ["a"]\n[budget]\nepochs = 1\n[measure]\nbatch = true\n',
     "expected int"),
    ('recipe = "r"\nspecs = ["vit", "vit"]\ndatasets = ["a"]\n[budget]\nepochs = 1\n', "names repeat"),
    ('recipe = "r\n', "mine.toml"),
])
def test_bad_suites_get_one_message(tmp_path, text, message):
    with pytest.raises(UserError) as e:
        _suite(tmp_path, text)
    assert message in e.value.message


def test_unknown_suite_name_suggests():
    with pytest.raises(UserError) as e:
        S.load_suite("smok", SPECS)
    assert "did you mean 'smoke'?" in e.value.message


def test_narrowing(tmp_path):
    suite = _suite(tmp_path, LAYERED)
    small = S.narrow(suite, specs=["pit"], datasets=["b"], epochs=2, overrides={"classes": "7"})
    assert [r.id for r in small.runs] == ["pit@b"]
    only = small.runs[0]
    assert (only.epochs, only.minutes) == (2, None)
    assert only.overrides == {"image": 48, "patch": 2, "classes": "7"}
    with pytest.raises(UserError, match="has no spec 'pitt'; did you mean 'pit'"):
        S.narrow(suite, specs=["pitt"])
    with pytest.raises(UserError, match="--epochs 0: expected a number above 0"):
        S.narrow(suite, epochs=0)


def test_seeds_repeat_every_run_and_limits_enter_the_digest(tmp_path):
    suite = _suite(tmp_path, LAYERED)
    three = S.narrow(suite, specs=["pit"], datasets=["b"], seeds=3, max_steps=40, subset=500)
    assert [(r.id, r.seed, r.max_steps, r.subset, r.epochs) for r in three.runs] == [
        ("pit@b", s, 40, 500, None) for s in (0, 1, 2)]
    digests = {r.digest("h") for r in three.runs}
    assert len(digests) == 3
    plain = S.narrow(suite, specs=["pit"], datasets=["b"]).runs[0]
    assert "max_steps" not in plain.config() and "subset" not in plain.config()  # old digests stay valid
    assert three.runs[0].config()["max_steps"] == 40 and three.runs[0].config()["subset"] == 500
    with pytest.raises(UserError, match="--seeds 0: expected a number above 0"):
        S.narrow(suite, seeds=0)


def test_digest_tracks_what_defines_a_result(tmp_path):
    suite = _suite(tmp_path, LAYERED)
    run = suite.runs[0]
    assert run.digest("h") == S.narrow(suite, specs=["vit"]).runs[0].digest("h")
    assert run.digest("h") != run.digest("g")
    assert run.digest("h") != S.narrow(suite, epochs=9).runs[0].digest("h")


@pytest.mark.parametrize("name", SUITES)
@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_shards_partition_the_runs(name, n):
    runs = S.load_suite(name, SPECS).runs
    parts = [S.shard(runs, i, n) for i in range(1, n + 1)]
    assert sorted(r.id for p in parts for r in p) == sorted(r.id for r in runs)
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert parts == [S.shard(S.load_suite(name, SPECS).runs, i, n) for i in range(1, n + 1)]


@pytest.mark.parametrize("text", ["0/2", "3/2", "1", "a/b", "1/0"])
def test_bad_shard(text):
    with pytest.raises(UserError, match="--shard expects i/n"):
        S.parse_shard(text)


def test_shard_parses():
    assert S.parse_shard("2/4") == (2, 4)
