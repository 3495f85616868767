"""vimstm viz: merged groups drawn over an image."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import vimstm
from vimstm.errors import DataError
from vimstm.viz import group_map, visualize


@pytest.fixture
def image_file(tmp_path):
    arr = (np.random.default_rng(0).random((40, 40, 3)) * 255).astype("uint8")
    arr[:, :20] = 30  # a flat half merges easily
    path = tmp_path / "img.png"
    Image.fromarray(arr).save(path)
    return path


def test_viz_writes_png(tmp_path, image_file):
    model = vimstm.create_model("vim_tiny", depth=3, embed_dim=32, img_size=32, patch_size=4,
                                stride=4, num_classes=10).eval()
    out = tmp_path / "viz.png"
    res = visualize(model, image_file, out, method="stm", ratio=0.5, protect=2)
    assert out.stat().st_size > 1000
    assert res["tokens"] == 65 - 32
    assert model.merger is None  # unpatched afterwards


def test_group_map_covers_every_patch():
    src = torch.zeros(1, 3, 5)  # 4 patches + class token at index 2
    src[0, 0, [0, 1]] = 1
    src[0, 1, 2] = 1
    src[0, 2, [3, 4]] = 1
    owner = group_map(src, (2, 2), cls_orig=2)
    assert owner.tolist() == [[0, 0], [2, 2]]


def test_viz_missing_image(tmp_path):
    model = vimstm.create_model("vim_tiny", depth=2, embed_dim=32, img_size=32, patch_size=8,
                                stride=8, num_classes=10)
    with pytest.raises(DataError, match="does not exist"):
        visualize(model, tmp_path / "nope.png", tmp_path / "o.png")


def test_small_images_are_enlarged_before_drawing_outlines():
    from vimstm.viz import MIN_PATCH_PIXELS, upscale

    img = np.zeros((32, 32, 3))
    big = upscale(img, (16, 16))  # 2-pixel patches (CIFAR model)
    assert big.shape[0] // 16 >= MIN_PATCH_PIXELS and big.shape[0] % 32 == 0
    assert upscale(np.zeros((224, 224, 3)), (14, 14)).shape == (224, 224, 3)


def test_default_output_is_not_the_working_directory(monkeypatch, tmp_path):
    from vimstm.viz import default_out

    monkeypatch.setenv("VIMSTM_CACHE", str(tmp_path / "cache"))
    assert default_out("dir/fish.jpg", "stm") == tmp_path / "cache" / "viz" / "fish-stm.png"
