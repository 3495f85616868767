"""Fused residual add + RMSNorm in Triton (inference path of :class:`vimstm.models.vim.Block`).

``residual = residual + x`` (in fp32, or ``x`` alone when ``residual`` is None) and
``out = rmsnorm(residual) * weight`` cast to ``out_dtype``, in one pass over the rows.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor


@triton.jit
def _add_rmsnorm_kernel(
    x_ptr, res_ptr, w_ptr, out_ptr, res_out_ptr, ROWS, DIM, eps,
    HAS_RES: tl.constexpr, BLOCK: tl.constexpr, ROWS_PER: tl.constexpr,
):
    rows = tl.program_id(0) * ROWS_PER + tl.arange(0, ROWS_PER)
    cols = tl.arange(0, BLOCK)
    mask = (rows < ROWS)[:, None] & (cols < DIM)[None, :]
    offs = rows.to(tl.int64)[:, None] * DIM + cols[None, :]
    r = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_RES:
        r += tl.load(res_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(res_out_ptr + offs, r, mask=mask)
    ms = tl.sum(r * r, axis=1) / DIM
    w = tl.load(w_ptr + cols, mask=cols < DIM, other=0.0).to(tl.float32)
    y = r * tl.rsqrt(ms + eps)[:, None] * w[None, :]
    tl.store(out_ptr + offs, y.to(out_ptr.dtype.element_ty), mask=mask)


def add_rmsnorm_triton(
    x: Tensor, residual: Tensor | None, weight: Tensor, eps: float, out_dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """(normed, new fp32 residual) for ``x: (..., dim)``; no autograd (inference only)."""
    dim = x.shape[-1]
    x2 = x.reshape(-1, dim).contiguous()
    r2 = residual.reshape(-1, dim).contiguous() if residual is not None else x2
    rows = x2.shape[0]
    out = torch.empty(x.shape, device=x.device, dtype=out_dtype)
    res_out = torch.empty(x.shape, device=x.device, dtype=torch.float32)
    block = triton.next_power_of_2(dim)
    rows_per = max(1, min(16, 4096 // block))
    _add_rmsnorm_kernel[(triton.cdiv(rows, rows_per),)](
        x2, r2, weight, out, res_out, rows, dim, float(eps),
        HAS_RES=residual is not None, BLOCK=block, ROWS_PER=rows_per, num_warps=4,
    )
    return out, res_out
