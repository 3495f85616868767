"""vimstm calibrate: sensitivity per step, allocation to a target, the schedule file, errors."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from PIL import Image

import vimstm
from vimstm.cli import main
from vimstm.engine.calibrate import allocate, calibrate
from vimstm.errors import ConfigError
from vimstm.flops import count_flops
from vimstm.merge import patch, unpatch
from vimstm.models.checkpoint import atomic_save


def test_allocation_spends_the_budget_where_the_model_is_least_sensitive(small_model):
    steps = [0, 1, 2]
    flat = allocate(small_model, "tome", {}, steps, [1.0, 1.0, 1.0], flops=0.8, max_steps=None)
    # equal sensitivity: earlier steps save more blocks, so they get more tokens
    assert flat[0] > flat[1] > flat[2] >= 0
    skewed = allocate(small_model, "tome", {}, steps, [50.0, 0.1, 1.0], flops=0.8,
                      max_steps=1)
    assert skewed[0] == 0 and skewed[1] > 0 and skewed[2] == 0  # block 0 is too sensitive
    for sched in (flat, skewed):
        patch(small_model, method="tome", r=sched)
        rep = count_flops(small_model)
        unpatch(small_model)
        assert rep.gmacs_literature <= 0.8 * rep.dense_gmacs_literature + 1e-12
    red = allocate(small_model, "stm", {}, steps, [1.0, 2.0, 3.0], reduction=0.2, max_steps=2)
    from vimstm.merge.schedule import mean_token_reduction

    assert mean_token_reduction(red, 4, 64) >= 0.2
    with pytest.raises(ConfigError, match="one calibration target"):
        allocate(small_model, "stm", {}, steps, [1.0] * 3, flops=0.5, reduction=0.2)
    with pytest.raises(ConfigError, match="reduction"):
        allocate(small_model, "stm", {}, steps, [1.0] * 3, reduction=0.95)
    with pytest.raises(ConfigError, match="not reachable"):
        allocate(small_model, "stm", {}, steps, [1.0] * 3, flops=0.05, max_steps=1)


def test_calibrate_measures_every_step_and_writes_a_usable_schedule(small_model):
    small_model = copy.deepcopy(small_model)
    with torch.no_grad():  # a random model's logits are nearly flat: make the KL measurable
        small_model.head.weight.mul_(300.0)
    g = torch.Generator().manual_seed(0)
    loader = [(torch.randn(3, 3, 32, 32, generator=g), torch.tensor([0, 1, 2]))]
    doc = calibrate(small_model, loader, "stm", flops=0.75, progress=False)
    cal = doc["calibration"]
    assert cal["steps"] == [0, 1, 2] and len(cal["kl"]) == 3 and all(k > 0 for k in cal["kl"])
    assert doc["depth"] == 4 and doc["num_patches"] == 64 and cal["images"] == 3
    assert doc["gmacs_literature"] <= 0.75 * doc["dense_gmacs_literature"] + 1e-12
    assert sum(1 for r in doc["schedule"] if r) <= 3
    patch(small_model, method="stm", schedule=doc)
    assert small_model.merger.schedule == doc["schedule"]
    unpatch(small_model)
    with pytest.raises(ConfigError, match="probe"):
        calibrate(small_model, loader, "stm", flops=0.7, probe=0.7, progress=False)


def _folder(root, classes):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for j in range(2):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
                root / c / f"{j}.png")
    return root


def test_calibrate_cli_and_bad_input(tmp_path, capsys):
    arch = dict(depth=3, embed_dim=32, patch_size=8, stride=8, num_classes=3)
    ckpt = atomic_save({"model": vimstm.create_model("vim_tiny_cifar10", **arch).state_dict()},
                       tmp_path / "w.pth")
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in arch.items()]
    base = ["calibrate", "--model", "vim_tiny_cifar10", "--checkpoint", str(ckpt), *flags,
            "--workers", "0", "--method", "tome"]
    data = _folder(tmp_path / "train", ("a", "b", "c"))
    out = tmp_path / "s.json"
    assert main([*base, "--data", str(data), "--flops", "0.8", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "mean token reduction" in printed and "--schedule" in printed
    doc = json.loads(out.read_text())
    assert doc["format"] == "vimstm-schedule" and doc["depth"] == 3
    assert doc["calibration"]["images"] == 6 and doc["method"] == "tome"
    # the file drives eval; a model of another depth refuses it
    assert main(["eval", "--model", "vim_tiny_cifar10", "--checkpoint", str(ckpt), *flags,
                 "--data", str(data), "--workers", "0", "--no-progress", "--method", "tome",
                 "--schedule", str(out)]) == 0
    assert "mean token reduction" in capsys.readouterr().out
    assert main(["bench", "--model", "vim_tiny", "--device", "cpu", "--img-size", "32",
                 "--batch-size", "1", "--runs", "1", "--warmup", "0", "--method", "tome",
                 "--schedule", str(out)]) == 2
    assert "3-block model" in capsys.readouterr().err
    # classes that do not fit, a reduction out of range, an unwritable output
    wrong = _folder(tmp_path / "five", ("a", "b", "c", "d", "e"))
    assert main([*base, "--data", str(wrong), "--flops", "0.8", "--out", str(out)]) == 2
    assert "5 classes" in capsys.readouterr().err
    assert main([*base, "--data", str(data), "--reduction", "0.95", "--out", str(out)]) == 2
    assert "reduction" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main([*base, "--data", str(data), "--flops", "0.8",
                 "--out", str(blocker / "s.json")]) == 2
    assert "cannot be written" in capsys.readouterr().err
