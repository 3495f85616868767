"""MTR: training-free Mamba Token Reduction (Ma et al., arXiv 2507.14042), as ``mtr``.

The paper publishes no code; this follows its description.

* **Importance** of a token is the mean over channels of its Δ (the SSM step size, what decides
  how strongly the token is written into the state), summed over both scan directions. It comes
  from the previous block's scan (``SSMStats.delta_fwd + delta_bwd``), so it costs nothing.
* **Groups.** The ``r`` least important patch tokens are the *Source*; of the others, the most
  important ``keep`` share is *Keep* (left as it is) and the rest is *Target*.
* **Merge.** Every Source token joins its most similar Target token (cosine of the block input,
  residual + mixer output; bipartite: a Target may take several Sources, a Source one Target),
  the group averaged with the token sizes as weights. The merged token sits at its Target's
  place and every other token keeps its order, so the scan order is restored.

Choices the description leaves open (each an option):

* ``keep`` (default 0.5): the share of the non-Source tokens that are Keep. Keep protects the
  most informative tokens from being averaged with others; half leaves as many Targets, so
  every Source still finds a close partner. ``keep=0`` lets every token be a Target.
* ``balance`` (default True): take the Sources half on each side of the class token (the odd one
  on the longer side), so the class token's index stays exact for every sample in a batch,
  as STM and ``prune-norm`` do. With ``False`` the ``r`` lowest scores go wherever they are and
  the class token is moved to the middle of the kept tokens (its true place would differ
  between samples).
* ``similarity`` (default ``"x"``): the block input as ToMe; ``"b"`` uses the previous block's
  B of both directions instead.

The importance needs a previous block, so ``mtr`` cannot merge before block 0 (the
``even-blocks`` schedule's first step) and says so.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor

from vimstm.errors import ConfigError
from vimstm.merge.base import GroupPlan, LowestScoreMerger, block_input, group_normalize


class MTRMerger(LowestScoreMerger):
    name = "mtr"
    needs_ssm = True
    ssm_parts: tuple[str, ...] = ("decay",)  # the scan's per-token Δ statistics
    option_defaults: ClassVar[dict[str, Any]] = {"keep": 0.5, "balance": True, "similarity": "x"}

    def _check_options(self) -> None:
        o = self.options
        keep = o["keep"]
        if isinstance(keep, bool) or not isinstance(keep, (int, float)) or not 0 <= keep < 1:
            raise ConfigError(f"mtr option keep={keep!r} must lie in [0, 1): the share of the "
                              "tokens that are not merged away kept out of the Target group")
        super()._check_options()
        if o["similarity"] not in ("x", "b"):
            raise ConfigError(f"mtr option similarity={o['similarity']!r}: choose 'x' or 'b'")
        self.ssm_parts = ("B", "decay") if o["similarity"] == "b" else ("decay",)

    # -- closed form ------------------------------------------------------------------
    def merge_macs(self, tokens: int, r: int, dim: int, d_state: int, d_inner: int) -> float:
        feat = dim if self.options["similarity"] == "x" else 2 * d_state
        # norms, Source x all-token cosines, then hidden_states and residual
        return tokens * feat + r * tokens * feat + 2.0 * tokens * dim

    # -- one step ---------------------------------------------------------------------
    def importance(self, ssm: Any) -> Tensor:
        """Mean-over-channels Δ summed over both scan directions, (batch, tokens) fp32."""
        if ssm is None or ssm.delta_fwd is None:
            raise ConfigError("mtr needs the previous block's Δ statistics (set by patch); "
                              "install it with vimstm.patch(model, method='mtr', ...)")
        return ssm.delta_fwd + ssm.delta_bwd

    def plan(self, hidden: Tensor, residual: Tensor, state: Any, ssm: Any, r: int) -> GroupPlan:
        b, t, _ = hidden.shape
        c = state.cls_index
        layout = self._select_layout(t, c, r, hidden.device)
        imp = self.importance(ssm).float()
        src = self.lowest(imp, layout, r)  # the Sources: the least important
        is_src = torch.zeros(b, t, dtype=torch.bool, device=hidden.device).scatter_(1, src, True)
        # Keep: the most important of the rest; Target: all other non-Source patch tokens
        n_keep = int(self.options["keep"] * (t - 1 - r))
        out_of_play = is_src | layout.is_cls
        target = ~out_of_play
        if n_keep:
            keep_idx = imp.masked_fill(out_of_play, -math.inf).topk(n_keep, dim=1).indices
            target = target.scatter(1, keep_idx, False)
        # each Source's most similar Target (cosine)
        if self.options["similarity"] == "x":
            f = block_input(hidden, residual)
        else:
            f = torch.cat((ssm.B_fwd, ssm.B_bwd), -1)
        f = f / torch.linalg.vector_norm(f, dim=-1, keepdim=True).clamp_min(1e-6)
        fs = f.gather(1, src.unsqueeze(-1).expand(-1, -1, f.shape[-1]))
        sim = (fs @ f.transpose(1, 2)).masked_fill(~target.unsqueeze(1), -math.inf)
        match = sim.argmax(dim=-1)  # (b, r) token index of the Target
        # order restored: survivors by position, a Source at its Target's new place
        new_c = self.next_cls(t, c, r)
        rank = self.kept_ranks(~is_src, layout, new_c)
        dest = rank.scatter(1, src, rank.gather(1, match))
        wn = group_normalize(dest, state.size, t - r)
        return GroupPlan(dest, wn, t - r, False, new_c)
