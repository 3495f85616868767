"""``vimstm train`` / ``finetune`` / ``export`` on tiny models and tiny generated image folders."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vimstm.cli import build_parser, main
from vimstm.engine import train as T
from vimstm.engine.train_state import iter_history
from vimstm.errors import ConfigError, DataError, VimstmError
from vimstm.models.checkpoint import export_weights, read_checkpoint

TINY = ["--model", "vim_tiny", "--depth", "2", "--embed-dim", "32", "--img-size", "32",
        "--patch-size", "8", "--stride", "8", "--d-state", "4"]


def make_folder(root: Path, classes: list[str], per_class: int = 8) -> Path:
    rng = np.random.default_rng(len(classes) * 100 + per_class)
    for i, c in enumerate(classes):
        (root / c).mkdir(parents=True, exist_ok=True)
        for j in range(per_class):
            a = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            a[..., i % 3] = 220  # a learnable colour cue per class
            Image.fromarray(a).save(root / c / f"{j:03d}.png")
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("data")
    return {
        "train": make_folder(base / "train", ["cat", "dog", "frog"]),
        "val": make_folder(base / "val", ["cat", "dog", "frog"], per_class=3),
        "other": make_folder(base / "other", ["cat", "dog", "horse"], per_class=3),
    }


def args_for(command: str, data: dict[str, Path], out: Path, *extra: str) -> argparse.Namespace:
    argv = [command, *TINY, "--data", str(data["train"]), "--val-data", str(data["val"]),
            "--batch-size", "8", "--workers", "0", "--output", str(out), "--no-progress",
            "--warmup-epochs", "1", "--lr", "2e-3", *extra]
    return build_parser().parse_args(argv)


@pytest.fixture(scope="module")
def trained(data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-epoch run with EMA, uninterrupted (the reference for the resume test)."""
    out = tmp_path_factory.mktemp("run") / "full"
    T.fit(args_for("train", data, out, "--epochs", "2", "--model-ema"))
    return out


def test_train_writes_checkpoint_and_log(trained: Path) -> None:
    assert (trained / "last.pth").is_file() and (trained / "best.pth").is_file()
    log = list(iter_history(trained))
    assert [e["epoch"] for e in log] == [0, 1]
    for key in ("train_loss", "lr", "train_top1", "val_top1", "ema_top1", "images_per_s",
                "epoch_seconds"):
        assert key in log[0]
    ckpt = read_checkpoint(trained / "last.pth")  # weights_only: only tensors and plain data
    assert ckpt["epoch"] == 1 and ckpt["step"] == 2 * 3  # 24 images / batch 8 = 3 steps
    assert ckpt["classes"] == ["cat", "dog", "frog"]
    assert ckpt["args"]["model"] == "vim_tiny" and ckpt["model_ema"] is not None
    assert len(ckpt["history"]) == 2
    # the schedule decayed: the last lr is far below the peak
    assert log[-1]["lr"] < 0.5 * 2e-3


