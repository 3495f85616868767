"""PyTorch definitions of the merge kernels in :mod:`vimstm.ops.triton_merge` (any device).

These are the reference the Triton kernels are tested against, and the path merging takes
wherever the model does not run Triton (the CPU, autograd).
"""

from __future__ import annotations

import torch
from torch import Tensor


def adjacent_dissimilarity_of(f: Tensor) -> Tensor:
    """``1 - cos(f_t, f_t+1)`` of every scan-adjacent pair of tokens: (batch, tokens - 1) fp32.

    ``f`` is (batch, tokens, features) in any float dtype; norms and dots are taken in fp32.
    """
    norm = torch.linalg.vector_norm(f, dim=-1, dtype=torch.float32).clamp_min(1e-6)
    dot = (f[:, :-1] * f[:, 1:]).sum(-1, dtype=torch.float32)
    return (1.0 - dot / (norm[:, :-1] * norm[:, 1:])).clamp_min(0.0)


def delta_from_inputs(dt_low: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """Per-channel Δ of both directions, (batch, tokens, 2 * d_inner) fp32, forward first.

    ``dt_low`` (2, batch, tokens, rank) is the low-rank part of each direction's ``x_proj``
    output, ``weight`` (2, d_inner, rank) and ``bias`` (2, d_inner) the ``dt_proj`` layers:
    ``Δ = softplus(dt_low @ weight^T + bias)``, in fp32.
    """
    z = torch.einsum("kblr,kdr->kbld", dt_low.float(), weight.float()) + bias.float()[:, None, None]
    return torch.cat(tuple(torch.nn.functional.softplus(z)), -1)


def delta_dissimilarity_ref(dt_low: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """:func:`adjacent_dissimilarity_of` the per-channel Δ of :func:`delta_from_inputs`."""
    return adjacent_dissimilarity_of(delta_from_inputs(dt_low, weight, bias))


def adjacent_dissimilarity_ref(hidden: Tensor, residual: Tensor | None) -> Tensor:
    """:func:`adjacent_dissimilarity_of` the block input ``residual + hidden`` (fp32)."""
    return adjacent_dissimilarity_of(hidden.float() if residual is None
                                     else residual + hidden.float())


def edge_alpha_ref(B_fwd: Tensor, B_bwd: Tensor, stats: Tensor, size: Tensor) -> Tensor:
    """STM's least-squares weight of the left token of every adjacent pair: (batch, tokens - 1).

    ``B_*`` (b, t, n); ``stats`` (b, 4, t) = (Δ fwd, Δ bwd, log-decay fwd, log-decay bwd) as
    :class:`~vimstm.models.vim.SSMStats` holds them; ``size`` (b, t). With the pair's mean
    ``B̄ = (B_e + B_e+1)/2``, ``<B_s, B̄> ∝ |B_s|² + B_e·B_e+1`` (the common 1/2 cancels); a token's
    weight is ``size_s Σ_dir g_s Δ_s max(<B_s, B̄>, 0)`` (derivation: :mod:`vimstm.merge.stm`).
    """
    bm = torch.stack((B_fwd, B_bwd), 1)  # (b, 2 dirs, t, N)
    sq = bm.square().sum(-1)  # (b, 2, t)
    cross = (bm[:, :, :-1] * bm[:, :, 1:]).sum(-1)  # (b, 2, t-1)
    delta, log_decay = stats[:, :2], stats[:, 2:]
    # (b, 2 dirs, t-1, 2 [left, right token]): Δ_s max(<B_s, B̄>, 0)
    w = delta.unfold(-1, 2, 1) * (sq.unfold(-1, 2, 1) + cross.unsqueeze(-1)).clamp_min(0)
    # the scan's earlier token decays by one step of the later one: forward, the left token by
    # exp(log_decay_fwd[e+1]); backward, the right token by exp(log_decay_bwd[e])
    decay = log_decay.exp()
    w[:, 0, :, 0].mul_(decay[:, 0, 1:])
    w[:, 1, :, 1].mul_(decay[:, 1, :-1])
    w = w.sum(1) * size.unfold(1, 2, 1) + 1e-12  # (b, t-1, 2)
    return w[..., 0] / w.sum(-1)


def apply_pairs(x: Tensor, first: Tensor, last: Tensor, w_last: Tensor) -> Tensor:
    """``x[first] + w_last * (x[last] - x[first])`` per slot (a lone token: an exact copy).

    ``first``/``last`` are flat row indices into (batch * tokens), one per new slot. For token
    sizes and traced sources pass ``w_last`` = the is-pair mask (bool): the pair is then summed,
    a lone token counted once. ``x`` is (batch, tokens) or (batch, tokens, channels); the output
    is contiguous.
    """
    b = x.shape[0]
    n = first.shape[0] // b
    rows = x.reshape(b * x.shape[1], -1)
    a = rows.index_select(0, first)
    z = rows.index_select(0, last)
    if w_last.dtype == torch.bool:
        out = torch.where(w_last, a + z, a)
    else:
        out = torch.lerp(a, z, w_last.to(x.dtype))
    return out.view(b, n, *x.shape[2:])
