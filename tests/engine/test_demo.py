"""``vimstm demo`` with a tiny stand-in for the bundled model (the real one is slow on a CPU)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vimstm import create_model
from vimstm.cli import main
from vimstm.engine import demo
from vimstm.errors import DataError, VimstmError


def tiny_cifar_model() -> torch.nn.Module:
    torch.manual_seed(0)
    m = create_model("vim_tiny_cifar10", depth=2, embed_dim=32, patch_size=8, stride=8,
                     d_state=4)
    return m.eval()


def make_test_folder(root: Path, classes: list[str], per_class: int = 2) -> Path:
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for j in range(per_class):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
                root / c / f"{j}.png")
    return root


def test_missing_bundled_weights_say_how_to_train(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import vimstm.models.registry as registry

    monkeypatch.setattr(registry, "weights_dir", lambda: tmp_path)
    with pytest.raises(VimstmError, match=r"scripts/train_cifar10\.sh"):
        demo.load_bundled()
    assert main(["demo", "--require-weights"]) == 2


def test_missing_weights_fall_back_to_speed_and_flops(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    import vimstm.models.registry as registry

    monkeypatch.setattr(registry, "weights_dir", lambda: tmp_path)
    monkeypatch.setattr(demo, "untrained_model", lambda device="cpu": tiny_cifar_model())
    assert main(["demo", "--ratios", "0.3"]) == 0
    out = capsys.readouterr().out
    assert "random weights" in out and "speed and FLOPs only" in out
    assert [line.split()[2] for line in out.splitlines()
            if line.startswith(("dense", "stm"))] == ["n/a", "n/a"]


def test_demo_table_with_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(demo, "load_bundled", lambda device="cpu": tiny_cifar_model())
    data = make_test_folder(tmp_path / "test", demo.CIFAR10_CLASSES)
    assert main(["demo", "--data", str(data), "--workers", "0", "--batch-size", "2"]) == 0
    out = capsys.readouterr().out
    assert f"evaluating 20 of 20 images of {data}" in out
    rows = [line.split() for line in out.splitlines() if line.startswith(("dense", "stm"))]
    assert [(r[0], r[1]) for r in rows] == [("dense", "0%"), ("stm", "20%"), ("stm", "40%")]
    gflops = [float(r[5]) for r in rows]
    assert gflops[0] > gflops[1] > gflops[2] > 0
    assert all(float(r[6]) > float(r[5]) for r in rows)  # both directions > one direction
    assert rows[0][3] == "0%" and int(rows[0][4]) > int(rows[2][4])  # mean red., last block
    assert all(0 <= float(r[2]) <= 100 for r in rows) and rows[0][8].startswith("1.00x")
    assert all(len(r[7].split(".")[1]) == 1 for r in rows)  # images/s with one decimal


def test_demo_rows_top1_matches_evaluate(tmp_path: Path) -> None:
    from vimstm.data import open_dataset
    from vimstm.engine.evaluate import evaluate

    model = tiny_cifar_model()
    data = make_test_folder(tmp_path / "test", demo.CIFAR10_CLASSES)
    ds = demo.open_test_data(model, str(data))
    rows = demo.demo_rows(model, ds, "stm", [0.4], torch.device("cpu"), "fp32", 8, 0, 1)
    loader = torch.utils.data.DataLoader(open_dataset(data, transform=ds.transform),
                                         batch_size=8)
    assert rows[0]["top1"] == pytest.approx(evaluate(model, loader, progress=False)["top1"])
    assert rows[1]["method"] == "stm" and rows[1]["gflops"] < rows[0]["gflops"]


def test_demo_evaluates_the_embedded_set(monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """No data given: top-1 on the embedded CIFAR-10 images, a CPU subset spread over classes."""
    monkeypatch.setattr(demo, "load_bundled", lambda device="cpu": tiny_cifar_model())
    assert main(["demo", "--ratios", "0.3", "--limit", "20"]) == 0
    out = capsys.readouterr().out
    assert "evaluating 20 of 1000 images of the embedded CIFAR-10 test set" in out
    rows = [line.split() for line in out.splitlines() if line.startswith(("dense", "stm"))]
    assert len(rows) == 2 and all(0 <= float(r[2]) <= 100 for r in rows)


def test_embedded_set_holds_100_images_of_each_class() -> None:
    from collections import Counter

    from vimstm.data import demo_cifar10

    ds = demo_cifar10()
    assert len(ds) == 1000 and ds.classes == demo.CIFAR10_CLASSES
    assert Counter(ds.targets) == dict.fromkeys(range(10), 100)
    assert "sha256 0401897c" in ds.source and ds.files[0].startswith("test/airplane/")
    img, label = ds[999]
    assert img.shape == (3, 32, 32) and label == 9
    assert 0 <= float(img.min()) <= float(img.max()) <= 1


def test_auto_limit_fits_the_budget() -> None:
    model = tiny_cifar_model()
    n = demo.auto_limit(model, 1000, 8, cost=3.0, budget=1e-9)
    assert n == 10  # at least one image per class
    assert demo.auto_limit(model, 1000, 8, cost=3.0, budget=1e9) == 1000
    assert demo.auto_limit(model, 1000, 8, cost=3.0, budget=5.0) % 10 == 0


def test_rough_speedups_are_marked() -> None:
    rows = [{"method": "dense", "ratio": 0.0, "top1": None, "gflops": 1.0, "images_per_s": 10.0,
             "spread": 0.3, "speedup": 1.0},
            {"method": "stm", "ratio": 0.4, "top1": None, "gflops": 0.6, "images_per_s": 15.0,
             "spread": 0.01, "speedup": 1.5}]
    table = demo.format_table(rows)
    assert "1.50x?" in table and "not supported by the timing" in table
    rows[0]["spread"] = 0.02
    assert "?" not in demo.format_table(rows)


def test_demo_help_shows_plain_percent(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    out = capsys.readouterr().out
    assert "20% and 40%" in out and "%%" not in out


def test_demo_refuses_data_with_other_classes(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo, "load_bundled", lambda device="cpu": tiny_cifar_model())
    data = make_test_folder(tmp_path / "test", ["cat", "dog"])
    with pytest.raises(DataError, match="differ"):
        demo.open_test_data(tiny_cifar_model(), str(data))
    assert main(["demo", "--data", str(data)]) == 2


def test_exported_weights_load_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An fp16 export in the weights folder is what create_model(..., pretrained=True) loads."""
    import vimstm.models.registry as registry
    from vimstm.models.checkpoint import export_weights

    model = tiny_cifar_model()
    ckpt = tmp_path / "last.pth"
    torch.save({"model": model.state_dict(), "model_ema": model.state_dict(), "epoch": 9,
                "classes": demo.CIFAR10_CLASSES, "args": {"model": "vim_tiny_cifar10"}}, ckpt)
    monkeypatch.setattr(registry, "weights_dir", lambda: tmp_path)
    export_weights(ckpt, tmp_path / "vim_tiny_cifar10.safetensors")
    loaded = create_model("vim_tiny_cifar10", pretrained=True, depth=2, embed_dim=32,
                          patch_size=8, stride=8, d_state=4).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=2e-2)
    w = loaded.layers[0].mixer.in_proj.weight
    assert w.dtype == torch.float32
    torch.testing.assert_close(w, model.layers[0].mixer.in_proj.weight.half().float())


def test_cpu_subset_is_spread_over_the_classes() -> None:
    """A class-sorted test split limited to N images must still hold every class."""
    from vimstm.data import spread_subset

    idx = spread_subset(list(range(8000)), 100).indices
    assert len(idx) == 100 and len(set(idx)) == 100 and idx[0] == 0 and max(idx) < 8000
    assert {i * 10 // 8000 for i in idx} == set(range(10))  # 800 images per class, sorted
    five = list(range(5))
    assert spread_subset(five, 10) is five


def test_top1_error_note_scales_with_the_sample() -> None:
    assert "about 5.0 points" in demo.top1_error_note(50.0, 100)
    assert "about 1.6 points" in demo.top1_error_note(50.0, 1000)
