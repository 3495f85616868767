"""The core of the bidirectional Mamba mixer (hustvl/Vim's bimamba v2) as one op.

Given ``xz``, the in_proj output ``(b, l, 2 d)`` split into ``x`` and the gate ``z``, and the
parameters of the two directions (forward order ``f``, reverse order ``b``)::

    x_k     = silu(conv1d_k(x))                 (causal for f, anti-causal for b)
    x_dbl_k = x_k @ x_proj_k.T = (0, dt_k, B_k, C_k)
    delta_k = dt_k @ dt_proj_k.T                (its bias is added inside the scan)
    y       = scale * sum_k scan_k(x_k, delta_k, -exp(A_log_k), B_k, C_k, D_k, z)

where ``scan_k`` is the selective scan with softplus(Δ + bias), the D skip and the silu(z)
gate, run in reverse token order for ``b`` (the official flip / scan / flip). ``y`` feeds
``out_proj``.

Three implementations with one contract, chosen by :func:`vimstm.ops.dispatch.bimamba`:

* :func:`bimamba_triton`: the custom op ``vimstm::bimamba`` on the kernels of
  :mod:`vimstm.ops.triton_scan` (both directions per launch), with a registered autograd
  formula, ``vimstm::bimamba_backward``, and fake (meta) implementations, so that
  ``torch.compile(fullgraph=True)`` traces through it. Its forward saves ``xz`` and ``x_dbl``
  for the backward, as the official ``mamba_inner_fn_no_out_proj`` (the conv output and Δ are
  recomputed there), the scan state every ``KernelConfig.save_every`` tokens (replayed in
  between) and the pre-gate sum of both directions, from which the backward writes dz.
* :func:`bimamba_reference`, PyTorch on any device (the CPU path): both directions side by
  side, token-major, the reverse one in flipped token order so that one chunked scan
  (:func:`vimstm.ops.scan_ref.scan_chunked`) runs both forward; differentiated by PyTorch.
* :func:`bimamba_composed`, for ``mamba_ssm``: the same maths composed of the
  single-direction ops of :mod:`vimstm.ops.dispatch`.

Besides ``y`` each returns ``x_dbl`` (2, b, l, R + 2 n), which holds B of each direction,
and, on request, the per-token channel means of Δ and of Δ·mean_n(A) (b, 2, 2, l) fp32:
what token merging reads. Neither carries a gradient.

**x_dbl's layout.** Its columns are ``[zeros | dt (dt_rank) | B (n) | C (n)]``, Δ's part
``R = padded_rank(dt_rank)`` wide (a multiple of 8): x_proj's weight gets zero rows before dt's
and dt_proj's weight zero columns before its own (:func:`padded_x_proj`, :func:`padded_dt_proj`,
one ``F.pad`` each per call; the parameters keep hustvl/Vim's shapes and their gradients drop
the padding), so dt_proj reads ``x_dbl[..., :R]``, B and C start at R and dt itself is
``x_dbl[..., R - dt_rank:R]``. The zero weights
add exact zeros, so the maths is unchanged; what changes is that every operand, slice and
output of the x_proj and dt_proj products starts and strides on 16 bytes in bf16 (vim_tiny:
dt_rank 12, rows of 44 elements otherwise), which cuBLAS's Hopper kernels need (with 4-byte
alignment it falls back to Ampere-generation ``align2`` kernels).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class MixerParams:
    """The parameters of both directions, named as hustvl/Vim's ``Mamba`` module holds them.

    ``conv_w`` is ``(d, 1, width)`` as nn.Conv1d stores it; every field is a pair
    (forward order, reverse order).
    """

    conv_w: tuple[Tensor, Tensor]
    conv_b: tuple[Tensor, Tensor]
    x_proj_w: tuple[Tensor, Tensor]
    dt_proj_w: tuple[Tensor, Tensor]
    dt_proj_b: tuple[Tensor, Tensor]
    A_log: tuple[Tensor, Tensor]
    D: tuple[Tensor, Tensor]

    def flat(self) -> list[Tensor]:
        """The 14 tensors in the order the custom op takes them."""
        return [self.conv_w[0], self.conv_b[0], self.conv_w[1], self.conv_b[1],
                self.x_proj_w[0], self.x_proj_w[1], self.dt_proj_w[0], self.dt_proj_b[0],
                self.dt_proj_w[1], self.dt_proj_b[1], self.A_log[0], self.A_log[1],
                self.D[0], self.D[1]]


def bimamba_triton(xz: Tensor, p: MixerParams, scale: float,
                   stats: bool = False) -> tuple[Tensor, Tensor, Tensor | None]:
    """``(y, x_dbl, stats)`` through the custom op ``vimstm::bimamba`` (Triton kernels)."""
    dt_rank = p.dt_proj_w[0].shape[1]
    save = torch.is_grad_enabled() and (xz.requires_grad
                                        or any(t.requires_grad for t in p.flat()))
    y, x_dbl, st, _, _ = torch.ops.vimstm.bimamba(xz, *p.flat(), dt_rank, float(scale),
                                                  bool(stats), bool(save))
    return y, x_dbl.view(2, xz.shape[0], xz.shape[1], -1), (st if stats else None)


def bimamba_reference(xz: Tensor, p: MixerParams, scale: float,
                      stats: bool = False) -> tuple[Tensor, Tensor, Tensor | None]:
    """Both directions in PyTorch as one (2, b, l, ·) computation (autograd by PyTorch)."""
    from vimstm.ops.scan_ref import causal_conv1d_ref, scan_chunked

    b, length, d2 = xz.shape
    d = d2 // 2
    dt_rank, n = p.dt_proj_w[0].shape[1], p.A_log[0].shape[1]
    acc = torch.promote_types(xz.dtype, torch.float32)
    x, z = xz[..., :d].transpose(1, 2), xz[..., d:]  # (b, d, l), (b, l, d) views
    # conv + silu per direction, then (2, b, l, d) with the reverse direction's tokens flipped
    xc = torch.stack((causal_conv1d_ref(x, p.conv_w[0], p.conv_b[0]).transpose(1, 2),
                      causal_conv1d_ref(x, p.conv_w[1], p.conv_b[1], True).transpose(1, 2)
                      .flip(1)))
    x_dbl = torch.matmul(xc.view(2, b * length, d), padded_x_proj(
        torch.stack(p.x_proj_w).to(xc.dtype), dt_rank).transpose(1, 2))  # (2, b l, R + 2n)
    rk = padded_rank(dt_rank)
    delta = torch.bmm(x_dbl[..., rk - dt_rank:rk],
                      torch.stack(p.dt_proj_w).to(x_dbl.dtype).transpose(1, 2))
    x_dbl = x_dbl.view(2, b, length, -1)
    A = -torch.exp(torch.stack(p.A_log).to(acc))  # (2, d, n)
    BC = x_dbl[..., rk:].to(acc)
    # per token, the channel means of Δ and of Δ·mean_n(A) of each direction
    w = (torch.stack((torch.ones_like(A[..., 0]), A.mean(-1)), -1) / d).detach() \
        if stats else None
    y2, s = scan_chunked(delta.to(acc).view(2, b, length, d), xc.to(acc), A, BC[..., :n],
                         BC[..., n:], torch.stack(p.D).to(acc), torch.stack(p.dt_proj_b).to(acc),
                         True, w)  # (2, b, l, d)
    y = torch.add(y2[0], y2[1].flip(1)).mul_(F.silu(z.to(acc)))
    if scale != 1.0:
        y = y.mul_(scale)
    st = None if s is None else torch.stack((s[0], s[1].flip(1))).permute(1, 3, 0, 2).detach()
    x_dbl = torch.stack((x_dbl[0], x_dbl[1].flip(1))).detach()
    return y.to(xz.dtype), x_dbl, st


def bimamba_composed(xz: Tensor, p: MixerParams, scale: float, backend: str,
                     stats: bool = False) -> tuple[Tensor, Tensor, Tensor | None]:
    """The single-direction ops of :mod:`vimstm.ops.dispatch`, composed (autograd by PyTorch);
    the path of ``mamba_ssm``."""
    from vimstm.ops.dispatch import causal_conv1d, selective_scan

    x, z = xz.transpose(1, 2).chunk(2, dim=1)  # (b, d, l) views
    dt_rank, n = p.dt_proj_w[0].shape[1], p.A_log[0].shape[1]
    st = (torch.empty(x.shape[0], 2, 2, x.shape[2], device=x.device, dtype=torch.float32)
          if stats else None)
    y, x_dbls = None, []
    for k, reverse in ((0, False), (1, True)):
        xc = causal_conv1d(x, p.conv_w[k], p.conv_b[k], reverse=reverse, backend=backend)
        x_dbl = F.linear(xc.transpose(1, 2), padded_x_proj(p.x_proj_w[k], dt_rank))
        _, dt, B, C = torch.split(x_dbl, [padded_rank(dt_rank) - dt_rank, dt_rank, n, n], -1)
        delta = (dt @ p.dt_proj_w[k].t().to(dt.dtype)).transpose(1, 2)
        yk = selective_scan(
            xc, delta, -torch.exp(p.A_log[k].float()), B.transpose(1, 2), C.transpose(1, 2),
            p.D[k].float(), z, delta_bias=p.dt_proj_b[k].float(), delta_softplus=True,
            reverse=reverse, backend=backend, stats_out=None if st is None else st[:, :, k],
        )
        y = yk if y is None else y + yk
        x_dbls.append(x_dbl)
    if scale != 1.0:
        y = y * scale
    return y.transpose(1, 2), torch.stack(x_dbls).detach(), st


def padded_rank(dt_rank: int) -> int:
    """The width of Δ's part of x_dbl: ``dt_rank`` rounded up to a multiple of 8."""
    return -(-dt_rank // 8) * 8


def padded_x_proj(w: Tensor, dt_rank: int) -> Tensor:
    """x_proj's weight ``(..., r + 2n, d)`` as ``(..., R + 2n, d)``: zero rows before dt's."""
    pad = padded_rank(dt_rank) - dt_rank
    return F.pad(w, (0, 0, pad, 0)) if pad else w


def padded_dt_proj(w: Tensor, dt_rank: int) -> Tensor:
    """dt_proj's weight ``(..., d, r)`` as ``(..., d, R)``: zero columns before its r."""
    pad = padded_rank(dt_rank) - dt_rank
    return F.pad(w, (pad, 0)) if pad else w


# -- the Triton op ---------------------------------------------------------------------------


def _views(xz: Tensor, x_dbl: Tensor, rank: int, n: int):
    """(x, z) as (b, d, l) views of xz; B, C as (2, b, n, l) views of x_dbl (2, b*l, R+2n),
    ``rank`` = R."""
    b, length, d2 = xz.shape
    d = d2 // 2
    x = xz[..., :d].transpose(1, 2)
    z = xz[..., d:].transpose(1, 2)
    xd = x_dbl.view(2, b, length, -1)
    B = xd[..., rank:rank + n].transpose(2, 3)
    C = xd[..., rank + n:].transpose(2, 3)
    return x, z, B, C


def _params(conv_w_f, conv_b_f, conv_w_b, conv_b_b, A_log_f, A_log_b, D_f, D_b, dt_b_f, dt_b_b):
    from vimstm.ops.triton_scan import ScanParams

    w = (conv_w_f.reshape(conv_w_f.shape[0], -1), conv_w_b.reshape(conv_w_b.shape[0], -1))
    return w, (conv_b_f, conv_b_b), ScanParams(
        (A_log_f, A_log_b), (D_f, D_b), (dt_b_f, dt_b_b), a_log=True, softplus=True)


def _stacked(pair: tuple[Tensor, Tensor], dtype: torch.dtype, pad, dt_rank: int) -> Tensor:
    """The two directions' weights of one projection as (2, out, in) in the compute dtype,
    padded by ``pad`` (:func:`padded_x_proj` or :func:`padded_dt_proj`)."""
    return pad(torch.stack(pair).to(dtype), dt_rank)


def _conv_and_delta(xz: Tensor, w, cb, dtw: Tensor, x_dbl: Tensor | None, xw: Tensor | None
                    ) -> tuple[Tensor, Tensor, Tensor]:
    """conv + silu (2, b, l, d), x_dbl (2, b*l, R+2n; from ``xw`` when not given) and delta
    (2, b, d, l); ``xw``/``dtw`` are padded :func:`_stacked` weights."""
    from vimstm.ops.triton_scan import conv_fwd

    b, length, d2 = xz.shape
    d = d2 // 2
    xc = torch.empty(2, b, length, d, device=xz.device, dtype=xz.dtype)
    conv_fwd(xz[..., :d].transpose(1, 2), w, cb, xc.transpose(2, 3))
    if x_dbl is None:
        x_dbl = torch.bmm(xc.view(2, b * length, d), xw.transpose(1, 2))
    delta = torch.bmm(x_dbl[..., :dtw.shape[2]], dtw.transpose(1, 2))
    return xc, x_dbl, delta.view(2, b, length, d).transpose(2, 3)


@torch.library.custom_op("vimstm::bimamba", mutates_args=())
def _bimamba_op(
    xz: Tensor, conv_w_f: Tensor, conv_b_f: Tensor, conv_w_b: Tensor, conv_b_b: Tensor,
    x_proj_w_f: Tensor, x_proj_w_b: Tensor, dt_proj_w_f: Tensor, dt_proj_b_f: Tensor,
    dt_proj_w_b: Tensor, dt_proj_b_b: Tensor, A_log_f: Tensor, A_log_b: Tensor,
    D_f: Tensor, D_b: Tensor, dt_rank: int, scale: float, stats: bool, save: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Forward of the mixer core on the Triton kernels: (y, x_dbl, stats, saved states, and
    the pre-gate sum of the directions' outputs when saving for the backward)."""
    from vimstm.ops.triton_scan import CONFIG, scan_fwd

    b, length, d2 = xz.shape
    w, cb, p = _params(conv_w_f, conv_b_f, conv_w_b, conv_b_b, A_log_f, A_log_b, D_f, D_b,
                       dt_proj_b_f, dt_proj_b_b)
    n = A_log_f.shape[1]
    xc, x_dbl, delta = _conv_and_delta(
        xz, w, cb, _stacked((dt_proj_w_f, dt_proj_w_b), xz.dtype, padded_dt_proj, dt_rank), None,
        _stacked((x_proj_w_f, x_proj_w_b), xz.dtype, padded_x_proj, dt_rank))
    _, z, B, C = _views(xz, x_dbl, padded_rank(dt_rank), n)
    y = torch.empty(b, length, d2 // 2, device=xz.device, dtype=xz.dtype)
    st = torch.empty((b, 2, 2, length) if stats else (0,), device=xz.device,
                     dtype=torch.float32)
    ys = torch.empty((b, length, d2 // 2) if save else (0,), device=xz.device, dtype=xz.dtype)
    states = scan_fwd(xc.transpose(2, 3), delta, B, C, z, p, y.transpose(1, 2), scale,
                      save=save and CONFIG.save_every > 0, stats=st if stats else None,
                      ys=ys.transpose(1, 2) if ys.numel() else None)
    if states is None:
        states = torch.empty(0, device=xz.device, dtype=torch.float32)
    return y, x_dbl, st, states, ys


@_bimamba_op.register_fake
def _(xz, conv_w_f, conv_b_f, conv_w_b, conv_b_b, x_proj_w_f, x_proj_w_b, dt_proj_w_f,
      dt_proj_b_f, dt_proj_w_b, dt_proj_b_b, A_log_f, A_log_b, D_f, D_b, dt_rank, scale, stats,
      save):
    from vimstm.ops.triton_scan import CONFIG

    b, length, d2 = xz.shape
    d, n = d2 // 2, A_log_f.shape[1]
    y = xz.new_empty(b, length, d)
    x_dbl = xz.new_empty(2, b * length, padded_rank(dt_rank) + 2 * n)
    st = xz.new_empty((b, 2, 2, length) if stats else (0,), dtype=torch.float32)
    every = CONFIG.save_every
    shape = (2, b, -(-length // every) - 1, d, n) if save and 0 < every < length else (0,)
    ys = xz.new_empty((b, length, d) if save else (0,))
    return y, x_dbl, st, xz.new_empty(shape, dtype=torch.float32), ys


@torch.library.custom_op("vimstm::bimamba_backward", mutates_args=())
def _bimamba_backward_op(
    gy: Tensor, xz: Tensor, x_dbl: Tensor, states: Tensor, ys: Tensor,
    conv_w_f: Tensor, conv_b_f: Tensor, conv_w_b: Tensor, conv_b_b: Tensor,
    x_proj_w_f: Tensor, x_proj_w_b: Tensor,
    dt_proj_w_f: Tensor, dt_proj_b_f: Tensor, dt_proj_w_b: Tensor, dt_proj_b_b: Tensor,
    A_log_f: Tensor, A_log_b: Tensor, D_f: Tensor, D_b: Tensor, dt_rank: int, scale: float,
) -> list[Tensor]:
    """Gradients of ``y`` w.r.t. xz and the 14 parameters (in :meth:`MixerParams.flat` order)."""
    from vimstm.ops.triton_scan import conv_bwd, scan_bwd

    b, length, d2 = xz.shape
    d, n, dt, rk = d2 // 2, A_log_f.shape[1], xz.dtype, padded_rank(dt_rank)
    w, cb, p = _params(conv_w_f, conv_b_f, conv_w_b, conv_b_b, A_log_f, A_log_b, D_f, D_b,
                       dt_proj_b_f, dt_proj_b_b)
    xw = _stacked((x_proj_w_f, x_proj_w_b), dt, padded_x_proj, dt_rank)  # (2, R + 2n, d)
    dtw = _stacked((dt_proj_w_f, dt_proj_w_b), dt, padded_dt_proj, dt_rank)  # (2, d, R)
    xc, _, delta = _conv_and_delta(xz, w, cb, dtw, x_dbl, None)
    x, z, B, C = _views(xz, x_dbl, rk, n)
    dxz = torch.empty_like(xz, memory_format=torch.contiguous_format)
    du = torch.empty(2, b, length, d, device=xz.device, dtype=dt)
    gr = scan_bwd(xc.transpose(2, 3), delta, B, C, z, p, gy.transpose(1, 2),
                  states if states.numel() else None, scale, du=du.transpose(2, 3),
                  dz=dxz[..., d:].transpose(1, 2), ys=ys.transpose(1, 2))
    ddelta = gr.ddelta.transpose(2, 3).reshape(2, b * length, d)  # a view: channels-last
    # in x_dbl's layout; its padding columns get zeros (ddelta times dt_proj's zero columns)
    dx_dbl = torch.cat((torch.bmm(ddelta, dtw), gr.dBC.view(2, b * length, 2 * n).to(dt)), -1)
    # weight gradients: long-K products with small outputs, one mm per direction (cuBLAS
    # splits K there; its batched kernels do not); computed padded, the padding dropped
    xcm = xc.view(2, b * length, d)
    cut = rk - dt_rank
    d_dtw = [torch.mm(ddelta[k].t(), x_dbl[k, :, :rk])[:, cut:] for k in range(2)]  # (d, r)
    d_xw = [torch.mm(dx_dbl[k].t(), xcm[k])[cut:] for k in range(2)]  # (r + 2n, d)
    dum = du.view(2, b * length, d)
    dum.baddbmm_(dx_dbl, xw)
    dw, dcb = conv_bwd(x, w, cb, du.transpose(2, 3), dxz[..., :d].transpose(1, 2))
    # the pairs are views of one buffer each: separate copies (custom ops return no aliases)
    return [dxz] + [g.clone() for g in (
        dw[0].view_as(conv_w_f).to(conv_w_f.dtype), dcb[0].to(conv_b_f.dtype),
        dw[1].view_as(conv_w_b).to(conv_w_b.dtype), dcb[1].to(conv_b_b.dtype),
        d_xw[0].to(x_proj_w_f.dtype), d_xw[1].to(x_proj_w_b.dtype),
        d_dtw[0].to(dt_proj_w_f.dtype), gr.dbias[0].to(dt_proj_b_f.dtype),
        d_dtw[1].to(dt_proj_w_b.dtype), gr.dbias[1].to(dt_proj_b_b.dtype),
        gr.dA[0].to(A_log_f.dtype), gr.dA[1].to(A_log_b.dtype),
        gr.dD[0].to(D_f.dtype), gr.dD[1].to(D_b.dtype),
    )]


@_bimamba_backward_op.register_fake
def _(gy, xz, x_dbl, states, ys, conv_w_f, conv_b_f, conv_w_b, conv_b_b, x_proj_w_f, x_proj_w_b,
      dt_proj_w_f, dt_proj_b_f, dt_proj_w_b, dt_proj_b_b, A_log_f, A_log_b, D_f, D_b, dt_rank,
      scale):
    params = (conv_w_f, conv_b_f, conv_w_b, conv_b_b, x_proj_w_f, x_proj_w_b, dt_proj_w_f,
              dt_proj_b_f, dt_proj_w_b, dt_proj_b_b, A_log_f, A_log_b, D_f, D_b)
    return [torch.empty_like(xz, memory_format=torch.contiguous_format)] + [
        torch.empty_like(t) for t in params]


def _setup_context(ctx, inputs, output) -> None:
    xz, *params = inputs[:15]
    dt_rank, scale = inputs[15], inputs[16]
    _, x_dbl, _, states, ys = output
    ctx.save_for_backward(xz, x_dbl, states, ys, *params)
    ctx.dt_rank, ctx.scale = dt_rank, scale


def _backward(ctx, gy, _g_dbl, _g_stats, _g_states, _g_ys):
    xz, x_dbl, states, ys, *params = ctx.saved_tensors
    grads = torch.ops.vimstm.bimamba_backward(gy, xz, x_dbl, states, ys, *params, ctx.dt_rank,
                                              ctx.scale)
    return (*grads, None, None, None, None)


torch.library.register_autograd("vimstm::bimamba", _backward, setup_context=_setup_context)
