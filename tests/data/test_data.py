"""Data sets: ImageNet layouts, class folders, archives, unreadable images, preprocessing."""

from __future__ import annotations

import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vimstm.data import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ShardSampler,
    build_eval_loader,
    eval_transform,
    holdout_split,
    imagenet_synsets,
    model_transform,
    open_dataset,
)
from vimstm.errors import DataError

# The project's shared data lives beside the checkout (../shared), also in CI.
SAMPLE = Path(__file__).resolve().parents[3] / "shared" / "data" / "imagenet-sample"
needs_sample = pytest.mark.skipif(not SAMPLE.is_dir(), reason="imagenet-sample not available")


def _image(path: Path, size=(40, 36), seed=0) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def _tiny_model(num_classes: int):
    from vimstm.models.registry import create_model

    return create_model("vim_tiny", depth=1, embed_dim=32, img_size=32, patch_size=8, stride=8,
                        num_classes=num_classes)


def test_bundled_synsets_match_the_standard_list():
    wnids = imagenet_synsets()
    assert len(wnids) == 1000 and wnids == sorted(wnids) and len(set(wnids)) == 1000
    if SAMPLE.is_dir():
        ref = [line.split("\t")[0] for line in (SAMPLE / "synsets.tsv").read_text().splitlines()]
        assert wnids == ref


@needs_sample
def test_imagenet_partial_classes_map_to_standard_indices(tmp_path):
    ref = [line.split("\t")[0] for line in (SAMPLE / "synsets.tsv").read_text().splitlines()]
    chosen = sorted(p.name for p in (SAMPLE / "val").iterdir())[::17][:3]  # 3 real classes
    for wnid in chosen:
        src = next((SAMPLE / "val" / wnid).iterdir())
        (tmp_path / "val" / wnid).mkdir(parents=True)
        shutil.copy(src, tmp_path / "val" / wnid / src.name)
    extra = next(w for w in reversed(ref) if w not in chosen)  # only a generated image
    _image(tmp_path / "val" / extra / "gen.JPEG")
    _image(tmp_path / "val" / chosen[0] / "gen.png", seed=1)
    ds = open_dataset(tmp_path)  # root holding val/<wnid>
    assert ds.imagenet and ds.num_classes == 1000 and ds.classes == ref
    want = {w: ref.index(w) for w in [*chosen, extra]}
    assert sorted(ds.targets) == sorted([want[chosen[0]]] * 2 + [want[w] for w in chosen[1:]]
                                        + [want[extra]])
    for path, target in ds.samples:
        assert target == want[Path(path).parent.name]
    assert ds.class_to_idx[extra] == ref.index(extra)
    assert max(ds.targets) > 100  # not the 0..3 that sorted folder names would give
    img, target = ds[0]
    assert isinstance(img, torch.Tensor) and img.shape[0] == 3 and target == ds.targets[0]
    from_file = open_dataset(tmp_path, synsets=SAMPLE / "synsets.tsv")  # an explicit list
    assert from_file.targets == ds.targets and from_file.num_classes == 1000
    # forcing folder labels gives 0..3 instead
    plain = open_dataset(tmp_path / "val", synsets="folders")
    assert plain.num_classes == 4 and sorted(set(plain.targets)) == [0, 1, 2, 3]


def test_class_folders_are_sorted(tmp_path):
    for i, cls in enumerate(["zebra", "apple", "mango"]):
        for j in range(i + 1):
            _image(tmp_path / cls / f"{j}.jpg", seed=10 * i + j)
    (tmp_path / "notes.txt").write_text("ignored")
    (tmp_path / "apple" / "readme.md").write_text("not an image")
    ds = open_dataset(tmp_path)
    assert not ds.imagenet
    assert ds.classes == ["apple", "mango", "zebra"] and ds.num_classes == 3
    assert ds.class_to_idx == {"apple": 0, "mango": 1, "zebra": 2}
    assert sorted(ds.targets) == [0, 0, 1, 1, 1, 2]  # apple 2, mango 3, zebra 1
    assert len(ds) == 6
    explicit = open_dataset(tmp_path, synsets=["zebra", "mango", "apple", "kiwi"])
    assert explicit.num_classes == 4
    assert {Path(p).parent.name: t for p, t in explicit.samples} == {"zebra": 0, "mango": 1,
                                                                     "apple": 2}
    with pytest.raises(DataError, match=r"not in the class list .*'mango'"):
        open_dataset(tmp_path, synsets=["apple", "zebra"])


