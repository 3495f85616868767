"""frozen_plans: one model applies the merge plans another makes on the same input."""

from __future__ import annotations

import copy

import pytest
import torch

from vimstm.errors import ConfigError
from vimstm.merge import frozen_plans, patch

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
    return planner, patch(model, trace_source=True, **OPTS)


def test_own_plans_replayed_give_the_same_output(small_model, images):
    planner, model = _pair(small_model, 0.0)
    with torch.no_grad():
        own = model(images)
        with frozen_plans(planner, model, images):
            replayed = model(images)
    assert torch.equal(own, replayed)
    assert model.merger.replay is None and planner.merger.record is None


def test_model_applies_the_planners_decisions_not_its_own(small_model, images):
    planner, model = _pair(small_model, 0.3)
    with torch.no_grad():
        own = model(images)
        own_src = model.merge_info["source"].clone()
        planner(images)
        plan_src = planner.merge_info["source"].clone()
        with frozen_plans(planner, model, images):
            out = model(images)
        src = model.merge_info["source"]
    assert not torch.equal(own_src > 0, plan_src > 0)  # the weights' own choices differ
    assert torch.equal(src > 0, plan_src > 0)  # the planner's groups, token for token
    assert not torch.allclose(out, own)
    with torch.no_grad():  # and afterwards the model plans its own again
        assert torch.equal(model(images), own)


def test_gradients_flow_through_replayed_plans(small_model, images):
    planner, model = _pair(small_model, 0.1)
    model.train()
    with frozen_plans(planner, model, images):
        model(images).square().mean().backward()
    grads = [p.grad for p in model.layers[0].parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for p in planner.parameters())


def test_mismatched_schedules_and_unpatched_models_are_refused(small_model, images):
    planner, model = _pair(small_model, 0.0)
    other = patch(copy.deepcopy(small_model), method="stm", ratio=0.25)
    one_step = patch(copy.deepcopy(small_model), method="stm", r=[13], graphs=False)
    with torch.no_grad():
        # the 0.5 plans into a 0.25 schedule
        with pytest.raises(RuntimeError, match="same merge options"), \
                frozen_plans(planner, other, images):
            other(images)
        assert other.merger.replay is None
        # 1 plan for 3 steps
        with pytest.raises(RuntimeError, match="fewer merge plans"), \
                frozen_plans(one_step, model, images):
            model(images)
        # its one step takes the first of 3 plans
        with pytest.raises(RuntimeError, match="2 of the planner's 3 merge plans"), \
                frozen_plans(planner, one_step, images):
            one_step(images)
        with pytest.raises(ConfigError, match="two patched models"), \
                frozen_plans(copy.deepcopy(small_model), model, images):
            pass
