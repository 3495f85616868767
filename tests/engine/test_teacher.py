"""``vimstm teacher`` and ``vimstm train --teacher`` on tiny generated image folders (CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tests.engine.test_train import args_for, make_folder

from vimstm.cli import build_parser, main
from vimstm.engine import teacher as TE
from vimstm.engine import train as T
from vimstm.errors import CheckpointError, ConfigError, VimstmError
from vimstm.models.cnn import build_teacher, load_teacher, save_teacher


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("tdata")
    return {"train": make_folder(base / "train", ["cat", "dog", "frog"]),
            "val": make_folder(base / "val", ["cat", "dog", "frog"], per_class=3),
            "other": make_folder(base / "other", ["cat", "dog", "horse"], per_class=3)}


@pytest.fixture(scope="module")
def teacher_file(data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("teacher") / "t.safetensors"
    rc = main(["teacher", "--data", str(data["train"]), "--val-data", str(data["val"]),
               "-o", str(out), "--epochs", "2", "--batch-size", "8", "--workers", "0",
               "--lr", "0.02", "--eval-every", "1", "--cutout", "8"])
    assert rc == 0
    return out


def test_resnet_small_shapes() -> None:
    m = build_teacher("resnet18_small", 10)
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert 11.0e6 < sum(p.numel() for p in m.parameters()) < 11.3e6  # ResNet-18 for 10 classes
    with pytest.raises(ConfigError, match="unknown teacher architecture"):
        build_teacher("resnet1000", 10)


def test_augment_crops_and_flips_per_image() -> None:
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    g = torch.Generator().manual_seed(0)
    outs = [TE.augment(x, g) for _ in range(20)]
    assert all(o.shape == x.shape for o in outs)
    assert any(not torch.equal(o, x) for o in outs)  # not the identity
    # every output row is a window of a (possibly flipped) padded row of the same image
    padded = torch.nn.functional.pad(x, (TE.PAD,) * 4, mode="reflect")
    o = outs[0][0, 0, 0]
    rows = [padded[0, 0, r] for r in range(padded.shape[2])]
    wins = [w[k:k + 8] for w in rows for k in range(2 * TE.PAD + 1)]
    assert any(torch.equal(o, w) or torch.equal(o, w.flip(0)) for w in wins)


def test_augment_cutout_zeroes_one_clipped_square_per_image() -> None:
    x = torch.ones(64, 1, 8, 8)
    g = torch.Generator().manual_seed(0)
    out = TE.augment(x, g, cutout=4)
    holes = out == 0
    sizes = holes.sum((1, 2, 3))
    assert sizes.max() == 16 and sizes.min() >= 4  # 4x4 inside, at least 2x2 at a corner
    assert (sizes < 16).any()  # some squares clipped at the border
    for k in range(64):  # each hole is one axis-aligned rectangle
        rows, cols = holes[k, 0].nonzero(as_tuple=True)
        r0, r1, c0, c1 = rows.min(), rows.max(), cols.min(), cols.max()
        assert holes[k, 0, r0:r1 + 1, c0:c1 + 1].all()
        assert (r1 - r0 + 1) * (c1 - c0 + 1) == sizes[k]
    g0, g1 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    assert torch.equal(TE.augment(x, g0, cutout=0), TE.augment(x, g1))  # 0 is off


def test_teacher_file_round_trip(teacher_file: Path, data: dict[str, Path],
                                 tmp_path: Path) -> None:
    model, info = load_teacher(teacher_file)
    assert info["classes"] == ["cat", "dog", "frog"] and info["architecture"] == "resnet18_small"
    from vimstm.models.checkpoint import safetensors_metadata

    assert safetensors_metadata(teacher_file)["cutout"] == "8"
    assert len(info["mean"]) == 3 and all(0 < s < 1 for s in info["std"])
    assert not any(p.requires_grad for p in model.parameters()) and not model.training
    again = tmp_path / "again.safetensors"
    save_teacher(model, again, "resnet18_small", info["classes"], info["mean"], info["std"])
    m2, _ = load_teacher(again)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model(x), m2(x))


def test_teacher_rejects_wrong_files(tmp_path: Path, data: dict[str, Path]) -> None:
    from safetensors.torch import save_file

    bad = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(bad))
    with pytest.raises(CheckpointError, match="not a teacher file"):
        load_teacher(bad)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file at all")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_teacher(junk)
    with pytest.raises(ConfigError, match="no such file"):
        T.fit(args_for("train", data, tmp_path / "r", "--teacher", str(tmp_path / "none")))


def test_train_with_teacher_logs_both_terms(teacher_file: Path, data: dict[str, Path],
                                            tmp_path: Path) -> None:
    out = tmp_path / "student"
    T.fit(args_for("train", data, out, "--epochs", "1", "--teacher", str(teacher_file)))
    entry = json.loads((out / "log.jsonl").read_text().splitlines()[-1])
    assert entry["train_ce"] > 0 and entry["train_kd"] > 0
    # soft distillation at T=2 gives another distillation term than the hard kind
    out2 = tmp_path / "soft"
    T.fit(args_for("train", data, out2, "--epochs", "1", "--teacher", str(teacher_file),
                   "--distill-type", "soft", "--distill-temp", "2"))
    soft = json.loads((out2 / "log.jsonl").read_text().splitlines()[-1])
    assert soft["train_kd"] != pytest.approx(entry["train_kd"])


def test_teacher_flags_are_checked(teacher_file: Path, data: dict[str, Path],
                                   tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="without --teacher would be ignored"):
        T._validate(args_for("train", data, tmp_path / "a", "--distill-alpha", "0.5"))
    with pytest.raises(ConfigError, match="--distill-temp is for --distill-type soft"):
        T._validate(args_for("train", data, tmp_path / "b", "--teacher", str(teacher_file),
                             "--distill-temp", "2"))
    with pytest.raises(ConfigError, match="--distill-alpha must be in"):
        T._validate(args_for("train", data, tmp_path / "c", "--teacher", str(teacher_file),
                             "--distill-alpha", "2"))
    other = args_for("train", data, tmp_path / "d", "--epochs", "1", "--teacher",
                     str(teacher_file))
    other.data = str(data["other"])
    other.val_data = None
    with pytest.raises(VimstmError, match="horse"):
        T.fit(other)


def test_teacher_command_checks_before_work(data: dict[str, Path], tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    p = build_parser()
    args = p.parse_args(["teacher", "--data", str(data["train"]), "-o",
                         str(blocker / "t.safetensors"), "--workers", "0"])
    with pytest.raises(ConfigError, match="cannot be written"):
        TE.run_teacher(args)
    args = p.parse_args(["teacher", "--data", str(data["train"]), "-o",
                         str(tmp_path / "t.safetensors"), "--epochs", "0"])
    with pytest.raises(ConfigError, match="--epochs must be at least 1"):
        TE.run_teacher(args)
    args = p.parse_args(["teacher", "--data", str(data["train"]), "-o",
                         str(tmp_path / "t.safetensors"), "--cutout", "-1"])
    with pytest.raises(ConfigError, match="--cutout must be >= 0"):
        TE.run_teacher(args)
    args = p.parse_args(["teacher", "--data", str(data["train"]), "-o",
                         str(tmp_path / "t.safetensors"), "--cutout", "33", "--workers", "0"])
    with pytest.raises(ConfigError, match="--cutout 33 is larger than the images"):
        TE.run_teacher(args)
    assert not (tmp_path / "t.safetensors").exists()


def test_teachers_ensemble_mean_of_mapped_inputs(teacher_file: Path, tmp_path: Path) -> None:
    """Several teacher files act as one: the mean of each one's logits on the student's batch
    mapped to that teacher's own normalisation."""
    from vimstm.models.cnn import load_teachers

    m1, info = load_teacher(teacher_file)
    m2 = build_teacher("resnet18_small", 3).eval()
    second = tmp_path / "second.safetensors"
    t_mean, t_std = (0.3, 0.4, 0.5), (0.2, 0.25, 0.3)
    save_teacher(m2, second, "resnet18_small", info["classes"], t_mean, t_std)
    s_mean, s_std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    ens, classes = load_teachers([teacher_file, second], s_mean, s_std)
    assert classes == info["classes"] and not ens.train().training
    x = torch.randn(2, 3, 32, 32)  # normalised with the student's statistics
    pixels = x * torch.tensor(s_std).view(1, 3, 1, 1) + torch.tensor(s_mean).view(1, 3, 1, 1)

    def fed(model: torch.nn.Module, mean: tuple, std: tuple) -> torch.Tensor:
        return model((pixels - torch.tensor(mean).view(1, 3, 1, 1))
                     / torch.tensor(std).view(1, 3, 1, 1))

    m2_loaded, _ = load_teacher(second)
    want = (fed(m1, info["mean"], info["std"]) + fed(m2_loaded, t_mean, t_std)) / 2
    torch.testing.assert_close(ens(x), want, rtol=1e-4, atol=1e-4)
    other = tmp_path / "other.safetensors"
    save_teacher(m2, other, "resnet18_small", ["a", "b", "c"], t_mean, t_std)
    with pytest.raises(CheckpointError, match="predicts other classes"):
        load_teachers([teacher_file, other], s_mean, s_std)


def test_train_with_two_teachers(teacher_file: Path, data: dict[str, Path],
                                 tmp_path: Path) -> None:
    _, info = load_teacher(teacher_file)
    second = tmp_path / "second.safetensors"
    save_teacher(build_teacher("resnet18_small", 3), second, "resnet18_small", info["classes"],
                 info["mean"], info["std"])
    out = tmp_path / "student"
    T.fit(args_for("train", data, out, "--epochs", "1", "--teacher", str(teacher_file),
                   str(second)))
    entry = json.loads((out / "log.jsonl").read_text().splitlines()[-1])
    assert entry["train_kd"] > 0
    with pytest.raises(ConfigError, match="no such file"):
        T._validate(args_for("train", data, tmp_path / "r", "--teacher", str(teacher_file),
                             str(tmp_path / "none")))
