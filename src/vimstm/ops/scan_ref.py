"""Exact PyTorch reference for the Mamba selective scan and the depthwise causal conv1d.

Layouts follow mamba_ssm: ``u, delta, z: (batch, dim, length)``, ``A: (dim, state)``,
``B, C: (batch, state, length)``, ``D, delta_bias: (dim,)``. Arithmetic is in float32 and the
output takes the dtype of ``u``. ``reverse=True`` scans from the last token to the first, which
equals ``flip(scan(flip(inputs)))`` without materialising any flipped copy of the inputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def selective_scan_ref(
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
) -> Tensor:
    """``y_t = C_t h_t + D u_t``, ``h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t u_t``, gated by silu(z)."""
    dtype_in = u.dtype
    acc = torch.promote_types(dtype_in, torch.float32)  # fp32 math (fp64 stays fp64)
    u32 = u.to(acc)
    dt = delta.to(acc)
    if delta_bias is not None:
        dt = dt + delta_bias.to(acc)[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    A32 = A.to(acc)
    # Time-major (length, batch, dim, state) so that every step reads one contiguous slice.
    dt_t = dt.permute(2, 0, 1)
    dA = torch.exp(dt_t[..., None] * A32)
    dBu = (dt_t * u32.permute(2, 0, 1))[..., None] * B.to(acc).permute(2, 0, 1)[:, :, None, :]
    length = u.shape[-1]
    h = u32.new_zeros(dA.shape[1:])
    states: list[Tensor] = [h] * length
    steps = range(length - 1, -1, -1) if reverse else range(length)
    dA_t, dBu_t = dA.unbind(0), dBu.unbind(0)  # one autograd node, not one per step (O(L) bwd)
    for t in steps:
        h = torch.addcmul(dBu_t[t], dA_t[t], h)
        states[t] = h
    hs = torch.stack(states, dim=0) if length else dA
    y = torch.einsum("lbdn,bnl->bdl", hs, C.to(acc))
    if D is not None:
        y = y + u32 * D.to(acc)[:, None]
    if z is not None:
        y = y * F.silu(z.to(acc))
    return y.to(dtype_in)


def causal_conv1d_ref(
    x: Tensor, weight: Tensor, bias: Tensor | None, reverse: bool = False, silu: bool = True
) -> Tensor:
    """Depthwise conv over the token axis, causal (or anti-causal with ``reverse``), then silu.

    ``x: (batch, dim, length)``; ``weight: (dim, 1, width)`` as nn.Conv1d stores it, or
    ``(dim, width)``.
    ``reverse=True`` equals ``flip(conv(flip(x)))``: token t sees tokens t .. t+width-1.
    """
    w = weight if weight.dim() == 3 else weight[:, None, :]
    width = w.shape[-1]
    if reverse:
        y = F.conv1d(F.pad(x, (0, width - 1)), w.flip(-1), bias, groups=x.shape[1])
    else:
        y = F.conv1d(F.pad(x, (width - 1, 0)), w, bias, groups=x.shape[1])
    return F.silu(y) if silu else y


def scan_token_stats(delta: Tensor, A: Tensor, delta_bias: Tensor | None,
                     softplus: bool = True) -> Tensor:
    """(b, 2, l) fp32: per token, the channel means of Δ and of Δ·mean_n(A) (PyTorch)."""
    dt = delta.float()
    if delta_bias is not None:
        dt = dt + delta_bias.float()[:, None]
    if softplus:
        dt = F.softplus(dt)
    w = torch.stack((torch.ones(A.shape[0], device=A.device), A.float().mean(-1))) / A.shape[0]
    return torch.matmul(w, dt)
