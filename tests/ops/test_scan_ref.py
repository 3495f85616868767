"""The reference selective scan, conv1d and mixer core against independent formulations: a
float64 element-by-element recurrence and the token-by-token loop (the oracle of the chunked
scan), composed per direction as the official flip / scan / flip for the mixer."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vimstm.errors import ConfigError
from vimstm.ops import (
    causal_conv1d_ref,
    resolve_backend,
    scan_ref,
    selective_scan,
    selective_scan_ref,
)
from vimstm.ops import mixer as mixer_ops


def naive_scan(u, delta, A, B, C, D, z, bias):
    """Textbook recurrence, element by element, float64."""
    u, delta, A, B, C, D, z, bias = (t.double() for t in (u, delta, A, B, C, D, z, bias))
    b, d, L = u.shape
    n = A.shape[1]
    y = torch.zeros(b, d, L, dtype=torch.float64)
    for bi in range(b):
        for di in range(d):
            h = torch.zeros(n, dtype=torch.float64)
            for t in range(L):
                dt = F.softplus(delta[bi, di, t] + bias[di])
                h = torch.exp(dt * A[di]) * h + dt * B[bi, :, t] * u[bi, di, t]
                y[bi, di, t] = (h * C[bi, :, t]).sum() + D[di] * u[bi, di, t]
    return y * F.silu(z)


def token_loop_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=True,
                    reverse=False):
    """The scan one token at a time over (b, d, n) states, in the inputs' precision (>= fp32)."""
    acc = torch.promote_types(u.dtype, torch.float32)
    u32, dt = u.to(acc), delta.to(acc)
    if delta_bias is not None:
        dt = dt + delta_bias.to(acc)[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    h = u32.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = [None] * u.shape[-1]
    for t in (range(u.shape[-1] - 1, -1, -1) if reverse else range(u.shape[-1])):
        h = torch.exp(dt[..., t, None] * A.to(acc)) * h \
            + (dt[..., t] * u32[..., t])[..., None] * B.to(acc)[:, None, :, t]
        ys[t] = (h * C.to(acc)[:, None, :, t]).sum(-1)
    y = torch.stack(ys, -1) if ys else u32.clone()
    if D is not None:
        y = y + u32 * D.to(acc)[:, None]
    if z is not None:
        y = y * F.silu(z.to(acc))
    return y.to(u.dtype)


def make_inputs(b=2, d=3, n=4, L=9, dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return dict(
        u=r(b, d, L).to(dtype),
        delta=r(b, d, L).to(dtype),
        A=-torch.rand(d, n, generator=g) - 0.1,
        B=r(b, n, L).to(dtype),
        C=r(b, n, L).to(dtype),
        D=r(d),
        z=r(b, d, L).to(dtype),
        delta_bias=r(d) * 0.1,
    )


def test_matches_textbook_recurrence():
    i = make_inputs()
    y = selective_scan_ref(**i)
    ref = naive_scan(i["u"], i["delta"], i["A"], i["B"], i["C"], i["D"], i["z"], i["delta_bias"])
    torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("L", [1, 7, 20])
def test_reverse_is_flip_scan_flip(L):
    i = make_inputs(L=L)
    y = selective_scan_ref(**i, reverse=True)
    fl = {k: (v.flip(-1) if k in ("u", "delta", "B", "C", "z") else v) for k, v in i.items()}
    torch.testing.assert_close(y, selective_scan_ref(**fl).flip(-1), rtol=1e-6, atol=1e-6)


def test_low_precision_inputs_keep_dtype_and_fp32_math():
    i = make_inputs(dtype=torch.bfloat16)
    y = selective_scan_ref(**i)
    assert y.dtype == torch.bfloat16
    ref = selective_scan_ref(**{k: v.float() for k, v in i.items()})
    torch.testing.assert_close(y.float(), ref, rtol=2e-2, atol=2e-2)


def test_scan_gradients_match_finite_differences():
    i = {
        k: v.double().requires_grad_(k in ("u", "delta", "B", "C", "z"))
        for k, v in make_inputs(b=1, d=2, n=2, L=5).items()
    }
    names = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
    assert torch.autograd.gradcheck(
        lambda *a: selective_scan_ref(*a, reverse=True), tuple(i[k] for k in names)
    )


@pytest.mark.parametrize("width", [2, 4])
def test_conv_reverse_is_flip_conv_flip(width):
    x, w, bias = torch.randn(2, 5, 11), torch.randn(5, 1, width), torch.randn(5)
    fwd = causal_conv1d_ref(x, w, bias)
    manual = F.silu(F.conv1d(x, w, bias, padding=width - 1, groups=5)[..., :11])
    torch.testing.assert_close(fwd, manual)
    rev = causal_conv1d_ref(x, w, bias, reverse=True)
    torch.testing.assert_close(rev, causal_conv1d_ref(x.flip(-1), w, bias).flip(-1))


def test_dispatch_resolves_and_rejects():
    assert resolve_backend("auto", "cpu") == "reference"
    with pytest.raises(ConfigError, match="unknown scan_backend"):
        resolve_backend("cuda-magic", "cpu")
    with pytest.raises(ConfigError, match="not available"):
        resolve_backend("mamba_ssm", "cpu")
    i = make_inputs()
    torch.testing.assert_close(selective_scan(**i, backend="reference"), selective_scan_ref(**i))


@pytest.mark.parametrize("L", [1, 2, 5, 16, 17, 50, 257])
@pytest.mark.parametrize("reverse", [False, True])
def test_chunked_scan_equals_token_loop(L, reverse):
    i = make_inputs(b=3, d=5, n=4, L=L)
    i["delta"] = i["delta"] * 3  # decays from ~0 to ~1: chunk products must not under/overflow
    oracle = token_loop_scan(**{k: v.double() for k, v in i.items()}, reverse=reverse)
    with torch.no_grad():
        y = selective_scan_ref(**i, reverse=reverse)
    torch.testing.assert_close(y.double(), oracle, rtol=1e-5, atol=1e-5)
    assert torch.equal(y, selective_scan_ref(**i, reverse=reverse))  # autograd path: same sums


def test_chunk_length_does_not_change_the_result(monkeypatch):
    i = make_inputs(b=5, d=3, n=4, L=23)
    with torch.no_grad():
        whole = selective_scan_ref(**i)
        monkeypatch.setattr(scan_ref, "_CHUNK_ELEMENTS", 1)  # one token per chunk
        torch.testing.assert_close(selective_scan_ref(**i), whole, rtol=1e-6, atol=1e-6)


def test_scan_without_optional_inputs_and_plain_delta():
    i = make_inputs(L=11)
    i["delta"] = i["delta"].abs()
    y = selective_scan_ref(i["u"], i["delta"], i["A"], i["B"], i["C"], delta_softplus=False)
    ref = token_loop_scan(i["u"].double(), i["delta"].double(), i["A"].double(),
                          i["B"].double(), i["C"].double(), delta_softplus=False)
    torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-5)



def test_fast_softplus_matches_pytorch():
    x = torch.cat((torch.randn(10000) * 8, torch.tensor(
        [-104.0, -100.0, -30.0, -17.0, -1e-8, 0.0, 1e-8, 19.9, 20.0, 20.1, 50.0, 90.0, 1e30,
         float("inf"), float("-inf"), float("nan")])))
    with torch.no_grad():
        fast = scan_ref.softplus(x)
    # within 2 ulp (and one unit where exp(x) is a denormal, below 1.2e-38)
    torch.testing.assert_close(fast, F.softplus(x), rtol=4e-7, atol=1e-44, equal_nan=True)
    torch.testing.assert_close(fast.double(), F.softplus(x.double()), rtol=4e-7, atol=1e-44,
                               equal_nan=True)
    g = torch.randn(5, requires_grad=True)
    assert scan_ref.softplus(g).grad_fn is not None  # autograd: PyTorch's own softplus


def _mixer_params(d=6, n=4, r=3, width=4, dtype=torch.float64):
    g = torch.Generator().manual_seed(2)
    r_ = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    pair = lambda f: (f(), f())  # noqa: E731
    return mixer_ops.MixerParams(
        conv_w=pair(lambda: r_(d, 1, width) * 0.5), conv_b=pair(lambda: r_(d) * 0.1),
        x_proj_w=pair(lambda: r_(r + 2 * n, d) * 0.5), dt_proj_w=pair(lambda: r_(d, r) * 0.5),
        dt_proj_b=pair(lambda: r_(d) * 0.5 - 1), A_log=pair(lambda: r_(d, n) * 0.5 + 0.5),
        D=pair(lambda: r_(d)))


def oracle_mixer(xz, p, scale):
    """Official bimamba v2 per direction: conv, x_proj, dt_proj, token-loop scan (flip for the
    reverse one); y (b, l, d), x_dbl (2, b, l, R + 2n) in the mixer's layout (the official
    (dt, B, C) after exact zeros), stats (b, 2, 2, l)."""
    x, z = xz.transpose(1, 2).chunk(2, dim=1)
    r, n = p.dt_proj_w[0].shape[1], p.A_log[0].shape[1]
    y, dbls, stats = 0, [], []
    for k, reverse in ((0, False), (1, True)):
        xc = causal_conv1d_ref(x, p.conv_w[k], p.conv_b[k], reverse=reverse)
        x_dbl = xc.transpose(1, 2) @ p.x_proj_w[k].t()
        dt, B, C = x_dbl.split([r, n, n], dim=-1)
        delta = (dt @ p.dt_proj_w[k].t()).transpose(1, 2)
        A = -torch.exp(p.A_log[k])
        y = y + token_loop_scan(xc, delta, A, B.transpose(1, 2), C.transpose(1, 2), p.D[k], z,
                                p.dt_proj_b[k], True, reverse)
        full = F.softplus(delta + p.dt_proj_b[k][:, None])  # (b, d, l)
        stats.append(torch.stack((full.mean(1), (full * A.mean(-1)[:, None]).mean(1)), 1))
        zeros = x_dbl.new_zeros(*x_dbl.shape[:-1], mixer_ops.padded_rank(r) - r)
        dbls.append(torch.cat((zeros, dt, B, C), -1))
    return (y * scale).transpose(1, 2), torch.stack(dbls), torch.stack(stats, 2)


@pytest.mark.parametrize("L", [1, 13])
@pytest.mark.parametrize("chunk_elements", [1, 300, None])  # 1 and 3 tokens per chunk, all
def test_reference_mixer_equals_official_per_direction(L, chunk_elements, monkeypatch):
    if chunk_elements:
        monkeypatch.setattr(scan_ref, "_CHUNK_ELEMENTS", chunk_elements)
    p = _mixer_params()
    xz = torch.randn(2, L, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    want = oracle_mixer(xz, p, 0.5)
    with torch.no_grad():
        got = mixer_ops.bimamba_reference(xz, p, 0.5, stats=True)
    for a, b in zip(got, want):
        assert a.shape == b.shape and a.dtype == b.dtype
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    # fp32 against the float64 oracle
    p32 = mixer_ops.MixerParams(*[tuple(t.float() for t in f) for f in (
        p.conv_w, p.conv_b, p.x_proj_w, p.dt_proj_w, p.dt_proj_b, p.A_log, p.D)])
    with torch.no_grad():
        got32 = mixer_ops.bimamba_reference(xz.float(), p32, 0.5, stats=True)
    for a, b in zip(got32, want):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-5)


def test_x_dbl_layout_pads_delta_to_a_multiple_of_8():
    """vim_tiny's widths (dt_rank 12, d_state 16): rows of 48, Δ's part 16 wide, its padding
    exact zeros, so every x_proj / dt_proj operand strides on 16 bytes in bf16."""
    assert [mixer_ops.padded_rank(r) for r in (1, 8, 12, 16, 24, 25, 48)] == [
        8, 8, 16, 16, 24, 32, 48]
    p = _mixer_params(d=8, n=16, r=12)
    xz = torch.randn(2, 5, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    _, x_dbl, _ = mixer_ops.bimamba_reference(xz, p, 0.5)
    assert x_dbl.shape == (2, 2, 5, 48) and torch.equal(x_dbl[..., :4], torch.zeros(2, 2, 5, 4))
    assert mixer_ops.padded_x_proj(p.x_proj_w[0], 12).shape == (48, 8)
    assert mixer_ops.padded_dt_proj(p.dt_proj_w[0], 12).shape == (8, 16)


def test_reference_mixer_gradients_match_the_oracle(monkeypatch):
    monkeypatch.setattr(scan_ref, "_CHUNK_ELEMENTS", 300)  # several chunks
    p = _mixer_params()
    leaves = [t.clone().requires_grad_() for t in p.flat()]
    q = mixer_ops.MixerParams(conv_w=(leaves[0], leaves[2]), conv_b=(leaves[1], leaves[3]),
                              x_proj_w=(leaves[4], leaves[5]), dt_proj_w=(leaves[6], leaves[8]),
                              dt_proj_b=(leaves[7], leaves[9]), A_log=(leaves[10], leaves[11]),
                              D=(leaves[12], leaves[13]))
    xz = torch.randn(2, 9, 12, dtype=torch.float64, requires_grad=True)
    gy = torch.randn(2, 9, 6, dtype=torch.float64)
    y = mixer_ops.bimamba_reference(xz, q, 0.5)[0]
    got = torch.autograd.grad(y, [xz, *leaves], gy)
    want = torch.autograd.grad(oracle_mixer(xz, q, 0.5)[0], [xz, *leaves], gy)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    with torch.no_grad():  # the in-place path computes what the autograd path does
        torch.testing.assert_close(mixer_ops.bimamba_reference(xz, q, 0.5)[0], y.detach(),
                                   rtol=1e-12, atol=1e-12)
