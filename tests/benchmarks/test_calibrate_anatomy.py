"""benchmarks/calibrate_anatomy.py: each step's tokens, STM's cap there and the modelled KL, on a
4-block, dim-16 model with random weights (only the bookkeeping is checked)."""

from __future__ import annotations

import pytest

import vimstm
from conftest import load_script
from vimstm.merge import build_merger

ca = load_script("benchmarks/calibrate_anatomy.py")


def test_steps_follow_the_shrinking_sequence_and_the_cap():
    model = vimstm.create_model("vim_tiny_cifar10", depth=4, embed_dim=16, patch_size=2,
                                stride=2, d_state=4).eval()
    m = model.patch_embed.num_patches  # 256 patches, 257 tokens with the class token
    merger = build_merger(model, "stm", r=[0, 0, 0])
    first_cap = max(k for k in range(m + 1) if merger.cap(m + 1, m // 2, k))
    sched = [first_cap, 0, 40]
    sens = {0: 0.02, 1: 0.01, 2: 0.004}
    rows = ca.steps_table(model, sched, sens, r_probe=64)
    assert [r["after_block"] for r in rows] == [0, 2]
    assert rows[0]["tokens_in"] == m + 1 and rows[0]["share_of_cap"] == 1.0
    assert rows[1]["tokens_in"] == m + 1 - first_cap  # the second step meets the shorter sequence
    assert rows[1]["cap"] < first_cap and rows[1]["share_of_cap"] == pytest.approx(
        40 / rows[1]["cap"], abs=1e-3)
    assert rows[1]["modelled_kl"] == pytest.approx(0.004 * (40 / 64) ** 2)
