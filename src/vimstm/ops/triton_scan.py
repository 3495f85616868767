"""Triton kernels of the bidirectional Mamba mixer: selective scan and depthwise causal conv1d.

Layouts and semantics are those of :mod:`vimstm.ops.scan_ref`. Every tensor is passed with its
strides, so the model's channels-last views (a linear layer's ``(b, l, d)`` output seen as
``(b, d, l)``) are read in place. Each kernel takes a leading *direction* axis: one program
runs the forward-order scan (or conv) of its channels and then the reverse-order one, so the
mixer's two directions cost one launch and share the gate ``z`` and the output
``scale * (y_fwd + y_bwd)``. The reverse direction maps step ``i`` to token ``L - 1 - i``:
nothing flipped is ever materialised. A single direction (``NDIR = 1``, forward or reverse)
is the same kernel.

Scan forward: one program owns ``block_d`` channels of one sample and their fp32 state
``(block_d, d_state)`` in registers and steps through the tokens one at a time (the trip count
is a run-time value: a new sequence length never recompiles). dt bias + softplus, ``exp(ΔA)``,
the D skip and the ``silu(z)`` gate are fused; the next token's inputs are loaded while the
current one is computed. B and C are read as vectors where their rows allow it. It can also
emit the per-token channel sums of Δ and Δ·mean(A) that token merging reads.

Scan backward: per direction and per segment of ``save_every`` tokens (from the state the
forward kept at its start; the whole sequence from zero when it kept none), the program
replays the forward recurrence and keeps the state at the start of every chunk of ``chunk``
tokens in a per-program scratch, and each token's Δ and sigmoid(raw Δ) in another (softplus
runs once per token). Then it walks the chunks from last to first: it recomputes a chunk's
states into a small scratch (meant to stay in L2), with the parts of the gradient that need no
adjoint (dz, dy, the dC row), and steps back through the chunk with the adjoint state in
registers. Each loop loads its next step's inputs while it computes the current one; the
inputs this kernel reads first (in the replay, and in the recompute) two steps ahead, as one
step does not cover their latency. dB and dC, sums over the channel blocks, are added
atomically into one zeroed fp32 buffer (in L2; the order of a row's few block sums may vary
from run to run, at fp32 rounding); the sums over the batch (dA, dD, d bias) are written as
per-program partials and summed by PyTorch.

Conv1d (width 4, silu fused): both kernels walk segments of tokens with sliding windows in
registers (programs of 2 warps, two channels per thread), so each input row is read once.
Forward: a program owns 128 channels of a segment of about 32 tokens (the segments' lengths
differ by at most one) and computes both directions' outputs from the window x[t-3 .. t+3],
loading the row two steps ahead. Backward: a program owns 128 channels of a 128-token
segment and walks it with windows of the input and of both directions' pre-activation
gradients; ``dx`` sums both directions, and the steps away from the segment's ends run in an
unrolled loop without token masks. One H100, bf16, vim_tiny_cifar10's shapes at batch 256:
forward 66 µs (2.3 TB/s), backward 116 µs, against 136 / 169 µs for the tiled forward and the
masked walk they replaced (BENCHMARKS.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

from vimstm.errors import ConfigError

LOG2E = tl.constexpr(1.4426950408889634)  # exp(x) = exp2(x * LOG2E): exp2 is the hardware op
LN2 = tl.constexpr(0.6931471805599453)


@dataclass(frozen=True)
class KernelConfig:
    """Tile sizes of the kernels in this module.

    Measured on one H100 (bf16, vim_tiny_cifar10 training step at batch 256, CUDA time of
    each kernel per step from torch.profiler, ``benchmarks/kernel_variants.py``; BENCHMARKS.md):
    the scan forward saves its states under a branch (23.4 -> 20.7 ms) and reads B and C as
    vectors where the rows allow it (-> 17.9 ms); the scan backward carries
    ``exp(ΔA)·gh`` (78.9 -> 76.1 ms) and reads B and C one state per load (vectors: 77.5-78.1
    against 76.2 ms); the conv1d kernels claim 8-channel alignment where the strides allow it
    (forward 7.86 -> 6.9 ms) and walk segments of tokens (forward 6.62 -> 3.22 ms, backward
    4.10 -> 2.82 ms, all kernels 134.2 -> 129.8 ms). A Δ pre-pass in the scan backward
    (89.1 ms) and register caps (scan backward 200 / 168: 96.5 / 92.6 ms; scan forward 136: no
    change) lost.

    Attributes:
        scan_block_d: channels per scan program. More channels give each thread more
            independent work per token and fewer block sums of dB and dC (32 against 16 on
            the H100: scan backward 76.2 against 136.9 ms; on an H200, 2,014 training img/s
            against 1,533 with 8 and 1,200 with 64).
        scan_warps: warps per scan program.
        chunk: tokens per backward chunk. The chunk's recomputed states live in a per-program
            scratch of ``chunk * scan_block_d * d_state`` fp32 values, which should stay in L2
            (8 against 16 / 4 on the H100: scan backward 76.2 against 83.6 / 78.7 ms).
        save_every: the forward keeps the state every ``save_every`` tokens for the backward
            (a multiple of ``chunk``), ``b * d * d_state * 4 * L / save_every`` bytes per
            direction and layer; the backward replays the forward inside each segment. 0 keeps
            nothing (least memory, one whole extra forward in the backward). 24 with the saved
            ``sum_k y_k`` is faster and leaner than 16 without it (vim_tiny/256 training on an
            H200: 109.0 against 117.8 ms of CUDA time per step, 8.36 against 8.62 GiB); 16
            with it is 1.7% faster again but 1.2 GiB larger (BENCHMARKS.md). The backward
            also keeps, while it runs, Δ, sigmoid(raw Δ) and dy of a segment's tokens:
            ``b * d * 12 * save_every`` bytes (of the whole sequence with 0).
        conv_fwd_block_d, conv_fwd_segment: channels and tokens walked by one program of the
            conv1d forward (a segment reads 6 tokens of halo; the sequence is split into
            ``ceil(L / conv_fwd_segment)`` segments of lengths that differ by at most one).
        conv_bwd_block_d, conv_bwd_segment: channels and tokens walked by one program of the
            conv1d backward (a segment re-reads 6 tokens of halo).
            Both run 2 warps per program (``CONV_FWD_WARPS``, ``CONV_BWD_WARPS``). The
            conv1d alone at vim_tiny_cifar10's shapes (H100, bf16, batch 256,
            ``benchmarks/conv_speed.py``): forward 128 x 32 66.2 µs, 128 x 64 with one warp
            70.9, 256 x 32 with one warp 100.0; backward segment 128 115.7 µs against 126.6 at 64.
    """

    scan_block_d: int = 32
    scan_warps: int = 1
    chunk: int = 8
    save_every: int = 24
    conv_fwd_block_d: int = 128
    conv_fwd_segment: int = 32
    conv_bwd_block_d: int = 128
    conv_bwd_segment: int = 128


CONFIG = KernelConfig()


@triton.jit
def _softplus(x):
    # log1p(exp(x)) as torch (threshold 20), with an accurate log1p (Goldberg's trick).
    e = tl.exp(tl.minimum(x, 20.0))
    w = 1.0 + e
    lp = tl.where(w == 1.0, e, tl.log(w) * (e / (w - 1.0)))
    return tl.where(x > 20.0, x, lp)


@triton.jit
def _softplus_sigmoid(x):
    """softplus(x) as :func:`_softplus` and sigmoid(x), sharing exp(x)."""
    e = tl.exp(tl.minimum(x, 20.0))
    w = 1.0 + e
    lp = tl.where(w == 1.0, e, tl.log(w) * (e / (w - 1.0)))
    return tl.where(x > 20.0, x, lp), tl.where(x > 20.0, 1.0, e / w)


@triton.jit
def _token(i, L, K: tl.constexpr, REV0: tl.constexpr):
    """Token index of step ``i`` of direction ``K`` (1: reverse; REV0 reverses direction 0)."""
    if K == 1:  # noqa: SIM114 (constexpr branches: kept apart for Triton's code generator)
        t = L - 1 - i
    elif REV0:
        t = L - 1 - i
    else:
        t = i
    return t


@triton.jit
def _dir_params(A0, A1, D0, D1, bias0, bias1, K: tl.constexpr, offs_d, mask_d, offs_n, mdn,
                NSTATE, HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, A_LOG: tl.constexpr):
    """A (fp32, from A_log if A_LOG), D and the dt bias of direction K for these channels."""
    a_ptr = A0
    d_ptr = D0
    b_ptr = bias0
    if K == 1:
        a_ptr = A1
        d_ptr = D1
        b_ptr = bias1
    A = tl.load(a_ptr + offs_d[:, None] * NSTATE + offs_n[None, :], mask=mdn, other=0.0)
    A = A.to(tl.float32)
    if A_LOG:
        A = tl.where(mdn, -tl.exp(A), 0.0)
    Dv = tl.zeros(offs_d.shape, dtype=tl.float32)
    if HAS_D:
        Dv = tl.load(d_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    bias = tl.zeros(offs_d.shape, dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(b_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    return A, Dv, bias


@triton.jit
def _fwd_row(p, offs_n, t, s_l, mask, BCV: tl.constexpr):
    """The forward's row of B or C at token t. With BCV > 1, ``p`` is a scalar row base that
    is a multiple of BCV elements (``s_l`` passed divided by BCV, the base aligned: see
    :func:`_bc_rows`), so each thread's contiguous states load as one vector; else ``p`` holds
    the pointers of the states."""
    if BCV > 1:
        r = tl.load((p + t * (s_l * BCV)) + offs_n, mask=mask, other=0.0)
    else:
        r = tl.load(p + t * s_l, mask=mask, other=0.0)
    return r


@triton.jit(do_not_specialize=["L", "s_u_k", "s_u_b", "s_dt_k", "s_dt_b", "s_B_k", "s_B_b",
                               "s_C_k", "s_C_b", "s_z_b", "s_o_b", "s_st_k", "s_st_b", "s_ys_b"])
def _scan_fwd_kernel(
    u_ptr, dt_ptr, A0, A1, B_ptr, C_ptr, D0, D1, z_ptr, bias0, bias1, out_ptr, st_ptr, stats_ptr,
    ys_ptr,
    L, DIM, NSTATE, scale,
    s_u_k, s_u_b, s_u_d, s_u_l,
    s_dt_k, s_dt_b, s_dt_d, s_dt_l,
    s_B_k, s_B_b, s_B_n, s_B_l,
    s_C_k, s_C_b, s_C_n, s_C_l,
    s_z_b, s_z_d, s_z_l,
    s_o_b, s_o_d, s_o_l,
    s_st_k, s_st_b,
    s_ys_b, s_ys_d, s_ys_l,
    N: tl.constexpr, BLOCK_D: tl.constexpr, NDIR: tl.constexpr, REV0: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    A_LOG: tl.constexpr, SAVE_T: tl.constexpr, STATS: tl.constexpr, YSAVE: tl.constexpr,
    BCV: tl.constexpr, BOFF: tl.constexpr, COFF: tl.constexpr, EVEN: tl.constexpr,
):
    """``out = scale * silu(z) * sum_k y_k``; with SAVE_T, the state after every SAVE_T tokens
    to st; with YSAVE, ``sum_k y_k`` (before the gate and the scale) to ``ys_ptr``.

    Direction 0 of two leaves its ``y`` in ``out``; the last direction adds it and gates.
    With ``STATS``, per token and direction, this program's channel sums of Δ and of
    Δ·mean_n(A) go to ``stats_ptr`` (b, programs along d, 2, NDIR, L).
    """
    pid_b = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < DIM
    offs_n = tl.arange(0, N)
    mask_n = offs_n < NSTATE
    if EVEN:  # constant masks: no predicates, no zero fills, no selects
        mask_d = tl.full((BLOCK_D,), 1, tl.int1)
        mask_n = tl.full((N,), 1, tl.int1)
    mdn = mask_d[:, None] & mask_n[None, :]
    o_z = pid_b * s_z_b + offs_d * s_z_d
    o_o = pid_b * s_o_b + offs_d * s_o_d
    o_ys = pid_b * s_ys_b + offs_d * s_ys_d
    if SAVE_T > 0:
        seg_len = SAVE_T
    else:
        seg_len = L
    nseg = tl.cdiv(L, seg_len)
    for K in tl.static_range(NDIR):
        A, Dv, bias = _dir_params(A0, A1, D0, D1, bias0, bias1, K, offs_d, mask_d, offs_n, mdn,
                                  NSTATE, HAS_D, HAS_BIAS, A_LOG)
        A2 = A * LOG2E
        u_p = u_ptr + K * s_u_k + pid_b * s_u_b + offs_d * s_u_d
        dt_p = dt_ptr + K * s_dt_k + pid_b * s_dt_b + offs_d * s_dt_d
        if BCV > 1:  # scalar row bases, the states added at each load (see _fwd_row)
            B_p = B_ptr + BOFF + K * (s_B_k * BCV) + pid_b * (s_B_b * BCV)
            C_p = C_ptr + COFF + K * (s_C_k * BCV) + pid_b * (s_C_b * BCV)
        else:  # tensors of pointers, moved by tokens
            B_p = B_ptr + K * s_B_k + pid_b * s_B_b + offs_n * s_B_n
            C_p = C_ptr + K * s_C_k + pid_b * s_C_b + offs_n * s_C_n
        if STATS:
            a_mean = tl.sum(A, axis=1) / NSTATE
            sp = stats_ptr + ((pid_b * tl.num_programs(1) + pid_d) * 2 * NDIR + K) * L
        st_p = st_ptr + K * s_st_k + pid_b * s_st_b + offs_d[:, None] * NSTATE + offs_n[None, :]
        h = tl.zeros((BLOCK_D, N), dtype=tl.float32)
        t = _token(0, L, K, REV0)
        u_n = tl.load(u_p + t * s_u_l, mask=mask_d, other=0.0)
        dt_n = tl.load(dt_p + t * s_dt_l, mask=mask_d, other=0.0)
        B_n = _fwd_row(B_p, offs_n, t, s_B_l, mask_n, BCV)
        C_n = _fwd_row(C_p, offs_n, t, s_C_l, mask_n, BCV)
        z_n = u_n
        if HAS_Z:
            z_n = tl.load(z_ptr + o_z + t * s_z_l, mask=mask_d, other=0.0)
        y0_n = u_n
        if K == 1:  # direction 0's y, left in out: loaded a step ahead like the inputs
            y0_n = tl.load(out_ptr + o_o + t * s_o_l, mask=mask_d, other=0.0)
        # segments of SAVE_T tokens (one of all when nothing is saved): the state after each
        # but the last is saved between them, so the token loop carries no test for it
        for s in range(0, nseg):
            for i in range(s * seg_len, tl.minimum(L, (s + 1) * seg_len)):
                t = _token(i, L, K, REV0)
                u = u_n.to(tl.float32)
                dt = dt_n.to(tl.float32)
                Bt = B_n.to(tl.float32)
                Ct = C_n.to(tl.float32)
                z = z_n.to(tl.float32)
                y0 = y0_n
                # the next token's inputs are loaded while this one is computed
                t2 = _token(tl.minimum(i + 1, L - 1), L, K, REV0)
                if K == 1:
                    y0_n = tl.load(out_ptr + o_o + t2 * s_o_l, mask=mask_d, other=0.0)
                u_n = tl.load(u_p + t2 * s_u_l, mask=mask_d, other=0.0)
                dt_n = tl.load(dt_p + t2 * s_dt_l, mask=mask_d, other=0.0)
                B_n = _fwd_row(B_p, offs_n, t2, s_B_l, mask_n, BCV)
                C_n = _fwd_row(C_p, offs_n, t2, s_C_l, mask_n, BCV)
                if HAS_Z:
                    z_n = tl.load(z_ptr + o_z + t2 * s_z_l, mask=mask_d, other=0.0)
                if HAS_BIAS:
                    dt = dt + bias
                if SOFTPLUS:
                    dt = _softplus(dt)
                if STATS:
                    dm = tl.where(mask_d, dt, 0.0)
                    tl.store(sp + t, tl.sum(dm, axis=0))
                    tl.store(sp + NDIR * L + t, tl.sum(dm * a_mean, axis=0))
                h = tl.exp2(dt[:, None] * A2) * h + (dt * u)[:, None] * Bt[None, :]
                y = tl.sum(h * Ct[None, :], axis=1)
                if HAS_D:
                    y = y + u * Dv
                if K == NDIR - 1:
                    if K == 1:
                        y = y + y0.to(tl.float32)
                    if YSAVE:
                        tl.store(ys_ptr + o_ys + t * s_ys_l, y.to(ys_ptr.dtype.element_ty),
                                 mask=mask_d)
                    if HAS_Z:
                        y = y * z * tl.sigmoid(z)
                    y = y * scale
                tl.store(out_ptr + o_o + t * s_o_l, y.to(out_ptr.dtype.element_ty), mask=mask_d)
            if SAVE_T > 0:  # noqa: SIM102 (a constexpr branch around a run-time one)
                if s < nseg - 1:
                    tl.store(st_p + s * (DIM * NSTATE), h, mask=mdn)
        tl.debug_barrier()  # direction 1 reads back what direction 0 wrote


@triton.jit
def _load_step(u_p, dt_p, B_p, o_u, o_dt, o_B, t, s_u_l, s_dt_l, s_B_l, mask_d, mask_n):
    """u, the raw Δ and B of token t, in their stored dtype."""
    u = tl.load(u_p + (o_u + t * s_u_l), mask=mask_d, other=0.0)
    dt = tl.load(dt_p + (o_dt + t * s_dt_l), mask=mask_d, other=0.0)
    Bt = tl.load((B_p + t * s_B_l) + o_B, mask=mask_n, other=0.0)
    return u, dt, Bt


@triton.jit
def _delta_store(raw, bias, p, mask, BLOCK_D: tl.constexpr, HAS_BIAS: tl.constexpr,
                 SOFTPLUS: tl.constexpr):
    """Δ from the stored value (+ bias, softplus, in fp32), written to ``p`` and, with
    SOFTPLUS, sigmoid(raw + bias) to ``p + BLOCK_D``; returns Δ."""
    dt = raw.to(tl.float32)
    if HAS_BIAS:
        dt = dt + bias
    if SOFTPLUS:
        dt, sg = _softplus_sigmoid(dt)
        tl.store(p + BLOCK_D, sg, mask=mask)
    tl.store(p, dt, mask=mask)
    return dt


@triton.jit(do_not_specialize=["L", "s_u_k", "s_u_b", "s_dt_k", "s_dt_b", "s_B_k", "s_B_b",
                               "s_C_k", "s_C_b", "s_z_b", "s_g_b", "s_st_k", "s_st_b",
                               "s_du_k", "s_du_b", "s_ddt_k", "s_ddt_b", "s_dz_b", "s_ys_b"])
def _scan_bwd_kernel(
    u_ptr, dt_ptr, A0, A1, B_ptr, C_ptr, D0, D1, z_ptr, bias0, bias1, g_ptr, st_ptr,
    ck_ptr, hs_ptr, ds_ptr, du_ptr, ddt_ptr, dz_ptr, dbc_ptr, dA_ptr, dD_ptr, dbias_ptr, ys_ptr,
    L, DIM, NSTATE, NBLK, NB, CK_SLAB, DS_SLAB, scale,
    s_u_k, s_u_b, s_u_d, s_u_l,
    s_dt_k, s_dt_b, s_dt_d, s_dt_l,
    s_B_k, s_B_b, s_B_n, s_B_l,
    s_C_k, s_C_b, s_C_n, s_C_l,
    s_z_b, s_z_d, s_z_l,
    s_g_b, s_g_d, s_g_l,
    s_st_k, s_st_b,
    s_du_k, s_du_b, s_du_d, s_du_l,
    s_ddt_k, s_ddt_b, s_ddt_d, s_ddt_l,
    s_dz_b, s_dz_d, s_dz_l,
    s_ys_b, s_ys_d, s_ys_l,
    N: tl.constexpr, BLOCK_D: tl.constexpr, T: tl.constexpr, TP: tl.constexpr,
    NDIR: tl.constexpr, REV0: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
    HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, A_LOG: tl.constexpr, SAVE_T: tl.constexpr,
    EVEN: tl.constexpr,
):
    """Gradients of ``out = scale * silu(z) * sum_k y_k`` for every input of every direction.

    Per direction, the tokens split into segments (SAVE_T tokens, or all of them when the
    forward saved nothing). For each segment, last first: (0) replay the forward from the
    segment's first state, writing the state at the start of each chunk of T tokens to this
    program's ``ck_ptr`` slab and each token's Δ and sigmoid(raw Δ) to its ``ds_ptr`` slab
    (segment tokens, 3, BLOCK_D); the last chunk, which the replay does not walk, gets them
    as one (T, BLOCK_D) tile. Then for each chunk, last first: (1) recompute its states token
    by token into this program's ``hs_ptr`` slab (T, BLOCK_D, N), slot j holding the state
    before token j, and with the state after each token its dC row, dz and dy (dy to the
    third row of ``ds_ptr``); (2) walk its tokens backwards with the adjoint state in registers.
    Each program adds its dB | dC row sums atomically into ``dbc_ptr`` (NDIR, b, L, 2 * NSTATE),
    zeroed by the caller. With ``HAS_Z``, ``ys_ptr`` holds ``sum_k y_k`` before the gate, as the
    forward saved it: direction 0 writes the whole dz from it, so no direction reduces ``h C``
    over the states. ``EVEN`` (the channels fill whole blocks, N == NSTATE) drops the masks. The
    adjoint walk carries ``exp(Δ_{t+1} A) gh_{t+1}`` from step to step, not gh and the next
    step's ``exp(Δ A)``, and forms ``exp(Δ A)`` as ``2^((Δ log2 e) A)``: one state tile and one
    product per state less, and no ``A log2 e`` tile. B and C are read one state per load
    (vector loads measured slower here, unlike in the forward).
    """
    pid_b = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < DIM
    offs_n = tl.arange(0, N)
    mask_n = offs_n < NSTATE
    if EVEN:  # constant masks: no predicates, no zero fills, no selects
        mask_d = tl.full((BLOCK_D,), 1, tl.int1)
        mask_n = tl.full((N,), 1, tl.int1)
    mdn = mask_d[:, None] & mask_n[None, :]
    z_p = z_ptr + pid_b * s_z_b
    g_p = g_ptr + pid_b * s_g_b
    dz_p = dz_ptr + pid_b * s_dz_b
    ys_p = ys_ptr + pid_b * s_ys_b
    o_z, o_g, o_dz, o_ys = offs_d * s_z_d, offs_d * s_g_d, offs_d * s_dz_d, offs_d * s_ys_d
    o_u, o_dt, o_du, o_ddt = offs_d * s_u_d, offs_d * s_dt_d, offs_d * s_du_d, offs_d * s_ddt_d
    o_B, o_C = offs_n * s_B_n, offs_n * s_C_n
    o_st = offs_d[:, None] * NSTATE + offs_n[None, :]
    # d * N + n, written so that the compiler sees a thread's rows (8 apart in the state
    # layout) at constant distances: one address and immediate offsets per slab access
    rd = tl.arange(0, BLOCK_D)[:, None]
    o_tile = (rd % 8) * N + (rd // 8) * (8 * N) + offs_n[None, :]
    slab = (pid_b * NBLK + pid_d)
    ck_p = ck_ptr + slab * CK_SLAB
    hs_p = hs_ptr + slab * (T * BLOCK_D * N)
    ds_p = ds_ptr + slab * DS_SLAB  # per token of the segment: Δ | sigmoid(raw Δ) | dy
    o_ds = tl.arange(0, BLOCK_D)
    if SAVE_T > 0:
        seg_len = SAVE_T
    else:
        seg_len = L
    nseg = tl.cdiv(L, seg_len)
    for K in tl.static_range(NDIR):
        A, Dv, bias = _dir_params(A0, A1, D0, D1, bias0, bias1, K, offs_d, mask_d, offs_n, mdn,
                                  NSTATE, HAS_D, HAS_BIAS, A_LOG)
        # scalar bases + int32 offsets: tensors of 64-bit pointers would take many registers
        u_p = u_ptr + K * s_u_k + pid_b * s_u_b
        dt_p = dt_ptr + K * s_dt_k + pid_b * s_dt_b
        B_p = B_ptr + K * s_B_k + pid_b * s_B_b
        C_p = C_ptr + K * s_C_k + pid_b * s_C_b
        du_p = du_ptr + K * s_du_k + pid_b * s_du_b
        ddt_p = ddt_ptr + K * s_ddt_k + pid_b * s_ddt_b
        st_p = st_ptr + K * s_st_k + pid_b * s_st_b
        dbc_p = dbc_ptr + (K * NB + pid_b) * L * (2 * NSTATE)
        gh = tl.zeros((BLOCK_D, N), dtype=tl.float32)  # exp(Δ_{t+1} A) gh_{t+1}
        dA_acc = tl.zeros((BLOCK_D, N), dtype=tl.float32)  # in units of log2 e
        dD_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
        db_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
        for si in range(0, nseg):
            s = nseg - 1 - si
            s0 = s * seg_len
            s_n = tl.minimum(L - s0, seg_len)
            nch = tl.cdiv(s_n, T)
            # (0) replay the segment: the state at the start of each chunk into ck. Every loop
            # below loads the inputs of its next step before computing the current one.
            h = tl.load(st_p + ((s - 1) * (DIM * NSTATE) + o_st), mask=mdn & (s > 0), other=0.0)
            # the replay is this kernel's first reader of these inputs: two steps ahead
            nrep = (nch - 1) * T
            t = _token(s0, L, K, REV0)
            u_n, dt_n, B_n = _load_step(u_p, dt_p, B_p, o_u, o_dt, o_B, t, s_u_l, s_dt_l, s_B_l,
                                        mask_d, mask_n)
            t = _token(s0 + tl.maximum(tl.minimum(1, nrep - 1), 0), L, K, REV0)
            u_nn, dt_nn, B_nn = _load_step(u_p, dt_p, B_p, o_u, o_dt, o_B, t, s_u_l, s_dt_l,
                                           s_B_l, mask_d, mask_n)
            for j in range(0, nrep):
                if j % T == 0:
                    tl.store(ck_p + (j // T) * (BLOCK_D * N) + o_tile, h)
                u = u_n.to(tl.float32)
                dt = _delta_store(dt_n, bias, ds_p + j * (3 * BLOCK_D) + o_ds, None, BLOCK_D,
                                  HAS_BIAS, SOFTPLUS)
                Bt = B_n.to(tl.float32)
                u_n, dt_n, B_n = u_nn, dt_nn, B_nn
                t2 = _token(s0 + tl.minimum(j + 2, nrep - 1), L, K, REV0)
                u_nn, dt_nn, B_nn = _load_step(u_p, dt_p, B_p, o_u, o_dt, o_B, t2, s_u_l, s_dt_l,
                                               s_B_l, mask_d, mask_n)
                h = tl.exp2((dt * LOG2E)[:, None] * A) * h + (dt * u)[:, None] * Bt[None, :]
            tl.store(ck_p + (nch - 1) * (BLOCK_D * N) + o_tile, h)
            # Δ of the last chunk, which the replay does not walk: all its tokens at once
            jl = nrep + tl.arange(0, TP)
            tl_ = _token(s0 + jl, L, K, REV0)
            raw = tl.load(dt_p + (o_dt[None, :] + tl_[:, None] * s_dt_l),
                          mask=(jl < s_n)[:, None] & mask_d[None, :], other=0.0)
            _delta_store(raw, bias[None, :], ds_p + jl[:, None] * (3 * BLOCK_D) + o_ds[None, :],
                         (jl < nrep + T)[:, None], BLOCK_D, HAS_BIAS, SOFTPLUS)
            tl.debug_barrier()
            for cc in range(0, nch):
                c = nch - 1 - cc
                c0 = s0 + c * T
                nt = tl.minimum(s0 + s_n - c0, T)
                # (1) states of the chunk; slot j holds the state before token j
                h = tl.load(ck_p + c * (BLOCK_D * N) + o_tile)
                dc_p = ds_p + (c * T) * (3 * BLOCK_D)  # this chunk's Δ | sigmoid | dy
                t = _token(c0, L, K, REV0)
                u_n = tl.load(u_p + (o_u + t * s_u_l), mask=mask_d, other=0.0)
                B_n = tl.load((B_p + t * s_B_l) + o_B, mask=mask_n, other=0.0)
                dl_n = tl.load(dc_p + o_ds)
                # g, z and the saved sum are read here first, and u and B of the segment's
                # last chunk, which the replay skips: two steps ahead
                g_n = tl.load(g_p + (o_g + t * s_g_l), mask=mask_d, other=0.0)
                z_n = g_n
                if HAS_Z:
                    z_n = tl.load(z_p + (o_z + t * s_z_l), mask=mask_d, other=0.0)
                y_n = g_n
                if HAS_Z and K == 0:
                    y_n = tl.load(ys_p + (o_ys + t * s_ys_l), mask=mask_d, other=0.0)
                t = _token(c0 + tl.minimum(1, nt - 1), L, K, REV0)
                u_nn = tl.load(u_p + (o_u + t * s_u_l), mask=mask_d, other=0.0)
                B_nn = tl.load((B_p + t * s_B_l) + o_B, mask=mask_n, other=0.0)
                g_nn = tl.load(g_p + (o_g + t * s_g_l), mask=mask_d, other=0.0)
                z_nn = g_nn
                if HAS_Z:
                    z_nn = tl.load(z_p + (o_z + t * s_z_l), mask=mask_d, other=0.0)
                y_nn = g_nn
                if HAS_Z and K == 0:
                    y_nn = tl.load(ys_p + (o_ys + t * s_ys_l), mask=mask_d, other=0.0)
                for j in range(0, nt):
                    t = _token(c0 + j, L, K, REV0)
                    u = u_n.to(tl.float32)
                    dt = dl_n
                    Bt = B_n.to(tl.float32)
                    g = g_n.to(tl.float32) * scale
                    z = z_n.to(tl.float32)
                    yt = y_n.to(tl.float32)
                    u_n, B_n, g_n, z_n, y_n = u_nn, B_nn, g_nn, z_nn, y_nn
                    j2 = tl.minimum(j + 1, nt - 1)
                    dl_n = tl.load(dc_p + j2 * (3 * BLOCK_D) + o_ds)
                    t3 = _token(c0 + tl.minimum(j + 2, nt - 1), L, K, REV0)
                    u_nn = tl.load(u_p + (o_u + t3 * s_u_l), mask=mask_d, other=0.0)
                    B_nn = tl.load((B_p + t3 * s_B_l) + o_B, mask=mask_n, other=0.0)
                    g_nn = tl.load(g_p + (o_g + t3 * s_g_l), mask=mask_d, other=0.0)
                    if HAS_Z:
                        z_nn = tl.load(z_p + (o_z + t3 * s_z_l), mask=mask_d, other=0.0)
                    if HAS_Z and K == 0:
                        y_nn = tl.load(ys_p + (o_ys + t3 * s_ys_l), mask=mask_d, other=0.0)
                    tl.store(hs_p + j * (BLOCK_D * N) + o_tile, h)
                    h = (tl.exp2((dt * LOG2E)[:, None] * A) * h
                         + (dt * u)[:, None] * Bt[None, :])
                    # the output side of the token needs no adjoint: dz, dy and the dC row
                    if HAS_Z:
                        sz = tl.sigmoid(z)
                        if K == 0:  # dz of both directions, from their saved sum
                            dz = g * yt * sz * (1.0 + z * (1.0 - sz))
                            tl.store(dz_p + (o_dz + t * s_dz_l),
                                     dz.to(dz_ptr.dtype.element_ty), mask=mask_d)
                        dy = g * z * sz
                    else:
                        dy = g
                    tl.store(dc_p + j * (3 * BLOCK_D) + o_ds + 2 * BLOCK_D, dy)
                    tl.atomic_add(dbc_p + (t * (2 * NSTATE) + NSTATE + offs_n),
                                  tl.sum(h * dy[:, None], axis=0), mask=mask_n, sem="relaxed")
                tl.debug_barrier()  # the slabs are read back below, maybe by other threads
                # (2) adjoint, token by token backwards
                t = _token(c0 + nt - 1, L, K, REV0)
                u_n = tl.load(u_p + (o_u + t * s_u_l), mask=mask_d, other=0.0)
                B_n = tl.load((B_p + t * s_B_l) + o_B, mask=mask_n, other=0.0)
                rp = dc_p + (nt - 1) * (3 * BLOCK_D) + o_ds  # Δ; + BLOCK_D sigmoid, dy
                dl_n = tl.load(rp)
                sg_n = dl_n
                if SOFTPLUS:
                    sg_n = tl.load(rp + BLOCK_D)
                C_n = tl.load((C_p + t * s_C_l) + o_C, mask=mask_n, other=0.0)
                dy_n = tl.load(rp + 2 * BLOCK_D)
                hp_n = tl.load(hs_p + (nt - 1) * (BLOCK_D * N) + o_tile)
                for jj in range(0, nt):
                    j = nt - 1 - jj
                    t = _token(c0 + j, L, K, REV0)
                    u = u_n.to(tl.float32)
                    dt = dl_n
                    sg = sg_n
                    Bt = B_n.to(tl.float32)
                    Ct = C_n.to(tl.float32)
                    dy = dy_n
                    h_prev = hp_n
                    j2 = tl.maximum(j - 1, 0)
                    t2 = _token(c0 + j2, L, K, REV0)
                    u_n = tl.load(u_p + (o_u + t2 * s_u_l), mask=mask_d, other=0.0)
                    B_n = tl.load((B_p + t2 * s_B_l) + o_B, mask=mask_n, other=0.0)
                    rp = dc_p + j2 * (3 * BLOCK_D) + o_ds
                    dl_n = tl.load(rp)
                    if SOFTPLUS:
                        sg_n = tl.load(rp + BLOCK_D)
                    C_n = tl.load((C_p + t2 * s_C_l) + o_C, mask=mask_n, other=0.0)
                    dy_n = tl.load(rp + 2 * BLOCK_D)
                    dt = tl.where(mask_d, dt, 0.0)
                    # gh_t = C_t dy_t + exp(Δ_{t+1} A) gh_{t+1}, the second term carried in gh
                    gh = dy[:, None] * Ct[None, :] + gh
                    dtl = dt * LOG2E
                    a = tl.exp2(dtl[:, None] * A)
                    gh_a = a * gh  # carried to the step before
                    gha = gh_a * h_prev
                    # the next state is loaded once this one is used: into the same registers
                    hp_n = tl.load(hs_p + j2 * (BLOCK_D * N) + o_tile)
                    gB = tl.sum(gh * Bt[None, :], axis=1)
                    du = gB * dt
                    if HAS_D:
                        du = du + dy * Dv
                        dD_acc += dy * u
                    ddt = tl.sum(gha * A, axis=1) + gB * u
                    dA_acc += gha * dtl[:, None]
                    if SOFTPLUS:
                        ddt = ddt * sg
                    ddt = tl.where(mask_d, ddt, 0.0)
                    db_acc += ddt
                    tl.store(du_p + (o_du + t * s_du_l), du.to(du_ptr.dtype.element_ty),
                             mask=mask_d)
                    tl.store(ddt_p + (o_ddt + t * s_ddt_l), ddt.to(ddt_ptr.dtype.element_ty),
                             mask=mask_d)
                    row = dbc_p + (t * (2 * NSTATE) + offs_n)
                    tl.atomic_add(row, tl.sum(gh * (dt * u)[:, None], axis=0), mask=mask_n,
                                  sem="relaxed")
                    gh = gh_a
                tl.debug_barrier()  # the next chunk overwrites the slab
        dA_acc = dA_acc * LN2
        if A_LOG:  # d A_log = dA * A
            dA_acc = dA_acc * A
        part = (K * NB + pid_b) * DIM
        tl.store(dA_ptr + part * NSTATE + offs_d[:, None] * NSTATE + offs_n[None, :], dA_acc,
                 mask=mdn)
        tl.store(dD_ptr + part + offs_d, dD_acc, mask=mask_d)
        tl.store(dbias_ptr + part + offs_d, db_acc, mask=mask_d)


def _bc_rows(*xs: Tensor) -> tuple[int, list]:
    """For the scan forward's B and C ``(k, b, n, l)``: (BCV, [(tensor, offset, strides)]).

    Where the rows allow it (states contiguous, row starts and the other strides multiples of
    4 elements, as in the model's x_dbl: rows of padded_rank(dt_rank) + 2 d_state), BCV = 4 and
    each thread's states load as one vector (LDG.64 for bf16). Triton only knows 16-byte aligned
    pointers, so each tensor is replaced by a view of the same memory starting at the 16-byte
    boundary at or before it, ``offset`` elements back, and its k, b, l strides are passed
    divided by 4. Else BCV = 1 (one load per state) and everything is passed as it is.
    """
    v = 4
    rows = []
    for x in xs:
        es = x.element_size()
        off = (x.data_ptr() % 16) // es
        ok = (x.stride(2) == 1 and x.data_ptr() % (v * es) == 0
              and off <= x.storage_offset()
              and all(x.stride(i) % v == 0 for i in (0, 1, 3)))
        if not ok:
            return 1, [(y, 0, tuple(y.stride())) for y in xs]
        base = x.as_strided(x.shape, x.stride(), x.storage_offset() - off)
        s = x.stride()
        rows.append((base, off, (s[0] // v, s[1] // v, s[2], s[3] // v)))
    return v, rows


def _strides(x: Tensor | None, n: int) -> tuple[int, ...]:
    return tuple(x.stride()) if x is not None else (0,) * n


def _empty_like_layout(x: Tensor, dtype: torch.dtype) -> Tensor:
    """An empty tensor shaped as ``x`` (..., d, l), channels-last in memory when ``x`` is."""
    if x.stride(-2) == 1 and x.shape[-1] > 1:
        return torch.empty(*x.shape[:-2], x.shape[-1], x.shape[-2], device=x.device,
                           dtype=dtype).transpose(-1, -2)
    return torch.empty(x.shape, device=x.device, dtype=dtype)


@dataclass
class ScanParams:
    """Per-direction parameters of a scan: pairs (forward-order, reverse-order direction).

    ``A`` holds A, or A_log when ``a_log`` (then the kernels use ``A = -exp(A_log)`` and return
    the gradient of A_log). ``D`` and ``bias`` may be None.
    """

    A: tuple[Tensor, Tensor]
    D: tuple[Tensor, Tensor] | None
    bias: tuple[Tensor, Tensor] | None
    a_log: bool = False
    softplus: bool = True


def scan_fwd(u: Tensor, delta: Tensor, B: Tensor, C: Tensor, z: Tensor | None, p: ScanParams,
             out: Tensor, scale: float = 1.0, reverse: bool = False, save: bool = False,
             stats: Tensor | None = None, ys: Tensor | None = None,
             cfg: KernelConfig | None = None) -> Tensor | None:
    """Run the scan of every direction of ``u, delta: (k, b, d, l)``, ``B, C: (k, b, n, l)``.

    Writes ``scale * sum_k y_k`` to ``out`` (b, d, l). ``k`` is 2 (forward order, then
    reverse order) or 1 (reverse order if ``reverse``). Returns the saved states
    (k, b, segments - 1, d, n) fp32 when ``save`` and ``cfg.save_every`` ask for them and the
    sequence is longer than one segment, else None.
    ``stats`` (b, 2, k, l) fp32 receives the per-token channel means of Δ and Δ·mean_n(A).
    ``ys`` (b, d, l), if given, receives ``sum_k y_k`` before the gate and the scale (what
    :func:`scan_bwd` needs to differentiate the gate).
    """
    cfg = cfg or CONFIG
    ndir, b, d, length = u.shape
    n = p.A[0].shape[1]
    save_t = cfg.save_every if save and length > cfg.save_every else 0
    if save_t:  # the state after every segment but the last
        states = torch.empty(ndir, b, triton.cdiv(length, save_t) - 1, d, n, device=u.device,
                             dtype=torch.float32)
    grid = (b, triton.cdiv(d, cfg.scan_block_d))
    partial = None
    if stats is not None:
        partial = torch.empty(b, grid[1], 2, ndir, length, device=u.device, dtype=torch.float32)
    D0, D1 = p.D if p.D is not None else (u, u)
    b0, b1 = p.bias if p.bias is not None else (u, u)
    st = states if save_t else out
    bcv, ((Bb, boff, sB), (Cb, coff, sC)) = _bc_rows(B, C)
    _scan_fwd_kernel[grid](
        u, delta, p.A[0], p.A[1], Bb, Cb, D0, D1, z if z is not None else u, b0, b1, out, st,
        partial if partial is not None else out, ys if ys is not None else out,
        length, d, n, float(scale),
        *u.stride(), *delta.stride(), *sB, *sC, *_strides(z, 3),
        *out.stride(), st.stride(0), st.stride(1), *_strides(ys, 3),
        N=triton.next_power_of_2(n), BLOCK_D=cfg.scan_block_d, NDIR=ndir, REV0=bool(reverse),
        HAS_D=p.D is not None, HAS_Z=z is not None, HAS_BIAS=p.bias is not None,
        SOFTPLUS=bool(p.softplus), A_LOG=bool(p.a_log), SAVE_T=save_t, STATS=stats is not None,
        YSAVE=ys is not None, BCV=bcv, BOFF=boff, COFF=coff,
        EVEN=d % cfg.scan_block_d == 0 and n == triton.next_power_of_2(n),
        num_warps=cfg.scan_warps,
    )
    if stats is not None:
        torch.sum(partial, 1, out=stats)
        stats.div_(d)
    return states if save_t else None


@dataclass
class ScanGrads:
    """What :func:`scan_bwd` returns; per-direction tensors have the direction axis first."""

    du: Tensor  # (k, b, d, l), dtype of u
    ddelta: Tensor  # (k, b, d, l), dtype of delta
    dz: Tensor | None  # (b, d, l), dtype of z (the sum over the directions)
    dBC: Tensor  # (k, b, l, 2n) fp32: dB | dC
    dA: Tensor  # (k, d, n) fp32 (of A_log when the params hold A_log)
    dD: Tensor  # (k, d) fp32
    dbias: Tensor  # (k, d) fp32


def scan_bwd(u: Tensor, delta: Tensor, B: Tensor, C: Tensor, z: Tensor | None, p: ScanParams,
             gout: Tensor, states: Tensor | None, scale: float = 1.0, reverse: bool = False,
             du: Tensor | None = None, dz: Tensor | None = None, ys: Tensor | None = None,
             cfg: KernelConfig | None = None) -> ScanGrads:
    """Gradients of :func:`scan_fwd` for ``gout`` (b, d, l); ``du``/``dz`` may be preallocated;
    with ``z``, ``ys`` is what the forward wrote to its ``ys``."""
    if (z is None) != (ys is None):
        raise ValueError("scan_bwd: pass ys (the forward's pre-gate sum) exactly when z is given")
    cfg = cfg or CONFIG
    ndir, b, d, length = u.shape
    n = p.A[0].shape[1]
    n2 = triton.next_power_of_2(n)
    bd = cfg.scan_block_d
    nblk = triton.cdiv(d, bd)
    dev = u.device
    save_t = cfg.save_every if states is not None else 0
    du = du if du is not None else _empty_like_layout(u, u.dtype)
    ddt = _empty_like_layout(delta, delta.dtype)
    if z is not None and dz is None:
        dz = _empty_like_layout(z, z.dtype)
    dbc = torch.zeros(ndir, b, length, 2 * n, device=dev, dtype=torch.float32)
    dA = torch.empty(ndir, b, d, n, device=dev, dtype=torch.float32)
    dD = torch.empty(ndir, b, d, device=dev, dtype=torch.float32)
    dbias = torch.empty_like(dD)
    ck = torch.empty(b, nblk, triton.cdiv(save_t or length, cfg.chunk), bd, n2, device=dev,
                     dtype=torch.float32)
    hs = torch.empty(b, nblk, cfg.chunk, bd, n2, device=dev, dtype=torch.float32)
    ds = torch.empty(b, nblk, triton.cdiv(save_t or length, cfg.chunk) * cfg.chunk, 3, bd,
                     device=dev, dtype=torch.float32)
    D0, D1 = p.D if p.D is not None else (u, u)
    b0, b1 = p.bias if p.bias is not None else (u, u)
    st = states if states is not None else ck
    _scan_bwd_kernel[(b, nblk)](
        u, delta, p.A[0], p.A[1], B, C, D0, D1, z if z is not None else u, b0, b1, gout, st,
        ck, hs, ds, du, ddt, dz if dz is not None else du, dbc, dA, dD, dbias,
        ys if ys is not None else du,
        length, d, n, nblk, b, ck.stride(1), ds.stride(1), float(scale),
        *u.stride(), *delta.stride(), *B.stride(), *C.stride(), *_strides(z, 3),
        *gout.stride(), st.stride(0), st.stride(1), *du.stride(), *ddt.stride(),
        *_strides(dz, 3), *_strides(ys, 3),
        N=n2, BLOCK_D=bd, T=cfg.chunk, TP=triton.next_power_of_2(cfg.chunk), NDIR=ndir,
        REV0=bool(reverse),
        HAS_D=p.D is not None, HAS_Z=z is not None, HAS_BIAS=p.bias is not None,
        SOFTPLUS=bool(p.softplus), A_LOG=bool(p.a_log), SAVE_T=save_t,
        EVEN=d % bd == 0 and n == n2, num_warps=cfg.scan_warps,
    )
    return ScanGrads(du=du, ddelta=ddt, dz=dz, dBC=dbc, dA=dA.sum(1), dD=dD.sum(1),
                     dbias=dbias.sum(1))


class _SelectiveScan(torch.autograd.Function):
    """One direction of :func:`selective_scan_triton` with autograd."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, softplus, reverse, stats):
        p = ScanParams((A, A), None if D is None else (D, D),
                       None if delta_bias is None else (delta_bias, delta_bias),
                       softplus=softplus)
        out = _empty_like_layout(u, u.dtype)
        st = None if stats is None else stats.new_empty(u.shape[0], 2, 1, u.shape[-1])
        grad = any(ctx.needs_input_grad)
        ys = _empty_like_layout(u, u.dtype) if grad and z is not None else None
        states = scan_fwd(u[None], delta[None], B[None], C[None], z, p, out, reverse=reverse,
                          save=grad, stats=st, ys=ys)
        if stats is not None:
            stats.copy_(st[:, :, 0])
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, states, ys)
        ctx.params = (softplus, reverse, states is not None)
        return out

    @staticmethod
    def backward(ctx, gout):
        u, delta, A, B, C, D, z, delta_bias, states, ys = ctx.saved_tensors
        softplus, reverse, saved = ctx.params
        p = ScanParams((A, A), None if D is None else (D, D),
                       None if delta_bias is None else (delta_bias, delta_bias),
                       softplus=softplus)
        gr = scan_bwd(u[None], delta[None], B[None], C[None], z, p, gout,
                      states if saved else None, reverse=reverse, ys=ys)
        n = A.shape[1]
        dB = gr.dBC[0, :, :, :n].transpose(1, 2).to(B.dtype)
        dC = gr.dBC[0, :, :, n:].transpose(1, 2).to(C.dtype)
        return (gr.du[0], gr.ddelta[0], gr.dA[0].to(A.dtype), dB, dC,
                None if D is None else gr.dD[0].to(D.dtype), gr.dz,
                None if delta_bias is None else gr.dbias[0].to(delta_bias.dtype),
                None, None, None)


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
    stats_out: Tensor | None = None,
) -> Tensor:
    """One direction of the selective scan (see :func:`~vimstm.ops.scan_ref.selective_scan_ref`).

    ``stats_out`` (b, 2, l) fp32, if given, receives
    :func:`~vimstm.ops.scan_ref.scan_token_stats`, computed in the same pass.
    """
    if u.shape[-1] == 0:
        return torch.empty_like(u)
    return _SelectiveScan.apply(u, delta, A.contiguous(), B, C, D, z, delta_bias,
                                delta_softplus, reverse, stats_out)


