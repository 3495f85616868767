"""Schedules and the exact side resolution of STM's adjacent pairs."""

from __future__ import annotations

import itertools

import pytest
import torch

import vimstm
from vimstm.errors import ConfigError
from vimstm.flops import count_flops
from vimstm.merge.schedule import even_schedule, parse_r
from vimstm.merge.stm import _resolve_sides


def test_parse_r_forms():
    assert parse_r(4, 3) == [3, 3, 3]
    assert parse_r(4, [5, 1]) == [5, 1, 0]
    assert parse_r(4, [5, 1, 2, 0]) == [5, 1, 2]
    inc = parse_r(5, (4, 0.5))
    assert inc == sorted(inc) and inc[0] < inc[-1] and sum(inc) == 16
    assert even_schedule(4, 7) == [3, 2, 2]
    with pytest.raises(ConfigError, match="entries"):
        parse_r(4, [1, 1, 1, 1, 1])
    with pytest.raises(ConfigError, match="last entry"):
        parse_r(4, [1, 1, 1, 1])
    with pytest.raises(ConfigError):
        parse_r(4, [-1])


def _brute(sel, cl, cr):
    """Cheapest valid side assignment (no two chosen A tokens share a B token)."""
    idx = [k for k in range(len(sel)) if sel[k]]
    best_cost = float("inf")
    for sides in itertools.product((0, 1), repeat=len(idx)):  # 1 = left
        used, ok, cost = set(), True, 0.0
        for k, left in zip(idx, sides):
            b = k if left else k + 1  # B token between a_{k-1} and a_k is k
            ok &= b not in used
            used.add(b)
            cost += cl[k] if left else cr[k]
        if ok and cost < best_cost - 1e-12:
            best_cost = cost
    return best_cost


def test_resolve_sides_is_optimal_and_disjoint():
    g = torch.Generator().manual_seed(0)
    for _ in range(40):
        n = 7
        sel = torch.rand(1, 2, n, generator=g) < 0.6
        cl = torch.rand(1, 2, n, generator=g, dtype=torch.float64)
        cr = torch.rand(1, 2, n, generator=g, dtype=torch.float64)
        left = _resolve_sides(sel, cl, cr)
        for s in range(2):
            k_sel = sel[0, s].tolist()
            chosen = [(k if left[0, s, k] else k + 1) for k in range(n) if k_sel[k]]
            assert len(set(chosen)) == len(chosen)  # pairs never overlap
            cost = sum(
                (cl if left[0, s, k] else cr)[0, s, k].item() for k in range(n) if k_sel[k]
            )
            assert cost == pytest.approx(_brute(k_sel, cl[0, s].tolist(), cr[0, s].tolist()))


def test_every_k_blocks():
    from vimstm.merge.schedule import even_schedule

    assert even_schedule(7, 9, every=2) == [0, 3, 0, 3, 0, 3]
    assert even_schedule(4, 5, every=1) == [2, 2, 1]


def test_cli_flags_patch_the_model(tiny_model):
    import argparse

    from vimstm.merge import add_merge_args, patch_from_args

    p = argparse.ArgumentParser()
    add_merge_args(p)
    args = p.parse_args(["--method", "stm", "--r", "4", "--merge-opt", "protect=1",
                         "--merge-opt", "fading=gamma", "--merge-opt", "gamma=0.5"])
    patch_from_args(tiny_model, args)
    assert tiny_model.merger.schedule == [4]
    assert tiny_model.merger.options["protect"] == 1 and tiny_model.merger.options["gamma"] == 0.5
    assert patch_from_args(tiny_model, p.parse_args(["--method", "none"])) is tiny_model
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        patch_from_args(tiny_model, p.parse_args(["--method", "stm", "--r", "2",
                                                  "--merge-opt", "protect"]))
    with pytest.raises(ConfigError, match="--r"):
        patch_from_args(tiny_model, p.parse_args(["--method", "stm", "--r", "x"]))


def test_geometric_shape_front_loads_and_hits_the_total():
    from vimstm.merge.schedule import geometric_schedule, shaped_schedule

    s = geometric_schedule(24, 80, 196, every=4)
    assert sum(s) == 80 and [i for i, v in enumerate(s) if v] == [3, 7, 11, 15, 19]
    steps = [v for v in s if v]
    assert steps == sorted(steps, reverse=True) and steps[0] > steps[-1]
    # each step keeps about the same fraction of what it receives
    left, fractions = 196, []
    for v in steps:
        fractions.append((left - v) / left)
        left -= v
    assert max(fractions) - min(fractions) < 0.03
    assert shaped_schedule(24, 80, 196, 4, "even") == [16 if (i + 1) % 4 == 0 else 0
                                                       for i in range(23)]
    with pytest.raises(ConfigError, match="shape"):
        shaped_schedule(24, 80, 196, 1, "bogus")


def test_geometric_flops_schedule_needs_fewer_steps():
    """flops=0.6 with three merge steps is out of reach for even steps (pair caps) but not for
    geometric ones, which also keep more tokens to the end."""
    model = vimstm.create_model("vim_tiny", depth=24, embed_dim=32)
    with pytest.raises(ConfigError, match="not reachable"):
        vimstm.patch(model, method="stm", flops=0.6, every=6, shape="even")
    vimstm.patch(model, method="stm", flops=0.6, every=6, shape="geometric")
    toks, _ = model.merger.simulate(197, 98)
    assert len([v for v in model.merger.schedule if v]) == 3 and toks[-1] > 50
    rep = count_flops(model)
    vimstm.unpatch(model)
    assert rep.gmacs_literature <= 0.6 * count_flops(model).gmacs_literature
    with pytest.raises(ConfigError, match="shape"):
        vimstm.patch(model, method="stm", r=4, shape="geometric")
