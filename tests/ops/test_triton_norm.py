"""The fused add + RMSNorm op (:mod:`vimstm.ops.norm`, Triton kernels) against its PyTorch
definition: outputs and gradients. Marked ``gpu`` (see ``tests/test_triton_interpreter.py``)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")
from vimstm.ops.dispatch import add_rmsnorm
from vimstm.ops.norm import add_rmsnorm_ref

pytestmark = pytest.mark.gpu
DEV = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("with_residual", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_add_rmsnorm_forward_and_backward(with_residual, dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 24, generator=g).to(dtype)
    res = torch.randn(2, 5, 24, generator=g) if with_residual else None
    w = torch.rand(24, generator=g) + 0.5
    gy = torch.randn(2, 5, 24, generator=g).to(dtype).to(DEV)
    gr = torch.randn(2, 5, 24, generator=g).to(DEV)
    outs = []
    for fn in (add_rmsnorm_ref, lambda *a: add_rmsnorm(*a, backend="triton")):
        ins = [t.to(DEV).requires_grad_() for t in (x, w) + ((res,) if res is not None else ())]
        y, r = fn(ins[0], ins[2] if res is not None else None, ins[1], 1e-5)
        grads = torch.autograd.grad([y, r], ins, [gy, gr])
        outs.append((y, r, grads))
    (y0, r0, g0), (y1, r1, g1) = outs
    assert y1.dtype == dtype and r1.dtype == torch.float32
    assert torch.equal(r1, r0)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    assert torch.allclose(y1.float(), y0.float(), atol=tol, rtol=tol)
    for a, b in zip(g1, g0):
        assert a.dtype == b.dtype
        gtol = 1e-4 if a.dtype == torch.float32 else 1e-2
        assert torch.allclose(a.float(), b.float(), atol=gtol, rtol=gtol)
