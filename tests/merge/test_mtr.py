"""MTR: Δ importance, Keep / Target / Source groups, size-weighted bipartite merge in order."""

from __future__ import annotations

import pytest
import torch

from vimstm.errors import ConfigError
from vimstm.merge import patch, unpatch


@pytest.fixture(scope="module")
def images():
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))


def _first_step(model, images, **kw):
    """merge_info with a single step of r tokens after block 0, and block 0's Δ importance."""
    patch(model, method="mtr", trace_source=True, **kw)
    try:
        with torch.no_grad():
            model(images)
        ssm = model.layers[0].mixer.last_ssm
        return dict(model.merge_info), (ssm.delta_fwd + ssm.delta_bwd).clone()
    finally:
        unpatch(model)


def test_sources_are_the_least_important_and_keep_is_untouched(small_model, images):
    r, keep = 10, 0.5
    info, imp = _first_step(small_model, images, r=[r, 0, 0], keep=keep, balance=False)
    src = info["source"]  # (batch, 55, 65): one step, so groups are those of the first merge
    cls = 32
    for b in range(images.shape[0]):
        groups = src[b] > 0
        merged_away = set()
        for row in groups:
            members = row.nonzero().flatten().tolist()
            if len(members) > 1:  # a Target with its Sources: the Target is the most important
                target = max(members, key=lambda t: imp[b, t].item())
                merged_away.update(m for m in members if m != target)
        score = imp[b].clone()
        score[cls] = float("inf")
        lowest = set(score.topk(r, largest=False).indices.tolist())
        assert merged_away == lowest
        # Keep: the most important half of the non-Source tokens stay alone
        rest = [t for t in range(65) if t not in lowest and t != cls]
        n_keep = int(keep * len(rest))
        kept = sorted(rest, key=lambda t: -imp[b, t].item())[:n_keep]
        alone = {row.nonzero().item() for row in groups if row.sum() == 1}
        assert set(kept) <= alone


def test_source_joins_most_similar_target_with_size_weights(small_model, images):
    # keep=0: every non-Source patch token is a Target; before the first step all sizes are 1,
    # so a merged token is the plain mean of its group (hidden and residual alike)
    r, cap = 6, {}
    hooks = [
        small_model.layers[0].register_forward_hook(
            lambda _m, _i, o: cap.update(pre=(o[1] + o[0].float()).clone())),
        small_model.layers[1].register_forward_pre_hook(
            lambda _m, a: cap.update(post=(a[1] + a[0].float()).clone())),
    ]
    try:
        info, imp = _first_step(small_model, images, r=[r, 0, 0], keep=0.0, balance=False)
    finally:
        for h in hooks:
            h.remove()
    pre, post, src = cap["pre"], cap["post"], info["source"]
    assert post.shape[1] == 65 - r
    f = pre / pre.norm(dim=-1, keepdim=True)
    for b in range(images.shape[0]):
        groups = src[b] > 0
        for j, row in enumerate(groups):
            assert torch.allclose(post[b, j], pre[b, row].mean(0), atol=1e-5)
        score = imp[b].clone()
        score[32] = float("inf")
        sources = score.topk(r, largest=False).indices.tolist()
        targets = [t for t in range(65) if t != 32 and t not in sources]
        for s_ in sources:
            row = groups[groups[:, s_]][0]
            (target,) = [t for t in row.nonzero().flatten().tolist() if t not in sources]
            best = max(targets, key=lambda t: float(f[b, s_] @ f[b, t]))
            assert target == best


def test_ratio_and_order(small_model, images):
    patch(small_model, method="mtr", ratio=0.5)
    try:
        with torch.no_grad():
            small_model(images)
        info = small_model.merge_info
    finally:
        unpatch(small_model)
    assert info["tokens_per_block"][-1] == 65 - 32
    # balanced: the class token's index is exact, c minus the Sources left of it
    from vimstm.merge.base import split_sides
    from vimstm.merge.schedule import geometric_schedule

    expect, t, c = [32], 65, 32
    for r in geometric_schedule(4, 32, 64, 1):
        c -= split_sides(t, c, r)[0]
        t -= r
        expect.append(c)
    assert info["cls_index_per_block"] == expect


@pytest.mark.parametrize(
    "opts, match",
    [({"keep": 1.0}, "keep"), ({"keep": "half"}, "keep"), ({"balance": 1}, "balance"),
     ({"similarity": "q"}, "similarity"), ({"fading": "ssm"}, "unknown option")],
)
def test_bad_options(small_model, opts, match):
    with pytest.raises(ConfigError, match=match):
        patch(small_model, method="mtr", ratio=0.2, **opts)
    assert small_model.merger is None
