"""One dispatch point: which implementation runs the mixer, the norm, the scan, the conv and the
merge kernels.

``scan_backend`` is one of:

* ``"reference"``: the exact PyTorch code in :mod:`vimstm.ops.scan_ref` (any device);
* ``"triton"``: the Triton kernels in :mod:`vimstm.ops.triton_scan` (CUDA, or the CPU under
  ``TRITON_INTERPRET=1`` for tests);
* ``"mamba_ssm"``: the official CUDA extension, only where the user installed it (comparisons);
* ``"auto"``: the fastest available for the tensor's device ("triton" on CUDA, else "reference").

A merge step follows the model's scan (:func:`merge_backend`): the kernels of
:mod:`vimstm.ops.triton_merge` where it runs Triton, their PyTorch definitions in
:mod:`vimstm.ops.merge_ref` elsewhere.
"""

from __future__ import annotations

import importlib.util
import os
from functools import cache

import torch
from torch import Tensor

from vimstm.errors import ConfigError
from vimstm.ops.merge_ref import (
    adjacent_dissimilarity_ref,
    apply_pairs,
    delta_dissimilarity_ref,
    edge_alpha_ref,
)
from vimstm.ops.mixer import MixerParams, bimamba_composed, bimamba_reference, bimamba_triton
from vimstm.ops.norm import add_rmsnorm_ref, add_rmsnorm_triton
from vimstm.ops.scan_ref import causal_conv1d_ref, scan_token_stats, selective_scan_ref

BACKENDS = ("auto", "reference", "triton", "mamba_ssm")


@cache
def _has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def _triton_usable_on_cpu() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def available_backends(device_type: str = "cuda") -> list[str]:
    """The concrete backends that can run on ``device_type`` here."""
    out = ["reference"]
    if _has_module("triton") and (device_type == "cuda" or _triton_usable_on_cpu()):
        out.append("triton")
    if device_type == "cuda" and _has_module("mamba_ssm"):
        out.append("mamba_ssm")
    return out


@torch.compiler.assume_constant_result  # torch.compile: a constant of the traced graph
def resolve_backend(backend: str, device_type: str) -> str:
    """Map ``backend`` (maybe "auto") to a concrete one for ``device_type``, or raise clearly."""
    if backend not in BACKENDS:
        raise ConfigError(f"unknown scan_backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    avail = available_backends(device_type)
    if backend == "auto":
        return "triton" if device_type == "cuda" and "triton" in avail else "reference"
    if backend not in avail:
        hint = {
            "triton": "it needs a CUDA device (or TRITON_INTERPRET=1 on the CPU)",
            "mamba_ssm": "install mamba_ssm and run on CUDA, or use scan_backend='auto'",
        }.get(backend, "")
        raise ConfigError(f"scan_backend {backend!r} is not available on {device_type}: {hint}")
    return backend


def bimamba(xz: Tensor, params: MixerParams, scale: float, backend: str = "auto",
            stats: bool = False) -> tuple[Tensor, Tensor, Tensor | None]:
    """The bidirectional mixer core (:mod:`vimstm.ops.mixer`): ``(y, x_dbl, stats)``.

    The custom op on the Triton kernels where ``backend`` resolves to "triton", both directions
    in PyTorch for "reference", the composition of the single-direction ops for "mamba_ssm".
    """
    impl = resolve_backend(backend, xz.device.type)
    if impl == "triton":
        return bimamba_triton(xz, params, scale, stats)
    if impl == "reference":
        return bimamba_reference(xz, params, scale, stats)
    return bimamba_composed(xz, params, scale, impl, stats)


def add_rmsnorm(x: Tensor, residual: Tensor | None, weight: Tensor, eps: float,
                backend: str = "auto") -> tuple[Tensor, Tensor]:
    """Residual add + RMSNorm (:mod:`vimstm.ops.norm`): (normed in x's dtype, fp32 residual)."""
    if resolve_backend(backend, x.device.type) == "triton":
        return add_rmsnorm_triton(x, residual, weight, eps)
    return add_rmsnorm_ref(x, residual, weight, eps)


def selective_scan(
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
    backend: str = "auto",
    stats_out: Tensor | None = None,
) -> Tensor:
    """Selective scan with the layouts of :func:`vimstm.ops.scan_ref.selective_scan_ref`.

    ``stats_out`` (b, 2, l) fp32, if given, receives :func:`~vimstm.ops.scan_ref.scan_token_stats`
    (fused into the Triton kernel; computed separately by the other backends).
    """
    impl = resolve_backend(backend, u.device.type)
    if impl == "triton":
        from vimstm.ops.triton_scan import selective_scan_triton

        return selective_scan_triton(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse,
                                     stats_out=stats_out)
    if stats_out is not None:
        with torch.no_grad():
            stats_out.copy_(scan_token_stats(delta, A, delta_bias, delta_softplus))
    if impl == "mamba_ssm":
        return _selective_scan_mamba_ssm(
            u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse
        )
    return selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse)


