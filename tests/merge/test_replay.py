"""Merger.record / replay: one model's merge steps apply the plans another made on the same
input (``benchmarks/ft_gap.py --swap``: one model's weights with another's decisions)."""

from __future__ import annotations

import copy
from collections import deque

import pytest
import torch

from vimstm.merge import patch

OPTS = dict(method="stm", ratio=0.5)


@pytest.fixture(scope="module")
def images():
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))


def _pair(small_model, noise: float):
    """(planner, model): two patched copies, the model's weights moved by ``noise``."""
    planner = patch(copy.deepcopy(small_model), trace_source=True, graphs=False, **OPTS)
    model = copy.deepcopy(small_model)
    with torch.no_grad():
        g = torch.Generator().manual_seed(3)
        for p in model.parameters():
            p.add_(noise * torch.randn(p.shape, generator=g))
    return planner, patch(model, trace_source=True, graphs=False, **OPTS)


@torch.no_grad()
def _replayed(planner, model, x):
    """``model(x)`` with the plans ``planner`` makes on ``x``; the plans left unapplied."""
    planner.merger.record = made = []
    try:
        planner(x)
    finally:
        planner.merger.record = None
    model.merger.replay = deque(made)
    try:
        return model(x), len(model.merger.replay)
    finally:
        model.merger.replay = None


def test_own_plans_replayed_give_the_same_output(small_model, images):
    planner, model = _pair(small_model, 0.0)
    with torch.no_grad():
        own = model(images)
    out, left = _replayed(planner, model, images)
    assert torch.equal(own, out) and left == 0


def test_model_applies_the_replayed_decisions_not_its_own(small_model, images):
    planner, model = _pair(small_model, 0.3)
    with torch.no_grad():
        own = model(images)
        own_src = model.merge_info["source"].clone()
        planner(images)
        plan_src = planner.merge_info["source"].clone()
    out, left = _replayed(planner, model, images)
    src = model.merge_info["source"]
    assert left == 0
    assert not torch.equal(own_src > 0, plan_src > 0)  # the weights' own choices differ
    assert torch.equal(src > 0, plan_src > 0)  # the planner's groups, token for token
    assert not torch.allclose(out, own)
    with torch.no_grad():  # and afterwards the model plans its own again
        assert torch.equal(model(images), own)


def test_mismatched_schedules_are_refused(small_model, images):
    planner, model = _pair(small_model, 0.0)
    other = patch(copy.deepcopy(small_model), method="stm", ratio=0.25, graphs=False)
    one_step = patch(copy.deepcopy(small_model), method="stm", r=[13], graphs=False)
    with pytest.raises(RuntimeError, match="same merge options"):  # 0.5's plans, 0.25's schedule
        _replayed(planner, other, images)
    assert other.merger.replay is None
    with pytest.raises(RuntimeError, match="fewer merge plans"):  # 1 plan for 3 steps
        _replayed(one_step, model, images)
    _, left = _replayed(planner, one_step, images)  # its one step takes the first of 3 plans
    assert left == 2
