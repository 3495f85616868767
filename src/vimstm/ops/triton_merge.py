"""Fused kernels for token merging (inference path of :mod:`vimstm.merge`).

:func:`adjacent_dissimilarity_triton`: ``1 - cos`` between scan-adjacent tokens of the block
input ``residual + hidden`` in one pass over both tensors, with no fp32 copy of the sum and no
(batch, tokens, channels) temporaries; :func:`vimstm.ops.scan_ref.adjacent_dissimilarity_ref`
is the PyTorch definition it is tested against.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor


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
    n0 = tl.maximum(tl.sqrt(nn0), 1e-6)
    n1 = tl.maximum(tl.sqrt(nn1), 1e-6)
    dis = tl.maximum(1.0 - dot / (n0 * n1), 0.0)
    tl.store(out_ptr + pid_b * (T - 1) + rows, dis, mask=m1)


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
