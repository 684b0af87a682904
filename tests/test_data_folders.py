"""Image-folder datasets as users really have them: folders that are not classes, classes with
no readable image, train/ and test/ that disagree, and classes of a single image. Every anomaly
is refused with one message naming the folders; a one-image class trains."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from fault_helpers import unreadable
from train_helpers import write_folder, write_specs

from vitgraph.cli import main
from vitgraph.data.datasets import load_dataset
from vitgraph.data.formats import stratified_split
from vitgraph.diagnostics import UserError
from vitgraph.train import loop


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VITGRAPH_CACHE", str(tmp_path / "cache"))


def _refused(path, message: str) -> UserError:
    with pytest.raises(UserError) as e:
        load_dataset(str(path))
    assert e.value.message == message
    return e.value


@pytest.mark.parametrize("junk", ["__MACOSX", ".ipynb_checkpoints"])
def test_junk_folders_are_refused_by_name(tmp_path, junk):
    write_folder(tmp_path / "data", classes=("cat", "dog"))
    (tmp_path / "data" / "train" / junk / "cat").mkdir(parents=True)
    (tmp_path / "data" / "train" / junk / "._001.png").write_bytes(b"\0\5\26\7")  # an AppleDouble file
    e = _refused(tmp_path / "data", f"{tmp_path / 'data' / 'train'} holds folders that are not classes: {junk}")
    assert "__MACOSX" in e.hint


def test_empty_class_folder_is_refused_by_name(tmp_path):
    write_folder(tmp_path / "data", classes=("cat", "dog"))
    (tmp_path / "data" / "test" / "bird").mkdir()
    (tmp_path / "data" / "test" / "bird" / "notes.txt").write_text("no images here")
    (tmp_path / "data" / "train" / "bird").mkdir()
    (tmp_path / "data" / "train" / "bird" / "x.png").write_bytes(b"")  # an image, unreadable when decoded
    _refused(tmp_path / "data", f"{tmp_path / 'data' / 'test'} has class folders without a readable image: "
                                "bird (no images)")


def test_empty_class_in_bare_layout_is_refused(tmp_path):
    write_folder(tmp_path / "flat", splits=("",), classes=("a", "b"), per_class=5)
    (tmp_path / "flat" / "c").mkdir()
    (tmp_path / "flat" / "d").mkdir()
    _refused(tmp_path / "flat", f"{tmp_path / 'flat'} has class folders without a readable image: "
                                "c (no images), d (no images)")


def test_unreadable_class_folder_is_refused_by_name(tmp_path):
    write_folder(tmp_path / "data", classes=("cat", "dog"))
    with unreadable(tmp_path / "data" / "train" / "dog"):
        _refused(tmp_path / "data", f"{tmp_path / 'data' / 'train'} has class folders without a readable image: "
                                    "dog (unreadable)")


def test_train_and_test_classes_must_agree(tmp_path):
    write_folder(tmp_path / "data", splits=("train",), classes=("cat", "dog", "emu"))
    write_folder(tmp_path / "data", splits=("test",), classes=("ant", "cat", "dog"))
    e = _refused(tmp_path / "data", f"the classes of {tmp_path / 'data' / 'train'} and {tmp_path / 'data' / 'test'} "
                                    "differ (only in train/: emu; only in test/: ant)")
    assert e.hint == "every class needs a folder with images in both"
    shutil.rmtree(tmp_path / "data" / "test" / "ant")
    _refused(tmp_path / "data", f"the classes of {tmp_path / 'data' / 'train'} and {tmp_path / 'data' / 'test'} "
                                "differ (only in train/: emu)")


def test_train_without_test_is_refused(tmp_path):
    write_folder(tmp_path / "data", splits=("train",))
    _refused(tmp_path / "data", f"{tmp_path / 'data'} has train/ but no test split (test/, val/, validation/)")


def test_refusals_are_one_message_from_the_cli(tmp_path, capsys):
    spec, _ = write_specs(tmp_path / "specs")
    write_folder(tmp_path / "data", classes=("cat", "dog"))
    (tmp_path / "data" / "train" / "__MACOSX").mkdir()
    assert main(["train", str(spec), "--dataset", str(tmp_path / "data"), "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "__MACOSX" in err and "Traceback" not in err


def test_one_image_class_stays_in_train_and_trains(tmp_path):
    spec, _ = write_specs(tmp_path / "specs")
    write_folder(tmp_path / "flat", splits=("",), classes=("a", "b"), per_class=10, size=16)
    write_folder(tmp_path / "flat", splits=("",), classes=("c",), per_class=1, size=16)
    ds = load_dataset(str(tmp_path / "flat"))
    assert ds.classes == ["a", "b", "c"] and np.bincount(ds.test.labels).tolist() == [2, 2]
    assert np.bincount(ds.train.labels).tolist() == [8, 8, 1]
    result = loop.run(str(spec), str(tmp_path / "flat"), "digits", epochs=1, out=tmp_path / "run", progress=False,
                      device="cpu", overrides={"batch_size": "4", "warmup_epochs": "0"})
    assert json.loads((tmp_path / "run" / "config.json").read_text())["spec"]["classes"] == 3
    assert 0 <= result["top1"] <= 100


def test_split_is_by_class_and_seeded_and_too_few_images_are_a_clear_error():
    labels = load_dataset("digits").train.labels
    train, test = stratified_split(labels, 0.2, 0)
    assert sorted([*train, *test]) == list(range(len(labels))) and len(test) == 288  # ceil(20% of 1,437)
    share = np.bincount(labels[test]) / np.bincount(labels)
    assert np.all(np.abs(share - 0.2) < 0.01)  # every class in the same proportion
    again, other = stratified_split(labels, 0.2, 0), stratified_split(labels, 0.2, 1)
    assert np.array_equal(again[1], test) and not np.array_equal(other[1], test)
    with pytest.raises(UserError, match=r"cannot split 6 images of 3 classes 80%/20% by class"):
        stratified_split(np.repeat(np.arange(3), 2), 0.2, 0)