def test_resume_after_kill_equals_uninterrupted(
    trained: Path, data: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "killed"
    real = T._train_one_epoch
    calls = []

    def dies_in_epoch_2(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(T, "_train_one_epoch", dies_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        T.fit(args_for("train", data, out, "--epochs", "2", "--model-ema"))
    assert read_checkpoint(out / "last.pth")["epoch"] == 0  # only epoch 1 survived
    monkeypatch.setattr(T, "_train_one_epoch", real)
    T.fit(args_for("train", data, out, "--epochs", "2", "--model-ema", "--resume", "auto"))

    a, b = read_checkpoint(trained / "last.pth"), read_checkpoint(out / "last.pth")
    assert (a["epoch"], a["step"]) == (b["epoch"], b["step"])
    for key in ("model", "model_ema"):
        for k in a[key]:
            torch.testing.assert_close(a[key][k], b[key][k], rtol=0, atol=0, msg=f"{key}.{k}")
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert all(torch.equal(sa[i]["exp_avg"], sb[i]["exp_avg"]) for i in sa)
    la, lb = list(iter_history(trained)), list(iter_history(out))
    assert [e["train_loss"] for e in la] == [e["train_loss"] for e in lb]


def test_mixing_tail_and_sparse_evaluation(data: dict[str, Path], tmp_path: Path) -> None:
    """--mixup-off-epoch 3: epochs 1-2 mix, 3 does not; --eval-every 2: epochs 2 and 3 (the
    last) are evaluated, epoch 1 is not."""
    out = tmp_path / "tail"
    T.fit(args_for("train", data, out, "--epochs", "3", "--limit-train", "16", "--mixup", "0.8",
                   "--cutmix", "1.0", "--mixup-off-epoch", "3", "--eval-every", "2"))
    log = list(iter_history(out))
    assert [e["mixing"] for e in log] == [True, True, False]
    assert ["val_top1" in e for e in log] == [False, True, True]
    assert log[0]["best_top1"] is None and log[2]["best_top1"] >= log[1]["val_top1"]
    for bad, msg in ((["--mixup-off-epoch", "1"], "must be in \\[2, --epochs 3\\]"),
                     (["--mixup-off-epoch", "4"], "must be in"),
                     (["--mixup", "0", "--cutmix", "0", "--mixup-off-epoch", "2"],
                      "would be ignored"),
                     (["--eval-every", "0"], "--eval-every must be at least 1")):
        with pytest.raises(ConfigError, match=msg):
            T._validate(args_for("train", data, tmp_path / "x", "--epochs", "3", *bad))


def test_unwritable_output_fails_before_training(data: dict[str, Path], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    monkeypatch.setattr(T, "_fit", lambda *a: pytest.fail("training started"))
    with pytest.raises(VimstmError, match=r"--output .* cannot be written"):
        T.fit(args_for("train", data, blocker / "run", "--epochs", "1"))
    # through the CLI: one line, exit status 2
    argv = ["train", *TINY, "--data", str(data["train"]), "--output", str(blocker / "run"),
            "--epochs", "1", "--workers", "0"]
    assert main(argv) == 2


def test_full_disk_fails_before_training(data: dict[str, Path], tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(T.shutil, "disk_usage",
                        lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    monkeypatch.setattr(T, "_train_one_epoch", lambda *a, **k: pytest.fail("training started"))
    with pytest.raises(VimstmError, match="not enough free disk space"):
        T.fit(args_for("train", data, tmp_path / "run", "--epochs", "1"))


def test_class_mismatch_is_a_clear_error(data: dict[str, Path], trained: Path,
                                         tmp_path: Path) -> None:
    # validation classes differ from the training classes
    a = args_for("train", data, tmp_path / "a", "--epochs", "1")
    a.val_data = str(data["other"])
    with pytest.raises(DataError, match="horse"):
        T.fit(a)
    # the model's pinned number of classes differs from the data's
    with pytest.raises(DataError, match="has 5 outputs"):
        T.fit(args_for("train", data, tmp_path / "b", "--epochs", "1", "--num-classes", "5"))
    # resuming a run on data with other classes
    run = tmp_path / "c"
    shutil.copytree(trained, run)
    c = args_for("train", data, run, "--epochs", "3", "--resume", "auto")
    c.data, c.val_data = str(data["other"]), None
    with pytest.raises(DataError, match="differ from those of checkpoint"):
        T.fit(c)


def test_distill_loss() -> None:
    s = torch.randn(4, 10)
    assert T.distill_loss(s, s.clone(), 2.0).abs().item() < 1e-6
    t = torch.randn(4, 10)
    kl = torch.nn.functional.kl_div(s.log_softmax(-1), t.softmax(-1), reduction="batchmean")
    torch.testing.assert_close(T.distill_loss(s, t, 1.0), kl)
    assert T.distill_loss(s, t, 4.0).item() > 0


def test_finetune_with_distillation(data: dict[str, Path], trained: Path, tmp_path: Path) -> None:
    out = tmp_path / "ft"
    a = args_for("finetune", data, out, "--checkpoint", str(trained / "last.pth"),
                 "--epochs", "1", "--limit-train", "16", "--method", "stm", "--ratio", "0.25")
    assert a.lr == 2e-3 and a.distill_alpha == pytest.approx(1 / 3)
    last = T.fit(a)
    assert last["train_kd"] >= 0 and np.isfinite(last["train_ce"])
    assert last["tokens_per_block"][0] == 17 and last["tokens_per_block"][-1] == 17 - 4
    ckpt = read_checkpoint(out / "last.pth")
    assert ckpt["args"]["method"] == "stm" and ckpt["step"] == 2
    # the student moved away from the dense weights, the teacher was not saved
    dense = read_checkpoint(trained / "last.pth")["model"]
    assert any(not torch.equal(dense[k], v) for k, v in ckpt["model"].items())
    # R-MeeTo's defaults without overrides
    d = build_parser().parse_args(["finetune", "--model", "vim_tiny", "--data", "x",
                                   "--output", "y"])
    assert (d.lr, d.min_lr, d.epochs, d.warmup_epochs, d.weight_decay) == (2e-5, 1e-6, 30, 0,
                                                                           0.05)


def test_finetune_classes_must_match_checkpoint(data: dict[str, Path], trained: Path,
                                                tmp_path: Path) -> None:
    a = args_for("finetune", data, tmp_path / "ft", "--checkpoint", str(trained / "last.pth"),
                 "--epochs", "1", "--method", "stm", "--ratio", "0.25")
    a.data, a.val_data = str(data["other"]), None
    with pytest.raises(DataError, match="horse"):
        T.fit(a)


def test_export_fp16_and_reload(trained: Path, tmp_path: Path) -> None:
    from safetensors import safe_open

    from vimstm import create_model

    out = tmp_path / "w.safetensors"
    assert main(["export", str(trained), "-o", str(out)]) == 0
    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
        dtypes = {k: f.get_tensor(k).dtype for k in f.keys()}  # noqa: SIM118
    assert json.loads(meta["classes"]) == ["cat", "dog", "frog"] and meta["weights"] == "ema"
    assert dtypes["layers.0.mixer.in_proj.weight"] == torch.float16
    assert dtypes["layers.0.mixer.A_log"] == torch.float32
    kw = dict(depth=2, embed_dim=32, img_size=32, patch_size=8, stride=8, d_state=4,
              num_classes=3)
    half = create_model("vim_tiny", checkpoint=out, **kw).eval()
    full = create_model("vim_tiny", checkpoint=trained / "last.pth", use_ema=True, **kw).eval()
    assert all(p.dtype == torch.float32 for p in half.parameters())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(half(x), full(x), rtol=0, atol=2e-2)
    with pytest.raises(VimstmError, match="no EMA"):
        export_weights(out, tmp_path / "again.safetensors", use_ema=True)


def test_max_minutes_stops_cleanly_after_an_epoch(data: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "timed"
    T.fit(args_for("train", data, out, "--epochs", "3", "--max-minutes", "1e-4"))
    assert [e["epoch"] for e in iter_history(out)] == [0]
    assert read_checkpoint(out / "last.pth")["epoch"] == 0


def test_limit_val_keeps_every_class(data: dict[str, Path], tmp_path: Path) -> None:
    """Class-sorted validation data: --limit-val must not keep only the first class."""
    from vimstm.models.registry import get_spec

    args = args_for("train", data, tmp_path / "out", "--limit-val", "3")
    spec = get_spec(args.model)
    _, val, _, _ = T._open_data(args, {"mean": spec.mean, "std": spec.std}, 32)
    assert len(val) == 3
    assert sorted(val.dataset.targets[i] for i in val.indices) == [0, 1, 2]


@pytest.mark.parametrize("flag", [["--limit-train", "0"], ["--limit-train", "-3"],
                                  ["--limit-val", "0"], ["--limit-val", "-5"]])
def test_bad_limits_fail_before_any_work(flag: list[str], data: dict[str, Path],
                                         tmp_path: Path) -> None:
    from vimstm.errors import ConfigError

    with pytest.raises(ConfigError, match=f"{flag[0]} must be at least 1"):
        T.fit(args_for("train", data, tmp_path / "out", *flag))
    assert not (tmp_path / "out").exists()


def test_finetune_without_a_method_is_refused(data: dict[str, Path], trained: Path,
                                              tmp_path: Path, capsys) -> None:
    from vimstm.errors import ConfigError

    with pytest.raises(ConfigError, match="give a merging method"):
        T.fit(args_for("finetune", data, tmp_path / "ft", "--checkpoint",
                       str(trained / "last.pth")))
    # a schedule alone means STM, and says so
    a = args_for("finetune", data, tmp_path / "ft2", "--checkpoint", str(trained / "last.pth"),
                 "--ratio", "0.25", "--epochs", "1", "--limit-train", "8")
    T._validate(a)
    assert a.method == "stm" and "merging with stm" in capsys.readouterr().err


def test_finetune_dense_control_by_name(data: dict[str, Path], trained: Path,
                                        tmp_path: Path) -> None:
    """--method dense fine-tunes the unmerged model with the same recipe (the control); with a
    schedule it would be ignored, so that is refused."""
    from vimstm.errors import ConfigError

    ck = ["--checkpoint", str(trained / "last.pth")]
    with pytest.raises(ConfigError, match="would be ignored"):
        T._validate(args_for("finetune", data, tmp_path / "x", *ck, "--method", "dense",
                             "--ratio", "0.25"))
    out = tmp_path / "dense"
    T.fit(args_for("finetune", data, out, *ck, "--method", "dense", "--epochs", "1",
                   "--limit-train", "8"))
    log = list(iter_history(out))
    assert len(log) == 1 and "train_kd" in log[0] and "tokens_per_block" not in log[0]
    # α = 0: a plain cycle of training from the weights, no teacher run
    out0 = tmp_path / "plain"
    T.fit(args_for("finetune", data, out0, *ck, "--method", "dense", "--epochs", "1",
                   "--limit-train", "8", "--distill-alpha", "0"))
    log = list(iter_history(out0))
    assert len(log) == 1 and "train_kd" not in log[0] and np.isfinite(log[0]["train_loss"])


def test_finetune_of_a_model_without_weights_is_refused(data: dict[str, Path],
                                                        tmp_path: Path) -> None:
    from vimstm.errors import ConfigError

    with pytest.raises(ConfigError, match=r"random weights.*--pretrained"):
        T.fit(args_for("finetune", data, tmp_path / "ft", "--method", "stm", "--ratio", "0.25"))


def test_epoch_img_size_ramps_from_min_res_to_full() -> None:
    sizes = [T.epoch_img_size(e, 10, 32, 16, (0.2, 0.6), 4) for e in range(10)]
    assert sizes[:2] == [16, 16] and sizes[6:] == [32] * 4
    assert sizes == sorted(sizes) and all((s - 16) % 4 == 0 for s in sizes)
    assert [T.epoch_img_size(e, 10, 32, None, (0.2, 0.6), 4) for e in range(3)] == [32] * 3


def test_progressive_resizing_trains_small_then_full(data: dict[str, Path],
                                                     tmp_path: Path) -> None:
    out = tmp_path / "prog"
    T.fit(args_for("train", data, out, "--epochs", "2", "--min-res", "16",
                   "--res-ramp", "0.5", "0.5"))
    log = list(iter_history(out))
    assert log[0]["train_img_size"] == 16 and "train_img_size" not in log[1]
    assert "val_top1" in log[1]  # validated at the model's size


@pytest.mark.parametrize("flags, match", [
    (["--min-res", "32"], "must be smaller than the image size"),
    (["--min-res", "20"], "does not fit the patch grid"),
    (["--min-res", "16", "--res-ramp", "0.6", "0.2"], "--res-ramp START END"),
])
def test_bad_min_res_is_refused_before_training(flags: list[str], match: str,
                                                data: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(VimstmError, match=match):
        T.fit(args_for("train", data, tmp_path / "out", "--epochs", "1", *flags))
    assert not (tmp_path / "out" / "last.pth").exists()


def test_train_starts_from_given_weights(trained: Path, data: dict[str, Path],
                                         tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """--checkpoint on `train`: a fresh run starts from those weights (here the EMA of a run,
    --use-ema); a resumed run keeps its own and says so; bad flags fail before any work."""
    init = read_checkpoint(trained / "last.pth")["model_ema"]
    out = tmp_path / "stage2"
    tiny_lr = ("--epochs", "1", "--lr", "1e-9", "--min-lr", "1e-10", "--warmup-epochs", "0")
    T.fit(args_for("train", data, out, *tiny_lr, "--checkpoint", str(trained / "last.pth"),
                   "--use-ema"))
    assert "starting from the weights of" in capsys.readouterr().out
    fresh = tmp_path / "fresh"  # the same run without --checkpoint: its own initialisation
    T.fit(args_for("train", data, fresh, *tiny_lr))
    after = read_checkpoint(out / "last.pth")["model"]
    other = read_checkpoint(fresh / "last.pth")["model"]
    for k in ("head.weight", "layers.0.mixer.in_proj.weight", "pos_embed"):
        torch.testing.assert_close(after[k], init[k], rtol=0, atol=1e-6)
        assert (other[k] - init[k]).abs().max() > 1e-4
    T.fit(args_for("train", data, out, "--epochs", "2", "--resume", "auto",
                   "--checkpoint", str(trained / "last.pth")))
    assert "the run's own weights continue" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="no such file"):
        T._validate(args_for("train", data, tmp_path / "x", "--checkpoint",
                             str(tmp_path / "missing.pth")))
    with pytest.raises(ConfigError, match="--use-ema without --checkpoint"):
        T._validate(args_for("train", data, tmp_path / "y", "--use-ema"))


def test_holdout_is_trained_without_and_evaluated(data: dict[str, Path], tmp_path: Path) -> None:
    """--holdout 6 of 24 images: 2 per class, never in the training subset (with --limit-train
    either), the same whatever the seed; logged as holdout_top1 beside --val-data's val_top1,
    best.pth follows the held-out score; --eval-start scores the starting weights."""
    from vimstm.models.registry import get_spec

    spec = get_spec("vim_tiny")
    cfg = {"mean": spec.mean, "std": spec.std}
    sets = {}
    for seed, extra in ((0, []), (1, ["--limit-train", "10"])):
        a = args_for("train", data, tmp_path / "x", "--holdout", "6", "--seed", str(seed), *extra)
        train, _, held, _ = T._open_data(a, cfg, 32)
        sets[seed] = (set(train.indices), list(held.indices))
        assert held.dataset.transform is not train.dataset.transform  # no augmentation
        labels = [held.dataset.targets[i] for i in held.indices]
        assert sorted(labels) == [0, 0, 1, 1, 2, 2]
        assert not sets[seed][0] & set(held.indices)
    assert sets[0][1] == sets[1][1] and len(sets[0][0]) == 18 and len(sets[1][0]) == 10

    out = tmp_path / "run"
    T.fit(args_for("train", data, out, "--epochs", "1", "--holdout", "6", "--model-ema",
                   "--eval-start"))
    (e,) = list(iter_history(out))
    for key in ("holdout_top1", "holdout_ema_top1", "val_top1", "ema_top1"):
        assert 0 <= e[key] <= 100
    assert e["best_on"] == "holdout"
    assert e["best_top1"] == max(e["holdout_top1"], e["holdout_ema_top1"])
    assert read_checkpoint(out / "last.pth")["step"] == 2  # 18 images / batch 8
    start = json.loads((out / "start_eval.json").read_text())
    assert {"holdout_top1", "val_top1"} <= set(start) and start["weights"] == "start"


def test_eval_start_of_finetune_scores_the_given_weights(data: dict[str, Path], trained: Path,
                                                          tmp_path: Path) -> None:
    """The dense fine-tune's start score is the checkpoint's own top-1 on the held-out images,
    measured independently here."""
    from vimstm import create_model
    from vimstm.data import holdout_split, open_dataset
    from vimstm.engine.evaluate import evaluate

    out = tmp_path / "ft"
    T.fit(build_parser().parse_args(
        ["finetune", *TINY, "--data", str(data["train"]), "--holdout", "9", "--eval-start",
         "--checkpoint", str(trained / "last.pth"), "--method", "dense", "--epochs", "1",
         "--batch-size", "8", "--workers", "0", "--output", str(out), "--no-progress"]))
    start = json.loads((out / "start_eval.json").read_text())
    assert "val_top1" not in start and "val_top1" not in next(iter_history(out))

    model = create_model("vim_tiny", checkpoint=trained / "last.pth", depth=2, embed_dim=32,
                         img_size=32, patch_size=8, stride=8, d_state=4, num_classes=3).eval()
    ds = open_dataset(data["train"], transform=T.eval_transform(32, crop_pct=1.0,
                                                                mean=model.default_cfg["mean"],
                                                                std=model.default_cfg["std"]))
    _, held = holdout_split(ds.targets, 9)
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(ds, held), batch_size=64,
                                         collate_fn=T.collate_skip)
    top1 = evaluate(model, loader, device=torch.device("cpu"), amp=None, progress=False)["top1"]
    assert start["holdout_top1"] == pytest.approx(float(top1))


@pytest.mark.parametrize(("flags", "match"), [
    (["--holdout", "0"], "--holdout must be at least 1"),
    (["--holdout", "24"], "between 1 and 23"),
    (["--holdout", "2"], "fewer than the 3 classes"),
])
def test_bad_holdout_is_refused(flags: list[str], match: str, data: dict[str, Path],
                                tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=match):
        T.fit(args_for("train", data, tmp_path / "out", *flags))


def test_eval_start_and_limit_val_need_images(data: dict[str, Path], tmp_path: Path) -> None:
    for flag, match in (("--eval-start", "--eval-start without"),
                        ("--limit-val", "--limit-val without")):
        a = args_for("train", data, tmp_path / "out", flag, *(["3"] if flag == "--limit-val"
                                                               else []))
        a.val_data = None
        with pytest.raises(ConfigError, match=match):
            T.fit(a)
        assert not (tmp_path / "out").exists()
