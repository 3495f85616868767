"""Selective-scan and conv1d kernels behind one dispatch point (``scan_backend``)."""

from vimstm.ops.dispatch import (
    BACKENDS,
    available_backends,
    causal_conv1d,
    resolve_backend,
    selective_scan,
)
from vimstm.ops.scan_ref import causal_conv1d_ref, selective_scan_ref

__all__ = [
    "BACKENDS",
    "available_backends",
    "causal_conv1d",
    "causal_conv1d_ref",
    "resolve_backend",
    "selective_scan",
    "selective_scan_ref",
]
