"""Cases for test_triton_scan.py: Triton kernels against the PyTorch reference, on the CPU.

Not collected by the main pytest run (the name has no ``test_`` prefix): test_triton_scan.py runs
this file in a fresh process with TRITON_INTERPRET=1 set before Triton is first imported (the
interpreter must be on before any @triton.jit function, Triton's own included, is defined).
The kernels run under Triton's interpreter, on tiny shapes so that the module stays fast.
"""

from __future__ import annotations

import os

import pytest
import torch

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("run through test_triton_scan.py (needs TRITON_INTERPRET=1 from the start)",
                allow_module_level=True)
pytest.importorskip("triton")
from vimstm.models.registry import create_model
from vimstm.ops import (
    resolve_backend,
    triton_norm,
    triton_scan,
)
from vimstm.ops.scan_ref import causal_conv1d_ref, scan_token_stats, selective_scan_ref

TINY = dict(depth=2, embed_dim=32, img_size=32, patch_size=8, stride=8, num_classes=10)
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _inputs(L: int, dtype: torch.dtype, channels_last: bool, b: int = 1, d: int = 3, n: int = 4):
    g = torch.Generator().manual_seed(L)

    def r(*s):
        return torch.randn(*s, generator=g)

    if channels_last:  # the model's layout: transposed views of (b, l, d) tensors
        u, delta, z = r(b, L, d).transpose(1, 2), r(b, L, d).transpose(1, 2), r(b, L, d)
        z = z.transpose(1, 2)
        bc = r(b, L, 2 * n)
        B, C = bc[..., :n].transpose(1, 2), bc[..., n:].transpose(1, 2)
    else:
        u, delta, z, B, C = r(b, d, L), r(b, d, L), r(b, d, L), r(b, n, L), r(b, n, L)
    A = -torch.rand(d, n, generator=g) * 2 - 0.1
    ts = [u, delta * 0.5, A, B, C, r(d), z, r(d) * 0.3]
    return [(t.to(dtype) if t.dim() == 3 else t).detach().requires_grad_() for t in ts]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-3)).item()


CASES = [(L, dt, rev) for L in (1, 7, 197, 257) for dt in DTYPES for rev in (False, True)]


@pytest.mark.parametrize("L,dtype,reverse", CASES)
def test_scan_matches_reference(L, dtype, reverse):
    assert triton_scan.BWD_KERNEL == "seq"  # the default backward is the one checked here
    ins = _inputs(L, DTYPES[dtype], channels_last=L % 2 == 1)
    ref = selective_scan_ref(*ins, True, reverse)
    gout = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1)).to(ref.dtype)
    gref = torch.autograd.grad(ref, ins, gout)
    ins2 = [t.detach().clone().requires_grad_() for t in ins]
    out = triton_scan.selective_scan_triton(*ins2, True, reverse)
    assert out.dtype == ref.dtype and out.shape == ref.shape
    gout2 = torch.autograd.grad(out, ins2, gout)
    tol = 1e-5 if dtype == "fp32" else 2e-2  # low precision: rounding of the stored outputs
    assert _rel(out, ref) < tol
    names = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]
    for name, a, b in zip(names, gout2, gref):
        assert a.dtype == b.dtype, name
        assert _rel(a, b) < max(tol, 1e-4), name


@pytest.mark.parametrize(
    "dtype,reverse,optional",
    [("fp32", False, True), ("fp32", True, True), ("bf16", True, True), ("fp32", True, False)],
)
def test_backward_kernels(dtype, reverse, optional, monkeypatch):
    """Both backwards against the reference's autograd, d not a BLOCK_D multiple, L not a T one."""
    ins = _inputs(21, DTYPES[dtype], channels_last=reverse, b=2, d=19)
    names = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]
    if not optional:  # no D, z, dt bias, softplus
        ins, names = ins[:5] + [None] * 3, names[:5]
    args = (*ins, optional, reverse)
    ref = selective_scan_ref(*args)
    gout = torch.randn(ref.shape, generator=torch.Generator().manual_seed(2)).to(ref.dtype)
    gref = torch.autograd.grad(ref, ins[: len(names)], gout)
    tol = 1e-4 if dtype == "fp32" else 2e-2
    for kind in ("seq", "chunk"):
        monkeypatch.setattr(triton_scan, "BWD_KERNEL", kind)
        ins2 = [t.detach().clone().requires_grad_() if t is not None else None for t in ins]
        out = triton_scan.selective_scan_triton(*ins2, optional, reverse)
        got = torch.autograd.grad(out, ins2[: len(names)], gout)
        for name, a, b in zip(names, got, gref):
            assert a.dtype == b.dtype and a.shape == b.shape, (kind, name)
            assert _rel(a, b) < tol, (kind, name, _rel(a, b))


