"""Exact PyTorch reference for the Mamba selective scan and the depthwise causal conv1d.

Layouts follow mamba_ssm: ``u, delta, z: (batch, dim, length)``, ``A: (dim, state)``,
``B, C: (batch, state, length)``, ``D, delta_bias: (dim,)``. Arithmetic is in float32 and the
output takes the dtype of ``u``. ``reverse=True`` scans from the last token to the first, which
equals ``flip(scan(flip(inputs)))`` without flipped copies.

The scan walks the tokens in cache-sized chunks: per chunk, the decays ``exp(Δ A)`` and inputs
``Δ B u`` of all its tokens are computed in one vectorised pass each, the state update is one
in-place multiply-add per token on a contiguous (batch, dim, state) slice, and the outputs
``C h`` are one batched product. Nothing of size (length, batch, dim, state) is materialised.
Without autograd it updates in place; with autograd it keeps every state for the backward pass.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

_LOG2E = 1.4426950408889634
_CHUNK_ELEMENTS = 1 << 18  # decay and state elements per chunk: ~1 MB each, cache-sized


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
    y = _chunked_scan(dt, dt * u32, A.to(acc), B.to(acc), C.to(acc), reverse)
    if D is not None:
        y = y + u32 * D.to(acc)[:, None]
    if z is not None:
        y = y * F.silu(z.to(acc))
    return y.to(dtype_in)


def _chunked_scan(dt: Tensor, dtu: Tensor, A: Tensor, B: Tensor, C: Tensor,
                  reverse: bool) -> Tensor:
    """``sum_n C_t h_t``; dt, dtu (b, d, l), A (d, n), B, C (b, n, l); chunks and the tokens in
    them walked backwards for ``reverse``."""
    b, d, length = dt.shape
    n = A.shape[1]
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (dt, dtu, A, B, C))
    # time-major: every step reads and writes one contiguous (b, d, n) slice
    dt, dtu = dt.permute(2, 0, 1).contiguous(), dtu.permute(2, 0, 1).contiguous()
    B, C = B.permute(2, 0, 1).contiguous(), C.permute(2, 0, 1).contiguous()
    a2 = A * _LOG2E  # exp(Δ A) as exp2(Δ A log2 e): ~3x faster on a CPU
    k = max(1, _CHUNK_ELEMENTS // max(1, b * d * n))  # tokens per chunk
    h = dt.new_zeros(b, d, n)
    ys = []

    def order(m: int) -> range:
        return range(m - 1, -1, -1) if reverse else range(m)

    starts = range(0, length, k)
    for t0 in reversed(starts) if reverse else starts:
        decay = torch.exp2(dt[t0:t0 + k, :, :, None] * a2)  # (k, b, d, n)
        states = dtu[t0:t0 + k, :, :, None] * B[t0:t0 + k, :, None, :]
        if grad:
            hs: list[Tensor] = [h] * states.shape[0]
            for j in order(states.shape[0]):
                h = hs[j] = torch.addcmul(states[j], decay[j], h)
            states = torch.stack(hs)
        else:
            for j in order(states.shape[0]):
                h = states[j].addcmul_(decay[j], h)
        # C_t h_t as (1, n) @ (n, d): a CPU runs this form ~4x faster than (d, n) @ (n, 1)
        ys.append(torch.matmul(C[t0:t0 + k, :, None, :], states.transpose(-1, -2))[..., 0, :])
    if reverse:
        ys.reverse()
    y = torch.cat(ys) if ys else dt.new_zeros(0, b, d)
    return y.permute(1, 2, 0)


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
