"""Epoch order (repeated augmentation, ranks), the in-memory and streaming loaders, and the
Augmenter that turns uint8 batches into model input."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from train_helpers import write_folder

from vitgraph.data.datasets import load_dataset
from vitgraph.data.formats import Arrays
from vitgraph.data.pipeline import Augmenter, MemoryLoader, StreamLoader, batches, epoch_order
from vitgraph.train.recipes import load_recipe

CPU = torch.device("cpu")


def test_epoch_order_is_a_permutation_fixed_by_seed_and_epoch():
    a = epoch_order(100, epoch=3, seed=7)
    assert sorted(a.tolist()) == list(range(100))
    assert torch.equal(a, epoch_order(100, epoch=3, seed=7))
    assert not torch.equal(a, epoch_order(100, epoch=4, seed=7))


def test_repeated_augmentation_repeats_each_index_in_a_row():
    order = epoch_order(10, 0, 0, repeats=3)
    assert len(order) == 30
    assert all(order[i] == order[i + 1] == order[i + 2] for i in range(0, 30, 3))
    truncated = epoch_order(10, 0, 0, repeats=3, truncate=True)
    assert len(truncated) == 10 and torch.equal(truncated, order[:10])


def test_ranks_get_disjoint_shares_with_copies_on_different_ranks():
    shares = [epoch_order(12, 0, 0, repeats=3, rank=r, world=3) for r in range(3)]
    assert all(len(s) == 12 for s in shares)
    full = epoch_order(12, 0, 0, repeats=3)
    for r in range(3):
        assert torch.equal(shares[r], full[r::3])
        assert len(set(shares[r].tolist())) == 12  # the three copies of an image go to three ranks
    evals = [epoch_order(10, 0, 0, rank=r, world=3, shuffle=False) for r in range(3)]
    assert sorted(torch.cat(evals).tolist()) == list(range(10))


def test_batches_drop_the_last_partial_batch_only_when_asked():
    order = torch.arange(10)
    assert [len(b) for b in batches(order, 4, drop_last=True)] == [4, 4]
    assert [len(b) for b in batches(order, 4, drop_last=False)] == [4, 4, 2]
    assert [len(b) for b in batches(order, 16, drop_last=True)] == [10]  # never zero batches


def test_memory_loader_yields_indexed_batches():
    images = np.arange(6 * 1 * 2 * 2, dtype=np.uint8).reshape(6, 1, 2, 2)
    loader = MemoryLoader(Arrays(images, np.arange(6)), CPU, batch_size=4, train=False)
    got = list(loader)
    assert [len(y) for _, y in got] == [4, 2] and got[0][0].dtype == torch.uint8
    for x, y in got:
        assert torch.equal(x, torch.from_numpy(images)[y])


def _augmenter(recipe: str, size=(16, 16), channels=3, **overrides) -> Augmenter:
    r = load_recipe(recipe, overrides)
    return Augmenter(r, "cifar10", size, channels, 10, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), CPU)


def test_augmenter_train_batch_shapes_and_targets():
    aug = _augmenter("small-datasets", mix_prob="0")
    assert aug.policy == "cifar10" and aug.r.crop == "pad" and aug.r.erase_prob == 0.25
    x = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    y = torch.arange(8) % 10
    out, t = aug.train_batch(x, y, torch.Generator().manual_seed(0), np.random.default_rng(0))
    assert out.shape == (8, 3, 16, 16) and out.dtype == torch.float32
    assert torch.equal(t.argmax(1), y) and torch.allclose(t.sum(1), torch.ones(8))
    assert t.max().item() == pytest.approx(0.91)  # label smoothing 0.1 over 10 classes


def test_augmenter_without_augmentation_is_resize_and_normalise():
    aug = _augmenter("none", crop="none", flip="false", loss="softmax")
    x = torch.full((2, 3, 8, 8), 191, dtype=torch.uint8)
    out, _ = aug.train_batch(x, torch.zeros(2, dtype=torch.long), torch.Generator(), np.random.default_rng(0))
    assert torch.allclose(out, torch.full((2, 3, 16, 16), (191 / 255 - 0.5) / 0.25))
    assert torch.allclose(aug.eval_batch(x), out)


def test_grey_images_feed_rgb_models():
    ds = load_dataset("digits")
    aug = Augmenter(load_recipe("digits"), "digits", (16, 16), 3, 10, ds.mean, ds.std, CPU)
    x = torch.from_numpy(ds.test.images[:4])
    out = aug.eval_batch(x)
    assert out.shape == (4, 3, 16, 16)
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 1], out[:, 2])


def test_stream_loader_decodes_in_workers(tmp_path):
    written = write_folder(tmp_path / "imgs", splits=("train", "test"), per_class=4, size=8)
    ds = load_dataset(str(tmp_path / "imgs"), mode="stream")
    loader = StreamLoader(ds.test, CPU, batch_size=3, train=False, size=(8, 8), workers=2)
    xs, ys = zip(*loader)
    x, y = torch.cat(xs), torch.cat(ys)
    assert torch.equal(x, torch.from_numpy(written["test"][0])) and torch.equal(y, torch.from_numpy(written["test"][1]))
    train = StreamLoader(ds.train, CPU, batch_size=4, train=True, size=(6, 6), workers=0, rrc=True, seed=1)
    shapes = {tuple(b.shape) for b, _ in train}
    assert shapes == {(4, 3, 6, 6)} and len(train) == 2
