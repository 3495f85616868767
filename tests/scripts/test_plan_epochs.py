"""scripts/plan_epochs.py: the epoch count that fits a budget, from measured speed."""

from __future__ import annotations

import pytest

from conftest import load_script


@pytest.fixture(scope="module")
def plan():
    return load_script("scripts/plan_epochs.py").plan


# seconds per image of one GPU at 16 / 24 / 32 px (the H200 probes of the bundled model's run)
PROBES = [(65, 4.226e-4), (145, 4.383e-4), (257, 6.038e-4)]


def test_plan_fits_the_budget_and_grows_with_it(plan) -> None:
    a = plan(PROBES, 1110, gpus=2, min_res=16)
    assert a["epochs"] == 68 and a["predicted_s"] <= 1110  # the bundled model's plan
    b = plan(PROBES, 2220, gpus=2, min_res=16)
    assert b["epochs"] > a["epochs"]
    plain = plan(PROBES, 1110, gpus=2)
    assert plain["epochs"] == a["plain_epochs"] < a["epochs"]  # small epochs are cheaper
    assert plan(PROBES, 1110, gpus=4)["epochs"] > plain["epochs"]


def test_plan_refuses_a_budget_below_one_epoch(plan) -> None:
    with pytest.raises(SystemExit, match="not even one epoch"):
        plan(PROBES, 5, gpus=1)
