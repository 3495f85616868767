"""The Triton scan and conv1d kernels (:mod:`vimstm.ops.triton_scan`) against the PyTorch
reference: outputs and every gradient, both directions, all dtypes, any strides.

Marked ``gpu``: in this process on CUDA; on the CPU under Triton's interpreter in a fresh
process (``tests/test_triton_interpreter.py``).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

pytest.importorskip("triton")
from vimstm.errors import ConfigError
from vimstm.ops import resolve_backend, triton_scan
from vimstm.ops.scan_ref import causal_conv1d_ref, scan_token_stats, selective_scan_ref

pytestmark = pytest.mark.gpu
DEV = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _inputs(L: int, dtype: torch.dtype, channels_last: bool, b: int = 2, d: int = 5,
            n: int = 4, optional: bool = True):
    g = torch.Generator().manual_seed(L)

    def r(*s):
        return torch.randn(*s, generator=g)

    if channels_last:  # the model's layout: transposed views of (b, l, d) tensors
        u, delta, z = (r(b, L, d).transpose(1, 2) for _ in range(3))
        bc = r(b, L, 2 * n)
        B, C = bc[..., :n].transpose(1, 2), bc[..., n:].transpose(1, 2)
    else:
        u, delta, z, B, C = r(b, d, L), r(b, d, L), r(b, d, L), r(b, n, L), r(b, n, L)
    A = -torch.rand(d, n, generator=g) * 2 - 0.1
    ts = [u, delta * 0.5, A, B, C, r(d), z, r(d) * 0.3]
    if not optional:
        ts[5] = ts[6] = ts[7] = None
    return [None if t is None else
            (t.to(dtype) if t.dim() == 3 else t).to(DEV).detach().requires_grad_() for t in ts]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-3)).item()


def _check_scan(ins, reverse: bool, tol: float) -> None:
    used = [t for t in ins if t is not None]
    ref = selective_scan_ref(*ins, True, reverse)
    gout = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1)).to(ref)
    gref = torch.autograd.grad(ref, used, gout)
    ins2 = [None if t is None else t.detach().clone().requires_grad_() for t in ins]
    out = triton_scan.selective_scan_triton(*ins2, True, reverse)
    assert out.dtype == ref.dtype and out.shape == ref.shape
    assert _rel(out, ref) < tol
    got = torch.autograd.grad(out, [t for t in ins2 if t is not None], gout)
    for a, b in zip(got, gref):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert _rel(a, b) < max(tol, 1e-4)


CASES = [(1, "fp32", False), (7, "fp32", True), (45, "fp32", False), (21, "bf16", True),
         (20, "fp16", False)]


@pytest.mark.parametrize("L,dtype,reverse", CASES)
def test_scan_matches_reference(L, dtype, reverse):
    """One direction, with D, z and the dt bias; odd lengths are read channels-last."""
    tol = 1e-5 if dtype == "fp32" else 2e-2  # low precision: rounding of the stored outputs
    _check_scan(_inputs(L, DTYPES[dtype], channels_last=L % 2 == 1), reverse, tol)


@pytest.mark.parametrize("save_every,chunk", [(0, 4), (8, 4), (6, 3)])
def test_saved_states_and_replay_give_the_same_gradients(save_every, chunk, monkeypatch):
    """The backward replays the forward where the forward kept no state (save_every 0) and
    from the kept states otherwise: the same gradients, over many chunks and segments (chunks
    of 3 tokens: not a power of two)."""
    cfg = dataclasses.replace(triton_scan.CONFIG, save_every=save_every, chunk=chunk,
                              scan_block_d=4)
    monkeypatch.setattr(triton_scan, "CONFIG", cfg)
    _check_scan(_inputs(23, torch.float32, channels_last=True, d=9), True, 1e-5)


@pytest.mark.parametrize("r,bcv", [(4, 4), (3, 1)])
def test_B_C_rows_of_a_wider_tensor(r, bcv, monkeypatch):
    """B and C as views of the rows of a (b, l, r + 2n) bf16 tensor, as the model's x_proj
    output holds them, over several chunks and segments. r = 4: the forward reads them as
    vectors (B starts 8 bytes past a 16-byte boundary, C on one); r = 3 (rows of 11 elements):
    one load per state."""
    cfg = dataclasses.replace(triton_scan.CONFIG, save_every=8, chunk=4, scan_block_d=4)
    monkeypatch.setattr(triton_scan, "CONFIG", cfg)
    u, delta, A, B, _, D, z, bias = _inputs(21, torch.bfloat16, channels_last=True, d=9)
    b, n, L = B.shape
    wide = torch.randn(b, L, r + 2 * n, generator=torch.Generator().manual_seed(3))
    wide = wide.to(torch.bfloat16).to(DEV)
    gout = torch.randn(u.shape, generator=torch.Generator().manual_seed(1)).to(u)

    def grads(fn):
        leaves = [t.detach().clone().requires_grad_() for t in (u, delta, A, wide, D, z, bias)]
        w = leaves[3]
        Bv, Cv = w[..., r:r + n].transpose(1, 2), w[..., r + n:].transpose(1, 2)
        if fn is triton_scan.selective_scan_triton:
            got, rows = triton_scan._bc_rows(Bv[None], Cv[None])
            assert got == bcv
            if bcv > 1:  # element offsets from the 16-byte boundaries
                assert [row[1] for row in rows] == [4, 0]
        out = fn(*leaves[:3], Bv, Cv, *leaves[4:], True, True)
        return [out, *torch.autograd.grad(out, leaves, gout)]

    for a, b_ in zip(grads(triton_scan.selective_scan_triton), grads(selective_scan_ref)):
        assert a.shape == b_.shape and _rel(a, b_) < 2e-2


def test_scan_without_optional_inputs():
    _check_scan(_inputs(13, torch.float32, channels_last=False, optional=False), False, 1e-5)


@pytest.mark.parametrize("reverse", [True])
def test_token_stats_from_the_scan(reverse):
    u, delta, A, B, C, D, z, bias = (t.detach() for t in _inputs(19, torch.bfloat16, True))
    stats = torch.empty(u.shape[0], 2, u.shape[-1], device=DEV)
    triton_scan.selective_scan_triton(u, delta, A, B, C, D, z, bias, True, reverse,
                                      stats_out=stats)
    assert torch.allclose(stats, scan_token_stats(delta, A, bias), atol=1e-5)


# the shipped tiles, and small ones so that channel blocks, segments and halos all cross:
# forward segments of 3-4 tokens, backward segments of 4 (13 tokens: a last segment of one,
# shorter than the 3-step halo, so its unmasked loop is empty)
CONV_TILES = {
    "shipped": {},
    "small": dict(conv_fwd_block_d=8, conv_fwd_segment=4, conv_bwd_block_d=8, conv_bwd_segment=4),
}


@pytest.mark.parametrize("L,reverse,tiles,d,vec", [
    (13, False, "shipped", 6, 1), (40, True, "small", 6, 8), (3, True, "small", 6, 1),
    (13, False, "small", 8, 8), (11, True, "shipped", 8, 8)])
def test_conv1d_matches_reference(L, reverse, tiles, d, vec, monkeypatch):
    """One direction (causal, or anti-causal as the kernels' direction 0) of the width-4
    depthwise conv + silu with autograd; sequences shorter than a segment (and than the halo),
    several segments, lengths not a multiple of the segment. Channels-last rows are read as
    vectors of ``vec`` channels: 8 where the batch stride ``L * d`` is a multiple of 8, else
    one at a time."""
    cfg = dataclasses.replace(triton_scan.CONFIG, **CONV_TILES[tiles])
    monkeypatch.setattr(triton_scan, "CONFIG", cfg)
    g = torch.Generator().manual_seed(L)
    x = torch.randn(2, L, d, generator=g).transpose(1, 2).to(DEV).requires_grad_()
    w = torch.randn(d, 1, 4, generator=g).to(DEV).requires_grad_()
    bias = torch.randn(d, generator=g).to(DEV).requires_grad_()
    # the launchers claim alignment exactly when the strides allow it
    assert triton_scan._vec((x.stride(0),), (x.stride(1),)) == vec
    ref = causal_conv1d_ref(x, w, bias, reverse)
    gout = torch.randn(ref.shape, generator=g).to(DEV)
    gref = torch.autograd.grad(ref, [x, w, bias], gout)
    out = triton_scan.causal_conv1d_triton(x, w, bias, reverse)
    assert _rel(out, ref) < 1e-5
    for a, b in zip(torch.autograd.grad(out, [x, w, bias], gout), gref):
        assert _rel(a, b) < 1e-5


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("tiles", sorted(CONV_TILES))
def test_two_direction_conv(tiles, dtype, monkeypatch):
    """conv_fwd / conv_bwd of both directions, laid out as the mixer's (x a view of the
    in_proj output, channels-last outputs), against causal_conv1d_ref."""
    cfg = dataclasses.replace(triton_scan.CONFIG, **CONV_TILES[tiles])
    monkeypatch.setattr(triton_scan, "CONFIG", cfg)
    dt = DTYPES[dtype]
    b, L, d = 2, 13, 16
    g = torch.Generator().manual_seed(7)
    xz = torch.randn(b, L, 2 * d, generator=g).to(dt).to(DEV)
    x = xz[..., :d].transpose(1, 2)
    w = [torch.randn(d, 4, generator=g).to(DEV) for _ in range(2)]
    bias = [torch.randn(d, generator=g).to(DEV) for _ in range(2)]
    gout = torch.randn(2, b, L, d, generator=g).to(dt).to(DEV).transpose(2, 3)
    out = torch.empty(2, b, L, d, dtype=dt, device=DEV).transpose(2, 3)
    triton_scan.conv_fwd(x, (w[0], w[1]), (bias[0], bias[1]), out)
    dxz = torch.zeros_like(xz)
    dw, db = triton_scan.conv_bwd(x, (w[0], w[1]), (bias[0], bias[1]), gout,
                                  dxz[..., :d].transpose(1, 2))
    xr = x.float().requires_grad_()
    wr = [t.clone().requires_grad_() for t in w]
    br = [t.clone().requires_grad_() for t in bias]
    ref = torch.stack([causal_conv1d_ref(xr, wr[k][:, None], br[k], k == 1) for k in range(2)])
    grads = torch.autograd.grad(ref, [xr, *wr, *br], gout.float())
    tol = 1e-5 if dt == torch.float32 else 1e-2
    assert _rel(out, ref) < tol
    assert _rel(dxz[..., :d].transpose(1, 2), grads[0]) < tol
    assert not dxz[..., d:].any()  # z's half untouched
    for k in range(2):
        assert _rel(dw[k], grads[1 + k]) < 1e-5
        assert _rel(db[k], grads[3 + k]) < 1e-5


def test_conv1d_refuses_other_widths():
    x = torch.zeros(1, 4, 6)
    with pytest.raises(ConfigError, match="width 4"):
        triton_scan.causal_conv1d_triton(x, torch.zeros(4, 1, 3), None)


def test_conv1d_half_precision():
    x = torch.randn(1, 6, 11).to(torch.bfloat16).to(DEV)
    w, bias = torch.randn(6, 1, 4).to(DEV), torch.randn(6).to(DEV)
    out = triton_scan.causal_conv1d_triton(x, w, bias, True)
    assert out.dtype == torch.bfloat16
    assert _rel(out, causal_conv1d_ref(x.float(), w, bias, True)) < 1e-2


def test_auto_picks_triton_on_cuda_only():
    assert resolve_backend("auto", "cuda") == "triton"
    assert resolve_backend("auto", "cpu") == "reference"


def test_scan_backward_needs_the_saved_sum_exactly_with_the_gate():
    """The gate's gradient comes from the forward's saved pre-gate sum: without it, or with it
    but no gate, the call is refused before any kernel runs."""
    u = torch.zeros(1, 1, 4, 3)
    B = torch.zeros(1, 1, 2, 3)
    p = triton_scan.ScanParams((torch.zeros(4, 2),) * 2, None, None)
    with pytest.raises(ValueError, match="exactly when z is given"):
        triton_scan.scan_bwd(u, u, B, B, torch.zeros(1, 4, 3), p, torch.zeros(1, 4, 3), None)
    with pytest.raises(ValueError, match="exactly when z is given"):
        triton_scan.scan_bwd(u, u, B, B, None, p, torch.zeros(1, 4, 3), None,
                             ys=torch.zeros(1, 4, 3))
