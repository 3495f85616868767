"""The fused merge kernels (:mod:`vimstm.ops.triton_merge`) against their PyTorch definitions.

Marked ``gpu``: on CUDA they run in this process; on the CPU they run under Triton's interpreter
in a fresh process (``tests/test_triton_interpreter.py``), since the interpreter must be on
before Triton is first imported.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")
import vimstm
from vimstm.models.registry import create_model
from vimstm.ops import dispatch, merge_ref

pytestmark = pytest.mark.gpu
CUDA = torch.cuda.is_available()
DEV = "cuda" if CUDA else "cpu"
TINY = dict(depth=2, embed_dim=32, img_size=32, patch_size=8, stride=8, num_classes=10)
MID = dict(TINY, depth=4, patch_size=4, stride=4)  # 64 patches


@pytest.mark.parametrize("d,with_res", [(32, True), (300, True), (7, False)])
def test_adjacent_dissimilarity(d, with_res):
    """The fused merge similarity equals its PyTorch definition (fp16 hidden, fp32 residual)."""
    from vimstm.ops.triton_merge import adjacent_dissimilarity_triton

    g = torch.Generator().manual_seed(d)
    h = torch.randn(2, 37, d, generator=g).half()
    res = torch.randn(2, 37, d, generator=g) if with_res else None
    h[1, 5] = h[1, 6]  # identical neighbours: dissimilarity 0 (clamped, never negative)
    if res is not None:
        res[1, 5] = res[1, 6]
    h, res = h.to(DEV), None if res is None else res.to(DEV)
    got = adjacent_dissimilarity_triton(h, res)
    want = merge_ref.adjacent_dissimilarity_ref(h, res)
    assert got.shape == (2, 36) and got.dtype == torch.float32
    assert torch.allclose(got, want, atol=1e-5)
    assert got[1, 5].item() < 1e-5 and (got >= 0).all()


@pytest.mark.parametrize("t,d,r,dtype", [(37, 40, 3, torch.float32), (2, 64, 12, torch.float32),
                                         (19, 33, 12, torch.bfloat16),
                                         (63, 20, 12, torch.float16)])
def test_delta_dissimilarity(t, d, r, dtype):
    """Δ similarity from the dt_proj inputs (strided views of x_dbl, as the mixer records them)
    equals its PyTorch definition, which writes the (batch, tokens, 2 d) Δ out; 37 and 63
    tokens span two row tiles of the kernel (63: the edges fill them exactly)."""
    from vimstm.ops.triton_merge import delta_dissimilarity_triton

    g = torch.Generator().manual_seed(t * d)
    x_dbl = torch.randn(2, 3, t, r + 8, generator=g).to(dtype)
    dt_low = x_dbl[..., :r]
    w = torch.randn(2, d, r, generator=g).to(dtype) * r**-0.5
    bias = (torch.randn(2, d, generator=g) - 3).to(dtype)
    dt_low[:, 1, 1] = dt_low[:, 1, 0]  # identical neighbours: dissimilarity 0
    dt_low, w, bias = dt_low.to(DEV), w.to(DEV), bias.to(DEV)
    got = delta_dissimilarity_triton(dt_low, w, bias)
    want = merge_ref.delta_dissimilarity_ref(dt_low, w, bias)
    assert got.shape == (3, t - 1) and got.dtype == torch.float32
    assert torch.allclose(got, want, atol=1e-5)
    assert got[1, 0].item() < 1e-5 and (got >= 0).all()
    full = merge_ref.delta_from_inputs(dt_low, w, bias)
    assert full.shape == (3, t, 2 * d) and (full > 0).all()


@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-5), (torch.float16, 1e-3)])
def test_edge_alpha(dtype, atol):
    """STM's least-squares pair weights: one kernel against merge_ref.edge_alpha_ref (which
    sums half-precision B in half precision, the kernel in fp32)."""
    from vimstm.ops.triton_merge import edge_alpha_triton

    g = torch.Generator().manual_seed(0)
    b, t, n = 2, 29, 16
    bf, bb = torch.randn(b, t, n, generator=g), torch.randn(b, t, n, generator=g)
    stats = torch.cat((torch.rand(b, 2, t, generator=g), -torch.rand(b, 2, t, generator=g)), 1)
    size = torch.randint(1, 4, (b, t), generator=g).float()
    ins = [x.to(DEV) for x in (bf.to(dtype), bb.to(dtype), stats, size)]
    got = edge_alpha_triton(*ins)
    want = merge_ref.edge_alpha_ref(*ins)
    assert got.shape == (b, t - 1) and torch.allclose(got, want, atol=atol)
    assert ((got >= 0) & (got <= 1)).all()


def test_pair_lerp():
    """The fused merge of hidden and residual equals two apply_pairs (lone tokens copied)."""
    from vimstm.ops.triton_merge import pair_lerp_triton

    g = torch.Generator().manual_seed(1)
    b, t, d, new = 2, 9, 40, 6
    hidden = torch.randn(b, t, d, generator=g).half().to(DEV)
    residual = torch.randn(b, t, d, generator=g).to(DEV)
    rows = torch.tensor([0, 1, 3, 5, 6, 8, 0, 2, 4, 5, 7, 8])  # per sample: slot -> first
    first = rows + torch.arange(b).repeat_interleave(new) * t
    last = first + torch.tensor([0, 1, 1, 0, 1, 0] * b)
    w_last = torch.rand(b * new, 1, generator=g)
    first, last, w_last = first.to(DEV), last.to(DEV), w_last.to(DEV)
    h, r = pair_lerp_triton(hidden, residual, first, last, w_last)
    torch.testing.assert_close(h, merge_ref.apply_pairs(hidden, first, last, w_last),
                               atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(r, merge_ref.apply_pairs(residual, first, last, w_last))
    lone = (first == last).view(b, new)
    assert torch.equal(h[lone], hidden.reshape(b * t, d)[first[lone.flatten()]])


MERGE_CASES = [
    ("stm", {"r": [4, 0]}, TINY, True),
    ("stm", {"r": [16, 12, 6], "protect": 0}, MID, False),
    ("stm", {"r": [14, 10, 0], "protect": 3, "fading": "gamma"}, MID, False),
    ("stm", {"r": [12, 8, 4], "similarity": "delta"}, MID, False),
    ("random", {"r": [16, 8, 0], "seed": 1}, MID, False),
]


@pytest.mark.parametrize("method,opts,arch,all_triton", MERGE_CASES)
def test_merged_model_same_with_fused_kernels(method, opts, arch, all_triton, monkeypatch):
    """Merging with the Triton kernels (fused Δ statistics, similarity, pair weights, pair
    choice and layout, apply) gives the PyTorch path's tokens, sizes, groups and logits.

    ``all_triton``: scans in Triton too; otherwise (on the CPU, where the interpreter is slow)
    only the merge kernels, with the PyTorch scan's statistics as their input.
    """
    torch.manual_seed(0)
    model = create_model("vim_tiny", scan_backend="reference", **arch).to(DEV).eval()
    vimstm.patch(model, method=method, trace_source=True, **opts)
    x = torch.randn(3, 3, 32, 32, device=DEV)
    with torch.no_grad():
        ref = model(x)
        ref_info = dict(model.merge_info)
        if all_triton or CUDA:
            model.set_scan_backend("triton")
        else:
            monkeypatch.setattr(dispatch, "merge_backend", lambda backend, device: "triton")
        out = model(x)
    info = model.merge_info
    assert model.merger.backend == "triton"
    assert info["tokens_per_block"] == ref_info["tokens_per_block"]
    assert info["cls_index_per_block"] == ref_info["cls_index_per_block"]
    assert torch.equal(info["size"], ref_info["size"])
    assert torch.equal(info["source"], ref_info["source"])  # the same groups
    assert (out - ref).abs().max().item() < 1e-4


@pytest.mark.parametrize("method", ["stm", "random", "prune-norm", "prune-top"])
def test_default_schedule_same_logits(method, monkeypatch):
    """The default schedule at 60% of the GFLOPs, Triton vs PyTorch: vim_tiny at 224 px on CUDA
    (everything in Triton); on the CPU a 64-patch model with the merge kernels only."""
    torch.manual_seed(0)
    arch, batch = ({}, 8) if CUDA else (MID, 3)
    model = create_model("vim_tiny", scan_backend="reference", **arch).to(DEV).eval()
    vimstm.patch(model, method=method, flops=0.6, **({"seed": 0} if method == "random" else {}))
    size = model.patch_embed.img_size[0]
    x = torch.randn(batch, 3, size, size, device=DEV)
    with torch.no_grad():
        ref = model(x)
        tokens = model.merge_info["tokens_per_block"]
        if CUDA:
            model.set_scan_backend("auto")
        else:
            monkeypatch.setattr(dispatch, "merge_backend", lambda backend, device: "triton")
        out = model(x)
    assert model.merger.backend == "triton"
    assert model.merge_info["tokens_per_block"] == tokens
    assert (out - ref).abs().max().item() < 1e-2
