"""Closed-form FLOPs: the literature numbers at 224, both conventions, merged schedules."""

from __future__ import annotations

import pytest

import vimstm
from vimstm.flops import count_flops
from vimstm.merge import patch

LITERATURE = [("vim_tiny", 1.45), ("vim_small", 5.08), ("vim_base", 18.87)]


@pytest.mark.parametrize("name, lit", LITERATURE)
def test_literature_gmacs_at_224(name, lit):
    model = vimstm.create_model(name, depth=24)
    rep = count_flops(model)
    assert rep.gmacs_literature == pytest.approx(lit, abs=0.006)
    assert rep.gmacs_full > rep.gmacs_literature  # the second scan direction
    assert rep.merge_gmacs == 0 and rep.tokens_per_block == [197] * 24


def test_merged_counts_follow_schedule():
    model = vimstm.create_model("vim_tiny")
    patch(model, method="stm", ratio=0.5)
    rep = count_flops(model)
    assert rep.tokens_per_block[0] == 197 and rep.tokens_per_block[-1] == 197 - 98
    assert 0 < rep.merge_gmacs < 0.01 * rep.gmacs_literature
    assert 0.2 < rep.reduction_literature < 0.5
    assert rep.dense_gmacs_literature == pytest.approx(1.449, abs=1e-3)


def test_flops_without_running(tiny_model):
    patch(tiny_model, method="tome", r=[4])
    rep = count_flops(tiny_model)
    assert rep.tokens_per_block == [17, 13]
    assert tiny_model.merge_info == {}  # nothing ran
