"""Fused residual add + RMSNorm in Triton, forward and backward.

Forward: ``residual = residual + x`` (in fp32, or ``x`` alone when there is no residual yet)
and ``out = residual * rstd * weight`` with ``rstd = 1 / sqrt(mean(residual²) + eps)``, cast to
the output dtype, in one pass over the rows; ``rstd`` (one fp32 per row) is kept for the
backward. Backward: from the gradients of ``out`` and of the new residual, the gradient of the
residual sum (returned for both ``x`` and the old residual) and per-program partial sums of the
weight gradient, in one pass.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor


@triton.jit
def _add_rmsnorm_fwd_kernel(
    x_ptr, res_ptr, w_ptr, out_ptr, res_out_ptr, rstd_ptr, ROWS, DIM, eps,
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
    rstd = tl.rsqrt(tl.sum(r * r, axis=1) / DIM + eps)
    tl.store(rstd_ptr + rows, rstd, mask=rows < ROWS)
    w = tl.load(w_ptr + cols, mask=cols < DIM, other=0.0).to(tl.float32)
    y = r * rstd[:, None] * w[None, :]
    tl.store(out_ptr + offs, y.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rmsnorm_bwd_kernel(
    res_ptr, rstd_ptr, w_ptr, dy_ptr, dres_ptr, dx_ptr, dw_ptr, ROWS, DIM,
    HAS_DRES: tl.constexpr, BLOCK: tl.constexpr, ROWS_PER: tl.constexpr,
):
    """dr = dres + rstd * (g - xhat * mean(g * xhat)), g = dy * w, xhat = r * rstd."""
    pid = tl.program_id(0)
    rows = pid * ROWS_PER + tl.arange(0, ROWS_PER)
    cols = tl.arange(0, BLOCK)
    mrow = rows < ROWS
    mask = mrow[:, None] & (cols < DIM)[None, :]
    offs = rows.to(tl.int64)[:, None] * DIM + cols[None, :]
    r = tl.load(res_ptr + offs, mask=mask, other=0.0)
    rstd = tl.load(rstd_ptr + rows, mask=mrow, other=0.0)
    w = tl.load(w_ptr + cols, mask=cols < DIM, other=0.0).to(tl.float32)
    dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    xhat = r * rstd[:, None]
    g = dy * w[None, :]
    dr = rstd[:, None] * (g - xhat * (tl.sum(g * xhat, axis=1) / DIM)[:, None])
    if HAS_DRES:
        dr += tl.load(dres_ptr + offs, mask=mask, other=0.0)
    tl.store(dx_ptr + offs, dr, mask=mask)
    tl.store(dw_ptr + pid * DIM + cols, tl.sum(dy * xhat, axis=0), mask=cols < DIM)


def _tiles(dim: int) -> tuple[int, int]:
    block = triton.next_power_of_2(dim)
    return block, max(1, min(16, 4096 // block))


def add_rmsnorm_fwd(x: Tensor, residual: Tensor | None, weight: Tensor, eps: float,
                    out_dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """(normed, new fp32 residual, rstd per row) for ``x: (..., dim)``."""
    dim = x.shape[-1]
    x2 = x.reshape(-1, dim).contiguous()
    r2 = residual.reshape(-1, dim).contiguous() if residual is not None else x2
    rows = x2.shape[0]
    out = torch.empty(x.shape, device=x.device, dtype=out_dtype)
    res_out = torch.empty(x.shape, device=x.device, dtype=torch.float32)
    rstd = torch.empty(x.shape[:-1], device=x.device, dtype=torch.float32)
    block, rows_per = _tiles(dim)
    _add_rmsnorm_fwd_kernel[(triton.cdiv(rows, rows_per),)](
        x2, r2, weight, out, res_out, rstd, rows, dim, float(eps),
        HAS_RES=residual is not None, BLOCK=block, ROWS_PER=rows_per, num_warps=4,
    )
    return out, res_out, rstd


def rmsnorm_bwd(res: Tensor, rstd: Tensor, weight: Tensor, dy: Tensor,
                dres: Tensor | None) -> tuple[Tensor, Tensor]:
    """(gradient of the residual sum, fp32; gradient of the weight, fp32)."""
    dim = res.shape[-1]
    rows = res.numel() // dim
    block, rows_per = _tiles(dim)
    grid = triton.cdiv(rows, rows_per)
    dx = torch.empty(res.shape, device=res.device, dtype=torch.float32)
    dw = torch.empty(grid, dim, device=res.device, dtype=torch.float32)
    _rmsnorm_bwd_kernel[(grid,)](
        res, rstd, weight, dy.contiguous(), dres.contiguous() if dres is not None else res, dx,
        dw, rows, dim, HAS_DRES=dres is not None, BLOCK=block, ROWS_PER=rows_per, num_warps=4,
    )
    return dx, dw.sum(0)
