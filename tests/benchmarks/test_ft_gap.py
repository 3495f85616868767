"""benchmarks/ft_gap.py: the mixed batches are built as timm's Mixup builds them in training
(cutmix pastes one rectangle of the partner image, mixup blends the whole image), the same seed
gives every method the same batches, and the summary table marks overlapping intervals."""

from __future__ import annotations

import json

import torch

from conftest import load_script

fg = load_script("benchmarks/ft_gap.py")


def _batch(n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, 32, 32, generator=g), torch.arange(n) % 10


def test_cutmix_pastes_one_rectangle_of_the_partner() -> None:
    x, y = _batch()
    out = fg.mix(x, y, batch=8, mixup=0.0, cutmix=1.0, seed=3)
    partner = x.flip(0)
    pasted = (out != x).any(1)  # (n, h, w): where an image changed
    assert pasted.any()
    rows, cols = pasted[0].any(1).nonzero(), pasted[0].any(0).nonzero()
    box = (slice(int(rows.min()), int(rows.max()) + 1), slice(int(cols.min()), int(cols.max()) + 1))
    assert torch.equal(out[:, :, box[0], box[1]], partner[:, :, box[0], box[1]])  # same box
    outside = torch.ones(32, 32, dtype=torch.bool)
    outside[box] = False
    assert torch.equal(out[:, :, outside], x[:, :, outside])


def test_mixup_blends_each_batch_with_its_flip() -> None:
    x, y = _batch()
    out = fg.mix(x, y, batch=4, mixup=0.8, cutmix=0.0, seed=1)
    for i in (0, 4):
        xb, ob = x[i:i + 4], out[i:i + 4]
        lam = float(((ob - xb.flip(0)) / (xb - xb.flip(0)))[0, 0, 0, 0])
        assert 0.0 <= lam <= 1.0
        torch.testing.assert_close(ob, lam * xb + (1 - lam) * xb.flip(0))


def test_same_seed_same_batches_for_every_method() -> None:
    x, y = _batch()
    a = fg.mix(x, y, batch=8, mixup=0.8, cutmix=1.0, seed=5)
    b = fg.mix(x, y, batch=8, mixup=0.8, cutmix=1.0, seed=5)
    assert torch.equal(a, b) and not torch.equal(a, x)


def test_kl_is_zero_for_equal_logits_and_positive_otherwise() -> None:
    a = torch.randn(4, 10)
    assert torch.allclose(fg.kl(a, a), torch.zeros(4), atol=1e-6)
    assert (fg.kl(a, a + torch.randn(4, 10)) > 0).all()


def test_table_marks_intervals_across_zero(tmp_path) -> None:
    rows = {"stm": {"kl": 0.04, "median_kl": 0.001, "agree": 98.0},
            "prune-top": {"kl": 0.02, "median_kl": 0.0005, "agree": 99.0,
                          "kl_minus_stm": [-0.02, -0.03, -0.01]},
            "prune-norm": {"kl": 0.041, "median_kl": 0.001, "agree": 98.0,
                           "kl_minus_stm": [0.001, -0.002, 0.004]}}
    (tmp_path / "clean.json").write_text(json.dumps({"result": {"rows": rows}}))
    lines = fg.table(tmp_path).splitlines()
    assert len(lines) == 5
    assert lines[3].startswith("| clean | prune-top |") and not lines[3].endswith("≈ |")
    assert lines[4].endswith("≈ |")


def test_pasted_tokens_and_straddles() -> None:
    x0 = torch.zeros(1, 3, 32, 32)
    x = x0.clone()
    x[:, :, :4, :4] = 1.0  # the top-left 2 x 2 patches pasted
    lab = fg.pasted_tokens(x0, x)
    assert lab.shape == (1, 257) and lab[0, 128] == -1  # the middle class token
    assert lab[0, [0, 1, 16, 17]].tolist() == [1, 1, 1, 1] and int((lab == 1).sum()) == 4
    # three final tokens: {0, 2} (pasted + kept), {1} (pasted), the rest with the class token
    src = torch.zeros(1, 3, 257)
    src[0, 0, [0, 2]] = 1
    src[0, 1, 1] = 1
    src[0, 2] = 1
    src[0, 2, [0, 1, 2]] = 0
    tokens, patches = fg.straddles(src, lab)
    torch.testing.assert_close(tokens, torch.tensor([2 / 3]))  # token 0 and the big one
    torch.testing.assert_close(patches, torch.tensor([255 / 256]))


def test_groups_are_each_final_tokens_original_tokens() -> None:
    src = torch.zeros(2, 2, 4)
    src[0, 0, [0, 1]] = 1.0
    src[0, 1, [2, 3]] = 0.5  # weighted sources count as members
    src[1, 0, 0] = 1.0
    src[1, 1, 3] = 1.0
    assert fg.groups(src) == [{frozenset({0, 1}), frozenset({2, 3})},
                              {frozenset({0}), frozenset({3})}]


def test_runs_table_one_row_per_run_and_marks_overlaps() -> None:
    def ci(v, lo, hi):
        return [v, lo, hi]

    run = {"source": "a.npz", "dense ft": {"top1": 92.5, "change": ci(-0.4, -0.6, -0.2)},
           "stm reduction=0.4": {"top1": 90.1, "change": ci(-0.3, -0.6, 0.1)},
           "prune-top reduction=0.4": {"top1": 91.0, "change": 0.2,
                                       "ft_minus_stm_ft": ci(0.9, 0.3, 1.4)},
           "prune-norm reduction=0.4": {"top1": 90.3, "change": 0.1,
                                        "ft_minus_stm_ft": ci(0.2, -0.3, 0.7)}}
    lines = fg.runs_table([run, {"source": "b.npz"}]).splitlines()
    assert len(lines) == 3  # header, rule, the one run with all three methods
    assert lines[2].startswith("| a.npz | 92.50 (-0.40) | 90.10 (-0.30) | 91.00 (+0.20) |")
    assert "+0.90 [+0.30, +1.40] |" in lines[2] and lines[2].endswith("+0.70] ≈ |")
