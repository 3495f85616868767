"""Token merging: exactness, class-token tracking, adjacency, order, gradients, errors."""

from __future__ import annotations

import copy

import pytest
import torch

import vimstm
from vimstm.errors import ConfigError
from vimstm.merge import METHODS, patch, unpatch


@pytest.fixture(scope="module")
def images():
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def dense(small_model, images):
    with torch.no_grad():
        return small_model(images)


def _run(small_model, images, method, **kw):
    patch(small_model, method=method, trace_source=True, **kw)
    try:
        with torch.no_grad():
            out = small_model(images)
        return out, dict(small_model.merge_info)
    finally:
        unpatch(small_model)


@pytest.mark.parametrize("method", METHODS)
def test_ratio_zero_is_dense_exactly(small_model, images, dense, method):
    out, info = _run(small_model, images, method, ratio=0.0)
    assert torch.equal(out, dense)
    assert info["tokens_per_block"] == [65] * 4


@pytest.mark.parametrize("method", METHODS)
def test_cls_never_merged_and_read_at_true_index(small_model, images, method):
    kw = dict(seed=0) if method == "random" else {}
    out, info = _run(small_model, images, method, ratio=0.5, **kw)
    src = info["source"]  # (batch, tokens, 65)
    c = info["cls_index_per_block"][-1]
    cls_orig = 64 // 2
    one_hot = torch.nn.functional.one_hot(torch.full((3,), cls_orig), 65).float()
    assert torch.equal(src[:, c], one_hot)  # the class token alone, at index c
    assert src[:, :, cls_orig].sum().item() == 3  # and in no other group
    # the logits are the head applied to the final normed sequence at index c
    captured = {}
    h = small_model.norm_f.register_forward_hook(lambda _m, _i, o: captured.update(x=o[0]))
    try:
        again, _ = _run(small_model, images, method, ratio=0.5, **kw)
    finally:
        h.remove()
    assert torch.equal(again, out)
    with torch.no_grad():
        assert torch.allclose(out, small_model.head(captured["x"][:, c]), atol=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_token_counts_follow_schedule(small_model, images, method):
    sched = [6, 4, 2]
    _, info = _run(small_model, images, method, r=sched)
    assert info["tokens_per_block"] == [65, 59, 55, 53]
    assert info["source"].shape == (3, 53, 65)
    merger_tokens = vimstm.merge.build_merger(small_model, method, r=sched).simulate(65, 32)[0]
    assert merger_tokens == info["tokens_per_block"]


@pytest.mark.parametrize("method", ["stm", "random"])
def test_adjacent_pairs_only(small_model, images, method):
    _, info = _run(small_model, images, method, r=[12, 0, 0])  # one step: groups are pairs
    src = info["source"]
    sizes = src.sum(-1)
    assert sizes.max() <= 2 and (sizes == 2).sum(-1).eq(12).all()  # exactly 12 disjoint pairs
    _, info = _run(small_model, images, method, ratio=0.6)  # all steps: contiguous runs
    for row in info["source"].reshape(-1, 65):
        idx = row.nonzero().flatten()
        assert len(idx) >= 1 and (idx[-1] - idx[0] + 1) == len(idx)


@pytest.mark.parametrize("method", ["stm", "random"])
def test_balanced_and_protected(small_model, images, method):
    w = 3
    _, info = _run(small_model, images, method, r=[10, 10, 0], protect=w)
    src, c = info["source"], info["cls_index_per_block"][-1]
    assert c == 32 - 10  # 5 removed left of the class token at each step
    for k in range(1, w + 1):  # the w neighbours of the class token are untouched singles
        for t in (c - k, c + k):
            assert (src[:, t].sum(-1) == 1).all()
            assert (src[:, t, 32 + (t - c)] == 1).all()


@pytest.mark.parametrize("method", METHODS)
def test_order_kept_where_claimed(small_model, images, method):
    _, info = _run(small_model, images, method, ratio=0.5)
    src = info["source"]
    pos = torch.arange(65, dtype=torch.float32)
    first = torch.where(src > 0, pos, 1e9).amin(-1)  # first original position of each token
    if method in ("stm", "random", "prune-top", "prune-norm"):  # contiguous groups in order
        assert (first[:, 1:] > first[:, :-1]).all()
    # unmerged patch tokens (class token excluded) must keep their order
    for b in range(src.shape[0]):
        single = (src[b].sum(-1) == 1) & (first[b] != 32)
        seq = first[b][single]
        mono = bool((seq[1:] > seq[:-1]).all())
        assert mono == (method != "tome")  # tome scrambles the order, as ToMe does to Vim


def test_unpatch_restores_dense(small_model, images, dense):
    patch(small_model, method="stm", ratio=0.5)
    assert any(layer.mixer.record is not None for layer in small_model.layers)
    unpatch(small_model)
    assert small_model.merger is None
    assert all(layer.mixer.record is None for layer in small_model.layers)
    with torch.no_grad():
        assert torch.equal(small_model(images), dense)


def test_state_dict_unchanged(small_model):
    keys = set(small_model.state_dict())
    patch(small_model, method="stm", ratio=0.3)
    assert set(small_model.state_dict()) == keys
    unpatch(small_model)


@pytest.mark.parametrize("method", METHODS)
def test_gradients_flow_in_train_mode(small_model, method):
    torch.manual_seed(0)
    m = copy.deepcopy(unpatch(small_model))
    patch(m, method=method, ratio=0.4)
    m.train()
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    m(x).logsumexp(-1).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert m.layers[-1].mixer.in_proj.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "options",
    [
        dict(fading="none"), dict(fading="gamma", gamma=0.8), dict(weights="size"),
        dict(similarity="b"), dict(similarity="delta"), dict(protect=0),
    ],
)
def test_stm_ablations_run(small_model, images, options):
    out, info = _run(small_model, images, "stm", ratio=0.4, **options)
    assert torch.isfinite(out).all()
    assert info["tokens_per_block"][-1] == 65 - round(0.4 * 64)


