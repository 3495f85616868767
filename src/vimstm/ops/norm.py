"""Residual add + RMSNorm of a ViM block (mamba_ssm's fused ``add_norm``, residual in fp32).

Both implementations return ``(rmsnorm(residual + x) * weight`` in ``x``'s dtype,
``residual + x`` in fp32``); with ``residual=None`` the residual starts as ``x``.
:func:`add_rmsnorm_triton` is the custom op ``vimstm::add_rmsnorm`` (Triton kernels of
:mod:`vimstm.ops.triton_norm`, a registered backward and a fake implementation for
``torch.compile``); :func:`add_rmsnorm_ref` is the PyTorch definition.
:func:`vimstm.ops.dispatch.add_rmsnorm` chooses.
"""

from __future__ import annotations

import torch
from torch import Tensor


def add_rmsnorm_triton(x: Tensor, residual: Tensor | None, weight: Tensor,
                       eps: float) -> tuple[Tensor, Tensor]:
    """The custom op ``vimstm::add_rmsnorm`` (Triton kernels, with a backward)."""
    out, res, _ = torch.ops.vimstm.add_rmsnorm(x, residual, weight, float(eps))
    return out, res


def add_rmsnorm_ref(x: Tensor, residual: Tensor | None, weight: Tensor,
                    eps: float) -> tuple[Tensor, Tensor]:
    """The PyTorch definition (any device, autograd by PyTorch)."""
    res = x.float() if residual is None else residual + x.float()
    y = res * torch.rsqrt(res.pow(2).mean(-1, keepdim=True) + eps) * weight.float()
    return y.to(x.dtype), res


@torch.library.custom_op("vimstm::add_rmsnorm", mutates_args=())
def _add_rmsnorm_op(x: Tensor, residual: Tensor | None, weight: Tensor,
                    eps: float) -> tuple[Tensor, Tensor, Tensor]:
    from vimstm.ops.triton_norm import add_rmsnorm_fwd

    return add_rmsnorm_fwd(x, residual, weight, eps, x.dtype)


@_add_rmsnorm_op.register_fake
def _(x, residual, weight, eps):
    return (torch.empty_like(x, memory_format=torch.contiguous_format),
            x.new_empty(x.shape, dtype=torch.float32), x.new_empty(x.shape[:-1],
                                                                   dtype=torch.float32))


@torch.library.custom_op("vimstm::add_rmsnorm_backward", mutates_args=())
def _add_rmsnorm_backward_op(dy: Tensor, dres: Tensor | None, res: Tensor, rstd: Tensor,
                             weight: Tensor) -> tuple[Tensor, Tensor]:
    from vimstm.ops.triton_norm import rmsnorm_bwd

    dr, dw = rmsnorm_bwd(res, rstd, weight, dy, dres)
    return dr, dw.to(weight.dtype)


@_add_rmsnorm_backward_op.register_fake
def _(dy, dres, res, rstd, weight):
    return torch.empty_like(res), torch.empty_like(weight)


def _setup_context(ctx, inputs, output) -> None:
    x, residual, weight, _ = inputs
    _, res, rstd = output
    ctx.save_for_backward(res, rstd, weight)
    ctx.x_dtype = x.dtype
    ctx.has_residual = residual is not None


def _backward(ctx, dy, dres, _drstd):
    res, rstd, weight = ctx.saved_tensors
    dr, dw = torch.ops.vimstm.add_rmsnorm_backward(dy, dres, res, rstd, weight)
    dx = dr.to(ctx.x_dtype, copy=ctx.has_residual)  # no gradient aliases another
    return dx, (dr if ctx.has_residual else None), dw, None


torch.library.register_autograd("vimstm::add_rmsnorm", _backward, setup_context=_setup_context)
