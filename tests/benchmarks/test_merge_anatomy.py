"""benchmarks/merge_anatomy.py: images from a folder of class folders (e.g. the training split)
and the dense-logit cache, on a 2-block, dim-16 model with random weights (the numbers are
meaningless; which images, which labels and what is reused are checked)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import vimstm
from conftest import load_script
from vimstm.data import demo_cifar10
from vimstm.errors import DataError

ma = load_script("benchmarks/merge_anatomy.py")


def _folders(root: Path, picks: list[int], classes: list[str] | None = None) -> Path:
    """The embedded test images ``picks`` as ``root/<class>/<index>.jpg``."""
    ds = demo_cifar10()
    for i in picks:
        name = (classes or ds.classes)[ds.targets[i]]
        (root / name).mkdir(parents=True, exist_ok=True)
        (root / name / f"{i:04d}.jpg").write_bytes(ds._jpeg[ds._offsets[i]:ds._offsets[i + 1]])
    return root


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return vimstm.create_model("vim_tiny_cifar10", depth=2, embed_dim=16, patch_size=2,
                               stride=2, d_state=4).eval()


def test_indices_are_evenly_spread_and_shift_gives_a_disjoint_set():
    idx = ma.image_indices(50000, 512)
    assert idx[0] == 0 and idx[-1] == 49999 and len(set(idx.tolist())) == 512
    gaps = np.diff(idx)
    assert gaps.min() >= 97 and gaps.max() <= 98
    assert not set(ma.image_indices(50000, 512, shift=2).tolist()) & set(idx.tolist())


def test_images_from_class_folders_keep_their_labels(tmp_path: Path, model):
    ds = demo_cifar10()
    # one image of each class, in class-sorted folders as the CIFAR-10 archives hold them
    picks = [next(i for i in range(len(ds)) if ds.targets[i] == c) for c in range(10)]
    root = _folders(tmp_path / "train", picks)
    x, y, idx = ma.images(5, model, data=str(root))
    assert x.shape == (5, 3, 32, 32)
    # sorted class folders, one image each: index k is class k
    assert idx.tolist() == [0, 2, 4, 7, 9] and y.tolist() == idx.tolist()
    # the same pixels as the embedded image (same JPEG, same transform)
    ref = demo_cifar10(ma.model_transform(model))[picks[7]][0]
    assert torch.equal(x[3], ref)


def test_images_refuse_data_of_other_classes(tmp_path: Path, model):
    names = [f"c{k}" for k in range(10)]
    root = _folders(tmp_path / "other", list(range(20)), classes=names)
    with pytest.raises(DataError, match="not CIFAR-10's"):
        ma.images(4, model, data=str(root))


def test_dense_cache_is_reused_only_for_the_same_images(tmp_path: Path, model):
    torch.set_num_threads(1)
    x = torch.randn(3, 3, 32, 32)
    cache = tmp_path / "dense.pt"
    idx = np.array([0, 5, 9])
    first = ma.dense_logits(model, x, "train", idx, str(cache))
    assert cache.exists() and torch.equal(first, ma.logits_of(model, x))
    # a cached entry is read back as it was written, without running the model
    planted = {"key": torch.load(cache, weights_only=True)["key"], "logits": first + 1.0}
    torch.save(planted, cache)
    assert torch.equal(ma.dense_logits(model, x, "train", idx, str(cache)), first + 1.0)
    # other indices (or other data) recompute and overwrite
    again = ma.dense_logits(model, x, "train", np.array([0, 5, 8]), str(cache))
    assert torch.equal(again, first)
    assert torch.equal(ma.dense_logits(model, x, "test", np.array([0, 5, 8]), str(cache)), first)


def test_dense_cache_of_other_weights_is_recomputed(tmp_path: Path, model):
    torch.set_num_threads(1)
    x = torch.randn(2, 3, 32, 32)
    cache, idx = str(tmp_path / "dense.pt"), np.array([1, 2])
    first = ma.dense_logits(model, x, "train", idx, cache)
    torch.manual_seed(1)
    other = vimstm.create_model("vim_tiny_cifar10", depth=2, embed_dim=16, patch_size=2,
                                stride=2, d_state=4).eval()
    assert ma.weights_fingerprint(other) != ma.weights_fingerprint(model)
    got = ma.dense_logits(other, x, "train", idx, cache)
    assert torch.equal(got, ma.logits_of(other, x)) and not torch.equal(got, first)
