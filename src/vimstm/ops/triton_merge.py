"""Fused kernels for token merging (inference path of :mod:`vimstm.merge`).

:func:`adjacent_dissimilarity_triton`: ``1 - cos`` between scan-adjacent tokens of the block
input ``residual + hidden`` in one pass over both tensors, with no fp32 copy of the sum and no
(batch, tokens, channels) temporaries; :func:`vimstm.ops.merge_ref.adjacent_dissimilarity_ref`
is the PyTorch definition it is tested against.

:func:`delta_dissimilarity_triton`: the same ``1 - cos`` on the per-channel Δ of both scan
directions (STM's ``similarity="delta"``), formed in registers from the low-rank ``dt_proj``
inputs and never written (:func:`vimstm.ops.merge_ref.delta_dissimilarity_ref`).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from vimstm.ops.triton_scan import _softplus


@triton.jit
def _store_dissimilarity(out_ptr, pid_b, T, rows, m1, nn0, nn1, dot):
    """``1 - cos`` from the summed terms, clamped at 0, for the edges (row, row + 1)."""
    n0 = tl.maximum(tl.sqrt(nn0), 1e-6)
    n1 = tl.maximum(tl.sqrt(nn1), 1e-6)
    dis = tl.maximum(1.0 - dot / (n0 * n1), 0.0)
    tl.store(out_ptr + pid_b * (T - 1) + rows, dis, mask=m1)


# Δ similarity tiles: a program forms Δ of 32 rows (31 edges; each row formed 32/31 times) in
# column blocks of 16 (4 warps: 96 registers, no spills for sm_90; benchmarks/kernel_sass.py)
DELTA_BLOCK_T, DELTA_BLOCK_C = 32, 16


@triton.jit
def _delta_dis_kernel(
    dt_ptr, w_ptr, b_ptr, out_ptr, T, DIM,
    s_dt_k, s_dt_b, s_dt_t, s_dt_r, s_w_k, s_w_d, s_w_r, s_b_k,
    R: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # a tile of BLOCK_T rows gives the BLOCK_T - 1 edges inside it; tiles overlap by one row
    pid_b = tl.program_id(0).to(tl.int64)
    rows = tl.program_id(1) * (BLOCK_T - 1) + tl.arange(0, BLOCK_T)
    m0 = rows < T
    nxt = tl.minimum(tl.arange(0, BLOCK_T) + 1, BLOCK_T - 1)  # the row after, in the tile
    # elementwise sums over the column tiles, reduced across threads once at the end
    nn0 = tl.zeros((BLOCK_T, BLOCK_C), dtype=tl.float32)
    nn1 = tl.zeros((BLOCK_T, BLOCK_C), dtype=tl.float32)
    dot = tl.zeros((BLOCK_T, BLOCK_C), dtype=tl.float32)
    for k in tl.static_range(2):  # scan directions
        x_p = dt_ptr + k * s_dt_k + pid_b * s_dt_b + rows * s_dt_t
        for c0 in range(0, DIM, BLOCK_C):
            cols = c0 + tl.arange(0, BLOCK_C)
            mc = cols < DIM
            w_p = w_ptr + k * s_w_k + cols * s_w_d
            # z = dt_low[rows] @ W[cols]^T as rank-1 updates: FMAs in registers, no
            # cross-thread reduction
            z = tl.zeros((BLOCK_T, BLOCK_C), dtype=tl.float32)
            for j in tl.static_range(R):
                w = tl.load(w_p + j * s_w_r, mask=mc, other=0.0).to(tl.float32)
                x = tl.load(x_p + j * s_dt_r, mask=m0, other=0.0).to(tl.float32)
                z += x[:, None] * w[None, :]
            z += tl.load(b_ptr + k * s_b_k + cols, mask=mc, other=0.0).to(tl.float32)[None, :]
            f0 = tl.where(m0[:, None] & mc[None, :], _softplus(z), 0.0)
            f1 = tl.gather(f0, tl.broadcast_to(nxt[:, None], (BLOCK_T, BLOCK_C)), 0)
            nn0 += f0 * f0
            nn1 += f1 * f1
            dot += f0 * f1
    m1 = (rows + 1 < T) & (tl.arange(0, BLOCK_T) < BLOCK_T - 1)
    _store_dissimilarity(out_ptr, pid_b, T, rows, m1, tl.sum(nn0, axis=1), tl.sum(nn1, axis=1),
                         tl.sum(dot, axis=1))


def delta_dissimilarity_triton(dt_low: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """(batch, tokens - 1) fp32: ``1 - cos`` of adjacent tokens' Δ of both directions, with
    ``Δ_k = softplus(dt_low[k] @ weight[k]^T + bias[k])``: ``dt_low`` (2, batch, tokens, rank),
    ``weight`` (2, d_inner, rank), ``bias`` (2, d_inner), any strides."""
    _, b, t, r = dt_low.shape
    d = weight.shape[1]
    out = torch.empty(b, max(t - 1, 0), device=dt_low.device, dtype=torch.float32)
    if t < 2:
        return out
    _delta_dis_kernel[(b, triton.cdiv(t - 1, DELTA_BLOCK_T - 1))](
        dt_low, weight, bias, out, t, d, *dt_low.stride(), *weight.stride(), bias.stride(0),
        R=r, BLOCK_T=DELTA_BLOCK_T, BLOCK_C=DELTA_BLOCK_C, num_warps=4,
    )
    return out


@triton.jit
def _adjacent_dis_kernel(
    h_ptr, r_ptr, out_ptr, T, DIM,
    s_h_b, s_h_t, s_r_b, s_r_t,
    HAS_RES: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_b = tl.program_id(0).to(tl.int64)
    rows = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
    m0 = rows < T
    m1 = (rows + 1) < T
    nn0 = tl.zeros((BLOCK_T,), dtype=tl.float32)
    nn1 = tl.zeros((BLOCK_T,), dtype=tl.float32)
    dot = tl.zeros((BLOCK_T,), dtype=tl.float32)
    h_base = h_ptr + pid_b * s_h_b + rows[:, None] * s_h_t
    r_base = r_ptr + pid_b * s_r_b + rows[:, None] * s_r_t
    for d0 in range(0, DIM, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        mc = (cols < DIM)[None, :]
        f0 = tl.load(h_base + cols[None, :], mask=m0[:, None] & mc, other=0.0).to(tl.float32)
        f1 = tl.load(h_base + s_h_t + cols[None, :], mask=m1[:, None] & mc, other=0.0)
        f1 = f1.to(tl.float32)
        if HAS_RES:
            f0 += tl.load(r_base + cols[None, :], mask=m0[:, None] & mc, other=0.0).to(tl.float32)
            f1 += tl.load(r_base + s_r_t + cols[None, :], mask=m1[:, None] & mc,
                          other=0.0).to(tl.float32)
        nn0 += tl.sum(f0 * f0, axis=1)
        nn1 += tl.sum(f1 * f1, axis=1)
        dot += tl.sum(f0 * f1, axis=1)
    _store_dissimilarity(out_ptr, pid_b, T, rows, m1, nn0, nn1, dot)


def adjacent_dissimilarity_triton(hidden: Tensor, residual: Tensor | None) -> Tensor:
    """(batch, tokens - 1) fp32: ``1 - cos(f_t, f_t+1)`` with ``f = residual + hidden``."""
    b, t, d = hidden.shape
    if hidden.stride(-1) != 1:
        hidden = hidden.contiguous()
    if residual is not None and residual.stride(-1) != 1:
        residual = residual.contiguous()
    out = torch.empty(b, max(t - 1, 0), device=hidden.device, dtype=torch.float32)
    if t < 2:
        return out
    block_d = min(triton.next_power_of_2(d), 256)
    block_t = 16
    r = residual if residual is not None else hidden
    _adjacent_dis_kernel[(b, triton.cdiv(t - 1, block_t))](
        hidden, r, out, t, d, hidden.stride(0), hidden.stride(1), r.stride(0), r.stride(1),
        HAS_RES=residual is not None, BLOCK_T=block_t, BLOCK_D=block_d, num_warps=4,
    )
    return out


@triton.jit
def _edge_alpha_kernel(
    bf_ptr, bb_ptr, tok_ptr, size_ptr, out_ptr, T, NSTATE,
    s_bf_b, s_bf_t, s_bf_n, s_bb_b, s_bb_t, s_bb_n, s_tok_b, s_tok_k, s_tok_t, s_sz_b, s_sz_t,
    N: tl.constexpr, BLOCK_E: tl.constexpr,
):
    pid_b = tl.program_id(0).to(tl.int64)
    e = tl.program_id(1) * BLOCK_E + tl.arange(0, BLOCK_E)
    me = (e + 1) < T
    n = tl.arange(0, N)
    m2 = me[:, None] & (n < NSTATE)[None, :]
    w0 = tl.zeros((BLOCK_E,), dtype=tl.float32)
    w1 = tl.zeros((BLOCK_E,), dtype=tl.float32)
    tk = tok_ptr + pid_b * s_tok_b
    for k in tl.static_range(2):  # scan directions: forward, backward
        if k == 0:
            base = bf_ptr + pid_b * s_bf_b
            st, sn = s_bf_t, s_bf_n
        else:
            base = bb_ptr + pid_b * s_bb_b
            st, sn = s_bb_t, s_bb_n
        b0 = tl.load(base + e[:, None] * st + n[None, :] * sn, mask=m2, other=0.0).to(tl.float32)
        b1 = tl.load(base + (e + 1)[:, None] * st + n[None, :] * sn, mask=m2,
                     other=0.0).to(tl.float32)
        cross = tl.sum(b0 * b1, axis=1)
        d0 = tl.load(tk + k * s_tok_k + e * s_tok_t, mask=me, other=0.0)
        d1 = tl.load(tk + k * s_tok_k + (e + 1) * s_tok_t, mask=me, other=0.0)
        x0 = d0 * tl.maximum(tl.sum(b0 * b0, axis=1) + cross, 0.0)
        x1 = d1 * tl.maximum(tl.sum(b1 * b1, axis=1) + cross, 0.0)
        # the earlier token of the scan decays one step: forward the left one by
        # exp(log_decay_fwd[e+1]), backward the right one by exp(log_decay_bwd[e])
        if k == 0:
            x0 = x0 * tl.exp(tl.load(tk + 2 * s_tok_k + (e + 1) * s_tok_t, mask=me, other=0.0))
        else:
            x1 = x1 * tl.exp(tl.load(tk + 3 * s_tok_k + e * s_tok_t, mask=me, other=0.0))
        w0 += x0
        w1 += x1
    sz = size_ptr + pid_b * s_sz_b
    w0 = w0 * tl.load(sz + e * s_sz_t, mask=me, other=1.0) + 1e-12
    w1 = w1 * tl.load(sz + (e + 1) * s_sz_t, mask=me, other=1.0) + 1e-12
    tl.store(out_ptr + pid_b * (T - 1) + e, w0 / (w0 + w1), mask=me)


def edge_alpha_triton(B_fwd: Tensor, B_bwd: Tensor, token_stats: Tensor,
                      size: Tensor) -> Tensor:
    """STM's least-squares weight of the left token of every adjacent pair: (batch, tokens - 1).

    ``B_*`` (b, t, n), ``token_stats`` (b, 4, t) = (Δ fwd, Δ bwd, log-decay fwd, log-decay bwd),
    ``size`` (b, t); the PyTorch definition is :func:`vimstm.ops.merge_ref.edge_alpha_ref`.
    """
    b, t, n = B_fwd.shape
    out = torch.empty(b, max(t - 1, 0), device=B_fwd.device, dtype=torch.float32)
    if t < 2:
        return out
    block_e = 64
    _edge_alpha_kernel[(b, triton.cdiv(t - 1, block_e))](
        B_fwd, B_bwd, token_stats, size, out, t, n, *B_fwd.stride(), *B_bwd.stride(),
        *token_stats.stride(), *size.stride(), N=triton.next_power_of_2(n), BLOCK_E=block_e,
        num_warps=4,
    )
    return out


@triton.jit
def _pair_select_kernel(
    cost_ptr, score_ptr, go_ptr, NA, R0, R1, BIG,
    BLOCK: tl.constexpr,
):
    """Per (sample, side): the R lowest-score A tokens and their sides (0 none, 1 left, 2 right).

    Ranks break ties by index; runs of chosen neighbours take L..LR..R at the split of least
    total cost (the same rule as ``vimstm.merge.stm._resolve_sides``).
    """
    pid_b = tl.program_id(0).to(tl.int64)
    side = tl.program_id(1)
    r = tl.where(side == 0, R0, R1)
    k = tl.arange(0, BLOCK)
    mk = k < NA
    sc = tl.load(score_ptr + (pid_b * 2 + side) * NA + k, mask=mk, other=float("inf"))
    c_l = tl.load(cost_ptr + ((pid_b * 2 + 0) * 2 + side) * NA + k, mask=mk, other=BIG)
    c_r = tl.load(cost_ptr + ((pid_b * 2 + 1) * 2 + side) * NA + k, mask=mk, other=BIG)
    row = k[:, None]  # the token ranked / resolved
    col = k[None, :]  # the tokens compared with it
    s_row = sc[:, None]
    s_col = sc[None, :]
    before = (s_col < s_row) | ((s_col == s_row) & (col < row))
    rank = tl.sum((before & (col < NA)).to(tl.int32), axis=1)
    sel = (rank < r) & mk
    seli = sel.to(tl.int32)
    prev = tl.sum(tl.where(col == row - 1, seli[None, :], 0), axis=1)
    start = sel & (prev == 0)
    run = tl.cumsum(start.to(tl.int32), axis=0)
    dl = tl.where(sel, c_l - c_r, 0.0)
    cum = tl.cumsum(dl, axis=0)
    cx = cum - dl
    same = (run[None, :] == run[:, None]) & sel[None, :]
    later = tl.min(tl.where(same & (col >= row), cum[None, :], float("inf")), axis=1)
    earlier = tl.min(tl.where(same & (col <= row), cx[None, :], float("inf")), axis=1)
    go = tl.where(sel, tl.where(later < earlier, 1, 2), 0)
    tl.store(go_ptr + (pid_b * 2 + side) * NA + k, go.to(tl.int8), mask=mk)


@triton.jit
def _side_of(p, T, C, N0, N1):
    """(side, is a mergeable A token, its A number) of token p; j counts from the far end."""
    right = p > C
    j = tl.where(right, T - 1 - p, p)
    n_s = tl.where(right, N1, N0)
    is_a = ((j % 2) == 1) & (j < n_s) & (p != C) & (p >= 0) & (p < T)
    return right.to(tl.int32), is_a, (j - 1) // 2


@triton.jit
def _pair_layout_kernel(
    go_ptr, alpha_ptr, first_ptr, last_ptr, w_ptr, pair_ptr, T, C, N0, N1, NA, NEW_LEN,
    BLOCK_T: tl.constexpr,
):
    """Per sample: turn the chosen pairs into (first, last, weight of last) per new slot."""
    pid_b = tl.program_id(0).to(tl.int64)
    p = tl.arange(0, BLOCK_T)
    mp = p < T
    g_base = go_ptr + pid_b * 2 * NA
    a_base = alpha_ptr + pid_b * 4 * NA  # (2 [left/right partner], 2 [side], NA)
    # the token itself: removed when it is a chosen A token
    side, is_a, ka = _side_of(p, T, C, N0, N1)
    go = tl.load(g_base + side * NA + ka, mask=is_a & mp, other=0).to(tl.int32)
    removed = (go > 0) & mp
    # its neighbours: does the A token at p-1 (p+1) merge into p?
    side_m, is_a_m, k_m = _side_of(p - 1, T, C, N0, N1)
    go_m = tl.load(g_base + side_m * NA + k_m, mask=is_a_m & mp, other=0).to(tl.int32)
    from_m = ((side_m == 0) & (go_m == 2)) | ((side_m == 1) & (go_m == 1))
    side_p, is_a_p, k_p = _side_of(p + 1, T, C, N0, N1)
    go_p = tl.load(g_base + side_p * NA + k_p, mask=is_a_p & mp, other=0).to(tl.int32)
    from_p = ((side_p == 0) & (go_p == 1)) | ((side_p == 1) & (go_p == 2))
    al_m = tl.load(a_base + ((go_m - 1) * 2 + side_m) * NA + k_m, mask=from_m & mp, other=0.0)
    al_p = tl.load(a_base + ((go_p - 1) * 2 + side_p) * NA + k_p, mask=from_p & mp, other=0.0)
    ri = removed.to(tl.int32)
    slot = p - (tl.cumsum(ri, axis=0) - ri)
    first = tl.where(from_m, p - 1, p)
    last = tl.where(from_p, p + 1, p)
    w_last = tl.where(from_m, 1.0 - al_m, tl.where(from_p, al_p, 1.0))
    keep = mp & ~removed
    o = pid_b * NEW_LEN + slot
    tl.store(first_ptr + o, first + pid_b * T, mask=keep)
    tl.store(last_ptr + o, last + pid_b * T, mask=keep)
    tl.store(w_ptr + o, w_last, mask=keep)
    tl.store(pair_ptr + o, from_m | from_p, mask=keep)


MAX_FUSED_A = 128  # A tokens per side the fused pair selection handles (n x n tiles)


def pair_plan_triton(
    cost: Tensor, score: Tensor, alpha: Tensor, tokens: int, cls_index: int,
    n_side: tuple[int, int], r_side: tuple[int, int], big: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """STM's pair choice and merge layout in two kernels.

    ``cost`` (b, 2 [left/right partner], 2 [side], n_a), ``score`` (b, 2, n_a) (+inf where no
    A token), ``alpha`` (b, 2, 2, n_a): the A token's weight with either partner. Returns flat
    (first, last) rows, the weight of last (b * new_len, 1) and the is-pair mask, as
    :func:`vimstm.merge.base.pair_plan` does.
    """
    b, _, _, n_a = cost.shape
    new_len = tokens - r_side[0] - r_side[1]
    go = torch.empty(b, 2, n_a, device=cost.device, dtype=torch.int8)
    _pair_select_kernel[(b, 2)](
        cost.contiguous(), score.contiguous(), go, n_a, r_side[0], r_side[1], float(big),
        BLOCK=max(triton.next_power_of_2(n_a), 16), num_warps=4,
    )
    first = torch.empty(b * new_len, device=cost.device, dtype=torch.int64)
    last = torch.empty_like(first)
    w_last = torch.empty(b * new_len, 1, device=cost.device, dtype=torch.float32)
    is_pair = torch.empty(b * new_len, 1, device=cost.device, dtype=torch.bool)
    _pair_layout_kernel[(b,)](
        go, alpha.contiguous(), first, last, w_last, is_pair, tokens, cls_index,
        n_side[0], n_side[1], n_a, new_len,
        BLOCK_T=triton.next_power_of_2(tokens), num_warps=4,
    )
    return first, last, w_last, is_pair


@triton.jit
def _pair_lerp_kernel(
    h_ptr, r_ptr, first_ptr, last_ptr, w_ptr, ho_ptr, ro_ptr, ROWS, DIM,
    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    mr = rows < ROWS
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    m = mr[:, None] & (cols < DIM)[None, :]
    f = tl.load(first_ptr + rows, mask=mr, other=0)[:, None] * DIM + cols[None, :]
    g = tl.load(last_ptr + rows, mask=mr, other=0)[:, None] * DIM + cols[None, :]
    w = tl.load(w_ptr + rows, mask=mr, other=0.0)[:, None]
    o = rows.to(tl.int64)[:, None] * DIM + cols[None, :]
    a = tl.load(h_ptr + f, mask=m, other=0.0).to(tl.float32)
    z = tl.load(h_ptr + g, mask=m, other=0.0).to(tl.float32)
    tl.store(ho_ptr + o, (a + w * (z - a)).to(ho_ptr.dtype.element_ty), mask=m)
    a = tl.load(r_ptr + f, mask=m, other=0.0).to(tl.float32)
    z = tl.load(r_ptr + g, mask=m, other=0.0).to(tl.float32)
    tl.store(ro_ptr + o, (a + w * (z - a)).to(ro_ptr.dtype.element_ty), mask=m)


def pair_lerp_triton(
    hidden: Tensor, residual: Tensor, first: Tensor, last: Tensor, w_last: Tensor
) -> tuple[Tensor, Tensor]:
    """Both of :func:`vimstm.ops.merge_ref.apply_pairs`'s merges of hidden and residual in one pass
    (inference only: no autograd). Inputs contiguous (batch, tokens, channels)."""
    b, _, d = hidden.shape
    rows = first.shape[0]
    ho = torch.empty(rows, d, device=hidden.device, dtype=hidden.dtype)
    ro = torch.empty(rows, d, device=residual.device, dtype=residual.dtype)
    block_d = min(triton.next_power_of_2(d), 128)
    block_r = max(1, 2048 // block_d)
    _pair_lerp_kernel[(triton.cdiv(rows, block_r), triton.cdiv(d, block_d))](
        hidden.contiguous(), residual.contiguous(), first, last, w_last.float().contiguous(),
        ho, ro, rows, d, BLOCK_R=block_r, BLOCK_D=block_d, num_warps=4,
    )
    return ho.view(b, rows // b, d), ro.view(b, rows // b, d)
