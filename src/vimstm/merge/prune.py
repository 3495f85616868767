"""Token pruning baselines: ``prune-top`` (ToP-ViM-style) and ``prune-norm`` (EViT-style).

The ``r`` tokens with the lowest score are dropped; the others keep their order. The score is

* ``prune-top``: the previous block's SSM output, ``mean_d relu(y_fwd + y_bwd)`` per token, as
  ToP-ViM's importance (recorded by the mixer as ``last_ssm.importance``);
* ``prune-norm``: the L2 norm of the block input (residual + mixer output).

``balance`` (default True) splits the removals between the two sides of the class token
(:class:`~vimstm.merge.base.LowestScoreMerger`). Dropped tokens leave ``source`` (they hold
nothing).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from vimstm.merge.base import LowestScoreMerger, PairPlan, block_input


class PruneMerger(LowestScoreMerger):
    name = "prune-norm"

    def merge_macs(self, tokens: int, r: int, dim: int, d_state: int, d_inner: int) -> float:
        return tokens * dim + 2.0 * tokens * dim

    def _score(self, hidden: Tensor, residual: Tensor, ssm: Any) -> Tensor:
        return block_input(hidden, residual).norm(dim=-1)

    def plan(self, hidden: Tensor, residual: Tensor, state: Any, ssm: Any, r: int) -> PairPlan:
        t = hidden.shape[1]
        c = state.cls_index
        layout = self._select_layout(t, c, r, hidden.device)
        score = self._score(hidden, residual, ssm).float()
        drop_idx = self.lowest(score, layout, r)
        keep = torch.ones_like(score, dtype=torch.bool).scatter_(1, drop_idx, False)
        new_len = t - r
        new_c = self.next_cls(t, c, r)
        dest = self.kept_ranks(keep, layout, new_c).masked_fill(~keep, new_len)
        return self.pairs(dest, keep.float(), new_len, new_c)  # groups of one, the rest dropped


class TopPruneMerger(PruneMerger):
    name = "prune-top"
    needs_ssm = True
    ssm_parts = ("importance",)

    def merge_macs(self, tokens: int, r: int, dim: int, d_state: int, d_inner: int) -> float:
        return tokens * d_inner + 2.0 * tokens * dim

    def _score(self, hidden: Tensor, residual: Tensor, ssm: Any) -> Tensor:
        return ssm.importance
