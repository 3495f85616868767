"""Token pruning baselines: ``prune-top`` (ToP-ViM-style) and ``prune-norm`` (EViT-style).

The ``r`` tokens with the lowest score are dropped; the others keep their order. The score is

* ``prune-top``: the previous block's SSM output, ``mean_d relu(y_fwd + y_bwd)`` per token, as
  ToP-ViM's importance (recorded by the mixer as ``last_ssm.importance``);
* ``prune-norm``: the L2 norm of the block input (residual + mixer output).

With ``balance=True`` (default) the removals are split evenly between the two sides of the class
token, so its index stays exact for every sample; with ``balance=False`` the lowest scores go
wherever they are and the class token is moved to the middle of the kept tokens (its true
place would differ between samples). Dropped tokens leave ``source`` (they hold nothing).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor

from vimstm.errors import ConfigError
from vimstm.merge.base import Merger, PairPlan, block_input, split_sides


class PruneMerger(Merger):
    name = "prune-norm"
    option_defaults: ClassVar[dict[str, Any]] = {"balance": True}

    def _check_options(self) -> None:
        if not isinstance(self.options["balance"], bool):
            raise ConfigError(f"{self.name} option balance must be true or false")

    def cap(self, tokens: int, cls_index: int, r: int) -> bool:
        if not self.options["balance"]:
            return r <= tokens - 2
        r_left, r_right = split_sides(tokens, cls_index, r)
        return r_left <= cls_index and r_right <= tokens - 1 - cls_index and r <= tokens - 2

    def next_cls(self, tokens: int, cls_index: int, r: int) -> int:
        if self.options["balance"]:
            return cls_index - split_sides(tokens, cls_index, r)[0]
        return (tokens - 1 - r) // 2

    def merge_macs(self, tokens: int, r: int, dim: int, d_state: int, d_inner: int) -> float:
        return tokens * dim + 2.0 * tokens * dim

    def _score(self, hidden: Tensor, residual: Tensor, ssm: Any) -> Tensor:
        return block_input(hidden, residual).norm(dim=-1)

    def _layout(self, t: int, c: int, r: int, dev: torch.device) -> dict[str, Tensor]:
        def build() -> dict[str, Tensor]:
            pos = torch.arange(t).unsqueeze(0)
            r_left, r_right = split_sides(t, c, r)
            new_c = self.next_cls(t, c, r)
            out = {
                "is_cls": pos == c,
                "not_left": pos >= c,  # masked out when picking the left removals
                "not_right": pos <= c,
                "take_left": torch.arange(r_left),
                "take_right": torch.arange(r_right),
                "new_c": torch.full((1, 1), new_c),
            }
            return {k: v.to(dev) for k, v in out.items()}

        return self.cached(("layout", t, c, r, str(dev)), build)

    def plan(self, hidden: Tensor, residual: Tensor, state: Any, ssm: Any, r: int) -> PairPlan:
        t = hidden.shape[1]
        c = state.cls_index
        layout = self._layout(t, c, r, hidden.device)
        score = self._score(hidden, residual, ssm).float().masked_fill(layout["is_cls"], math.inf)
        if self.options["balance"]:
            r_left, r_right = split_sides(t, c, r)
            both = torch.stack((score.masked_fill(layout["not_left"], math.inf),
                                score.masked_fill(layout["not_right"], math.inf)), 1)
            low = both.topk(max(r_left, r_right), dim=-1, largest=False).indices
            drop_idx = torch.cat((low[:, 0, :r_left], low[:, 1, :r_right]), 1)
        else:
            drop_idx = score.topk(r, dim=1, largest=False).indices
        keep = torch.ones_like(score, dtype=torch.bool).scatter_(1, drop_idx, False)
        new_len = t - r
        new_c = self.next_cls(t, c, r)
        if self.options["balance"]:
            rank = keep.long().cumsum(1) - 1
        else:  # patches in order, class token moved to new_c
            patch_rank = (keep & ~layout["is_cls"]).long().cumsum(1) - 1
            rank = torch.where(layout["is_cls"], layout["new_c"],
                               patch_rank + (patch_rank >= new_c).long())
        dest = rank.masked_fill(~keep, new_len)
        return self.pairs(dest, keep.float(), new_len, new_c)  # groups of one, the rest dropped


class TopPruneMerger(PruneMerger):
    name = "prune-top"
    needs_ssm = True
    ssm_parts = ("importance",)

    def merge_macs(self, tokens: int, r: int, dim: int, d_state: int, d_inner: int) -> float:
        return tokens * d_inner + 2.0 * tokens * dim

    def _score(self, hidden: Tensor, residual: Tensor, ssm: Any) -> Tensor:
        return ssm.importance
