"""The papers' reduction ratio, the even-blocks preset and schedule files."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from vimstm.errors import ConfigError
from vimstm.flops import count_flops
from vimstm.merge import add_merge_args, patch, patch_from_args, unpatch
from vimstm.merge.schedule import (
    even_blocks,
    even_blocks_r,
    from_reduction,
    mean_token_reduction,
    schedule_document,
)


@pytest.mark.parametrize("r, published", [(5, 0.17), (8, 0.27), (11, 0.36), (14, 0.46)])
def test_even_blocks_reproduces_the_papers_ratios(r, published):
    # AMVim: r tokens before every even block (0, 2, ..., 22) of a 24-block model, 196 patches
    pre, sched = even_blocks(24, r)
    assert pre == r and sched == [r if i % 2 == 1 else 0 for i in range(23)]
    assert round(mean_token_reduction(sched, 24, 196, pre), 2) == published
    assert even_blocks_r(24, 196, published) == r


def test_rmeeto_readme_ratios():
    # R-MeeTo merges before blocks 2, 4, ..., 22 (vimstm: every=2); its README calls r = 5 on
    # Vim-Ti and r = 11 on Vim-S/B "reduction ratios 0.14 and 0.31"
    for r, published in ((5, 0.14), (11, 0.31)):
        sched = [r if i % 2 == 1 else 0 for i in range(23)]
        assert round(mean_token_reduction(sched, 24, 196), 2) == published


def test_reduction_any_every_and_shape():
    for every, shape in ((1, "even"), (6, "geometric"), (3, "even")):
        s = from_reduction(24, 196, 0.25, every=every, shape=shape)
        assert abs(mean_token_reduction(s, 24, 196) - 0.25) <= 0.5 / 196 * 24
        assert all(v == 0 for i, v in enumerate(s) if (i + 1) % every)
    with pytest.raises(ConfigError, match="not reachable"):
        from_reduction(24, 196, 0.85, every=12)  # one step before block 12 reaches ~0.45


def test_patch_reduction_and_report(small_model):
    patch(small_model, method="stm", reduction=0.2, schedule="even-blocks", protect=0)
    rep = count_flops(small_model)
    sched, pre = list(small_model.merger.schedule), small_model.merger.pre
    unpatch(small_model)
    assert sched[0] == sched[2] == 0 and sched[1] == pre > 0  # before blocks 0 and 2 of 4
    assert rep.tokens_per_block == [65 - pre, 65 - pre, 65 - 2 * pre, 65 - 2 * pre]
    assert rep.mean_token_reduction == pytest.approx(mean_token_reduction(sched, 4, 64, pre))
    assert rep.mean_token_reduction == pytest.approx(0.2, abs=0.75 / 64)  # r steps: 1.5/64
    assert rep.token_ratio == pytest.approx(2 * pre / 64)
    assert rep.tokens_last_block == 65 - 2 * pre
    point = rep.operating_point()
    assert set(point) == {"mean_token_reduction", "ratio", "tokens_last_block",
                          "gmacs_literature", "gmacs_full"}
    patch(small_model, method="tome", r=3, schedule="even-blocks")
    assert (small_model.merger.pre, small_model.merger.schedule) == (3, [0, 3, 0])
    unpatch(small_model)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(reduction=0.9), "reduction"),
        (dict(reduction=-0.01), "reduction"),
        (dict(reduction=0.2, ratio=0.2), "only one"),
        (dict(reduction=0.2, schedule="odd-blocks"), "neither a preset"),
        (dict(reduction=0.2, schedule="even-blocks", every=3), "fixes every"),
        (dict(reduction=0.2, schedule="even-blocks", similarity="b"), "before block 0"),
        (dict(method="mtr", r=2, schedule="even-blocks"), "before block 0"),
    ],
)
def test_reduction_errors(small_model, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        patch(small_model, **{"method": "stm", **kwargs})
    assert small_model.merger is None


def test_schedule_file_round_trip_and_errors(small_model, tmp_path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps(schedule_document([6, 4, 2], 4, 64, method="stm")))
    patch(small_model, method="stm", schedule=str(path))
    assert small_model.merger.schedule == [6, 4, 2]
    unpatch(small_model)
    p = argparse.ArgumentParser()
    add_merge_args(p)
    patch_from_args(small_model, p.parse_args(["--method", "mtr", "--schedule", str(path)]))
    assert small_model.merger.schedule == [6, 4, 2]
    unpatch(small_model)
    other = tmp_path / "deep.json"
    other.write_text(json.dumps(schedule_document([2] * 23, 24, 196)))
    with pytest.raises(ConfigError, match="24-block model but this model has 4"):
        patch(small_model, method="stm", schedule=str(other))
    with pytest.raises(ConfigError, match="drop ratio"):
        patch(small_model, method="stm", schedule=str(path), ratio=0.2)
    with pytest.raises(ConfigError, match="does not exist"):
        patch(small_model, method="stm", schedule=str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"schedule": [1, 1, 1]}))
    with pytest.raises(ConfigError, match="not a vimstm schedule"):
        patch(small_model, method="stm", schedule=str(bad))
    assert small_model.merger is None


@pytest.mark.parametrize("method", ["stm", "tome", "rmeeto", "prune-norm", "random"])
def test_merge_before_block_0(small_model, method):
    """The even-blocks schedule's first step merges the embeddings: block 0 sees fewer tokens,
    the class token stays itself at its true index, and r=0 is the dense model exactly."""
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        dense = small_model(x)
    extra = {"seed": 0} if method == "random" else {}
    patch(small_model, method=method, r=0, schedule="even-blocks", **extra)
    with torch.no_grad():
        assert torch.equal(small_model(x), dense)
    patch(small_model, method=method, r=6, schedule="even-blocks", trace_source=True, **extra)
    seen = []
    h = small_model.layers[0].register_forward_pre_hook(lambda _m, a: seen.append(a[0].shape[1]))
    try:
        with torch.no_grad():
            out = small_model(x)
        info = small_model.merge_info
    finally:
        h.remove()
        unpatch(small_model)
    assert seen == [65 - 6] and info["tokens_per_block"] == [59, 59, 53, 53]
    c = info["cls_index_per_block"][-1]
    assert (info["source"][:, c, 32] == 1).all() and info["source"][:, c].sum() == 2
    assert out.shape == dense.shape and torch.isfinite(out).all()


def test_every_command_takes_reduction_and_schedule():
    from vimstm.cli import build_parser

    parser = build_parser()
    common = ["--reduction", "0.2", "--schedule", "even-blocks"]
    for argv in (["eval", "--model", "m", "--data", "d", "--method", "stm", *common],
                 ["bench", "--method", "stm", *common],
                 ["finetune", "--model", "m", "--data", "d", "--output", "o", "--method", "stm",
                  *common],
                 ["sweep", "--model", "m", "--axis", "reduction", "--schedule", "s.json"]):
        args = parser.parse_args(argv)
        assert args.schedule in ("even-blocks", "s.json")