# -- depthwise causal conv1d + silu ---------------------------------------------------------

CONV_FWD_WARPS = 2  # warps per conv1d forward program
CONV_FWD_UNROLL = 4  # unroll factor of the forward's token loop
CONV_BWD_WARPS = 2  # warps per conv1d backward program
CONV_BWD_UNROLL = 8  # unroll factor of the backward's unmasked token loop


@triton.jit
def _conv_taps(w, offs_d, mask_d):
    """The four taps of width-4 conv weights ``w`` (d, 4) for channels ``offs_d``, in fp32."""
    w0 = tl.load(w + offs_d * 4, mask=mask_d, other=0.0).to(tl.float32)
    w1 = tl.load(w + offs_d * 4 + 1, mask=mask_d, other=0.0).to(tl.float32)
    w2 = tl.load(w + offs_d * 4 + 2, mask=mask_d, other=0.0).to(tl.float32)
    w3 = tl.load(w + offs_d * 4 + 3, mask=mask_d, other=0.0).to(tl.float32)
    return w0, w1, w2, w3


@triton.jit(do_not_specialize=["L", "s_x_b", "s_o_k", "s_o_b"])
def _conv_fwd_kernel(
    x_ptr, w0, w1, bias0, bias1, out_ptr, L, DIM,
    s_x_b, s_x_d, s_x_l, s_o_k, s_o_b, s_o_d, s_o_l,
    BLOCK_D: tl.constexpr, NDIR: tl.constexpr, REV0: tl.constexpr, HAS_BIAS: tl.constexpr,
    VEC: tl.constexpr, UNROLL: tl.constexpr,
):
    """``out[k] = silu(conv_k(x))``, width 4: direction 0 causal (anti-causal with REV0), 1
    anti-causal.

    One program owns ``BLOCK_D`` channels of a segment of tokens (the grid's segments split
    the sequence into lengths that differ by at most one) and steps through it with the window
    x[t-3 .. t+3] in registers, so each input row is read once and gives both directions'
    outputs; the row two steps ahead is loaded while the current one is computed. Grid
    (channel blocks, segments, batch).

    The batch and direction strides ``s_x_b``, ``s_o_k``, ``s_o_b`` come in units of ``VEC``
    elements (the launcher checks that they divide): multiplied by the constant VEC here, they
    tell the compiler that rows of channels start 16-byte aligned, so they are read and written
    in vectors (a ``tl.multiple_of`` hint on a kernel argument itself has no effect).
    """
    pid_b = tl.program_id(2).to(tl.int64)
    offs_d = tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < DIM
    seg, nseg = tl.program_id(1), tl.num_programs(1)
    s0 = seg * L // nseg
    s1 = (seg + 1) * L // nseg
    wa0, wa1, wa2, wa3 = _conv_taps(w0, offs_d, mask_d)
    wb0, wb1, wb2, wb3 = _conv_taps(w1, offs_d, mask_d)
    ba = tl.zeros((BLOCK_D,), dtype=tl.float32)
    bb = tl.zeros((BLOCK_D,), dtype=tl.float32)
    if HAS_BIAS:
        ba = tl.load(bias0 + offs_d, mask=mask_d, other=0.0).to(tl.float32)
        bb = tl.load(bias1 + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    x_p = x_ptr + pid_b * s_x_b * VEC + offs_d * s_x_d
    o_p = out_ptr + pid_b * s_o_b * VEC + offs_d * s_o_d
    # window x[t-3 .. t+2] at the first step t = s0, and the rows ahead x[t+3], x[t+4]
    xm3 = tl.load(x_p + (s0 - 3) * s_x_l, mask=mask_d & (s0 - 3 >= 0), other=0.0).to(tl.float32)
    xm2 = tl.load(x_p + (s0 - 2) * s_x_l, mask=mask_d & (s0 - 2 >= 0), other=0.0).to(tl.float32)
    xm1 = tl.load(x_p + (s0 - 1) * s_x_l, mask=mask_d & (s0 - 1 >= 0), other=0.0).to(tl.float32)
    x0 = tl.load(x_p + s0 * s_x_l, mask=mask_d & (s0 < L), other=0.0).to(tl.float32)
    xp1 = tl.load(x_p + (s0 + 1) * s_x_l, mask=mask_d & (s0 + 1 < L), other=0.0).to(tl.float32)
    xp2 = tl.load(x_p + (s0 + 2) * s_x_l, mask=mask_d & (s0 + 2 < L), other=0.0).to(tl.float32)
    n1 = tl.load(x_p + (s0 + 3) * s_x_l, mask=mask_d & (s0 + 3 < L), other=0.0)
    n2 = tl.load(x_p + (s0 + 4) * s_x_l, mask=mask_d & (s0 + 4 < L), other=0.0)
    for t in tl.range(s0, s1, loop_unroll_factor=UNROLL):
        xp3 = n1.to(tl.float32)
        n1 = n2
        n2 = tl.load(x_p + (t + 5) * s_x_l, mask=mask_d & (t + 5 < L), other=0.0)
        if REV0:  # direction 0 anti-causal: tap j reads t + 3 - j
            a = ba + wa0 * xp3 + wa1 * xp2 + wa2 * xp1 + wa3 * x0
        else:  # causal: tap j reads t - 3 + j
            a = ba + wa0 * xm3 + wa1 * xm2 + wa2 * xm1 + wa3 * x0
        a = a * tl.sigmoid(a)
        tl.store(o_p + t * s_o_l, a.to(out_ptr.dtype.element_ty), mask=mask_d)
        if NDIR == 2:
            c = bb + wb0 * xp3 + wb1 * xp2 + wb2 * xp1 + wb3 * x0
            c = c * tl.sigmoid(c)
            tl.store(o_p + s_o_k * VEC + t * s_o_l, c.to(out_ptr.dtype.element_ty),
                     mask=mask_d)
        xm3 = xm2
        xm2 = xm1
        xm1 = x0
        x0 = xp1
        xp1 = xp2
        xp2 = xp3


@triton.jit
def _g_row(p, t, s_l, L, mask_d, HAS: tl.constexpr):
    """Row ``t`` of a gradient (zeros outside [0, L), or when the direction is absent)."""
    if HAS:
        r = tl.load(p + t * s_l, mask=mask_d & (t >= 0) & (t < L), other=0.0)
    else:
        r = tl.zeros(mask_d.shape, dtype=p.dtype.element_ty)
    return r


@triton.jit
def _dsilu_pre(x0, x1, x2, x3, w0, w1, w2, w3, bias, g, ok):
    """g * silu'(pre) for pre = bias + sum_j w_j x_j (0 where not ok)."""
    pre = bias + w0 * x0 + w1 * x1 + w2 * x2 + w3 * x3
    sg = tl.sigmoid(pre)
    return tl.where(ok, g * sg * (1.0 + pre * (1.0 - sg)), 0.0)


@triton.jit
def _conv_dir_grads(xa, xb, xc, x0, w0, w1, w2, w3, bias, g_row, ok, own, dw0, dw1, dw2, dw3, db,
                    EDGE: tl.constexpr):
    """One direction of a conv1d backward step: g * silu'(pre) for the window ``xa, xb, xc, x0``
    (pre = bias + w0 xa + w1 xb + w2 xc + w3 x0), and the weight and bias gradient sums with
    it added where the token is owned."""
    p = _dsilu_pre(xa, xb, xc, x0, w0, w1, w2, w3, bias, g_row.to(tl.float32), ok)
    po = p
    if EDGE:
        po = tl.where(own, p, 0.0)
    return p, dw0 + po * xa, dw1 + po * xb, dw2 + po * xc, dw3 + po * x0, db + po


@triton.jit
def _conv_bwd_step(st, wts, t, s0, s1, L, x_p, gf_p, gb_p, dx_p, s_x_l, s_g_l, s_dx_l, mask_d,
                   EDGE: tl.constexpr, HAS_F: tl.constexpr, HAS_B: tl.constexpr):
    """Step ``t`` of :func:`_conv_bwd_kernel` on its state ``st`` (windows, weight-gradient
    sums, rows read ahead). Without ``EDGE`` the caller guarantees s0 + 3 <= t < s1: the token
    is in the sequence and owned, and dx[t-3] is stored, so no token mask is built."""
    (xm3, xm2, xm1, x0, xp1, xp2, pf1, pf2, pf3, pb1, pb2, pb3, pb4, pb5, pb6,
     dwf0, dwf1, dwf2, dwf3, dwb0, dwb1, dwb2, dwb3, dbf, dbb, nx1, nf1, nb1, nx2, nf2, nb2) = st
    wf0, wf1, wf2, wf3, wb0, wb1, wb2, wb3, bf, bb = wts
    if EDGE:
        ok = mask_d & (t >= 0) & (t < L)
        own = ok & (t >= s0) & (t < s1)  # weight gradients: each token counted once
    else:
        ok = mask_d
        own = mask_d
    # this step's rows came two steps ago; load those of step t + 2
    xp3 = nx1.to(tl.float32)
    gfr = nf1
    gbr = nb1
    nx1 = nx2
    nf1 = nf2
    nb1 = nb2
    nx2 = tl.load(x_p + (t + 5) * s_x_l, mask=mask_d & (t + 5 < L), other=0.0)
    nf2 = _g_row(gf_p, t + 2, s_g_l, L, mask_d, HAS_F)
    nb2 = _g_row(gb_p, t + 2, s_g_l, L, mask_d, HAS_B)
    zero = tl.zeros(xp3.shape, dtype=tl.float32)
    pf = zero
    pb = zero
    if HAS_F:
        pf, dwf0, dwf1, dwf2, dwf3, dbf = _conv_dir_grads(
            xm3, xm2, xm1, x0, wf0, wf1, wf2, wf3, bf, gfr, ok, own,
            dwf0, dwf1, dwf2, dwf3, dbf, EDGE)
    if HAS_B:  # pre_b[t] = b + w[3] x[t] + w[2] x[t+1] + w[1] x[t+2] + w[0] x[t+3]
        pb, dwb0, dwb1, dwb2, dwb3, dbb = _conv_dir_grads(
            xp3, xp2, xp1, x0, wb0, wb1, wb2, wb3, bb, gbr, ok, own,
            dwb0, dwb1, dwb2, dwb3, dbb, EDGE)
    dx = zero
    if HAS_F:
        dx += wf3 * pf3 + wf2 * pf2 + wf1 * pf1 + wf0 * pf
    if HAS_B:
        dx += wb0 * pb6 + wb1 * pb5 + wb2 * pb4 + wb3 * pb3
    if EDGE:
        if t - 3 >= s0:
            tl.store(dx_p + (t - 3) * s_dx_l, dx.to(dx_p.dtype.element_ty), mask=mask_d)
    else:
        tl.store(dx_p + (t - 3) * s_dx_l, dx.to(dx_p.dtype.element_ty), mask=mask_d)
    # slide the windows by one token
    return (xm2, xm1, x0, xp1, xp2, xp3, pf, pf1, pf2, pb, pb1, pb2, pb3, pb4, pb5,
            dwf0, dwf1, dwf2, dwf3, dwb0, dwb1, dwb2, dwb3, dbf, dbb, nx1, nf1, nb1, nx2, nf2, nb2)


@triton.jit(do_not_specialize=["L", "s_x_b", "s_g_k", "s_g_b", "s_dx_b"])
def _conv_bwd_kernel(
    x_ptr, w0, w1, bias0, bias1, g_ptr, dx_ptr, dw_ptr, L, DIM, SEG,
    s_x_b, s_x_d, s_x_l, s_g_k, s_g_b, s_g_d, s_g_l, s_dx_b, s_dx_d, s_dx_l,
    BLOCK_D: tl.constexpr, NDIR: tl.constexpr, HAS_F: tl.constexpr, HAS_B: tl.constexpr,
    HAS_BIAS: tl.constexpr, VEC: tl.constexpr, UNROLL: tl.constexpr,
):
    """Width-4 conv backward of both directions: dx (summed), dw and d bias partials.

    With ``p_f = dpre`` of the causal direction and ``p_b`` of the anti-causal one,
    ``dx[s] = sum_j w_f[j] p_f[s+3-j] + sum_j w_b[j] p_b[s-3+j]``. The program walks tokens
    ``t = s0-3 .. s1+2`` of its segment [s0, s1): at step t it computes ``p_f[t]`` and
    ``p_b[t]`` from the window x[t-3 .. t+3] and completes ``dx[t-3]``. The steps
    ``s0+3 .. s1-1`` need no token masks and run in an unrolled loop of their own, the 6 + 3
    at the segment's ends with masks. The rows of x and g that step ``t + 2`` reads are loaded
    at step t. HAS_F / HAS_B say which directions are present; with NDIR = 1 the only one uses
    ``w0``, ``bias0`` and ``g[0]``. Grid (batch, channel blocks, segments); outer strides in
    units of VEC, as in :func:`_conv_fwd_kernel`.
    """
    pid_b = tl.program_id(0).to(tl.int64)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    seg = tl.program_id(2)
    nseg = tl.num_programs(2)
    mask_d = offs_d < DIM
    s0 = seg * SEG
    s1 = tl.minimum(s0 + SEG, L)
    wb = w0
    if NDIR == 2:
        wb = w1
    wf0, wf1, wf2, wf3 = _conv_taps(w0, offs_d, mask_d)
    wb0, wb1, wb2, wb3 = _conv_taps(wb, offs_d, mask_d)
    bf = tl.zeros((BLOCK_D,), dtype=tl.float32)
    bb = tl.zeros((BLOCK_D,), dtype=tl.float32)
    if HAS_BIAS:
        bf = tl.load(bias0 + offs_d, mask=mask_d, other=0.0).to(tl.float32)
        if NDIR == 2:
            bb = tl.load(bias1 + offs_d, mask=mask_d, other=0.0).to(tl.float32)
        else:
            bb = bf
    og, ogk = pid_b * s_g_b * VEC, s_g_k * VEC
    ox, odx = pid_b * s_x_b * VEC, pid_b * s_dx_b * VEC
    gf_p = g_ptr + og + offs_d * s_g_d
    gb_p = gf_p
    if NDIR == 2:
        gb_p = gf_p + ogk
    x_p = x_ptr + ox + offs_d * s_x_d
    zero = tl.zeros((BLOCK_D,), dtype=tl.float32)
    # x window x[t-3 .. t+3] at the first step t = s0 - 3
    xm3 = tl.load(x_p + (s0 - 6) * s_x_l, mask=mask_d & (s0 - 6 >= 0), other=0.0).to(tl.float32)
    xm2 = tl.load(x_p + (s0 - 5) * s_x_l, mask=mask_d & (s0 - 5 >= 0), other=0.0).to(tl.float32)
    xm1 = tl.load(x_p + (s0 - 4) * s_x_l, mask=mask_d & (s0 - 4 >= 0), other=0.0).to(tl.float32)
    x0 = tl.load(x_p + (s0 - 3) * s_x_l, mask=mask_d & (s0 - 3 >= 0), other=0.0).to(tl.float32)
    xp1 = tl.load(x_p + (s0 - 2) * s_x_l, mask=mask_d & (s0 - 2 >= 0), other=0.0).to(tl.float32)
    xp2 = tl.load(x_p + (s0 - 1) * s_x_l, mask=mask_d & (s0 - 1 >= 0), other=0.0).to(tl.float32)
    # p_f[t-3 .. t-1] and p_b[t-6 .. t-1] of the steps before. Their first values are shifted
    # out before any dx is stored; they are distinct on purpose: compiled (not interpreted),
    # window registers that all started from one value lost their history (Triton 3.6).
    pf1 = tl.full((BLOCK_D,), 1.0, tl.float32)
    pf2 = tl.full((BLOCK_D,), 2.0, tl.float32)
    pf3 = tl.full((BLOCK_D,), 3.0, tl.float32)
    pb1 = tl.full((BLOCK_D,), 4.0, tl.float32)
    pb2 = tl.full((BLOCK_D,), 5.0, tl.float32)
    pb3 = tl.full((BLOCK_D,), 6.0, tl.float32)
    pb4 = tl.full((BLOCK_D,), 7.0, tl.float32)
    pb5 = tl.full((BLOCK_D,), 8.0, tl.float32)
    pb6 = tl.full((BLOCK_D,), 9.0, tl.float32)
    dwf0 = zero
    dwf1 = zero
    dwf2 = zero
    dwf3 = zero
    dwb0 = zero
    dwb1 = zero
    dwb2 = zero
    dwb3 = zero
    dbf = zero
    dbb = zero
    # rows read ahead: x[t+3], x[t+4] and g[t], g[t+1] of the first step t
    t0 = s0 - 3
    nx1 = tl.load(x_p + (t0 + 3) * s_x_l, mask=mask_d & (t0 + 3 < L), other=0.0)
    nf1 = _g_row(gf_p, t0, s_g_l, L, mask_d, HAS_F)
    nb1 = _g_row(gb_p, t0, s_g_l, L, mask_d, HAS_B)
    nx2 = tl.load(x_p + (t0 + 4) * s_x_l, mask=mask_d & (t0 + 4 < L), other=0.0)
    nf2 = _g_row(gf_p, t0 + 1, s_g_l, L, mask_d, HAS_F)
    nb2 = _g_row(gb_p, t0 + 1, s_g_l, L, mask_d, HAS_B)
    st = (xm3, xm2, xm1, x0, xp1, xp2, pf1, pf2, pf3, pb1, pb2, pb3, pb4, pb5, pb6,
          dwf0, dwf1, dwf2, dwf3, dwb0, dwb1, dwb2, dwb3, dbf, dbb, nx1, nf1, nb1, nx2, nf2, nb2)
    wts = (wf0, wf1, wf2, wf3, wb0, wb1, wb2, wb3, bf, bb)
    dx_p = dx_ptr + odx + offs_d * s_dx_d
    a = tl.minimum(s0 + 3, s1)
    for t in tl.range(s0 - 3, a):
        st = _conv_bwd_step(st, wts, t, s0, s1, L, x_p, gf_p, gb_p, dx_p, s_x_l, s_g_l, s_dx_l,
                            mask_d, True, HAS_F, HAS_B)
    for t in tl.range(a, s1, loop_unroll_factor=UNROLL):
        st = _conv_bwd_step(st, wts, t, s0, s1, L, x_p, gf_p, gb_p, dx_p, s_x_l, s_g_l, s_dx_l,
                            mask_d, False, HAS_F, HAS_B)
    for t in tl.range(s1, s1 + 3):
        st = _conv_bwd_step(st, wts, t, s0, s1, L, x_p, gf_p, gb_p, dx_p, s_x_l, s_g_l, s_dx_l,
                            mask_d, True, HAS_F, HAS_B)
    (_, _, _, _, _, _, _, _, _, _, _, _, _, _, _,
     dwf0, dwf1, dwf2, dwf3, dwb0, dwb1, dwb2, dwb3, dbf, dbb, _, _, _, _, _, _) = st
    part = (pid_b * nseg + seg) * (2 * DIM * 4 + 2 * DIM)
    dw_p = dw_ptr + part + offs_d * 4
    tl.store(dw_p, dwf0, mask=mask_d)
    tl.store(dw_p + 1, dwf1, mask=mask_d)
    tl.store(dw_p + 2, dwf2, mask=mask_d)
    tl.store(dw_p + 3, dwf3, mask=mask_d)
    tl.store(dw_p + DIM * 4, dwb0, mask=mask_d)
    tl.store(dw_p + DIM * 4 + 1, dwb1, mask=mask_d)
    tl.store(dw_p + DIM * 4 + 2, dwb2, mask=mask_d)
    tl.store(dw_p + DIM * 4 + 3, dwb3, mask=mask_d)
    tl.store(dw_p - offs_d * 4 + 2 * DIM * 4 + offs_d, dbf, mask=mask_d)
    tl.store(dw_p - offs_d * 4 + 2 * DIM * 4 + DIM + offs_d, dbb, mask=mask_d)


def _vec(outer: tuple[int, ...], inner: tuple[int, ...]) -> int:
    """8 when the channels are contiguous (``inner`` strides 1) and every ``outer`` stride is a
    multiple of 8 elements, else 1 (no alignment claimed)."""
    ok = all(s == 1 for s in inner) and all(s % 8 == 0 for s in outer)
    return 8 if ok else 1


def _units(strides: tuple[int, ...], vec: int) -> tuple[int, ...]:
    """``strides`` in units of ``vec`` elements (the kernels multiply them back by VEC)."""
    return tuple(s // vec for s in strides)


def _check_width(w: Tensor) -> None:
    if w.shape[-1] != 4:
        raise ConfigError(f"the Triton conv1d kernels are written for width 4 (d_conv=4), not "
                          f"{w.shape[-1]}; use scan_backend='reference' for other widths")


def conv_fwd(x: Tensor, w: tuple[Tensor, Tensor], bias: tuple[Tensor, Tensor] | None,
             out: Tensor, reverse: bool = False, cfg: KernelConfig | None = None) -> Tensor:
    """``out[k] = silu(conv_k(x))`` for ``x: (b, d, l)``, ``out: (k, b, d, l)``, ``w[k]: (d, 4)``.

    Direction 0 is causal (anti-causal if ``reverse``), direction 1 anti-causal.
    """
    cfg = cfg or CONFIG
    _check_width(w[0])
    ndir, b, d, length = out.shape
    b0, b1 = bias if bias is not None else (w[0], w[0])
    vec = _vec((x.stride(0), out.stride(0), out.stride(1)), (x.stride(1), out.stride(2)))
    s_xb, s_ok, s_ob = _units((x.stride(0), out.stride(0), out.stride(1)), vec)
    grid = (triton.cdiv(d, cfg.conv_fwd_block_d), triton.cdiv(length, cfg.conv_fwd_segment), b)
    _conv_fwd_kernel[grid](
        x, w[0], w[1], b0, b1, out, length, d, s_xb, x.stride(1), x.stride(2),
        s_ok, s_ob, out.stride(2), out.stride(3),
        BLOCK_D=cfg.conv_fwd_block_d, NDIR=ndir, REV0=bool(reverse), HAS_BIAS=bias is not None,
        VEC=vec, UNROLL=CONV_FWD_UNROLL, num_warps=CONV_FWD_WARPS,
    )
    return out


def conv_bwd(x: Tensor, w: tuple[Tensor, Tensor], bias: tuple[Tensor, Tensor] | None,
             g: Tensor, dx: Tensor, reverse: bool = False,
             cfg: KernelConfig | None = None) -> tuple[Tensor, Tensor]:
    """Gradients of :func:`conv_fwd` for ``g: (k, b, d, l)``.

    Writes ``dx`` (b, d, l), the sum over the directions, and returns ``(dw, dbias)`` fp32,
    each ``(k, d, 4)`` / ``(k, d)``.
    """
    cfg = cfg or CONFIG
    _check_width(w[0])
    ndir, b, d, length = g.shape
    seg = cfg.conv_bwd_segment
    nd, nseg = triton.cdiv(d, cfg.conv_bwd_block_d), triton.cdiv(length, seg)
    part = torch.empty(b * nseg, 2 * d * 5, device=g.device, dtype=torch.float32)
    b0, b1 = bias if bias is not None else (w[0], w[0])
    vec = _vec((x.stride(0), g.stride(0), g.stride(1), dx.stride(0)),
               (x.stride(1), g.stride(2), dx.stride(1)))
    s_xb, s_gk, s_gb, s_dxb = _units((x.stride(0), g.stride(0), g.stride(1), dx.stride(0)), vec)
    _conv_bwd_kernel[(b, nd, nseg)](
        x, w[0], w[1], b0, b1, g, dx, part, length, d, seg,
        s_xb, x.stride(1), x.stride(2), s_gk, s_gb, g.stride(2), g.stride(3),
        s_dxb, dx.stride(1), dx.stride(2),
        BLOCK_D=cfg.conv_bwd_block_d, NDIR=ndir, HAS_F=ndir == 2 or not reverse,
        HAS_B=ndir == 2 or bool(reverse), HAS_BIAS=bias is not None, VEC=vec,
        UNROLL=CONV_BWD_UNROLL, num_warps=CONV_BWD_WARPS,
    )
    tot = part.sum(0)
    dw = tot[: 2 * d * 4].view(2, d, 4)
    db = tot[2 * d * 4:].view(2, d)
    if ndir == 1:  # the kernel files a lone direction as causal (0) or anti-causal (1)
        k = 1 if reverse else 0
        return dw[k:k + 1], db[k:k + 1]
    return dw, db


class _CausalConv1d(torch.autograd.Function):
    """One direction of :func:`causal_conv1d_triton` with autograd."""

    @staticmethod
    def forward(ctx, x, w, bias, reverse):
        out = _empty_like_layout(x, x.dtype)
        conv_fwd(x, (w, w), None if bias is None else (bias, bias), out[None], reverse)
        ctx.save_for_backward(x, w, bias)
        ctx.reverse = reverse
        return out

    @staticmethod
    def backward(ctx, g):
        x, w, bias = ctx.saved_tensors
        dx = _empty_like_layout(x, x.dtype)
        dw, db = conv_bwd(x, (w, w), None if bias is None else (bias, bias), g[None], dx,
                          ctx.reverse)
        return dx, dw[0].to(w.dtype), None if bias is None else db[0].to(bias.dtype), None


def causal_conv1d_triton(
    x: Tensor, weight: Tensor, bias: Tensor | None, reverse: bool = False
) -> Tensor:
    """Depthwise causal (anti-causal with ``reverse``) conv1d + silu, as ``causal_conv1d_ref``."""
    w = weight.reshape(weight.shape[0], weight.shape[-1]).contiguous()
    if x.shape[-1] == 0:
        return torch.empty_like(x)
    return _CausalConv1d.apply(x, w, bias, reverse)