def test_weights_change_the_result(small_model, images):
    a, _ = _run(small_model, images, "stm", ratio=0.4, weights="b")
    b, _ = _run(small_model, images, "stm", ratio=0.4, weights="size")
    assert not torch.equal(a, b)


def test_batch_independent(small_model, images):
    full, _ = _run(small_model, images, "stm", ratio=0.5)
    one, _ = _run(small_model, images[1:2], "stm", ratio=0.5)
    assert torch.allclose(full[1:2], one, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(method="stm", ratio=0.95), "ratio"),
        (dict(method="stm", ratio=-0.1), "ratio"),
        (dict(method="stm", r=[1] * 5), "entries"),
        (dict(method="nope", ratio=0.1), "unknown merging method"),
        (dict(method="stm", ratio=0.1, bogus=1), "unknown option"),
        (dict(method="stm", ratio=0.1, fading="cubic"), "fading"),
        (dict(method="stm", ratio=0.1, r=2), "only one"),
        (dict(method="stm"), "give a schedule"),
        (dict(method="stm", r=[40, 0, 0]), "cannot remove"),
    ],
)
def test_errors(small_model, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        patch(small_model, **kwargs)
    assert small_model.merger is None


def test_flops_target_schedule(small_model):
    from vimstm.flops import count_flops

    patch(small_model, method="stm", flops=0.7)
    rep = count_flops(small_model)
    unpatch(small_model)
    assert rep.gmacs_literature <= 0.7 * rep.dense_gmacs_literature + 1e-12
    assert rep.gmacs_literature > 0.6 * rep.dense_gmacs_literature


def test_every_other_block(small_model, images):
    _, info = _run(small_model, images, "stm", ratio=0.25, every=2)
    assert info["tokens_per_block"] == [65, 65, 49, 49]
    with pytest.raises(ConfigError, match="every"):
        patch(small_model, method="stm", r=4, every=2)


def test_default_window_shrinks_on_toy_models_only(tiny_model):
    patch(tiny_model, method="stm", ratio=0.375)  # 16 patches: 3 pairs per side needed
    assert tiny_model.merger.options["protect"] == 2
    unpatch(tiny_model)
    with pytest.raises(ConfigError, match="cannot remove"):
        patch(tiny_model, method="stm", ratio=0.375, protect=4)  # a given window is kept
    big = vimstm.create_model("vim_tiny", depth=4)
    assert vimstm.merge.build_merger(big, "stm", ratio=0.5).options["protect"] == 4