def test_tar_xz_is_extracted_once_into_the_cache(tmp_path, monkeypatch):
    src = tmp_path / "src"
    for cls in ("cat", "dog"):
        for j in range(3):
            _image(src / "test" / cls / f"{j:04d}.jpg", size=(32, 32), seed=j)
    archive = tmp_path / "test.tar.xz"
    with tarfile.open(archive, "w:xz") as tar:
        tar.add(src / "test", arcname="test")
    cache = tmp_path / "cache"
    monkeypatch.setenv("VIMSTM_CACHE", str(cache))
    opened = []
    real_open = tarfile.open
    monkeypatch.setattr(tarfile, "open", lambda *a, **k: opened.append(a) or real_open(*a, **k))
    ds = open_dataset(archive)
    ds2 = open_dataset(archive)
    assert len(opened) == 1  # extracted once, then found in the cache
    assert ds.root == ds2.root and cache in ds.root.parents and ds.root.name == "test"
    assert ds.classes == ["cat", "dog"] and len(ds) == 6
    assert not [p for p in (cache / "data").iterdir() if p.name.startswith(".")]  # no temp left
    assert ds[0][0].shape == (3, 32, 32)


def test_corrupt_images_are_reported_skipped_and_counted(tmp_path, capsys):
    from vimstm.engine.evaluate import evaluate

    for cls in ("a", "b", "c"):
        for j in range(2):
            _image(tmp_path / cls / f"{j}.png", seed=j)
    bad = tmp_path / "b" / "broken.jpg"
    bad.write_bytes(b"this is not a jpeg")
    good = _image(tmp_path / "c" / "cut.jpg", size=(64, 64))
    truncated = tmp_path / "c" / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[:200])
    model = _tiny_model(3)
    loader = build_eval_loader(tmp_path, model, batch_size=4, workers=0)
    res = evaluate(model, loader, progress=False)
    assert res["images"] == 7 and res["skipped"] == 2
    err = capsys.readouterr().err
    assert str(bad) in err and str(truncated) in err
    assert len([line for line in err.splitlines() if "skipping unreadable image" in line]) == 2


def test_missing_empty_and_imageless_folders_are_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        open_dataset(tmp_path / "nope")
    with pytest.raises(DataError, match="no class folders"):
        open_dataset(tmp_path)
    (tmp_path / "cls_a").mkdir()
    (tmp_path / "cls_b").mkdir()
    with pytest.raises(DataError, match="no images"):
        open_dataset(tmp_path)
    loose = tmp_path / "loose"
    _image(loose / "x.jpg")
    with pytest.raises(DataError, match="images but no class folders"):
        open_dataset(loose)
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(DataError, match="archive"):
        open_dataset(tmp_path / "file.txt")


def test_class_count_that_does_not_fit_the_model_is_an_error(tmp_path):
    for cls in ("a", "b", "c"):
        _image(tmp_path / cls / "0.png")
    # a trained head cannot change: the fix is labels that map the folders onto its classes
    with pytest.raises(DataError, match=r"3 classes .* 1000 outputs.*--synsets FILE") as e:
        build_eval_loader(tmp_path, _tiny_model(1000), workers=0)
    assert "--num-classes" not in str(e.value)


