r"""Sequential Token Merging (STM, arXiv 2509.22691) and random adjacent merging.

Each merge step removes ``r`` tokens, ``r/2`` on each side of the class token (the odd one on
the longer side), so the class token's new index is exactly ``c - r_left`` for every sample.

**Candidates.** On each side, the tokens outside the protected window (``protect`` = w tokens
next to the class token are never merged) are numbered from the far end, j = 0, 1, ...; the odd
ones (set A) may merge into their left or right even neighbour (set B). Each A token prefers
the neighbour with the lower cost, the ``r_side`` A tokens with the lowest cost are merged, and
where two chosen A tokens would share one B token (a_k to the right, a_{k+1} to the left) the
run of adjacent chosen A tokens is resolved exactly: its members take sides L...LR...R with the
split that minimises the run's total cost (a prefix-sum argmin, vectorised). Pairs therefore
never overlap, every merge joins two scan-adjacent tokens, the merged token takes the pair's
place, and up to half of the mergeable tokens of a side can go in one step.

**Cost** = dissimilarity x fading. Dissimilarity is ``1 - cos`` of the block input
(``similarity="x"``, residual + mixer output), or of the previous block's B (``"b"``, both
directions) or per-channel Δ (``"delta"``). Fading (``fading="ssm"``) is the decay of a token's
write on the class token's hidden state, exp of the summed per-token log-decay Δ·mean(A) of the
previous block along the scan path: tokens left of the class token reach it in the forward scan
(sum over t+1..c of log_decay_fwd), tokens right of it in the backward scan (sum over c..t-1 of
log_decay_bwd); a pair's fading is the geometric mean of its two tokens'. ``fading="gamma"``
uses ``gamma ** distance`` instead; ``"none"`` uses the dissimilarity alone.

**Fade strength** (``fade_power`` p in [0, 1], default 0.25; ours, not in the paper's
abstract). The cost is dissimilarity x fade^p, i.e. the log-fade is scaled by p: p = 1 is the
fade above, p = 0 ranks by the dissimilarity alone (the same pairs as ``fading="none"``). With
p = 1 far pairs are nearly free and the pair choice is locked to the scan's far ends, where one
token per end absorbs its neighbour at every step (results/cifar10/why_pruning.md); a smaller p
lets content compete with position. The default 0.25 was chosen on 512 CIFAR-10 *training*
images by a rule fixed beforehand (fidelity to the dense model: p = 0.25 was the only candidate
among p 0.5/0.25, ``max_size`` 3/4/6 and their best combination whose paired interval of mean
KL(dense || merged) lay below default STM's at both mean token reductions 0.36 and 0.4 of the
every=2 schedule, without raising it on the default schedule): why_pruning.md, "Choosing the
default on training images". The test-split rows (RESULTS.md) were not used to choose it.
``fade_power=1`` restores the full fade; p scales the ``gamma`` fade too (gamma^(p x distance)).

**Size cap** (``max_size``, off by default; not in the paper's abstract). With fading the far
ends of the scan are the cheapest places to merge at every step, so the token at each end
absorbs its neighbour again and again (results/cifar10/why_pruning.md). ``max_size=k`` lets an
A token merge only with a partner that keeps the pair at most k patches (``size``); A tokens
with no such partner rank after all others and are merged only where a side has too few
others left, so the cap yields rather than the step failing.

**Weights** (``weights="b"``). A token's write into the scan state is, per channel,
``Δ_t B_t u_t`` (``h_t = Ā_t h_{t-1} + Δ_t B_t u_t``). Over the pair (l, r) the state receives,
in the forward direction, ``Ā_r Δ_l B_l u_l + Δ_r B_r u_r`` (the left write decays by one step),
and symmetrically in the backward direction. One token m can only write ``Δ_m B_m u_m``; with
``B_m`` fixed, the least-squares ``u_m`` for ``min ‖Δ_m B_m u_m^T - Σ_s g_s Δ_s B_s u_s^T‖_F``
is ``u_m ∝ Σ_s g_s Δ_s ⟨B_s, B_m⟩ u_s`` (``g_s``: the one-step decay factor above). Because the
next block RMS-normalises its input, only the direction of the merged token matters, so the
weights are ``α_s ∝ size_s Σ_dir g_s Δ_s max(⟨B_s, B̄⟩, 0)`` normalised to sum to one, with
``B̄`` the pair's mean B as the estimate of ``B_m`` and ``u`` linearised as the block input
(the short conv and SiLU are ignored); B and Δ come from the previous block (the next block's
are not known before the merge); ``size_s`` counts the writes a merged token stands for.
``weights="size"`` is the size-weighted average. hidden_states and residual get the same weights.
Before block 0 (the ``even-blocks`` schedule merges there) no scan has run yet: that step uses
the dissimilarity alone (or ``gamma`` fading) and the size-weighted average.

**Two implementations, one result.** Where the model runs the Triton scan, the similarity, the
pair weights, and the pair choice with the run resolution and merge layout run as the kernels of
:mod:`vimstm.ops.triton_merge` (:mod:`vimstm.ops.dispatch` decides): a handful of launches
instead of ~100 small ones, which is what makes a merge step cheap on a GPU (BENCHMARKS.md).
Elsewhere their PyTorch definitions run (:mod:`vimstm.ops.merge_ref` and
:meth:`AdjacentMerger.plan`). Both choose the same pairs (tested).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from vimstm.errors import ConfigError
from vimstm.merge.base import Merger, PairPlan, split_sides
from vimstm.ops import dispatch
from vimstm.ops.merge_ref import adjacent_dissimilarity_of

_BIG = 1e4  # cost of an impossible side (finite, so the run prefix sums stay exact)
_OVER = 1e3  # added to the cost of a pair over ``max_size`` (below _BIG: still a real pair)


class AdjacentLayout(NamedTuple):
    """Index tensors of one step's shape (tokens, class index, r): the A tokens of both sides.

    Side 0 is left of the class token, side 1 right of it; A tokens are numbered from each
    side's far end (j = 1, 3, 5, ...), so side 1 mirrors side 0. Edge e joins tokens e and e+1.
    """

    n_a: int  # A tokens per side (the larger side's count)
    n_side: tuple[int, int]  # mergeable tokens per side (outside the protected window)
    a_tok: Tensor  # (2, n_a): each A token's index in the sequence
    left_tok: Tensor  # (2, n_a): its left neighbour
    right_tok: Tensor  # (2, n_a): its right neighbour
    edges: Tensor  # (2 [left/right partner] * 2 [side] * n_a,): the edge to either partner
    a_is_left: Tensor  # (2, 2, n_a): the A token is the left token of that edge
    invalid: Tensor  # (2, n_a): no such A token on this side
    bad_side: Tensor  # (2 [partner], 2, n_a): the right partner does not exist
    take: Tensor  # (2, n_a): the first r_side ranks of each side are merged
    tri: Tensor  # _tri_masks(n_a)
    mirrored: Tensor  # (2, 1): side 1, whose partners are mirrored
    pos: Tensor  # (1, tokens) fp32: token positions
    a_tok3: Tensor  # (1, 3, 2 * n_a): a_tok repeated for the three per-token scatters
    fade: Tensor | None  # STMMerger._fade_matrix, or None


class AdjacentMerger(Merger):
    """Balanced, non-overlapping merging of scan-adjacent pairs (shared by STM and random).

    A step is a fixed number of device ops: every index tensor of a (tokens, class index, r)
    is built once and cached on the merger, and nothing reads device data back to the host.
    """

    fading_kind = "none"
    sorted_dest = True

    def _protect(self) -> int:
        return int(self.options.get("protect", 0))

    def cap(self, tokens: int, cls_index: int, r: int) -> bool:
        r_left, r_right = split_sides(tokens, cls_index, r)
        w = self._protect()
        n_left = max(cls_index - w, 0)
        n_right = max(tokens - 1 - cls_index - w, 0)
        return r_left <= n_left // 2 and r_right <= n_right // 2

    def next_cls(self, tokens: int, cls_index: int, r: int) -> int:
        return cls_index - split_sides(tokens, cls_index, r)[0]

    def _layout(self, tokens: int, c: int, r: int, device: torch.device) -> AdjacentLayout:
        """:class:`AdjacentLayout` of this step (cached per shape and device)."""
        key = ("layout", tokens, c, r, self._protect(), self.fading_kind, str(device))
        return self.cached(key, lambda: self._build_layout(tokens, c, r, device))

    def _build_layout(self, tokens: int, c: int, r: int, device: torch.device) -> AdjacentLayout:
        w = self._protect()
        n = (max(c - w, 0), max(tokens - 1 - c - w, 0))  # mergeable tokens per side
        n_a = max(max(n) // 2, 1)
        j = 2 * torch.arange(n_a) + 1  # local index of A tokens, counted from the far end
        t_hi, e_hi = tokens - 1, max(tokens - 2, 0)
        # side 0 (left of the class token): global = local; edge e joins tokens e and e+1
        ga0, ga1 = j, tokens - 1 - j
        a_tok = torch.stack((ga0, ga1)).clamp(0, t_hi)  # (2, n_a)
        e_l = torch.stack((ga0 - 1, ga1)).clamp(0, e_hi)
        e_r = torch.stack((ga0, ga1 - 1)).clamp(0, e_hi)
        valid, valid_r = j < torch.tensor(n).view(2, 1), (j + 1) < torch.tensor(n).view(2, 1)
        r_left, r_right = split_sides(tokens, c, r)

        def dev(x: Tensor) -> Tensor:
            return x.to(device)

        fade = self._fade_matrix(tokens, c, a_tok, e_l, e_r)
        return AdjacentLayout(
            n_a=n_a,
            n_side=n,
            a_tok=dev(a_tok),
            left_tok=dev(torch.stack((ga0 - 1, ga1 + 1)).clamp(0, t_hi)),
            right_tok=dev(torch.stack((ga0 + 1, ga1 - 1)).clamp(0, t_hi)),
            edges=dev(torch.stack((e_l, e_r)).flatten()),
            a_is_left=dev(torch.tensor([[False, True], [True, False]]).view(2, 2, 1)
                          .expand(2, 2, n_a).clone()),
            invalid=dev(~valid),
            bad_side=dev(torch.stack((torch.zeros_like(valid_r), ~valid_r))),
            take=dev(torch.arange(n_a) < torch.tensor([r_left, r_right]).view(2, 1)),
            tri=dev(_tri_masks(n_a)),
            mirrored=dev(torch.tensor([False, True]).view(2, 1)),
            pos=dev(torch.arange(tokens, dtype=torch.float32).unsqueeze(0)),
            a_tok3=dev(a_tok.flatten().view(1, 1, -1).expand(1, 3, -1).clone()),
            fade=None if fade is None else dev(fade),
        )

    def _fade_matrix(self, t: int, c: int, a_tok: Tensor, e_l: Tensor, e_r: Tensor):
        """Linear map from per-token log-fades to (own, left pair - own, right pair - own)."""
        return None

    def _costs(self, hidden: Tensor, residual: Tensor, ssm: Any, layout: AdjacentLayout,
               size: Tensor):
        """(costs (batch, 2 [left/right], 2 [side], n_a), rank score (batch, 2, n_a));
        ``size`` (batch, tokens): the patches each token holds."""
        raise NotImplementedError

    def _edge_alpha(self, state: Any, ssm: Any) -> Tensor:
        """Weight of the left token of every adjacent pair (batch, tokens - 1)."""
        su = state.size.unfold(1, 2, 1)
        return su[..., 0] / su.sum(-1)

    def plan(self, hidden: Tensor, residual: Tensor, state: Any, ssm: Any, r: int) -> PairPlan:
        b, t, _ = hidden.shape
        c = state.cls_index
        layout = self._layout(t, c, r, hidden.device)
        n_a = layout.n_a
        cost, score = self._costs(hidden, residual, ssm, layout, state.size)
        score = score.masked_fill(layout.invalid, math.inf)
        cost = cost.clamp(max=_BIG).masked_fill(layout.bad_side, _BIG)
        # the A token's weight in a pair with either partner
        edge_w = self._edge_alpha(state, ssm).index_select(1, layout.edges).view(b, 2, 2, n_a)
        a_weight = torch.where(layout.a_is_left, edge_w, 1.0 - edge_w)
        r_side = split_sides(t, c, r)
        new_c = c - r_side[0]
        fused = dispatch.pair_choice(cost, score, a_weight, t, c, layout.n_side, r_side, _BIG,
                                     self.backend)
        if fused is not None:
            return PairPlan(*fused, new_c)

        # the r_side A tokens of lowest score on each side
        order = score.argsort(dim=-1)
        take = layout.take.expand(b, 2, n_a)
        sel = torch.zeros_like(take).scatter_(-1, order, take)

        # sides: runs of adjacent chosen A tokens take L..LR..R with the cheapest split
        go_left = _resolve_sides(sel, cost[:, 0], cost[:, 1], layout.tri)
        alpha = torch.where(go_left, a_weight[:, 0], a_weight[:, 1])

        # per token: removed, merged into the next token, own weight (A), partner weight
        partner = torch.where(go_left, layout.left_tok, layout.right_tok).view(b, 1, -1)
        idx = torch.cat((layout.a_tok3.expand(b, 3, -1), partner), 1)
        sf, gl = sel.float(), go_left.float()
        al = alpha * sf
        after = torch.where(layout.mirrored, gl, sf - gl)  # merged into the token after it
        vals = torch.stack((sf, after, al, al), 1).view(b, 4, -1)
        tok = hidden.new_zeros(b, 4, t, dtype=torch.float32).scatter_add_(2, idx, vals)
        removed, right, own, partner_w = tok.unbind(1)
        # a kept token moves left by the removals before it; a removed one joins its partner
        dest = (layout.pos - removed.cumsum(1) + right).long()
        wn = (own + 1.0) - removed - partner_w
        return self.pairs(dest, wn, t - r, new_c)

    def merge_macs(self, tokens: int, r: int, dim: int, d_state: int, d_inner: int) -> float:
        feat = {"x": dim, "b": 4 * d_state, "delta": 4 * d_inner}.get(
            self.options.get("similarity", "x"), 0
        )
        # norms + adjacent dot products, pair weights, then hidden + residual
        return tokens * (2.0 * feat + 4.0 * d_state + 2.0 * dim)


def _tri_masks(n: int, device: Any = None) -> Tensor:
    """(2, n, n) bool: ``[0][k, j] = j < k`` and ``[1][k, j] = j > k``."""
    ones = torch.ones(n, n, dtype=torch.bool, device=device)
    return torch.stack((ones.tril(-1), ones.triu(1)))


def _resolve_sides(
    sel: Tensor, cost_l: Tensor, cost_r: Tensor, tri: Tensor | None = None
) -> Tensor:
    """For chosen A tokens, True where it merges left; no two pick the same B token.

    A run of chosen A tokens a_k0..a_k1 (consecutive, so a_k and a_k+1 share the B between
    them) must choose sides L..L R..R; the split q (last L) minimises
    ``sum_{k<=q} cost_l + sum_{k>q} cost_r``, i.e. ``H(q) = sum_{k0<=k<=q} (cost_l - cost_r)``
    against 0 for "all R" (ties go to the earlier split, "all R" first).

    With ``cum`` the running sum of ``cost_l - cost_r`` over chosen tokens and ``cx`` its
    exclusive version, a_k goes left iff the run's minimum of ``cum`` from k on is below the
    minimum of ``cx`` up to k (which covers "all R" and every earlier split). Both minima are
    masked reductions over an (n, n) grid per row: a fixed number of ops, no host sync.
    ``tri`` is ``_tri_masks(n)`` on the device (cached by the caller).
    """
    n = sel.shape[-1]
    dl = (cost_l - cost_r) * sel
    cum = dl.cumsum(-1)
    cx = cum - dl
    prev = F.pad(sel[..., :-1], (1, 0))
    run = (sel & ~prev).cumsum(-1)  # run id of every position
    # other[k, j]: j is not a chosen token of k's run
    other = (run.unsqueeze(-1) != run.unsqueeze(-2)) | ~sel.unsqueeze(-2)
    if tri is None:
        tri = _tri_masks(n, sel.device)
    later = cum.unsqueeze(-2).masked_fill(other | tri[0], math.inf).amin(-1)  # j >= k
    earlier = cx.unsqueeze(-2).masked_fill(other | tri[1], math.inf).amin(-1)  # j <= k
    return sel & (later < earlier)


class STMMerger(AdjacentMerger):
    """Sequential Token Merging; every part can be switched off for ablation."""

    name = "stm"
    option_defaults: ClassVar[dict[str, Any]] = {
        "protect": 4,  # w: tokens beside the class token never merged (each side); by experiment
        "fading": "ssm",  # "ssm" | "gamma" | "none"
        "gamma": 0.9,  # decay per token for fading="gamma"
        "weights": "b",  # "b" (least squares from the previous block's B) | "size"
        "similarity": "x",  # "x" (block input) | "b" | "delta"
        "max_size": None,  # most patches a merged token may hold (None: no limit)
        "fade_power": 0.25,  # p: cost = dissimilarity x fade ** p (0: no fade, 1: the full fade)
    }

    def _check_options(self) -> None:
        o = self.options
        choices = {"fading": ("ssm", "gamma", "none"), "weights": ("b", "size"),
                   "similarity": ("x", "b", "delta")}
        for key, allowed in choices.items():
            if o[key] not in allowed:
                raise ConfigError(
                    f"stm option {key}={o[key]!r} is unknown; choose one of {allowed}"
                )
        if isinstance(o["protect"], bool) or not isinstance(o["protect"], int) or o["protect"] < 0:
            raise ConfigError(f"stm option protect={o['protect']!r} must be an int >= 0")
        if not isinstance(o["gamma"], (int, float)) or not 0.0 < o["gamma"] <= 1.0:
            raise ConfigError(f"stm option gamma={o['gamma']!r} must lie in (0, 1]")
        m = o["max_size"]
        if m is not None and (isinstance(m, bool) or not isinstance(m, int) or m < 2):
            raise ConfigError(f"stm option max_size={m!r} must be an int >= 2 (patches a merged "
                              "token may hold) or None")
        fp = o["fade_power"]
        if isinstance(fp, bool) or not isinstance(fp, (int, float)) or not 0.0 <= fp <= 1.0:
            raise ConfigError(f"stm option fade_power={fp!r} must be a number in [0, 1] "
                              "(0: no fade, 1: the full fade)")
        self.needs_ssm = (o["fading"] == "ssm" or o["weights"] == "b"
                          or o["similarity"] in ("b", "delta"))
        self.needs_delta = o["similarity"] == "delta"
        self.fading_kind = o["fading"]
        parts = set()
        if o["weights"] == "b" or o["similarity"] == "b":
            parts.add("B")
        if o["weights"] == "b" or o["fading"] == "ssm":
            parts.add("decay")
        self.ssm_parts = tuple(sorted(parts))

    def _dissimilarity(self, hidden: Tensor, residual: Tensor, ssm: Any) -> Tensor:
        """``1 - cos`` of every adjacent pair (batch, tokens - 1): edge e joins e and e+1."""
        sim = self.options["similarity"]
        if sim == "x":
            return dispatch.adjacent_dissimilarity(hidden, residual, self.backend)
        if sim == "b":
            return adjacent_dissimilarity_of(torch.cat((ssm.B_fwd, ssm.B_bwd), -1))
        if ssm.dt_low is None:
            raise ConfigError(
                "similarity='delta' needs the mixers to record 'delta' (set by patch)"
            )
        return dispatch.delta_dissimilarity(ssm.dt_low, ssm.dt_weight, ssm.dt_bias,
                                            self.backend)

    def _fade_matrix(self, t: int, c: int, a_tok: Tensor, e_l: Tensor, e_r: Tensor):
        """Map from the log-decays to each A token's (log fade, pair fades relative to it).

        The log fade of token u on the class token is ``sum_{u<q<=c} log_decay_fwd[q]`` left of
        it and ``sum_{c<=q<u} log_decay_bwd[q]`` right of it (``|u - c| log gamma`` for
        ``fading="gamma"``): linear in the (batch, 2*tokens) log-decays, so the A tokens' own
        and pair values come out of one matrix product with this (2*tokens, 3*2*n_a) matrix,
        scaled by ``fade_power`` (fade ** p is p x the log fade).
        """
        kind = self.fading_kind
        if kind == "none":
            return None
        u = torch.arange(t)
        q = u.view(-1, 1)
        if kind == "gamma":
            m = ((u - c).abs().double() * math.log(self.options["gamma"])).view(1, t)
        else:
            m_f = ((u < c) & (q > u) & (q <= c)).double()  # (q, u)
            m_b = ((u > c) & (q >= c) & (q < u)).double()
            m = torch.cat((m_f, m_b), 0)  # (2t, t)
        own = m[:, a_tok]
        pair_l = 0.5 * (m[:, e_l] + m[:, e_l + 1]) - own
        pair_r = 0.5 * (m[:, e_r] + m[:, e_r + 1]) - own
        p = float(self.options["fade_power"])
        return (p * torch.stack((own, pair_l, pair_r), 1).flatten(1)).float()  # (2t or 1, 6 n_a)

    def check_pre(self) -> None:
        if self.options["similarity"] != "x":
            raise ConfigError(f"stm similarity={self.options['similarity']!r} reads the previous "
                              "block's scan, which does not exist before block 0 (where the "
                              "'even-blocks' schedule merges); use similarity=x")

    def _costs(self, hidden, residual, ssm, layout, size):
        b = hidden.shape[0]
        n_a = layout.n_a
        dis = self._dissimilarity(hidden, residual, ssm)
        d = dis.index_select(1, layout.edges).view(b, 2, 2, n_a)
        over = self._over_size(size, layout)
        if self.fading_kind == "none" or (ssm is None and self.fading_kind == "ssm"):
            cost, own = d, None
        else:
            if self.fading_kind == "gamma":
                fade = layout.fade.view(1, 3, 2, n_a)
            else:  # the log-decays of both directions, (b, 2 * tokens), times the fade matrix
                fade = (ssm.token_stats[:, 2:].flatten(1) @ layout.fade).view(b, 3, 2, n_a)
            cost, own = d * fade[:, 1:].exp(), fade[:, 0]  # relative to the A token's own fade
        # an A token ranks by the cheapest pair it can take (a partner inside the protected
        # window or the class token is no pair)
        best = cost.masked_fill(layout.bad_side, math.inf).amin(1)
        if over is not None:  # the cheapest pair under the cap; where none is, the cheapest
            none_fit = over.all(1)  # pair, ranked last
            best = torch.where(none_fit, best, cost.masked_fill(over, math.inf).amin(1))
            cost = cost + over * _OVER
        score = (best + 1e-6).log()  # absolute: log(dissimilarity x fade)
        if own is not None:
            score = score + own
        if over is not None:
            score = score + none_fit * _BIG
        return cost, score

    def _over_size(self, size: Tensor, layout: AdjacentLayout) -> Tensor | None:
        """(batch, 2 [left/right], 2 [side], n_a) bool: the pair would hold more than
        ``max_size`` patches or does not exist; None without a cap."""
        cap = self.options["max_size"]
        if cap is None:
            return None
        b, n_a = size.shape[0], layout.n_a
        own = size.index_select(1, layout.a_tok.flatten()).view(b, 1, 2, n_a)
        nbr = size.index_select(1, torch.stack((layout.left_tok, layout.right_tok)).flatten())
        # a partner that does not exist never fits
        return ((own + nbr.view(b, 2, 2, n_a)) > cap) | layout.bad_side

    def _edge_alpha(self, state, ssm):
        if self.options["weights"] == "size" or ssm is None:
            return super()._edge_alpha(state, ssm)
        return dispatch.edge_alpha(ssm.B_fwd, ssm.B_bwd, ssm.token_stats, state.size, self.backend)


class RandomMerger(AdjacentMerger):
    """Random adjacent pairs, balanced around the class token, size-weighted: a sanity floor."""

    name = "random"
    option_defaults: ClassVar[dict[str, Any]] = {"protect": 0, "seed": None}

    def _check_options(self) -> None:
        p = self.options["protect"]
        if isinstance(p, bool) or not isinstance(p, int) or p < 0:
            raise ConfigError(f"random option protect={p!r} must be an int >= 0")
        seed = self.options["seed"]
        self._gen_seed = None if seed is None else int(seed)

    def _costs(self, hidden, residual, ssm, layout, size):
        shape = (3, hidden.shape[0], 2, layout.n_a)
        if self._gen_seed is None:
            u = torch.rand(shape, device=hidden.device)
        else:  # the same draw at every step of this shape: made once, then cached
            def draw() -> Tensor:
                gen = torch.Generator(device=hidden.device).manual_seed(self._gen_seed)
                return torch.rand(shape, device=hidden.device, generator=gen)

            u = self.cached(("rand", shape, str(hidden.device)), draw)
        return u[:2].transpose(0, 1), u[2]

    def merge_macs(self, tokens: int, r: int, dim: int, d_state: int, d_inner: int) -> float:
        return 2.0 * tokens * dim