def causal_conv1d(
    x: Tensor, weight: Tensor, bias: Tensor | None, reverse: bool = False, backend: str = "auto"
) -> Tensor:
    """Depthwise causal (anti-causal with ``reverse``) conv1d followed by silu."""
    impl = resolve_backend(backend, x.device.type)
    if impl == "triton":
        from vimstm.ops.triton_scan import causal_conv1d_triton

        return causal_conv1d_triton(x, weight, bias, reverse)
    return causal_conv1d_ref(x, weight, bias, reverse)


def _selective_scan_mamba_ssm(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse):
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn  # type: ignore

    def order(t: Tensor | None) -> Tensor | None:  # mamba_ssm scans forward only: flip copies
        return None if t is None else (t.flip(-1).contiguous() if reverse else t)

    out = selective_scan_fn(
        order(u), order(delta), A, order(B), order(C), D, order(z),
        delta_bias=delta_bias, delta_softplus=delta_softplus,
    )
    return out.flip(-1) if reverse else out


# ---------------------------------------------------------------------------------------------
# token merging: one backend for a merge step, "triton" (the kernels of triton_merge) or
# "reference" (merge_ref, PyTorch)
# ---------------------------------------------------------------------------------------------
def merge_backend(scan_backend: str, device_type: str) -> str:
    """The merge kernels follow the model's scan: "triton" where it resolves to Triton."""
    return "triton" if resolve_backend(scan_backend, device_type) == "triton" else "reference"


def adjacent_dissimilarity(
    hidden: Tensor, residual: Tensor | None, backend: str = "reference"
) -> Tensor:
    """``1 - cos`` of scan-adjacent tokens of ``residual + hidden``: (batch, tokens - 1) fp32."""
    if backend == "triton":
        from vimstm.ops.triton_merge import adjacent_dissimilarity_triton

        return adjacent_dissimilarity_triton(hidden, residual)
    return adjacent_dissimilarity_ref(hidden, residual)


def delta_dissimilarity(dt_low: Tensor, weight: Tensor, bias: Tensor,
                        backend: str = "reference") -> Tensor:
    """``1 - cos`` of scan-adjacent tokens' per-channel Δ of both directions, (batch, tokens - 1)
    fp32, from the ``dt_proj`` inputs (:func:`merge_ref.delta_from_inputs`); Triton forms Δ in
    registers and never writes it."""
    if backend == "triton":
        from vimstm.ops.triton_merge import delta_dissimilarity_triton

        return delta_dissimilarity_triton(dt_low, weight, bias)
    return delta_dissimilarity_ref(dt_low, weight, bias)


def edge_alpha(B_fwd: Tensor, B_bwd: Tensor, stats: Tensor, size: Tensor,
               backend: str = "reference") -> Tensor:
    """STM's weight of the left token of every adjacent pair (:func:`merge_ref.edge_alpha_ref`)."""
    if backend == "triton":
        from vimstm.ops.triton_merge import edge_alpha_triton

        return edge_alpha_triton(B_fwd, B_bwd, stats, size)
    return edge_alpha_ref(B_fwd, B_bwd, stats, size)


def pair_choice(cost: Tensor, score: Tensor, alpha: Tensor, tokens: int, cls_index: int,
                n_side: tuple[int, int], r_side: tuple[int, int], big: float,
                backend: str = "reference") -> tuple[Tensor, Tensor, Tensor, Tensor] | None:
    """STM's pair choice and layout in Triton, or None where the caller's PyTorch code runs.

    None for the reference backend and for more A tokens per side than the kernel's tiles hold
    (``triton_merge.MAX_FUSED_A``); see :func:`triton_merge.pair_plan_triton` for the values.
    """
    if backend != "triton":
        return None
    from vimstm.ops.triton_merge import MAX_FUSED_A, pair_plan_triton

    if cost.shape[-1] > MAX_FUSED_A:
        return None
    return pair_plan_triton(cost, score, alpha, tokens, cls_index, n_side, r_side, big)


def pair_lerp(hidden: Tensor, residual: Tensor, first: Tensor, last: Tensor, w_last: Tensor,
              backend: str = "reference") -> tuple[Tensor, Tensor]:
    """:func:`merge_ref.apply_pairs` of hidden and residual; one fused Triton pass when the
    backend is "triton" and no gradient is needed (the kernel has no backward)."""
    if backend == "triton" and not torch.is_grad_enabled():
        from vimstm.ops.triton_merge import pair_lerp_triton

        return pair_lerp_triton(hidden, residual, first, last, w_last)
    return apply_pairs(hidden, first, last, w_last), apply_pairs(residual, first, last, w_last)
