"""Triton selective scan and depthwise causal conv1d, forward and backward.

Layouts and semantics are those of :mod:`vimstm.ops.scan_ref` (``u, delta, z: (b, d, l)``,
``A: (d, n)``, ``B, C: (b, n, l)``); any strides are accepted, so the model's channels-last views
(``x.transpose(1, 2)`` of a linear layer's output) are read in place without copies. Outputs and
input gradients are laid out channels-last when the input is, which feeds the next linear layer
without a copy.

Forward (``FWD_KERNEL = "seq"``, the default): each program owns ``BLOCK_D`` channels of one
sample and their fp32 state ``(BLOCK_D, n)`` in registers, and steps through the tokens one at a
time; the loop's trip count is a runtime value, so a new sequence length (token merging changes
it block to block) never recompiles. ``reverse=True`` maps step ``i`` to token ``L - 1 - i``:
nothing flipped is materialised. dt bias + softplus, ``exp(ΔA)``, the D skip, the ``silu(z)``
gate and (for the mixer) the sum of the two directions are fused. When gradients are needed it
also saves the state every ``BWD_T`` tokens. ``"chunk"`` is an alternative forward that solves
each chunk of ``T`` tokens with an associative scan (slower on an H100; kept for comparison).

Backward (``BWD_KERNEL = "seq"``, the default): each program owns channels as in the seq forward
and walks the chunks of ``BWD_T`` tokens from last to first; it recomputes a chunk's states token
by token from the one the forward saved before it into a small per-program fp32 scratch buffer
(meant to stay in L2), then steps back through the chunk one token at a time with the adjoint
state in registers. ``"chunk"`` is the former backward, solving both recurrences of a chunk with
associative scans. Reductions over channels (dB, dC) and over the batch (dA, dD) are written as
per-program partials and summed by PyTorch: deterministic, no atomics.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import Tensor

from vimstm.ops.scan_ref import scan_token_stats

# Tile sizes, tuned on an H100 (benchmarks/gpu_run.py sweeps them; see BENCHMARKS.md).
FWD_KERNEL = "seq"  # "seq": one token per step; "chunk": associative scan over T tokens
SEQ_BLOCK_D, SEQ_WARPS, SEQ_UNROLL = 16, 1, 1
FWD_BLOCK_D, FWD_T, FWD_WARPS = 32, 8, 4
# "seq": one token per step; "chunk": associative scans over T tokens (VIMSTM_SCAN_BWD overrides)
BWD_KERNEL = os.environ.get("VIMSTM_SCAN_BWD", "seq")
BWD_T = 8  # chunk length of both backwards: the forward saves the state every BWD_T tokens
BWD_SEQ_BLOCK_D, BWD_SEQ_WARPS = 16, 1
BWD_BLOCK_D, BWD_WARPS = 8, 1


@triton.jit
def _combine(a1, b1, a2, b2):
    return a1 * a2, b1 * a2 + b2


@triton.jit
def _softplus(x):
    # log1p(exp(x)) as torch (threshold 20), with an accurate log1p (Goldberg's trick).
    e = tl.exp(tl.minimum(x, 20.0))
    w = 1.0 + e
    lp = tl.where(w == 1.0, e, tl.log(w) * (e / (w - 1.0)))
    return tl.where(x > 20.0, x, lp)


@triton.jit(do_not_specialize=["L", "s_u_b", "s_dt_b", "s_B_b", "s_C_b", "s_z_b", "s_o_b", "s_a_b"])
def _scan_fwd_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, out_ptr, st_ptr, add_ptr, scale,
    L, DIM, NSTATE,
    s_u_b, s_u_d, s_u_l,
    s_dt_b, s_dt_d, s_dt_l,
    s_B_b, s_B_n, s_B_l,
    s_C_b, s_C_n, s_C_l,
    s_z_b, s_z_d, s_z_l,
    s_o_b, s_o_d, s_o_l,
    s_a_b, s_a_d, s_a_l,
    N: tl.constexpr, BLOCK_D: tl.constexpr, T: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr, REVERSE: tl.constexpr, SAVE: tl.constexpr, HAS_ADD: tl.constexpr,
):
    pid_b = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < DIM
    offs_n = tl.arange(0, N)
    mask_n = offs_n < NSTATE
    offs_t = tl.arange(0, T)
    mdn = mask_d[:, None] & mask_n[None, :]
    A = tl.load(A_ptr + offs_d[:, None] * NSTATE + offs_n[None, :], mask=mdn, other=0.0)
    A2 = A.to(tl.float32) * 1.4426950408889634
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    u_base = u_ptr + pid_b * s_u_b + offs_d[:, None] * s_u_d
    dt_base = dt_ptr + pid_b * s_dt_b + offs_d[:, None] * s_dt_d
    z_base = z_ptr + pid_b * s_z_b + offs_d[:, None] * s_z_d
    o_base = out_ptr + pid_b * s_o_b + offs_d[:, None] * s_o_d
    a_base = add_ptr + pid_b * s_a_b + offs_d[:, None] * s_a_d
    B_base = B_ptr + pid_b * s_B_b + offs_n[:, None] * s_B_n
    C_base = C_ptr + pid_b * s_C_b + offs_n[:, None] * s_C_n
    nchunks = tl.cdiv(L, T)
    st_base = st_ptr + ((pid_b * nchunks) * (DIM * NSTATE)
                        + offs_d[:, None] * NSTATE + offs_n[None, :])
    h = tl.zeros((BLOCK_D, N), dtype=tl.float32)
    last = offs_t[None, None, :] == T - 1
    for c in range(0, nchunks):
        t = c * T + offs_t
        mask_t = t < L
        if REVERSE:
            tp = L - 1 - t
        else:
            tp = t
        m2 = mask_d[:, None] & mask_t[None, :]
        mnt = mask_n[:, None] & mask_t[None, :]
        u = tl.load(u_base + tp[None, :] * s_u_l, mask=m2, other=0.0).to(tl.float32)
        dt = tl.load(dt_base + tp[None, :] * s_dt_l, mask=m2, other=0.0).to(tl.float32)
        if HAS_BIAS:
            dt = dt + bias[:, None]
        if SOFTPLUS:
            dt = _softplus(dt)
        dt = tl.where(m2, dt, 0.0)
        Bt = tl.load(B_base + tp[None, :] * s_B_l, mask=mnt, other=0.0).to(tl.float32)
        Ct = tl.load(C_base + tp[None, :] * s_C_l, mask=mnt, other=0.0).to(tl.float32)
        a = tl.exp2(dt[:, None, :] * A2[:, :, None])
        bx = (dt * u)[:, None, :] * Bt[None, :, :]
        ca, cb = tl.associative_scan((a, bx), axis=2, combine_fn=_combine)
        hs = cb + ca * h[:, :, None]
        y = tl.sum(hs * Ct[None, :, :], axis=1)
        h = tl.sum(tl.where(last, hs, 0.0), axis=2)
        if SAVE:
            tl.store(st_base + c * (DIM * NSTATE), h, mask=mdn)
        if HAS_D:
            y = y + u * Dv[:, None]
        if HAS_Z:
            z = tl.load(z_base + tp[None, :] * s_z_l, mask=m2, other=0.0).to(tl.float32)
            y = y * z * tl.sigmoid(z)
        if HAS_ADD:
            ya = tl.load(a_base + tp[None, :] * s_a_l, mask=m2, other=0.0).to(tl.float32)
            y = (y + ya) * scale
        tl.store(o_base + tp[None, :] * s_o_l, y.to(out_ptr.dtype.element_ty), mask=m2)


@triton.jit(do_not_specialize=["L", "s_u_b", "s_dt_b", "s_B_b", "s_C_b", "s_z_b", "s_o_b", "s_a_b"])
def _scan_fwd_seq_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, out_ptr, st_ptr, add_ptr, scale,
    stats_ptr, L, DIM, NSTATE,
    s_u_b, s_u_d, s_u_l,
    s_dt_b, s_dt_d, s_dt_l,
    s_B_b, s_B_n, s_B_l,
    s_C_b, s_C_n, s_C_l,
    s_z_b, s_z_d, s_z_l,
    s_o_b, s_o_d, s_o_l,
    s_a_b, s_a_d, s_a_l,
    N: tl.constexpr, BLOCK_D: tl.constexpr, T: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr, REVERSE: tl.constexpr, SAVE: tl.constexpr, HAS_ADD: tl.constexpr,
    UNROLL: tl.constexpr, STATS: tl.constexpr,
):
    """One token per step, the (BLOCK_D, n) state in registers; saves it every T tokens.

    With ``STATS`` it also writes, per token, this program's channel sums of Δ and of
    Δ·mean_n(A) to ``stats_ptr`` (b, programs along d, 2, L): what token merging reads.
    """
    pid_b = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < DIM
    offs_n = tl.arange(0, N)
    mask_n = offs_n < NSTATE
    mdn = mask_d[:, None] & mask_n[None, :]
    A = tl.load(A_ptr + offs_d[:, None] * NSTATE + offs_n[None, :], mask=mdn, other=0.0)
    A2 = A.to(tl.float32) * 1.4426950408889634
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    u_p = u_ptr + pid_b * s_u_b + offs_d * s_u_d
    dt_p = dt_ptr + pid_b * s_dt_b + offs_d * s_dt_d
    z_p = z_ptr + pid_b * s_z_b + offs_d * s_z_d
    o_p = out_ptr + pid_b * s_o_b + offs_d * s_o_d
    a_p = add_ptr + pid_b * s_a_b + offs_d * s_a_d
    B_p = B_ptr + pid_b * s_B_b + offs_n * s_B_n
    C_p = C_ptr + pid_b * s_C_b + offs_n * s_C_n
    nchunks = tl.cdiv(L, T)
    st_base = st_ptr + ((pid_b * nchunks) * (DIM * NSTATE)
                        + offs_d[:, None] * NSTATE + offs_n[None, :])
    if STATS:
        a_mean = tl.sum(A.to(tl.float32), axis=1) / NSTATE
        sp = stats_ptr + (pid_b * tl.num_programs(1) + pid_d) * 2 * L
    h = tl.zeros((BLOCK_D, N), dtype=tl.float32)
    for i in tl.range(0, L, loop_unroll_factor=UNROLL):
        if REVERSE:
            t = L - 1 - i
        else:
            t = i
        u = tl.load(u_p + t * s_u_l, mask=mask_d, other=0.0).to(tl.float32)
        dt = tl.load(dt_p + t * s_dt_l, mask=mask_d, other=0.0).to(tl.float32)
        if HAS_BIAS:
            dt = dt + bias
        if SOFTPLUS:
            dt = _softplus(dt)
        if STATS:
            dm = tl.where(mask_d, dt, 0.0)
            tl.store(sp + t, tl.sum(dm, axis=0))
            tl.store(sp + L + t, tl.sum(dm * a_mean, axis=0))
        Bt = tl.load(B_p + t * s_B_l, mask=mask_n, other=0.0).to(tl.float32)
        Ct = tl.load(C_p + t * s_C_l, mask=mask_n, other=0.0).to(tl.float32)
        a = tl.exp2(dt[:, None] * A2)
        h = a * h + (dt * u)[:, None] * Bt[None, :]
        y = tl.sum(h * Ct[None, :], axis=1)
        if HAS_D:
            y = y + u * Dv
        if HAS_Z:
            z = tl.load(z_p + t * s_z_l, mask=mask_d, other=0.0).to(tl.float32)
            y = y * z * tl.sigmoid(z)
        if HAS_ADD:
            y = (y + tl.load(a_p + t * s_a_l, mask=mask_d, other=0.0).to(tl.float32)) * scale
        tl.store(o_p + t * s_o_l, y.to(out_ptr.dtype.element_ty), mask=mask_d)
        if SAVE:
            edge = ((i % T) == T - 1) | (i == L - 1)
            tl.store(st_base + (i // T) * (DIM * NSTATE), h, mask=mdn & edge)


@triton.jit(do_not_specialize=["L", "s_u_b", "s_dt_b", "s_B_b", "s_C_b", "s_z_b", "s_g_b",
                               "s_du_b", "s_ddt_b", "s_dz_b"])
def _scan_bwd_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, g_ptr, st_ptr,
    du_ptr, ddt_ptr, dz_ptr, dB_ptr, dC_ptr, dA_ptr, dD_ptr,
    L, DIM, NSTATE, NBLK_D,
    s_u_b, s_u_d, s_u_l,
    s_dt_b, s_dt_d, s_dt_l,
    s_B_b, s_B_n, s_B_l,
    s_C_b, s_C_n, s_C_l,
    s_z_b, s_z_d, s_z_l,
    s_g_b, s_g_d, s_g_l,
    s_du_b, s_du_d, s_du_l,
    s_ddt_b, s_ddt_d, s_ddt_l,
    s_dz_b, s_dz_d, s_dz_l,
    N: tl.constexpr, BLOCK_D: tl.constexpr, T: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr, REVERSE: tl.constexpr,
):
    pid_b = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < DIM
    offs_n = tl.arange(0, N)
    mask_n = offs_n < NSTATE
    offs_t = tl.arange(0, T)
    mdn = mask_d[:, None] & mask_n[None, :]
    A = tl.load(A_ptr + offs_d[:, None] * NSTATE + offs_n[None, :], mask=mdn, other=0.0)
    A = A.to(tl.float32)
    A2 = A * 1.4426950408889634
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    u_base = u_ptr + pid_b * s_u_b + offs_d[:, None] * s_u_d
    dt_base = dt_ptr + pid_b * s_dt_b + offs_d[:, None] * s_dt_d
    z_base = z_ptr + pid_b * s_z_b + offs_d[:, None] * s_z_d
    g_base = g_ptr + pid_b * s_g_b + offs_d[:, None] * s_g_d
    du_base = du_ptr + pid_b * s_du_b + offs_d[:, None] * s_du_d
    ddt_base = ddt_ptr + pid_b * s_ddt_b + offs_d[:, None] * s_ddt_d
    dz_base = dz_ptr + pid_b * s_dz_b + offs_d[:, None] * s_dz_d
    B_base = B_ptr + pid_b * s_B_b + offs_n[:, None] * s_B_n
    C_base = C_ptr + pid_b * s_C_b + offs_n[:, None] * s_C_n
    # dB, dC partials: (b, NBLK_D, n, L) fp32, contiguous
    part = (pid_b * NBLK_D + pid_d) * NSTATE * L + offs_n[:, None] * L
    nchunks = tl.cdiv(L, T)
    st_base = st_ptr + ((pid_b * nchunks) * (DIM * NSTATE)
                        + offs_d[:, None] * NSTATE + offs_n[None, :])
    first = offs_t[None, None, :] == 0
    gcarry = tl.zeros((BLOCK_D, N), dtype=tl.float32)
    dA_acc = tl.zeros((BLOCK_D, N), dtype=tl.float32)
    dD_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for ci in range(0, nchunks):
        c = nchunks - 1 - ci
        t = c * T + offs_t
        mask_t = t < L
        t1 = t + 1
        mask_t1 = t1 < L
        if REVERSE:
            tp = L - 1 - t
            tp1 = L - 2 - t
        else:
            tp = t
            tp1 = t1
        m2 = mask_d[:, None] & mask_t[None, :]
        m21 = mask_d[:, None] & mask_t1[None, :]
        mnt = mask_n[:, None] & mask_t[None, :]
        u = tl.load(u_base + tp[None, :] * s_u_l, mask=m2, other=0.0).to(tl.float32)
        raw = tl.load(dt_base + tp[None, :] * s_dt_l, mask=m2, other=0.0).to(tl.float32)
        raw1 = tl.load(dt_base + tp1[None, :] * s_dt_l, mask=m21, other=0.0).to(tl.float32)
        if HAS_BIAS:
            raw = raw + bias[:, None]
            raw1 = raw1 + bias[:, None]
        if SOFTPLUS:
            dt = _softplus(raw)
            dt1 = _softplus(raw1)
        else:
            dt = raw
            dt1 = raw1
        dt = tl.where(m2, dt, 0.0)
        dt1 = tl.where(m21, dt1, 0.0)
        Bt = tl.load(B_base + tp[None, :] * s_B_l, mask=mnt, other=0.0).to(tl.float32)
        Ct = tl.load(C_base + tp[None, :] * s_C_l, mask=mnt, other=0.0).to(tl.float32)
        # Recompute the states of this chunk from the one saved before it.
        if c > 0:
            h0 = tl.load(st_base + (c - 1) * (DIM * NSTATE), mask=mdn, other=0.0)
        else:
            h0 = tl.zeros((BLOCK_D, N), dtype=tl.float32)
        a = tl.exp2(dt[:, None, :] * A2[:, :, None])
        dtu = dt * u
        bx = dtu[:, None, :] * Bt[None, :, :]
        ca, cb = tl.associative_scan((a, bx), axis=2, combine_fn=_combine)
        hs = cb + ca * h0[:, :, None]
        g = tl.load(g_base + tp[None, :] * s_g_l, mask=m2, other=0.0).to(tl.float32)
        if HAS_Z:
            z = tl.load(z_base + tp[None, :] * s_z_l, mask=m2, other=0.0).to(tl.float32)
            y = tl.sum(hs * Ct[None, :, :], axis=1)
            if HAS_D:
                y = y + u * Dv[:, None]
            sz = tl.sigmoid(z)
            dz = g * y * sz * (1.0 + z * (1.0 - sz))
            tl.store(dz_base + tp[None, :] * s_dz_l, dz.to(dz_ptr.dtype.element_ty), mask=m2)
            dy = g * z * sz
        else:
            dy = g
        # Adjoint: gh_t = C_t dy_t + exp(Δ_{t+1} A) gh_{t+1}, solved backwards in the chunk.
        a1 = tl.exp2(dt1[:, None, :] * A2[:, :, None])
        bb = dy[:, None, :] * Ct[None, :, :]
        pa, pb = tl.associative_scan((a1, bb), axis=2, combine_fn=_combine, reverse=True)
        gh = pb + pa * gcarry[:, :, None]
        gcarry = tl.sum(tl.where(first, gh, 0.0), axis=2)
        ah = hs - bx  # exp(Δ_t A) h_{t-1}
        gB = tl.sum(gh * Bt[None, :, :], axis=1)
        du = gB * dt
        if HAS_D:
            du = du + dy * Dv[:, None]
            dD_acc += tl.sum(tl.where(m2, dy * u, 0.0), axis=1)
        ddt = tl.sum(gh * ah * A[:, :, None], axis=1) + gB * u
        dA_acc += tl.sum(gh * ah * dt[:, None, :], axis=2)
        if SOFTPLUS:
            ddt = ddt * tl.sigmoid(raw)
        tl.store(du_base + tp[None, :] * s_du_l, du.to(du_ptr.dtype.element_ty), mask=m2)
        tl.store(ddt_base + tp[None, :] * s_ddt_l, ddt.to(ddt_ptr.dtype.element_ty), mask=m2)
        dBp = tl.sum(gh * dtu[:, None, :], axis=0)
        dCp = tl.sum(hs * dy[:, None, :], axis=0)
        tl.store(dB_ptr + part + tp[None, :], dBp, mask=mnt)
        tl.store(dC_ptr + part + tp[None, :], dCp, mask=mnt)
    tl.store(dA_ptr + pid_b * DIM * NSTATE + offs_d[:, None] * NSTATE + offs_n[None, :],
             dA_acc, mask=mdn)
    if HAS_D:
        tl.store(dD_ptr + pid_b * DIM + offs_d, dD_acc, mask=mask_d)


@triton.jit(do_not_specialize=["L", "s_u_b", "s_dt_b", "s_B_b", "s_C_b", "s_z_b", "s_g_b",
                               "s_du_b", "s_ddt_b", "s_dz_b"])
def _scan_bwd_seq_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, g_ptr, st_ptr, hs_ptr,
    du_ptr, ddt_ptr, dz_ptr, dB_ptr, dC_ptr, dA_ptr, dD_ptr,
    L, DIM, NSTATE, NBLK_D,
    s_u_b, s_u_d, s_u_l,
    s_dt_b, s_dt_d, s_dt_l,
    s_B_b, s_B_n, s_B_l,
    s_C_b, s_C_n, s_C_l,
    s_z_b, s_z_d, s_z_l,
    s_g_b, s_g_d, s_g_l,
    s_du_b, s_du_d, s_du_l,
    s_ddt_b, s_ddt_d, s_ddt_l,
    s_dz_b, s_dz_d, s_dz_l,
    N: tl.constexpr, BLOCK_D: tl.constexpr, T: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr, REVERSE: tl.constexpr,
):
    """One token per step, as the seq forward, chunks of T tokens from last to first.

    Per chunk: (1) recompute its states token by token from the saved one, writing the state
    before each token to this program's scratch ``hs_ptr`` (T, BLOCK_D, N) fp32; (2) walk its
    tokens backwards with the adjoint state in registers, reading the state before each token
    back from the scratch (the state after it is the previous step's).
    """
    pid_b = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < DIM
    offs_n = tl.arange(0, N)
    mask_n = offs_n < NSTATE
    mdn = mask_d[:, None] & mask_n[None, :]
    A = tl.load(A_ptr + offs_d[:, None] * NSTATE + offs_n[None, :], mask=mdn, other=0.0)
    A = A.to(tl.float32)
    A2 = A * 1.4426950408889634
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    # Scalar base pointers of this sample + int32 offsets within it: tensors of 64-bit pointers
    # (one per channel and per tensor) would take many registers.
    u_p = u_ptr + pid_b * s_u_b
    dt_p = dt_ptr + pid_b * s_dt_b
    z_p = z_ptr + pid_b * s_z_b
    g_p = g_ptr + pid_b * s_g_b
    du_p = du_ptr + pid_b * s_du_b
    ddt_p = ddt_ptr + pid_b * s_ddt_b
    dz_p = dz_ptr + pid_b * s_dz_b
    B_p = B_ptr + pid_b * s_B_b
    C_p = C_ptr + pid_b * s_C_b
    o_u, o_dt, o_z, o_g = offs_d * s_u_d, offs_d * s_dt_d, offs_d * s_z_d, offs_d * s_g_d
    o_du, o_ddt, o_dz = offs_d * s_du_d, offs_d * s_ddt_d, offs_d * s_dz_d
    o_B, o_C = offs_n * s_B_n, offs_n * s_C_n
    # dB, dC partials: (b, NBLK_D, n, L) fp32, contiguous
    part = (pid_b * NBLK_D + pid_d) * NSTATE * L
    o_part = offs_n * L
    nchunks = tl.cdiv(L, T)
    st_p = st_ptr + (pid_b * nchunks) * (DIM * NSTATE)
    o_st = offs_d[:, None] * NSTATE + offs_n[None, :]
    # scratch: (b, NBLK_D, T, BLOCK_D, N) fp32, one (T, BLOCK_D, N) slab per program, unmasked
    hs_p = hs_ptr + (pid_b * NBLK_D + pid_d) * (T * BLOCK_D * N)
    o_hs = tl.arange(0, BLOCK_D)[:, None] * N + offs_n[None, :]
    gh = tl.zeros((BLOCK_D, N), dtype=tl.float32)
    a_next = tl.zeros((BLOCK_D, N), dtype=tl.float32)  # exp(Δ_{t+1} A) of the step after
    dA_acc = tl.zeros((BLOCK_D, N), dtype=tl.float32)
    dD_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for ci in range(0, nchunks):
        c = nchunks - 1 - ci
        s0 = c * T
        nt = tl.minimum(L - s0, T)
        # (1) states of the chunk from the one saved before it; slot j holds h_{j-1}
        h = tl.load(st_p + ((c - 1) * (DIM * NSTATE) + o_st), mask=mdn & (c > 0), other=0.0)
        for j in range(0, nt):
            i = s0 + j
            if REVERSE:
                t = L - 1 - i
            else:
                t = i
            u = tl.load(u_p + (o_u + t * s_u_l), mask=mask_d, other=0.0).to(tl.float32)
            dt = tl.load(dt_p + (o_dt + t * s_dt_l), mask=mask_d, other=0.0).to(tl.float32)
            if HAS_BIAS:
                dt = dt + bias
            if SOFTPLUS:
                dt = _softplus(dt)
            dt = tl.where(mask_d, dt, 0.0)
            Bt = tl.load(B_p + (o_B + t * s_B_l), mask=mask_n, other=0.0).to(tl.float32)
            tl.store(hs_p + (j * (BLOCK_D * N) + o_hs), h)
            h = tl.exp2(dt[:, None] * A2) * h + (dt * u)[:, None] * Bt[None, :]
        tl.debug_barrier()  # the scratch is read back below, maybe by other threads
        # (2) adjoint, token by token backwards; h is the state after the current token
        for jj in range(0, nt):
            j = nt - 1 - jj
            i = s0 + j
            if REVERSE:
                t = L - 1 - i
            else:
                t = i
            u = tl.load(u_p + (o_u + t * s_u_l), mask=mask_d, other=0.0).to(tl.float32)
            raw = tl.load(dt_p + (o_dt + t * s_dt_l), mask=mask_d, other=0.0).to(tl.float32)
            if HAS_BIAS:
                raw = raw + bias
            if SOFTPLUS:
                dt = _softplus(raw)
            else:
                dt = raw
            dt = tl.where(mask_d, dt, 0.0)
            Bt = tl.load(B_p + (o_B + t * s_B_l), mask=mask_n, other=0.0).to(tl.float32)
            Ct = tl.load(C_p + (o_C + t * s_C_l), mask=mask_n, other=0.0).to(tl.float32)
            g = tl.load(g_p + (o_g + t * s_g_l), mask=mask_d, other=0.0).to(tl.float32)
            if HAS_Z:
                z = tl.load(z_p + (o_z + t * s_z_l), mask=mask_d, other=0.0).to(tl.float32)
                y = tl.sum(h * Ct[None, :], axis=1)
                if HAS_D:
                    y = y + u * Dv
                sz = tl.sigmoid(z)
                dz = g * y * sz * (1.0 + z * (1.0 - sz))
                tl.store(dz_p + (o_dz + t * s_dz_l), dz.to(dz_ptr.dtype.element_ty), mask=mask_d)
                dy = g * z * sz
            else:
                dy = g
            # gh_t = C_t dy_t + exp(Δ_{t+1} A) gh_{t+1}
            gh = dy[:, None] * Ct[None, :] + a_next * gh
            h_prev = tl.load(hs_p + (j * (BLOCK_D * N) + o_hs))
            a = tl.exp2(dt[:, None] * A2)
            ah = a * h_prev  # exp(Δ_t A) h_{t-1}
            dtu = dt * u
            gB = tl.sum(gh * Bt[None, :], axis=1)
            du = gB * dt
            if HAS_D:
                du = du + dy * Dv
                dD_acc += dy * u
            gha = gh * ah
            ddt = tl.sum(gha * A, axis=1) + gB * u
            dA_acc += gha * dt[:, None]
            if SOFTPLUS:
                ddt = ddt * tl.sigmoid(raw)
            tl.store(du_p + (o_du + t * s_du_l), du.to(du_ptr.dtype.element_ty), mask=mask_d)
            tl.store(ddt_p + (o_ddt + t * s_ddt_l), ddt.to(ddt_ptr.dtype.element_ty), mask=mask_d)
            tl.store(dB_ptr + part + (o_part + t), tl.sum(gh * dtu[:, None], axis=0), mask=mask_n)
            tl.store(dC_ptr + part + (o_part + t), tl.sum(h * dy[:, None], axis=0), mask=mask_n)
            a_next = a
            h = h_prev
        tl.debug_barrier()  # the next chunk overwrites the scratch
    tl.store(dA_ptr + pid_b * DIM * NSTATE + offs_d[:, None] * NSTATE + offs_n[None, :],
             dA_acc, mask=mdn)
    if HAS_D:
        tl.store(dD_ptr + pid_b * DIM + offs_d, dD_acc, mask=mask_d)


def _like_layout(x: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """An empty (b, d, l) tensor, channels-last in memory when ``x`` is."""
    b, d, length = x.shape
    dtype = dtype or x.dtype
    if x.stride(1) == 1 and length > 1:
        return torch.empty(b, length, d, device=x.device, dtype=dtype).transpose(1, 2)
    return torch.empty(b, d, length, device=x.device, dtype=dtype)


def _s(x: Tensor | None) -> tuple[int, int, int]:
    return tuple(x.stride()) if x is not None else (0, 0, 0)  # type: ignore[return-value]


def _scan_forward(u, delta, A, B, C, D, z, delta_bias, softplus, reverse, save, add=None,
                  scale=1.0, stats=None):
    b, d, length = u.shape
    n = A.shape[1]
    out = _like_layout(u)
    seq = FWD_KERNEL == "seq"
    # States are saved at the ends of the backward kernel's chunks.
    t_save = BWD_T if (save or seq) else FWD_T
    if not seq and save and FWD_T != BWD_T:
        raise RuntimeError("the chunked forward must use the backward's chunk size to save states")
    nchunks = triton.cdiv(length, t_save)
    if save:
        states = torch.empty(b, nchunks, d, n, device=u.device, dtype=torch.float32)
    else:
        states = out  # never written
    block_d = SEQ_BLOCK_D if seq else FWD_BLOCK_D
    kernel = _scan_fwd_seq_kernel if seq else _scan_fwd_kernel
    grid = (b, triton.cdiv(d, block_d))
    extra = {}
    if seq:
        extra = {"UNROLL": SEQ_UNROLL, "STATS": stats is not None}
        if stats is not None:
            partial = torch.empty(b, grid[1], 2, length, device=u.device, dtype=torch.float32)
    lead = (partial,) if seq and stats is not None else ((u,) if seq else ())
    kernel[grid](
        u, delta, A, B, C, D if D is not None else u, z if z is not None else u,
        delta_bias if delta_bias is not None else u, out, states,
        add if add is not None else u, float(scale), *lead,
        length, d, n,
        *_s(u), *_s(delta), *_s(B), *_s(C), *_s(z), *_s(out), *_s(add),
        N=triton.next_power_of_2(n), BLOCK_D=block_d, T=t_save, HAS_ADD=add is not None,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
        SOFTPLUS=bool(softplus), REVERSE=bool(reverse), SAVE=bool(save),
        num_warps=SEQ_WARPS if seq else FWD_WARPS, **extra,
    )
    if stats is not None:
        if seq:
            torch.sum(partial, 1, out=stats)
            stats.div_(d)
        else:  # the chunked forward has no fused statistics: the same numbers in PyTorch
            stats.copy_(scan_token_stats(delta, A, delta_bias, softplus))
    return out, (states if save else None)


class _SelectiveScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, softplus, reverse, save, add, scale,
                stats):
        out, states = _scan_forward(u, delta, A, B, C, D, z, delta_bias, softplus, reverse, save,
                                    add, scale, stats)
        if save:
            ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, states)
            ctx.flags = (softplus, reverse, add is not None, scale)
        return out

    @staticmethod
    def backward(ctx, gout):
        u, delta, A, B, C, D, z, delta_bias, states = ctx.saved_tensors
        softplus, reverse, has_add, scale = ctx.flags
        if scale != 1.0:
            gout = gout * scale
        dadd = gout if has_add else None
        b, d, length = u.shape
        n = A.shape[1]
        du = _like_layout(u)
        ddt = _like_layout(delta, torch.float32)
        dz = _like_layout(z) if z is not None else None
        seq = BWD_KERNEL == "seq"
        block_d = BWD_SEQ_BLOCK_D if seq else BWD_BLOCK_D
        nblk = triton.cdiv(d, block_d)
        dBp = torch.empty(b, nblk, n, length, device=u.device, dtype=torch.float32)
        dCp = torch.empty_like(dBp)
        dAp = torch.empty(b, d, n, device=u.device, dtype=torch.float32)
        dDp = torch.empty(b, d, device=u.device, dtype=torch.float32) if D is not None else dAp
        n2 = triton.next_power_of_2(n)
        if seq:  # per-program scratch for the states of one chunk
            scratch = torch.empty(b, nblk, BWD_T, block_d, n2, device=u.device,
                                  dtype=torch.float32)
            kernel, lead = _scan_bwd_seq_kernel, (scratch,)
        else:
            kernel, lead = _scan_bwd_kernel, ()
        kernel[(b, nblk)](
            u, delta, A, B, C, D if D is not None else u, z if z is not None else u,
            delta_bias if delta_bias is not None else u, gout, states, *lead,
            du, ddt, dz if dz is not None else du, dBp, dCp, dAp, dDp,
            length, d, n, nblk,
            *_s(u), *_s(delta), *_s(B), *_s(C), *_s(z), *_s(gout), *_s(du), *_s(ddt), *_s(dz),
            N=n2, BLOCK_D=block_d, T=BWD_T,
            HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
            SOFTPLUS=bool(softplus), REVERSE=bool(reverse),
            num_warps=BWD_SEQ_WARPS if seq else BWD_WARPS,
        )
        dB = dBp.sum(1).to(B.dtype)
        dC = dCp.sum(1).to(C.dtype)
        dA = dAp.sum(0).to(A.dtype)
        dD = dDp.sum(0).to(D.dtype) if D is not None else None
        dbias = ddt.sum((0, 2)).to(delta_bias.dtype) if delta_bias is not None else None
        return (du, ddt.to(delta.dtype), dA, dB, dC, dD, dz, dbias, None, None, None, dadd, None,
                None)


def selective_scan_triton(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = True,
    reverse: bool = False,
    out_add: Tensor | None = None,
    out_scale: float = 1.0,
    stats_out: Tensor | None = None,
) -> Tensor:
    """Selective scan (see :func:`vimstm.ops.scan_ref.selective_scan_ref`) in Triton.

    With ``out_add`` (same shape), returns ``(scan + out_add) * out_scale`` computed in fp32 inside
    the kernel: the mixer adds its two directions this way without another pass. With
    ``stats_out`` (b, 2, l) fp32, also fills it with :func:`scan_token_stats` (the channel means
    of Δ and Δ·mean_n(A) per token), computed in the same pass.
    """
    A = A.contiguous()
    tensors = (u, delta, A, B, C, D, z, delta_bias, out_add)
    save = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    if u.shape[-1] == 0:
        return torch.empty_like(u)
    if out_add is not None and out_add.shape != u.shape:
        raise ValueError(f"out_add has shape {tuple(out_add.shape)}, expected {tuple(u.shape)}")
    return _SelectiveScan.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse,
                                save, out_add, out_scale, stats_out)


# -- depthwise causal conv1d + silu ---------------------------------------------------------


@triton.jit(do_not_specialize=["L", "s_x_b", "s_o_b"])
def _conv_fwd_kernel(
    x_ptr, w_ptr, bias_ptr, out_ptr, L, DIM,
    s_x_b, s_x_d, s_x_l, s_o_b, s_o_d, s_o_l,
    W: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr,
    HAS_BIAS: tl.constexpr, REVERSE: tl.constexpr, SILU: tl.constexpr,
):
    pid_b = tl.program_id(0).to(tl.int64)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_l = tl.program_id(2) * BLOCK_L + tl.arange(0, BLOCK_L)
    mask_d = offs_d < DIM
    acc = tl.zeros((BLOCK_D, BLOCK_L), dtype=tl.float32)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)[:, None]
    x_base = x_ptr + pid_b * s_x_b + offs_d[:, None] * s_x_d
    for k in tl.static_range(W):
        if REVERSE:
            src = offs_l + (W - 1 - k)
        else:
            src = offs_l - (W - 1 - k)
        m = mask_d[:, None] & ((src >= 0) & (src < L))[None, :]
        xv = tl.load(x_base + src[None, :] * s_x_l, mask=m, other=0.0).to(tl.float32)
        wk = tl.load(w_ptr + offs_d * W + k, mask=mask_d, other=0.0).to(tl.float32)
        acc += wk[:, None] * xv
    if SILU:
        acc = acc * tl.sigmoid(acc)
    m = mask_d[:, None] & (offs_l < L)[None, :]
    tl.store(out_ptr + pid_b * s_o_b + offs_d[:, None] * s_o_d + offs_l[None, :] * s_o_l,
             acc.to(out_ptr.dtype.element_ty), mask=m)


@triton.jit(do_not_specialize=["L", "s_x_b", "s_g_b", "s_dx_b"])
def _conv_bwd_kernel(
    x_ptr, w_ptr, bias_ptr, g_ptr, dx_ptr, dw_ptr, db_ptr, L, DIM,
    s_x_b, s_x_d, s_x_l, s_g_b, s_g_d, s_g_l, s_dx_b, s_dx_d, s_dx_l,
    W: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr,
    HAS_BIAS: tl.constexpr, REVERSE: tl.constexpr, SILU: tl.constexpr,
):
    """dx[s] = sum_k w[k] dpre[t_k(s)], with dpre recomputed at the W shifted positions."""
    pid_b = tl.program_id(0).to(tl.int64)
    pid_l = tl.program_id(2)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_s = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
    mask_d = offs_d < DIM
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    x_base = x_ptr + pid_b * s_x_b + offs_d[:, None] * s_x_d
    g_base = g_ptr + pid_b * s_g_b + offs_d[:, None] * s_g_d
    dx = tl.zeros((BLOCK_D, BLOCK_L), dtype=tl.float32)
    g_own = tl.zeros((BLOCK_D, BLOCK_L), dtype=tl.float32)  # dpre at this program's positions
    for k in tl.static_range(W):
        # output position t that reads input s through tap k
        if REVERSE:
            t = offs_s - (W - 1 - k)
        else:
            t = offs_s + (W - 1 - k)
        mt = mask_d[:, None] & ((t >= 0) & (t < L))[None, :]
        pre = tl.zeros((BLOCK_D, BLOCK_L), dtype=tl.float32)
        if HAS_BIAS:
            pre += bias[:, None]
        for j in tl.static_range(W):
            if REVERSE:
                src = t + (W - 1 - j)
            else:
                src = t - (W - 1 - j)
            m = mt & ((src >= 0) & (src < L))[None, :]
            xv = tl.load(x_base + src[None, :] * s_x_l, mask=m, other=0.0).to(tl.float32)
            wj = tl.load(w_ptr + offs_d * W + j, mask=mask_d, other=0.0).to(tl.float32)
            pre += wj[:, None] * xv
        gv = tl.load(g_base + t[None, :] * s_g_l, mask=mt, other=0.0).to(tl.float32)
        if SILU:
            sg = tl.sigmoid(pre)
            gv = gv * sg * (1.0 + pre * (1.0 - sg))
        gv = tl.where(mt, gv, 0.0)
        if k == W - 1:  # tap W-1 reads position t = s itself: keep it for dw and db
            g_own = gv
        wk = tl.load(w_ptr + offs_d * W + k, mask=mask_d, other=0.0).to(tl.float32)
        dx += wk[:, None] * gv
    # weight and bias gradients over the output positions this program owns
    offs_t = offs_s
    mt = mask_d[:, None] & (offs_t < L)[None, :]
    gv = g_own
    row = (pid_b * tl.num_programs(2) + pid_l) * DIM * W
    for j in tl.static_range(W):
        if REVERSE:
            src = offs_t + (W - 1 - j)
        else:
            src = offs_t - (W - 1 - j)
        m = mt & ((src >= 0) & (src < L))[None, :]
        xv = tl.load(x_base + src[None, :] * s_x_l, mask=m, other=0.0).to(tl.float32)
        tl.store(dw_ptr + row + offs_d * W + j, tl.sum(gv * xv, axis=1), mask=mask_d)
    tl.store(db_ptr + (pid_b * tl.num_programs(2) + pid_l) * DIM + offs_d, tl.sum(gv, axis=1),
             mask=mask_d)
    m = mask_d[:, None] & (offs_s < L)[None, :]
    dx_ptrs = dx_ptr + pid_b * s_dx_b + offs_d[:, None] * s_dx_d + offs_s[None, :] * s_dx_l
    tl.store(dx_ptrs, dx.to(dx_ptr.dtype.element_ty), mask=m)


CONV_BLOCK_D, CONV_BLOCK_L = 64, 32


def _conv_grid(b: int, d: int, length: int) -> tuple[int, int, int]:
    return (b, triton.cdiv(d, CONV_BLOCK_D), triton.cdiv(length, CONV_BLOCK_L))


class _CausalConv1d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, bias, reverse):
        b, d, length = x.shape
        out = _like_layout(x)
        _conv_fwd_kernel[_conv_grid(b, d, length)](
            x, w, bias if bias is not None else w, out, length, d, *_s(x), *_s(out),
            W=w.shape[1], BLOCK_D=CONV_BLOCK_D, BLOCK_L=CONV_BLOCK_L,
            HAS_BIAS=bias is not None, REVERSE=bool(reverse), SILU=True,
        )
        ctx.save_for_backward(x, w, bias)
        ctx.reverse = reverse
        return out

    @staticmethod
    def backward(ctx, g):
        x, w, bias = ctx.saved_tensors
        b, d, length = x.shape
        grid = _conv_grid(b, d, length)
        dx = _like_layout(x)
        dwp = torch.empty(b, grid[2], d, w.shape[1], device=x.device, dtype=torch.float32)
        dbp = torch.empty(b, grid[2], d, device=x.device, dtype=torch.float32)
        _conv_bwd_kernel[grid](
            x, w, bias if bias is not None else w, g, dx, dwp, dbp, length, d,
            *_s(x), *_s(g), *_s(dx),
            W=w.shape[1], BLOCK_D=CONV_BLOCK_D, BLOCK_L=CONV_BLOCK_L,
            HAS_BIAS=bias is not None, REVERSE=bool(ctx.reverse), SILU=True,
        )
        dw = dwp.sum((0, 1)).to(w.dtype)
        db = dbp.sum((0, 1)).to(bias.dtype) if bias is not None else None
        return dx, dw, db, None


def causal_conv1d_triton(
    x: Tensor, weight: Tensor, bias: Tensor | None, reverse: bool = False
) -> Tensor:
    """Depthwise causal (anti-causal with ``reverse``) conv1d + silu, as ``causal_conv1d_ref``."""
    w = weight.reshape(weight.shape[0], weight.shape[-1])
    if not w.is_contiguous():
        w = w.contiguous()
    if x.shape[-1] == 0:
        return torch.empty_like(x)
    out = _CausalConv1d.apply(x, w, bias, reverse)
    return out
