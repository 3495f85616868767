"""STM's pair choice on crafted inputs: the rank of an A token counts only pairs it can take,
and ``max_size`` (a pair over that many patches is merged only where no pair under the cap is
left on its side; off by default, outputs unchanged)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from vimstm.errors import ConfigError
from vimstm.merge import patch, unpatch
from vimstm.merge.stm import STMMerger


def _pairs(merger: STMMerger, hidden: torch.Tensor, size: list[float], cls: int, r: int):
    """The (first, last) token pairs that one step merges (batch of one)."""
    state = SimpleNamespace(cls_index=cls, size=torch.tensor([size]))
    p = merger.plan(hidden, torch.zeros_like(hidden), state, None, r)
    return {(int(a), int(b)) for a, b, pair in zip(p.first, p.last, p.is_pair.view(-1)) if pair}


def _crafted() -> torch.Tensor:
    """9 tokens, class token at 4: on the left side tokens 0 and 1 are identical (the cheapest
    pair), 1 and 2 nearly so; the right side mirrors it (8 = 7, 7 ~ 6)."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(9, 16, generator=g)
    h = base.clone()
    h[0] = h[1]
    h[2] = h[1] + 0.05 * base[2]
    h[8] = h[7]
    h[6] = h[7] + 0.05 * base[6]
    return h.unsqueeze(0)


def test_cap_moves_the_pair_off_a_large_token():
    h = _crafted()
    sizes = [6.0, 1, 1, 1, 1, 1, 1, 1, 6]  # the far-end tokens already hold 6 patches
    free = STMMerger(protect=0, fading="none", weights="size")
    capped = STMMerger(protect=0, fading="none", weights="size", max_size=4)
    assert _pairs(free, h, sizes, 4, 2) == {(0, 1), (7, 8)}  # the snowball: ends absorb
    assert _pairs(capped, h, sizes, 4, 2) == {(1, 2), (6, 7)}  # next cheapest, under the cap
    # a cap the pairs fit under changes nothing
    roomy = STMMerger(protect=0, fading="none", weights="size", max_size=7)
    assert _pairs(roomy, h, sizes, 4, 2) == {(0, 1), (7, 8)}


def test_cap_yields_where_no_pair_fits():
    h = _crafted()
    sizes = [3.0, 3, 3, 3, 1, 3, 3, 3, 3]  # every pair on either side holds 6
    capped = STMMerger(protect=0, fading="none", weights="size", max_size=4)
    free = STMMerger(protect=0, fading="none", weights="size")
    assert _pairs(capped, h, sizes, 4, 2) == _pairs(free, h, sizes, 4, 2) == {(0, 1), (7, 8)}


def test_cap_with_ssm_fading_bounds_the_largest_token(small_model):
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    sizes = {}
    for cap in (None, 4):
        patch(small_model, method="stm", ratio=0.5, max_size=cap)
        try:
            with torch.no_grad():
                small_model(images)
            sizes[cap] = small_model.merge_info["size"].amax().item()
        finally:
            unpatch(small_model)
    assert sizes[None] > 4  # the default snowballs on this model too
    assert sizes[4] <= 4


def test_off_is_the_default_path(small_model):
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    outs = []
    for kw in ({}, {"max_size": None}):
        patch(small_model, method="stm", ratio=0.4, **kw)
        try:
            with torch.no_grad():
                outs.append(small_model(images))
        finally:
            unpatch(small_model)
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("bad", [1, 0, 2.5, True, "4"])
def test_bad_cap_is_refused(bad):
    with pytest.raises(ConfigError, match="max_size"):
        STMMerger(max_size=bad)


def test_rank_ignores_the_partner_beyond_the_side():
    """The A token next to the class token (no protection) must not rank by its similarity to
    the class token, which it can never merge with."""
    g = torch.Generator().manual_seed(1)
    h = torch.randn(9, 16, generator=g)
    h[3] = h[4]  # left side's last A token equals the class token
    h[5] = h[4]  # and the right side's
    h[0] = h[1] + 0.1 * torch.randn(16, generator=g)  # the real cheapest pairs: (0, 1), (7, 8)
    h[8] = h[7] + 0.1 * torch.randn(16, generator=g)
    m = STMMerger(protect=0, fading="none", weights="size")
    assert _pairs(m, h.unsqueeze(0), [1.0] * 9, 4, 2) == {(0, 1), (7, 8)}


def _fade_input() -> torch.Tensor:
    """9 tokens, class token at 4: on each side the pair next to the protected class token
    ((2, 3) and (5, 6)) is the most similar, the far pairs are dissimilar."""
    g = torch.Generator().manual_seed(2)
    h = torch.randn(9, 16, generator=g)
    h[3] = h[2] + 0.3 * torch.randn(16, generator=g)
    h[5] = h[6] + 0.3 * torch.randn(16, generator=g)
    return h.unsqueeze(0)


def test_fade_power_moves_the_pair_choice():
    h, sizes = _fade_input(), [1.0] * 9

    def pairs(**kw):
        return _pairs(STMMerger(protect=0, fading="gamma", gamma=0.1, weights="size", **kw),
                      h, sizes, 4, 2)

    far, near = {(0, 1), (7, 8)}, {(2, 3), (5, 6)}
    assert pairs(fade_power=1.0) == far  # the full fade: far pairs are nearly free
    assert pairs(fade_power=0.5) == near  # a weaker fade lets the similar pair win
    assert pairs() == pairs(fade_power=0.25) == near  # the default p = 0.25
    none = _pairs(STMMerger(protect=0, fading="none", weights="size"), h, sizes, 4, 2)
    assert pairs(fade_power=0.0) == none == near


def test_fade_power_ends_match_the_default_and_no_fade(small_model):
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    outs = {}
    for name, kw in (("default", {}), ("p025", {"fade_power": 0.25}), ("p1", {"fade_power": 1.0}),
                     ("p0", {"fade_power": 0.0}), ("none", {"fading": "none"})):
        patch(small_model, method="stm", ratio=0.5, **kw)
        try:
            with torch.no_grad():
                outs[name] = (small_model(images), small_model.merge_info["size"].clone())
        finally:
            unpatch(small_model)
    assert torch.equal(outs["p025"][0], outs["default"][0])  # the default is p = 0.25
    assert torch.equal(outs["p0"][0], outs["none"][0])  # the same pairs as no fade
    assert torch.equal(outs["p0"][1], outs["none"][1])
    assert not torch.equal(outs["p1"][1], outs["default"][1])  # the full fade merges elsewhere


@pytest.mark.parametrize("bad", [-0.1, 1.5, True, "0.5", None, float("nan")])
def test_bad_fade_power_is_refused(bad):
    with pytest.raises(ConfigError, match=r"fade_power=.*\[0, 1\]"):
        STMMerger(fade_power=bad)
