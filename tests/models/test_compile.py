"""``torch.compile(fullgraph=True)`` on the PyTorch path: the model, dense and merged, traces
without a graph break and computes what eager does (the Triton path: tests/ops/test_mixer.py)."""

from __future__ import annotations

import pytest
import torch

import vimstm

TINY = dict(depth=2, embed_dim=16, img_size=16, patch_size=4, stride=4, num_classes=10)


@pytest.mark.parametrize("method", ["stm"])  # merged: the dense path with merge steps
def test_compiled_model_matches_eager(method):
    torch.manual_seed(0)
    model = vimstm.create_model("vim_tiny", scan_backend="reference", **TINY)
    if method:
        vimstm.patch(model, method=method, ratio=0.25)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager_decomp_partition")
    x = torch.randn(2, 3, 16, 16)
    out = compiled(x)
    assert torch.allclose(out, model(x), atol=1e-5)
    grads = torch.autograd.grad(out.square().sum(), list(model.parameters()))
    want = torch.autograd.grad(model(x).square().sum(), list(model.parameters()))
    for a, b in zip(grads, want):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