def test_synsets_file_maps_a_class_subset_onto_the_model_outputs(tmp_path):
    """The fix the class-count error gives: --synsets FILE naming the model's classes."""
    for cls in ("cat", "ship", "truck"):
        _image(tmp_path / "data" / cls / "0.png")
    names = tmp_path / "classes.txt"
    names.write_text("\n".join(["airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                                "horse", "ship", "truck"]) + "\n")
    loader = build_eval_loader(tmp_path / "data", _tiny_model(10), workers=0, synsets=names)
    assert sorted(label for _, label in loader.dataset) == [3, 8, 9]


def test_training_a_new_model_may_change_the_class_count():
    from vimstm.data import check_classes

    with pytest.raises(DataError, match="--num-classes 3 to train a new model"):
        check_classes(["a", "b", "c"], "model vim_tiny_cifar10", outputs=10, training=True)


def test_official_preprocessing_resizes_short_side_to_256_then_crops_224(tmp_path):
    from torchvision import transforms as T

    t = eval_transform(224, crop_pct=0.875)
    resize, crop = t.transforms[0].transforms
    assert isinstance(resize, T.Resize) and resize.size == 256
    assert resize.interpolation == T.InterpolationMode.BICUBIC
    assert isinstance(crop, T.CenterCrop) and tuple(crop.size) == (224, 224)
    img = Image.open(_image(tmp_path / "x.png", size=(300, 400)))  # w 300, h 400
    assert resize(img).size == (256, 341)  # short side 256, aspect kept
    out = t(img)
    assert out.shape == (3, 224, 224)
    # same numbers as doing it by hand with PIL: bicubic resize, center crop, normalize
    ref = img.resize((256, 341), Image.BICUBIC)
    top, left = round((341 - 224) / 2), round((256 - 224) / 2)
    ref = np.asarray(ref.crop((left, top, left + 224, top + 224)), dtype=np.float32) / 255
    ref = (torch.from_numpy(ref).permute(2, 0, 1) - torch.tensor(IMAGENET_MEAN)[:, None, None]) \
        / torch.tensor(IMAGENET_STD)[:, None, None]
    assert torch.allclose(out, ref, atol=1e-6)
    assert eval_transform(384, crop_pct=1.0).transforms[0].transforms[0].size == 384
    assert eval_transform(224, crop_pct=0.9).transforms[0].transforms[0].size == 248  # int()


def test_cifar_images_are_only_normalized(tmp_path):
    from vimstm.models.registry import create_model

    model = create_model("vim_tiny_cifar10", depth=1, embed_dim=32)
    t = model_transform(model)
    img = Image.open(_image(tmp_path / "c.png", size=(32, 32)))
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1)
    ref = (x - torch.tensor(CIFAR10_MEAN)[:, None, None]) / torch.tensor(CIFAR10_STD)[:, None, None]
    assert torch.allclose(t(img), ref, atol=1e-6)
    big = Image.open(_image(tmp_path / "big.png", size=(50, 70)))
    assert t(big).shape == (3, 32, 32)  # other sizes are still resized to fit


@pytest.mark.parametrize("n,world", [(9, 2), (7, 3), (2, 4)])
def test_shard_sampler_gives_each_index_exactly_once(n, world):
    shards = [list(ShardSampler(n, r, world)) for r in range(world)]
    assert sorted(i for s in shards for i in s) == list(range(n))
    assert [len(ShardSampler(n, r, world)) for r in range(world)] == [len(s) for s in shards]


def test_limit_keeps_evenly_spread_images(tmp_path):
    for cls in ("a", "b", "c"):
        for j in range(4):
            _image(tmp_path / cls / f"{j}.png", size=(32, 32), seed=j)
    loader = build_eval_loader(tmp_path, _tiny_model(3), batch_size=5, workers=0, limit=6)
    labels = torch.cat([b[1] for b in loader])
    assert labels.tolist() == [0, 0, 1, 1, 2, 2]


def test_holdout_split_is_class_balanced_and_fixed() -> None:
    targets = [0] * 10 + [1] * 12 + [2] * 9  # class-sorted, as open_dataset lists them
    kept, held = holdout_split(targets, 7)
    assert sorted(kept + held) == list(range(len(targets))) and not set(kept) & set(held)
    counts = [sum(targets[i] == c for i in held) for c in range(3)]
    assert counts == [3, 2, 2]  # 7 // 3 each, the remainder to the first class
    assert holdout_split(targets, 7) == (kept, held)  # no seed: the same images every time
    assert held != list(range(3)) + list(range(10, 12)) + list(range(22, 24))  # not the first
    # a larger holdout keeps the smaller one's images of each class (a prefix of one ranking)
    assert set(held) <= set(holdout_split(targets, 13)[1])
    # the classes need not be contiguous: the split follows the labels, not the positions
    mixed = [i % 3 for i in range(30)]
    _, h = holdout_split(mixed, 6)
    assert [sum(mixed[i] == c for i in h) for c in range(3)] == [2, 2, 2]


@pytest.mark.parametrize(("n", "match"), [(0, "between 1 and 29"), (30, "between 1 and 29"),
                                          (2, "fewer than the 3 classes"),
                                          (28, "10 images of class 'a', which has only 10")])
def test_holdout_split_refuses_what_cannot_work(n: int, match: str) -> None:
    from vimstm.errors import ConfigError

    targets = [0] * 10 + [1] * 9 + [2] * 11
    with pytest.raises(ConfigError, match=match):
        holdout_split(targets, n, ["a", "b", "c"])
