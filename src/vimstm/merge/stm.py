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
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from vimstm.errors import ConfigError
from vimstm.merge.base import Merger, block_input, split_sides

_BIG = 1e4  # cost of an impossible side (finite, so the run prefix sums stay exact)


class AdjacentMerger(Merger):
    """Balanced, non-overlapping merging of scan-adjacent pairs (shared by STM and random)."""

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

    def _layout(self, tokens: int, c: int, device: torch.device) -> dict[str, Tensor]:
        """Index tensors of the A tokens of both sides (cached per shape)."""
        key = (tokens, c, self._protect(), str(device))
        cache = self.__dict__.setdefault("_layouts", {})
        if key in cache:
            return cache[key]
        w = self._protect()
        n = (max(c - w, 0), max(tokens - 1 - c - w, 0))  # mergeable tokens per side
        n_a = max(max(n) // 2, 1)
        m = torch.arange(n_a)
        j = 2 * m + 1  # local index of A tokens, counted from the far end
        g_a, g_bl, g_br, e_l, e_r, valid, valid_r = [], [], [], [], [], [], []
        for side in (0, 1):
            if side == 0:  # left: global = local
                ga, gbl, gbr = j, j - 1, j + 1
                el, er = j - 1, j  # edge t joins tokens t and t+1
            else:  # right: global = tokens-1-local
                ga = tokens - 1 - j
                gbl, gbr = ga + 1, ga - 1
                el, er = ga, ga - 1
            ok = j < n[side]
            ok_r = (j + 1) < n[side]
            clamp_t = lambda v: v.clamp(0, tokens - 1)  # noqa: E731
            g_a.append(clamp_t(ga))
            g_bl.append(clamp_t(gbl))
            g_br.append(clamp_t(gbr))
            e_l.append(el.clamp(0, max(tokens - 2, 0)))
            e_r.append(er.clamp(0, max(tokens - 2, 0)))
            valid.append(ok)
            valid_r.append(ok_r)
        out = {
            "g_a": torch.stack(g_a), "g_bl": torch.stack(g_bl), "g_br": torch.stack(g_br),
            "e_l": torch.stack(e_l), "e_r": torch.stack(e_r),
            "valid": torch.stack(valid), "valid_r": torch.stack(valid_r),
        }
        out = {k: v.to(device) for k, v in out.items()}
        out["n_a"] = n_a  # type: ignore[assignment]
        cache[key] = out
        return out

    def _costs(
        self, hidden: Tensor, residual: Tensor, c: int, ssm: Any, lay: dict[str, Tensor]
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(cost_left, cost_right, rank score) per A token, each (batch, 2, n_a)."""
        raise NotImplementedError

    def _weights(
        self, state: Any, ssm: Any, g_a: Tensor, g_p: Tensor, hidden: Tensor
    ) -> Tensor:
        """Weight of each A token inside its pair (batch, 2*n_a); the partner gets 1 - α."""
        size = state.size.squeeze(-1)
        s_a, s_p = size.gather(1, g_a), size.gather(1, g_p)
        return s_a / (s_a + s_p)

    def plan(self, hidden: Tensor, residual: Tensor, state: Any, ssm: Any, r: int):
        b, t, _ = hidden.shape
        c = state.cls_index
        r_left, r_right = split_sides(t, c, r)
        lay = self._layout(t, c, hidden.device)
        n_a: int = lay["n_a"]  # type: ignore[assignment]
        cost_l, cost_r, score = self._costs(hidden, residual, c, ssm, lay)
        valid = lay["valid"].unsqueeze(0)
        score = score.masked_fill(~valid, math.inf)
        cost_r = torch.where(lay["valid_r"].unsqueeze(0), cost_r, _BIG).clamp(max=_BIG)
        cost_l = cost_l.clamp(max=_BIG)

        # the r_side A tokens of lowest score on each side
        order = score.argsort(dim=-1)
        ar = torch.arange(n_a, device=hidden.device)
        take = torch.stack((ar < r_left, ar < r_right)).unsqueeze(0)  # no host-to-device copy
        sel = torch.zeros_like(take.expand(b, 2, n_a)).scatter_(-1, order, take.expand(b, 2, n_a))

        # sides: runs of adjacent chosen A tokens take L..LR..R with the cheapest split
        go_left = _resolve_sides(sel, cost_l, cost_r)

        g_a = lay["g_a"].unsqueeze(0).expand(b, 2, n_a).reshape(b, -1)
        g_p = torch.where(go_left, lay["g_bl"].unsqueeze(0), lay["g_br"].unsqueeze(0))
        g_p = g_p.reshape(b, -1)
        self_ = sel.reshape(b, -1)
        removed = torch.zeros(b, t, dtype=torch.int32, device=hidden.device)
        removed = removed.scatter_add_(1, g_a, self_.int()) > 0
        keep_rank = (~removed).long().cumsum(1) - 1
        offset = torch.zeros(b, t, dtype=torch.long, device=hidden.device)
        offset.scatter_add_(1, g_a, (g_p - g_a) * self_.long())
        partner = torch.arange(t, device=hidden.device).unsqueeze(0) + offset
        dest = keep_rank.gather(1, partner)

        alpha = self._weights(state, ssm, g_a, g_p, hidden).float()
        sf = self_.float()
        wn = torch.ones(b, t, device=hidden.device)
        wn.scatter_add_(1, g_a, (alpha - 1.0) * sf).scatter_add_(1, g_p, -alpha * sf)
        return dest, wn, c - r_left, False

    def merge_macs(self, tokens: int, r: int, dim: int, d_state: int, d_inner: int) -> float:
        feat = {"x": dim, "b": 4 * d_state, "delta": 4 * d_inner}.get(
            self.options.get("similarity", "x"), 0
        )
        # norms + adjacent dot products, pair weights, then hidden + residual
        return tokens * (2.0 * feat + 4.0 * d_state + 2.0 * dim)


def _resolve_sides(sel: Tensor, cost_l: Tensor, cost_r: Tensor) -> Tensor:
    """For chosen A tokens, True where it merges left; no two pick the same B token.

    A run of chosen A tokens a_k0..a_k1 (consecutive, so a_k and a_k+1 share the B between
    them) must choose sides L..L R..R; the split q (last L) minimises
    ``sum_{k<=q} cost_l + sum_{k>q} cost_r``, i.e. ``H(q) = sum_{k0<=k<=q} (cost_l - cost_r)``
    against 0 for "all R".
    """
    rows = sel.shape[0] * sel.shape[1]
    n = sel.shape[-1]
    s = sel.reshape(rows, n)
    d = torch.where(s, cost_l.reshape(rows, n) - cost_r.reshape(rows, n), 0.0)
    prev = F.pad(s[:, :-1], (1, 0), value=False)
    start = s & ~prev
    run = start.long().cumsum(1)  # run id per row (0 before the first run)
    gid = run + torch.arange(rows, device=s.device).unsqueeze(1) * (n + 1)
    dummy = rows * (n + 1)
    cum = d.cumsum(1)
    base = torch.zeros(dummy + 1, dtype=d.dtype, device=s.device)
    base.scatter_(0, torch.where(start, gid, dummy).flatten(), (cum - d).flatten())
    h = cum - base[gid]
    idx_sel = torch.where(s, gid, dummy).flatten()
    h_min = torch.zeros(dummy + 1, dtype=d.dtype, device=s.device)
    h_min.scatter_reduce_(0, idx_sel, torch.where(s, h, math.inf).flatten(), "amin")
    hm = h_min[gid]
    k = torch.arange(n, device=s.device).expand(rows, n)
    cand = torch.where(s & (h == hm) & (hm < 0), k, n)
    q = torch.full((dummy + 1,), n, dtype=torch.long, device=s.device)
    q.scatter_reduce_(0, idx_sel, cand.flatten(), "amin")
    qg = q[gid]
    go_left = s & (k <= qg) & (qg < n)  # q = n: no split below 0, the run goes all right
    return go_left.view_as(sel)


class STMMerger(AdjacentMerger):
    """Sequential Token Merging; every part can be switched off for ablation."""

    name = "stm"
    option_defaults: ClassVar[dict[str, Any]] = {
        "protect": 4,  # w: tokens beside the class token never merged (each side); by experiment
        "fading": "ssm",  # "ssm" | "gamma" | "none"
        "gamma": 0.9,  # decay per token for fading="gamma"
        "weights": "b",  # "b" (least squares from the previous block's B) | "size"
        "similarity": "x",  # "x" (block input) | "b" | "delta"
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
        self.needs_ssm = (o["fading"] == "ssm" or o["weights"] == "b"
                          or o["similarity"] in ("b", "delta"))
        self.needs_delta_full = o["similarity"] == "delta"

    def _features(self, hidden: Tensor, residual: Tensor, ssm: Any) -> Tensor:
        sim = self.options["similarity"]
        if sim == "x":
            return block_input(hidden, residual)
        if sim == "b":
            return torch.cat((ssm.B_fwd, ssm.B_bwd), -1)
        if ssm.delta_full is None:
            raise ConfigError(
                "similarity='delta' needs the mixers' record_delta_full (set by patch)"
            )
        return ssm.delta_full

    def _log_fade(self, ssm: Any, t: int, c: int, device: torch.device) -> Tensor | None:
        """Log of each token's decay on the class token, (batch or 1, tokens)."""
        fading = self.options["fading"]
        pos = torch.arange(t, device=device)
        if fading == "none":
            return None
        if fading == "gamma":
            return ((pos - c).abs().float() * math.log(self.options["gamma"])).unsqueeze(0)
        cf = ssm.log_decay_fwd.cumsum(1)
        cb_ex = ssm.log_decay_bwd.cumsum(1) - ssm.log_decay_bwd
        left = cf[:, c : c + 1] - cf  # sum_{q=t+1..c} for t < c
        right = cb_ex - cb_ex[:, c : c + 1]  # sum_{q=c..t-1} for t > c
        return torch.where(pos < c, left, right)

    def _costs(self, hidden, residual, c, ssm, lay):
        t = hidden.shape[1]
        f = self._features(hidden, residual, ssm).float()
        f = f / f.norm(dim=-1, keepdim=True).clamp_min(1e-6)
        dis = (1.0 - (f[:, :-1] * f[:, 1:]).sum(-1)).clamp_min(0.0)  # (b, t-1): edge t|t+1
        b = dis.shape[0]
        e_l = lay["e_l"].flatten()
        e_r = lay["e_r"].flatten()
        shape = (b, *lay["e_l"].shape)
        d_l, d_r = dis[:, e_l].view(shape), dis[:, e_r].view(shape)
        lf = self._log_fade(ssm, t, c, hidden.device)
        if lf is None:
            return d_l, d_r, (d_l.minimum(d_r) + 1e-6).log()
        lf = lf.expand(b, t)
        pair = 0.5 * (lf[:, :-1] + lf[:, 1:])  # (b, t-1)
        la = lf[:, lay["g_a"].flatten()].view(shape)
        c_l = d_l * (pair[:, e_l].view(shape) - la).exp()  # relative to the A token's own fade
        c_r = d_r * (pair[:, e_r].view(shape) - la).exp()
        score = (c_l.minimum(c_r) + 1e-6).log() + la  # absolute: log(dissimilarity x fade)
        return c_l, c_r, score

    def _weights(self, state, ssm, g_a, g_p, hidden):
        if self.options["weights"] == "size":
            return super()._weights(state, ssm, g_a, g_p, hidden)
        # least-squares weights of every adjacent pair (t, t+1), then one gather per A token;
        # with B̄ = (B_t + B_t+1)/2: <B_t, B̄> = (|B_t|^2 + B_t.B_t+1)/2
        size = state.size.squeeze(-1)
        w_l = w_r = None
        for bmat, delta, ld, fwd in (
            (ssm.B_fwd, ssm.delta_fwd, ssm.log_decay_fwd, True),
            (ssm.B_bwd, ssm.delta_bwd, ssm.log_decay_bwd, False),
        ):
            sq = bmat.square().sum(-1)
            cross = (bmat[:, :-1] * bmat[:, 1:]).sum(-1)
            left = delta[:, :-1] * (sq[:, :-1] + cross).clamp_min(0)
            right = delta[:, 1:] * (sq[:, 1:] + cross).clamp_min(0)
            # the scan's earlier token decays by one step of the later one
            if fwd:
                left = left * ld[:, 1:].exp()
            else:
                right = right * ld[:, :-1].exp()
            w_l = left if w_l is None else w_l + left
            w_r = right if w_r is None else w_r + right
        w_l = w_l * size[:, :-1] + 1e-12
        w_r = w_r * size[:, 1:] + 1e-12
        alpha_left = w_l / (w_l + w_r)  # (b, t-1): weight of the left token of each pair
        a_is_left = g_a < g_p
        alpha = alpha_left.gather(1, torch.minimum(g_a, g_p))
        return torch.where(a_is_left, alpha, 1.0 - alpha)


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

    def _costs(self, hidden, residual, c, ssm, lay):
        shape = (hidden.shape[0], *lay["e_l"].shape)
        gen = None
        if self._gen_seed is not None:
            gen = torch.Generator(device=hidden.device).manual_seed(self._gen_seed)
        u = torch.rand((3, *shape), device=hidden.device, generator=gen)
        return u[0], u[1], u[2]

    def merge_macs(self, tokens: int, r: int, dim: int, d_state: int, d_inner: int) -> float:
        return 2.0 * tokens * dim
