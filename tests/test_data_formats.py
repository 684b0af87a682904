"""Dataset readers on fixtures written in the official formats, the image-folder reader on real
CIFAR-10 JPEGs, the decode cache, the embedded digits, downloads and checksum verification."""
from __future__ import annotations

import hashlib
import pickle
import tarfile

import numpy as np
import pytest
from train_helpers import (CIFAR10_FOLDERS, write_cifar, write_folder, write_svhn, write_tiny_imagenet)

from vitgraph.data import datasets, sources
from vitgraph.data.datasets import load_dataset
from vitgraph.data.formats import Arrays, Files
from vitgraph.diagnostics import UserError


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VITGRAPH_CACHE", str(tmp_path / "cache"))


@pytest.mark.parametrize("fine", [False, True])
def test_cifar_pickles(tmp_path, fine):
    images, labels = write_cifar(tmp_path, fine, per_batch=4)
    ds = load_dataset("cifar100" if fine else "cifar10", root=tmp_path, download=False)
    n_train = 4 if fine else 20
    assert isinstance(ds.train, Arrays) and ds.train.images.shape == (n_train, 3, 32, 32)
    np.testing.assert_array_equal(ds.train.images, images[:n_train])
    np.testing.assert_array_equal(ds.train.labels, labels[:n_train])
    np.testing.assert_array_equal(ds.test.images, images[n_train:])
    assert ds.num_classes == (100 if fine else 10) and ds.classes[3] == "class3"


def test_cifar_corrupt_pickle(tmp_path):
    write_cifar(tmp_path, fine=False)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(UserError, match="data_batch_3 is corrupt") as e:
        load_dataset("cifar10", root=tmp_path, download=False)
    assert "delete" in e.value.hint


def test_cifar_wrong_shape(tmp_path):
    write_cifar(tmp_path, fine=False)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}))
    with pytest.raises(UserError, match="test_batch is corrupt"):
        load_dataset("cifar10", root=tmp_path, download=False)


def test_svhn_mat(tmp_path):
    written = write_svhn(tmp_path / "svhn", n=10)
    ds = load_dataset("svhn", root=tmp_path, download=False)
    for split, arrays in (("train", ds.train), ("test", ds.test)):
        x, y = written[split]
        np.testing.assert_array_equal(arrays.images, x)
        np.testing.assert_array_equal(arrays.labels, np.where(y == 10, 0, y))  # label 10 is the digit 0
    assert 0 in ds.train.labels and 10 not in ds.train.labels


def test_tiny_imagenet_tree(tmp_path):
    written = write_tiny_imagenet(tmp_path)
    ds = load_dataset("tiny-imagenet", root=tmp_path, download=False)
    assert ds.classes == ["n01", "n02", "n03"] and ds.in_memory
    for split, arrays in (("train", ds.train), ("test", ds.test)):
        x, y = written[split]
        np.testing.assert_array_equal(arrays.images, x)
        np.testing.assert_array_equal(arrays.labels, y)


def test_tiny_imagenet_stream_mode_keeps_files(tmp_path):
    write_tiny_imagenet(tmp_path)
    ds = load_dataset("tiny-imagenet", root=tmp_path, download=False, mode="stream")
    assert isinstance(ds.train, Files) and len(ds.train) == 6 and ds.train.paths[0].name == "n01_0.JPEG"


