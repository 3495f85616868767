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

from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor

from vimstm.errors import ConfigError
from vimstm.merge.base import GroupPlan, Merger, block_input, group_normalize


class BipartiteLayout(NamedTuple):
    """Index tensors of one step's shape (tokens, class index, r)."""

    pos_a: Tensor  # (n_a,): sequence index of each A (even) patch token
    pos_b: Tensor  # (n_b,): sequence index of each B (odd) patch token
    rank_b: Tensor  # (1, n_b): B tokens' new patch ranks in ToMe's order (after kept A tokens)
    n_patches: int  # patch tokens (the class token left out)
    cls: Tensor  # (1, 1): the class token's new index


class BipartiteMerger(Merger):
    name = "tome"
    option_defaults: ClassVar[dict[str, Any]] = {"similarity": "x"}

    def _check_options(self) -> None:
        if self.options["similarity"] not in ("x", "b"):
            raise ConfigError(
                f"{self.name} option similarity={self.options['similarity']!r}: choose 'x' or 'b'"
            )
        self.needs_ssm = self.options["similarity"] == "b"
        self.ssm_parts = ("B",)

    def cap(self, tokens: int, cls_index: int, r: int) -> bool:
        return r <= (tokens - 1) // 2

    def next_cls(self, tokens: int, cls_index: int, r: int) -> int:
        return (tokens - 1 - r) // 2

    def merge_macs(self, tokens: int, r: int, dim: int, d_state: int, d_inner: int) -> float:
        feat = dim if self.options["similarity"] == "x" else 2 * d_state
        return tokens * feat + (tokens / 2) ** 2 * feat + 2.0 * tokens * dim

    def _ranks(self, keep_a: Tensor, layout: BipartiteLayout) -> Tensor:
        """New patch ranks of the A tokens (the kept ones; merged ones are overwritten)."""
        return keep_a.long().cumsum(1) - 1

    def _rank_b(self, keep_a: Tensor, layout: BipartiteLayout) -> Tensor:
        """New patch ranks of the B tokens: after the n_a - r unmerged A tokens."""
        return layout.rank_b.expand(keep_a.shape[0], -1)

    def _layout(self, t: int, c: int, r: int, dev: torch.device) -> BipartiteLayout:
        def build() -> BipartiteLayout:
            patch_pos = torch.cat((torch.arange(c), torch.arange(c + 1, t)))
            n_a, n_b = (t - 1 + 1) // 2, (t - 1) // 2
            return BipartiteLayout(
                pos_a=patch_pos[::2].to(dev), pos_b=patch_pos[1::2].to(dev),
                rank_b=(n_a - r + torch.arange(n_b)).unsqueeze(0).to(dev),
                n_patches=n_a + n_b,
                cls=torch.full((1, 1), self.next_cls(t, c, r)).to(dev),
            )

        return self.cached(("layout", t, c, r, str(dev)), build)

    def plan(self, hidden: Tensor, residual: Tensor, state: Any, ssm: Any, r: int) -> GroupPlan:
        b, t, _ = hidden.shape
        c = state.cls_index
        layout = self._layout(t, c, r, hidden.device)
        if self.options["similarity"] == "x":
            f = block_input(hidden, residual)
        else:
            f = torch.cat((ssm.B_fwd, ssm.B_bwd), -1)
        # A (even patches) and B (odd patches), class token left out; cosine similarity
        fa, fb = f.index_select(1, layout.pos_a), f.index_select(1, layout.pos_b)
        fa = fa / torch.linalg.vector_norm(fa, dim=-1, keepdim=True).clamp_min_(1e-6)
        fb = fb / torch.linalg.vector_norm(fb, dim=-1, keepdim=True).clamp_min_(1e-6)
        node_max, node_idx = (fa @ fb.transpose(1, 2)).max(dim=-1)
        src = node_max.topk(r, dim=-1).indices  # the r most similar A tokens
        keep_a = torch.ones_like(node_max, dtype=torch.bool).scatter_(1, src, False)
        rank_a = self._ranks(keep_a, layout)
        rank_b = self._rank_b(keep_a, layout)
        rank_a = rank_a.scatter(1, src, rank_b.gather(1, node_idx.gather(1, src)))
        new_c = self.next_cls(t, c, r)
        # interleave back (A, B, A, B, ...) and make room for the class token at new_c
        patch_rank = torch.stack((rank_a[:, : rank_b.shape[1]], rank_b), 2).flatten(1)
        if rank_a.shape[1] > rank_b.shape[1]:
            patch_rank = torch.cat((patch_rank, rank_a[:, -1:]), 1)
        patch_dest = patch_rank + (patch_rank >= new_c).long()
        dest = torch.cat((patch_dest[:, :c], layout.cls.expand(b, 1), patch_dest[:, c:]), 1)
        wn = group_normalize(dest, state.size, t - r)
        return GroupPlan(dest, wn, t - r, False, new_c)


class RMeeToMerger(BipartiteMerger):
    name = "rmeeto"

    def next_cls(self, tokens: int, cls_index: int, r: int) -> int:
        return cls_index * (tokens - r) // tokens

    def _ranks(self, keep_a: Tensor, layout: BipartiteLayout) -> Tensor:
        """Original order: a patch's rank counts the kept patches before it."""
        keep = torch.ones(keep_a.shape[0], layout.n_patches, dtype=torch.long,
                          device=keep_a.device)
        keep[:, ::2] = keep_a
        self._rank = keep.cumsum(1) - 1
        return self._rank[:, ::2]

    def _rank_b(self, keep_a: Tensor, layout: BipartiteLayout) -> Tensor:
        return self._rank[:, 1::2]