@pytest.mark.parametrize("dtype,reverse", [("fp32", False), ("fp16", True)])
def test_fused_token_stats(dtype, reverse, monkeypatch):
    """The scan's fused per-token Δ statistics equal the PyTorch ones, for both kernels."""
    ins = _inputs(21, DTYPES[dtype], channels_last=True, b=2, d=19)  # d not a BLOCK_D multiple
    u, delta, A, B, C, D, z, bias = (t.detach() for t in ins)
    want = scan_token_stats(delta, A, bias)
    for kind in ("seq", "chunk"):
        monkeypatch.setattr(triton_scan, "FWD_KERNEL", kind)
        got = torch.full((2, 2, 21), float("nan"))
        out = triton_scan.selective_scan_triton(u, delta, A, B, C, D, z, bias, True, reverse,
                                                stats_out=got)
        assert torch.allclose(got, want, atol=1e-5, rtol=1e-4), kind
        assert _rel(out, selective_scan_ref(u, delta, A, B, C, D, z, bias, True, reverse)) < 2e-2


def test_scan_without_optional_inputs_and_chunk_kernel(monkeypatch):
    u, delta, A, B, C, *_ = _inputs(21, torch.float32, channels_last=False)
    ref = selective_scan_ref(u, delta, A, B, C, None, None, None, False, False)
    out = triton_scan.selective_scan_triton(u, delta, A, B, C, None, None, None, False, False)
    assert _rel(out, ref) < 1e-5
    monkeypatch.setattr(triton_scan, "FWD_KERNEL", "chunk")
    monkeypatch.setattr(triton_scan, "FWD_T", triton_scan.BWD_T)
    ins = _inputs(21, torch.float32, channels_last=True)
    ref = selective_scan_ref(*ins, True, True)
    gref = torch.autograd.grad(ref.sum(), ins)
    out = triton_scan.selective_scan_triton(*ins, True, True)
    assert _rel(out, ref) < 1e-5
    for a, b in zip(torch.autograd.grad(out.sum(), ins), gref):
        assert _rel(a, b) < 1e-4


def test_fused_direction_sum():
    ins = _inputs(9, torch.float32, channels_last=True)
    ref = (selective_scan_ref(*ins, True, False) + selective_scan_ref(*ins, True, True)) / 2
    gref = torch.autograd.grad(ref.sum(), ins)
    y_f = triton_scan.selective_scan_triton(*ins, True, False)
    out = triton_scan.selective_scan_triton(*ins, True, True, out_add=y_f, out_scale=0.5)
    assert _rel(out, ref) < 1e-5
    for a, b in zip(torch.autograd.grad(out.sum(), ins), gref):
        assert _rel(a, b) < 1e-4


@pytest.mark.parametrize("L", [1, 7, 197])
@pytest.mark.parametrize("reverse", [False, True])
def test_conv1d_matches_reference(L, reverse):
    g = torch.Generator().manual_seed(L)
    x = torch.randn(2, L, 5, generator=g).transpose(1, 2).requires_grad_()
    w = torch.randn(5, 1, 4, generator=g).requires_grad_()
    bias = torch.randn(5, generator=g).requires_grad_()
    ref = causal_conv1d_ref(x, w, bias, reverse)
    gref = torch.autograd.grad(ref.square().sum(), [x, w, bias])
    out = triton_scan.causal_conv1d_triton(x, w, bias, reverse)
    assert _rel(out, ref) < 1e-5
    for a, b in zip(torch.autograd.grad(out.square().sum(), [x, w, bias]), gref):
        assert _rel(a, b) < 1e-5


def test_conv1d_half_precision():
    x = torch.randn(1, 6, 11).to(torch.bfloat16)
    w, bias = torch.randn(6, 1, 4), torch.randn(6)
    out = triton_scan.causal_conv1d_triton(x, w, bias, True)
    assert out.dtype == torch.bfloat16
    assert _rel(out, causal_conv1d_ref(x.float(), w, bias, True)) < 1e-2


@pytest.mark.parametrize("with_residual", [False, True])
def test_add_rmsnorm(with_residual):
    x = torch.randn(2, 5, 24).to(torch.bfloat16)
    res = torch.randn(2, 5, 24) if with_residual else None
    w = torch.rand(24) + 0.5
    r_ref = x.float() if res is None else res + x.float()
    y_ref = (r_ref * torch.rsqrt(r_ref.pow(2).mean(-1, keepdim=True) + 1e-5) * w).to(x.dtype)
    y, r = triton_norm.add_rmsnorm_triton(x, res, w, 1e-5, x.dtype)
    assert torch.equal(r, r_ref)
    assert y.dtype == x.dtype and _rel(y, y_ref) < 1e-2


def test_whole_model_same_logits_and_ssm_stats():
    model = create_model("vim_tiny", scan_backend="reference", **TINY).eval()
    mixer = model.layers[1].mixer
    mixer.record_ssm = True
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        ref_ssm = mixer.last_ssm
        model.set_scan_backend("triton")
        out = model(x)
    assert (out - ref).abs().max().item() < 1e-4
    assert mixer.last_ssm is not ref_ssm
    for name in ("B_fwd", "B_bwd", "log_decay_fwd", "log_decay_bwd", "delta_fwd", "delta_bwd"):
        assert torch.allclose(getattr(mixer.last_ssm, name), getattr(ref_ssm, name), atol=1e-5)


def test_auto_picks_triton_on_cuda_only():
    assert resolve_backend("auto", "cuda") == "triton"
    assert resolve_backend("auto", "cpu") == "reference"