def test_tiny_imagenet_bad_annotation(tmp_path):
    write_tiny_imagenet(tmp_path)
    (tmp_path / "tiny-imagenet-200" / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn99\n")
    with pytest.raises(UserError, match="val_annotations.txt is corrupt"):
        load_dataset("tiny-imagenet", root=tmp_path, download=False)


def test_image_folder_with_splits(tmp_path):
    written = write_folder(tmp_path / "pets", splits=("train", "val"))
    ds = load_dataset(str(tmp_path / "pets"))
    assert ds.classes == ["cat", "dog"] and ds.name == "pets"
    np.testing.assert_array_equal(ds.train.images, written["train"][0])
    np.testing.assert_array_equal(ds.test.labels, written["val"][1])


def test_image_folder_without_splits_is_split_80_20_stratified(tmp_path):
    write_folder(tmp_path / "flat", splits=("",), per_class=10)
    a = load_dataset(str(tmp_path / "flat"))
    b = load_dataset(str(tmp_path / "flat"))
    assert len(a.train) == 16 and len(a.test) == 4
    assert np.bincount(a.test.labels).tolist() == [2, 2]
    np.testing.assert_array_equal(a.test.images, b.test.images)


def test_imagenet_is_an_image_folder_named_imagenet(tmp_path):
    write_folder(tmp_path / "imagenet", splits=("train", "val"), classes=("n0001", "n0002"))
    ds = load_dataset("imagenet", root=tmp_path, mode="stream")
    assert isinstance(ds.train, Files) and ds.classes == ["n0001", "n0002"] and ds.mean == datasets.IMAGENET_MEAN


def test_real_cifar10_jpeg_folders_and_cache(tmp_path, monkeypatch):
    if not CIFAR10_FOLDERS.is_dir():
        pytest.skip("real CIFAR-10 folders not present")
    subset = tmp_path / "cifar10"
    for split in ("train", "test"):
        for cls in sorted(p.name for p in (CIFAR10_FOLDERS / split).iterdir()):
            for f in sorted((CIFAR10_FOLDERS / split / cls).iterdir())[:3]:
                target = subset / split / cls / f.name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.symlink_to(f)
    ds = load_dataset("cifar10", root=tmp_path, download=False)
    assert ds.classes[:3] == ["airplane", "automobile", "bird"] and ds.mean == datasets.KNOWN["cifar10"].mean
    assert ds.train.images.shape == (30, 3, 32, 32) and ds.train.images.dtype == np.uint8
    assert ds.train.labels.tolist() == [c for c in range(10) for _ in range(3)]
    assert ds.train.images.std() > 20  # real pictures, not blanks
    assert len(list((tmp_path / "cache").glob("cifar10-*.npz"))) == 2

    def no_decoding(*a, **k):
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(datasets, "decode_all", no_decoding)
    again = load_dataset("cifar10", root=tmp_path, download=False)
    np.testing.assert_array_equal(again.train.images, ds.train.images)


def test_digits_split():
    ds = load_dataset("digits")
    assert (len(ds.train), len(ds.test)) == (1437, 360)
    assert ds.train.images.shape[1:] == (1, 8, 8) and ds.train.images.max() == 255
    assert np.bincount(ds.test.labels).min() >= 35  # stratified: every digit ~36 times
    again = load_dataset("digits")
    np.testing.assert_array_equal(again.test.labels, ds.test.labels)


def test_missing_dataset_says_what_where_and_how(tmp_path):
    with pytest.raises(UserError) as e:
        load_dataset("cifar10", root=tmp_path, download=False)
    assert str(tmp_path / "cifar-10-batches-py") in e.value.message and "download disabled" in e.value.message
    assert "cs.toronto.edu" in e.value.hint and "--data-root" in e.value.hint


def test_data_root_from_environment(tmp_path, monkeypatch):
    write_svhn(tmp_path / "svhn")
    monkeypatch.setenv("VITGRAPH_DATA", str(tmp_path))
    assert len(load_dataset("svhn", download=False).train) == 5  # write_svhn default n=5


def test_unknown_dataset_suggests():
    with pytest.raises(UserError, match="did you mean 'cifar10'"):
        load_dataset("cifar01")


# --- downloads and checksums ---------------------------------------------------------------------

def test_md5sum_of_a_local_file(tmp_path):
    f = tmp_path / "blob.bin"
    f.write_bytes(b"vitgraph" * 300_000)  # several read chunks
    assert sources.md5sum(f) == hashlib.md5(f.read_bytes()).hexdigest()


def test_fetch_checks_md5_and_removes_bad_downloads(tmp_path):
    """The download code path on a file:// URL: a good file is kept, a bad one removed."""
    src = tmp_path / "remote" / "data.bin"
    src.parent.mkdir()
    src.write_bytes(b"payload")
    good = sources.Remote(src.as_uri(), hashlib.md5(b"payload").hexdigest())
    path = sources.fetch(good, tmp_path / "dl")
    assert path.read_bytes() == b"payload"
    bad = sources.Remote(src.as_uri(), "f" * 32)
    with pytest.raises(UserError, match="download of .* is corrupt"):
        sources.fetch(bad, tmp_path / "dl2")
    assert not any((tmp_path / "dl2").iterdir())


def test_fetch_reports_unreachable_source(tmp_path):
    with pytest.raises(UserError, match="could not download"):
        sources.fetch(sources.Remote((tmp_path / "nowhere.tar.gz").as_uri(), "0" * 32), tmp_path / "dl")


def test_missing_cifar_is_downloaded_and_extracted(tmp_path, monkeypatch):
    """The download path end to end, from a local archive standing in for the server."""
    staging = tmp_path / "staging"
    write_cifar(staging, fine=False)
    archive = tmp_path / "server" / "cifar-10-python.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(staging / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    remote = sources.Remote(archive.as_uri(), sources.md5sum(archive))
    monkeypatch.setitem(datasets.KNOWN, "cifar10", datasets.KNOWN["cifar10"].__class__(
        **{**datasets.KNOWN["cifar10"].__dict__, "remotes": (remote,)}))
    root = tmp_path / "data"
    ds = load_dataset("cifar10", root=root)
    assert len(ds.train) == 20 and (root / "cifar-10-python.tar.gz").is_file()


def test_extract_refuses_escaping_paths(tmp_path):
    evil = tmp_path / "evil.tar.gz"
    payload = tmp_path / "x.txt"
    payload.write_text("x")
    with tarfile.open(evil, "w:gz") as tar:
        tar.add(payload, arcname="../escaped.txt")
    with pytest.raises(UserError, match="unsafe path"):
        sources.extract(evil, tmp_path / "out")

