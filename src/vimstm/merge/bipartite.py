"""Bipartite soft matching baselines: ``tome`` (ToMe's token order) and ``rmeeto``.

Both run ToMe's matching on the patch tokens (the class token is taken out, so it is never
merged): the patch sequence is alternated into sets A (even) and B (odd), every A token is
matched to its most similar B token (cosine of the block input), the ``r`` best edges are
merged with a size-weighted average (several A tokens may join one B token).

* ``tome`` keeps ToMe's output order: the unmerged A tokens (in their original order) followed
  by all B tokens; the class token is put back in the middle of the sequence, where Vim's class
  token sits (``M'//2`` of the ``M'`` patch tokens). This scrambles the scan order, as applying
  ToMe to Vim does.
* ``rmeeto`` (R-MeeTo) restores the original order (a merged token sits at its B token's place)
  and re-inserts the class token at R-MeeTo's proportional index ``c * (t - r) // t``. The true
  number of tokens left of the class token differs between samples after unbalanced merging, so
  like R-MeeTo this places the class token only approximately.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from vimstm.errors import ConfigError
from vimstm.merge.base import Merger, block_input, group_normalize


class BipartiteMerger(Merger):
    name = "tome"
    keeps_order = False
    option_defaults: ClassVar[dict[str, Any]] = {"similarity": "x"}

    def _check_options(self) -> None:
        if self.options["similarity"] not in ("x", "b"):
            raise ConfigError(
                f"{self.name} option similarity={self.options['similarity']!r}: choose 'x' or 'b'"
            )
        self.needs_ssm = self.options["similarity"] == "b"

    def cap(self, tokens: int, cls_index: int, r: int) -> bool:
        return r <= (tokens - 1) // 2

    def next_cls(self, tokens: int, cls_index: int, r: int) -> int:
        return (tokens - 1 - r) // 2

    def merge_macs(self, tokens: int, r: int, dim: int, d_state: int, d_inner: int) -> float:
        feat = dim if self.options["similarity"] == "x" else 2 * d_state
        return tokens * feat + (tokens / 2) ** 2 * feat + 2.0 * tokens * dim

    def _ranks(self, keep_a: Tensor, n_a: int, n_b: int) -> tuple[Tensor, Tensor]:
        """New patch ranks of the kept A tokens and of the B tokens."""
        rank_a = keep_a.long().cumsum(1) - 1
        n_unm = n_a - self._r
        rank_b = n_unm + torch.arange(n_b, device=keep_a.device).unsqueeze(0)
        return rank_a, rank_b.expand(keep_a.shape[0], n_b)

    def plan(self, hidden: Tensor, residual: Tensor, state: Any, ssm: Any, r: int):
        b, t, _ = hidden.shape
        c = state.cls_index
        dev = hidden.device
        self._r = r
        if self.options["similarity"] == "x":
            f = block_input(hidden, residual)
        else:
            f = torch.cat((ssm.B_fwd, ssm.B_bwd), -1)
        patch_pos = torch.cat((torch.arange(c, device=dev), torch.arange(c + 1, t, device=dev)))
        f = f[:, patch_pos].float()
        f = f / f.norm(dim=-1, keepdim=True).clamp_min(1e-6)
        fa, fb = f[:, ::2], f[:, 1::2]
        n_a, n_b = fa.shape[1], fb.shape[1]
        scores = fa @ fb.transpose(1, 2)
        node_max, node_idx = scores.max(dim=-1)
        order = node_max.argsort(dim=-1, descending=True)
        src = order[:, :r]
        keep_a = torch.ones(b, n_a, dtype=torch.bool, device=dev).scatter_(1, src, False)
        rank_a, rank_b = self._ranks(keep_a, n_a, n_b)
        dst = node_idx.gather(1, src)
        rank_a.scatter_(1, src, rank_b.gather(1, dst))  # merged A goes with its B
        new_patches = t - 1 - r
        new_c = self.next_cls(t, c, r)
        patch_rank = torch.empty(b, t - 1, dtype=torch.long, device=dev)
        patch_rank[:, ::2] = rank_a
        patch_rank[:, 1::2] = rank_b
        patch_dest = patch_rank + (patch_rank >= new_c).long()
        dest = torch.full((b, t), new_c, dtype=torch.long, device=dev)
        dest[:, patch_pos] = patch_dest
        del new_patches
        size = state.size.squeeze(-1)
        wn = group_normalize(dest, size, t - r)
        return dest, wn, new_c, False


class RMeeToMerger(BipartiteMerger):
    name = "rmeeto"
    keeps_order = True

    def next_cls(self, tokens: int, cls_index: int, r: int) -> int:
        return cls_index * (tokens - r) // tokens

    def _ranks(self, keep_a: Tensor, n_a: int, n_b: int) -> tuple[Tensor, Tensor]:
        """Original order: a patch's rank counts the kept patches before it."""
        b = keep_a.shape[0]
        keep = torch.ones(b, n_a + n_b, dtype=torch.long, device=keep_a.device)
        keep[:, ::2] = keep_a.long()
        rank = keep.cumsum(1) - 1
        return rank[:, ::2], rank[:, 1::2]
