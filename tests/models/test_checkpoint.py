"""Checkpoint formats, safety, clear errors and position-embedding interpolation."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import vimstm
from conftest import TINY
from vimstm.errors import CheckpointError
from vimstm.models.checkpoint import (
    atomic_save,
    atomic_write,
    checkpoint_format,
    interpolate_pos_embed,
    read_checkpoint,
)


class NotAllowed:  # a class that a safe unpickler must refuse
    def __init__(self):
        self.x = 1


def _logits(m, x):
    with torch.no_grad():
        return m.eval()(x)


@pytest.fixture
def src():
    return vimstm.create_model("vim_tiny", **TINY)


def test_release_file_loads(tmp_path, src):
    p = tmp_path / "vim_t.pth"
    torch.save({"model": src.state_dict()}, p)
    m = vimstm.create_model("vim_tiny", checkpoint=p, **TINY)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(_logits(m, x), _logits(src, x))


def test_training_checkpoint_with_namespace_and_ema(tmp_path, src):
    ema = vimstm.create_model("vim_tiny", **TINY)
    opt = torch.optim.AdamW(src.parameters())
    src(torch.randn(1, 3, 32, 32)).sum().backward()
    opt.step()
    ckpt = {
        "model": src.state_dict(),
        "model_ema": ema.state_dict(),
        "optimizer": opt.state_dict(),
        "epoch": 3,
        "args": argparse.Namespace(model="vim_tiny", lr=5e-4, data_path="/x"),
    }
    p = tmp_path / "checkpoint.pth"
    torch.save(ckpt, p)
    x = torch.randn(2, 3, 32, 32)
    m = vimstm.create_model("vim_tiny", checkpoint=p, **TINY)
    torch.testing.assert_close(_logits(m, x), _logits(src, x))
    m_ema = vimstm.create_model("vim_tiny", checkpoint=p, use_ema=True, **TINY)
    torch.testing.assert_close(_logits(m_ema, x), _logits(ema, x))


def test_plain_state_dict_with_ddp_prefix_and_safetensors(tmp_path, src):
    x = torch.randn(2, 3, 32, 32)
    p = tmp_path / "plain.pt"
    torch.save({f"module.{k}": v for k, v in src.state_dict().items()}, p)
    torch.testing.assert_close(
        _logits(vimstm.create_model("vim_tiny", checkpoint=p, **TINY), x), _logits(src, x)
    )
    p = tmp_path / "w.safetensors"
    save_file({k: v.half().contiguous() for k, v in src.state_dict().items()}, p)
    m = vimstm.create_model("vim_tiny", checkpoint=p, **TINY)
    assert m.pos_embed.dtype == torch.float32
    torch.testing.assert_close(_logits(m, x), _logits(src, x), rtol=0.05, atol=0.05)


def test_arbitrary_pickles_are_refused_unless_trusted(tmp_path, src):
    p = tmp_path / "evil.pth"
    torch.save({"model": src.state_dict(), "extra": NotAllowed()}, p)
    with pytest.raises(CheckpointError, match="trust"):
        vimstm.create_model("vim_tiny", checkpoint=p, **TINY)
    m = vimstm.create_model("vim_tiny", checkpoint=p, trust_checkpoint=True, **TINY)
    assert isinstance(m, vimstm.VisionMamba)


def test_wrong_model_names_keys_shapes_and_fitting_model(tmp_path):
    small = vimstm.create_model("vim_small", depth=1)
    p = tmp_path / "small.pth"
    torch.save({"model": small.state_dict()}, p)
    with pytest.raises(CheckpointError) as e:
        vimstm.create_model("vim_tiny", checkpoint=p, depth=1)
    msg = str(e.value)
    assert "shape mismatch" in msg and "embed_dim 384" in msg and "vim_tiny" in msg
    with pytest.raises(CheckpointError, match="missing key"):
        vimstm.create_model("vim_tiny", checkpoint=p, depth=2, embed_dim=384)


def test_truncated_empty_and_missing_files(tmp_path, src):
    p = tmp_path / "full.pth"
    torch.save({"model": src.state_dict()}, p)
    data = p.read_bytes()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        read_checkpoint(cut)
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        read_checkpoint(empty)
    with pytest.raises(CheckpointError, match="not found"):
        read_checkpoint(tmp_path / "nope.pth")
    good = atomic_save(src.state_dict(), tmp_path / "good.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        read_checkpoint(bad)


@pytest.mark.parametrize("trust", [False, True])
def test_format_comes_from_the_content(tmp_path, src, trust):
    """Text and random bytes are not checkpoints, whatever their name; a safetensors file named
    .pth loads; trust is advised only for readable files with objects outside the allow-list."""
    text = tmp_path / "notes.pth"
    text.write_text("epoch 1 loss 0.5\n")
    noise = tmp_path / "noise.pth"
    noise.write_bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8).numpy().tobytes())
    for f in (text, noise):
        with pytest.raises(CheckpointError, match="is not a checkpoint") as e:
            read_checkpoint(f, trust=trust)
        assert "trust" not in str(e.value)
    named = tmp_path / "weights.pth"
    named.write_bytes(atomic_save(src.state_dict(), tmp_path / "w.safetensors").read_bytes())
    assert checkpoint_format(named) == "safetensors"
    assert set(read_checkpoint(named, trust=trust)) == set(src.state_dict())
    zipped = tmp_path / "cut.pth"
    torch.save({"model": src.state_dict()}, tmp_path / "full.pth")
    zipped.write_bytes((tmp_path / "full.pth").read_bytes()[:3000])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as e:
        read_checkpoint(zipped, trust=trust)
    assert "--trust-checkpoint" not in str(e.value)


def test_text_checkpoint_is_one_line_in_eval_and_export(tmp_path, capsys):
    from vimstm.cli import main

    text = tmp_path / "notes.pth"
    text.write_text("hello\n")
    assert main(["export", str(text), "-o", str(tmp_path / "o.safetensors")]) == 2
    assert main(["eval", "--model", "vim_tiny", "--checkpoint", str(text), "--data",
                 str(tmp_path)]) == 2
    errs = capsys.readouterr().err.strip().splitlines()
    assert len(errs) == 2 and all("is not a checkpoint" in e for e in errs)


def test_pos_embed_interpolation_keeps_class_row(tmp_path, src):
    p = tmp_path / "w.pth"
    torch.save({"model": src.state_dict()}, p)
    big = vimstm.create_model("vim_tiny", checkpoint=p, **{**TINY, "img_size": 48})
    assert big.pos_embed.shape == (1, 37, 32)
    torch.testing.assert_close(big.pos_embed[:, 18], src.pos_embed[:, 8])
    assert big(torch.randn(1, 3, 48, 48)).shape == (1, 10)
    same = interpolate_pos_embed(src.pos_embed.detach(), 17, (4, 4))
    torch.testing.assert_close(same, src.pos_embed.detach())


def test_atomic_save_leaves_no_partial_files(tmp_path, src):
    p = tmp_path / "ckpt" / "last.pth"
    atomic_save({"model": src.state_dict()}, p)
    atomic_save({"model": src.state_dict(), "epoch": 2}, p)
    assert read_checkpoint(p)["epoch"] == 2
    assert os.listdir(p.parent) == ["last.pth"]


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    p = tmp_path / "log.jsonl"
    atomic_write(p, "one\n")

    def dies(tmp: str) -> None:
        Path(tmp).write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(p, dies)
    assert p.read_text() == "one\n" and os.listdir(tmp_path) == ["log.jsonl"]
    atomic_write(p, b"two\n")
    assert p.read_text() == "two\n"
