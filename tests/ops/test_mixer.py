"""The mixer-core op (:mod:`vimstm.ops.mixer`): the Triton custom op against the composition of
the reference ops (outputs, by-products and all 15 gradients), its registration
(``torch.library.opcheck``), the whole model on both backends, and ``torch.compile``.

Marked ``gpu`` (see ``tests/test_triton_interpreter.py``).
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

pytest.importorskip("triton")
import vimstm
from vimstm.models.vim import SSM_PARTS
from vimstm.ops.dispatch import bimamba
from vimstm.ops.mixer import MixerParams

pytestmark = pytest.mark.gpu
CUDA = torch.cuda.is_available()
DEV = "cuda" if CUDA else "cpu"
TINY = dict(depth=2, embed_dim=16, img_size=16, patch_size=4, stride=4, num_classes=10)


def _mixer():
    torch.manual_seed(0)
    m = vimstm.create_model("vim_tiny", **TINY).layers[0].mixer.to(DEV)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m


def _rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-6)).item()


def _run(mixer, xz, backend):
    """(y, x_dbl, stats, gradients of xz and the 14 parameters) of the op on fresh leaves."""
    leaves = [t.detach().clone().requires_grad_() for t in [xz, *mixer.mixer_params().flat()]]
    p = MixerParams(conv_w=(leaves[1], leaves[3]), conv_b=(leaves[2], leaves[4]),
                    x_proj_w=(leaves[5], leaves[6]), dt_proj_w=(leaves[7], leaves[9]),
                    dt_proj_b=(leaves[8], leaves[10]), A_log=(leaves[11], leaves[12]),
                    D=(leaves[13], leaves[14]))
    y, x_dbl, stats = bimamba(leaves[0], p, 0.5, backend, stats=True)
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(y)
    return y, x_dbl, stats, torch.autograd.grad(y, leaves, gy)


@pytest.mark.parametrize("length,save_every", [(13, 8), (9, 8), (13, 0), (13, 24)])
def test_triton_op_matches_reference_composition(length, save_every, monkeypatch):
    """States kept every 8 tokens (two segments replayed), none, or one segment (default).
    x_dbl's rows hold 40 elements here (dt_rank 1 padded to 8, then B and C): the scan forward
    reads B and C as vectors; the conv reads rows of 32 channels as vectors."""
    from vimstm.ops import triton_scan

    monkeypatch.setattr(triton_scan, "CONFIG", dataclasses.replace(
        triton_scan.CONFIG, save_every=save_every))
    mixer = _mixer()
    xz = torch.randn(2, length, 2 * mixer.d_inner, device=DEV)
    y0, d0, s0, g0 = _run(mixer, xz, "reference")
    y1, d1, s1, g1 = _run(mixer, xz, "triton")
    assert y1.shape == y0.shape and d1.shape == d0.shape == (2, 2, length, d0.shape[-1])
    assert _rel(y1, y0) < 1e-5 and _rel(d1, d0) < 1e-5 and _rel(s1, s0) < 1e-5
    for a, b in zip(g1, g0):
        assert a.shape == b.shape and a.dtype == b.dtype
        assert _rel(a, b) < 1e-4


def test_triton_op_under_bf16_autocast():
    mixer = _mixer()
    xz = torch.randn(2, 11, 2 * mixer.d_inner, device=DEV).bfloat16()
    with torch.autocast(DEV, dtype=torch.bfloat16):
        y0, _, _, g0 = _run(mixer, xz, "reference")
        y1, _, _, g1 = _run(mixer, xz, "triton")
    assert y1.dtype == torch.bfloat16 and _rel(y1, y0) < 2e-2
    for a, b in zip(g1, g0):
        assert a.dtype == b.dtype and _rel(a, b) < 5e-2


def test_custom_ops_registration():
    """Schema, fake (meta) implementations and autograd registration, as torch.compile needs."""
    mixer = _mixer()
    params = [p.detach().clone().requires_grad_() for p in mixer.mixer_params().flat()]
    xz = torch.randn(2, 7, 2 * mixer.d_inner, device=DEV, requires_grad=True)
    args = (xz, *params, mixer.dt_rank, 0.5, True, True)
    torch.library.opcheck(torch.ops.vimstm.bimamba.default, args)
    x = torch.randn(2, 7, 8, device=DEV, requires_grad=True)
    r = torch.randn(2, 7, 8, device=DEV, requires_grad=True)
    w = torch.rand(8, device=DEV, requires_grad=True)
    torch.library.opcheck(torch.ops.vimstm.add_rmsnorm.default, (x, r, w, 1e-5))


def test_whole_model_same_logits_gradients_and_ssm_stats():
    torch.manual_seed(0)
    ref = vimstm.create_model("vim_tiny", scan_backend="reference", **TINY).to(DEV)
    tri = copy.deepcopy(ref)
    tri.set_scan_backend("triton")
    for m in (ref, tri):
        m.layers[1].mixer.record = SSM_PARTS
    x = torch.randn(2, 3, 16, 16, device=DEV)
    out0, out1 = ref(x), tri(x)
    assert _rel(out1, out0) < 1e-5
    s0, s1 = ref.layers[1].mixer.last_ssm, tri.layers[1].mixer.last_ssm
    for name in ("B_fwd", "B_bwd", "log_decay_fwd", "log_decay_bwd", "delta_fwd", "delta_bwd",
                 "importance"):
        assert torch.allclose(getattr(s1, name), getattr(s0, name), atol=1e-5), name
    g = torch.randn_like(out0)
    out0.backward(g)
    out1.backward(g)
    for (name, p0), p1 in zip(ref.named_parameters(), tri.parameters()):
        assert _rel(p1.grad, p0.grad) < 1e-4, name


if CUDA:  # dynamo traces Triton kernels on CUDA only, not Triton's interpreter

    @pytest.mark.parametrize("merged", [False, True])
    def test_compiled_model_fullgraph(merged):
        """torch.compile(fullgraph=True) traces the Triton model (custom ops included), dense
        and merged, forward and backward, and computes what eager does."""
        torch.manual_seed(0)
        model = vimstm.create_model("vim_tiny", scan_backend="triton", **TINY).to(DEV)
        if merged:
            vimstm.patch(model, method="stm", ratio=0.25)
        torch._dynamo.reset()
        compiled = torch.compile(model, fullgraph=True)
        x = torch.randn(2, 3, 16, 16, device=DEV)
        assert _rel(compiled(x), model(x)) < 1e-5
        grads = torch.autograd.grad(compiled(x).square().sum(), list(model.parameters()))
        want = torch.autograd.grad(model(x).square().sum(), list(model.parameters()))
        for a, b in zip(grads, want):
            assert _rel(a, b) < 1e-4
