"""evaluate(): top-1/top-5 counting, skipped images, AMP option, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vimstm.engine.evaluate import evaluate
from vimstm.errors import ConfigError, DataError


class _Table(nn.Module):
    """Returns a fixed logit row per input, chosen by the input's first value."""

    def __init__(self, rows: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("rows", rows)
        self.num_classes = rows.shape[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rows[x[:, 0].long()]


def _rank_rows(ranks: list[int], n_classes: int = 8) -> torch.Tensor:
    """Row i ranks class 0 at position ranks[i] (0 = top-1)."""
    rows = []
    for r in ranks:
        order = list(range(1, n_classes))
        order.insert(r, 0)  # order[k] = class at rank k
        logits = torch.empty(n_classes)
        for k, c in enumerate(order):
            logits[c] = float(n_classes - k)
        rows.append(logits)
    return torch.stack(rows)


def test_top1_top5_counts_and_skipped():
    ranks = [0, 0, 1, 4, 5, 7, 0]  # top-1 hits 3, top-5 hits 5 (ranks 0..4)
    model = _Table(_rank_rows(ranks))
    x = torch.arange(len(ranks), dtype=torch.float32)[:, None]
    y = torch.zeros(len(ranks), dtype=torch.long)
    loader = [
        (x[:3], y[:3], 1),
        (torch.empty(0), torch.empty(0, dtype=torch.long), 2),  # a batch of unreadable images
        (x[3:], y[3:]),  # plain (images, labels) batches work too
    ]
    res = evaluate(model, loader, progress=False)
    assert res["images"] == 7 and res["skipped"] == 3
    assert res["top1"] == pytest.approx(100 * 3 / 7)
    assert res["top5"] == pytest.approx(100 * 5 / 7)
    assert res["seconds"] > 0 and res["images_per_s"] == pytest.approx(7 / res["seconds"])
    assert set(res) == {"top1", "top5", "images", "skipped", "seconds", "images_per_s"}


def test_fewer_than_five_classes_counts_all_as_top5():
    model = _Table(torch.tensor([[0.0, 1.0, 2.0], [3.0, 2.0, 1.0]]))
    res = evaluate(model, [(torch.tensor([[0.0], [1.0]]), torch.tensor([0, 2]))], progress=False)
    assert res["top1"] == 0.0 and res["top5"] == 100.0


def test_bf16_autocast_runs_a_real_model():
    from vimstm.models.registry import create_model

    torch.manual_seed(0)
    model = create_model("vim_tiny", depth=1, embed_dim=32, img_size=32, patch_size=8, stride=8,
                         num_classes=4)
    x = torch.randn(6, 3, 32, 32)
    y = model.eval()(x).argmax(-1)  # fp32 predictions as labels
    res = evaluate(model, [(x, y)], amp="bf16", progress=False)
    assert res["images"] == 6 and res["top1"] >= 50.0
    assert evaluate(model, [(x, y)], progress=False)["top1"] == 100.0


def test_bad_amp_and_labels_and_all_skipped_are_clear_errors():
    model = _Table(torch.eye(3))
    x, y = torch.zeros(2, 1), torch.tensor([0, 1])
    with pytest.raises(ConfigError, match="amp"):
        evaluate(model, [(x, y)], amp="fp8", progress=False)
    with pytest.raises(DataError, match="out of range"):
        evaluate(model, [(x, torch.tensor([0, 5]))], progress=False)
    with pytest.raises(DataError, match="unreadable"):
        evaluate(model, [(torch.empty(0), torch.empty(0, dtype=torch.long), 4)], progress=False)
