"""Architecture facts that decide equivalence with hustvl/Vim."""

from __future__ import annotations

import pytest
import timm
import torch

import vimstm
from conftest import TINY
from vimstm.errors import ConfigError
from vimstm.models.vim import PatchEmbed, patch_grid
from vimstm.ops import causal_conv1d_ref, selective_scan_ref
from vimstm.ops.merge_ref import delta_from_inputs

OFFICIAL_BLOCK_KEYS = {
    "mixer.A_log",
    "mixer.D",
    "mixer.A_b_log",
    "mixer.D_b",
    "mixer.in_proj.weight",
    "mixer.conv1d.weight",
    "mixer.conv1d.bias",
    "mixer.x_proj.weight",
    "mixer.dt_proj.weight",
    "mixer.dt_proj.bias",
    "mixer.conv1d_b.weight",
    "mixer.conv1d_b.bias",
    "mixer.x_proj_b.weight",
    "mixer.dt_proj_b.weight",
    "mixer.dt_proj_b.bias",
    "mixer.out_proj.weight",
    "norm.weight",
}


def test_registry_names_aliases_and_timm():
    names = vimstm.list_models()
    assert {"vim_tiny", "vim_tiny_stride8", "vim_small", "vim_small_stride8", "vim_base"} <= set(
        names
    )
    full = vimstm.list_models(aliases=False)
    assert (
        "vim_base_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_middle_cls_token_div2"
        in full
    )
    m = timm.create_model("vim_small", depth=1)
    assert isinstance(m, vimstm.VisionMamba) and m.embed_dim == 384
    m = timm.create_model(full[0], depth=1, num_classes=7)
    assert m.embed_dim == 192 and m.head.out_features == 7
    from vimstm.models import timm_models

    # timm lists every entry point in the module's __all__, and each one is in the module
    assert set(names) | set(full) <= set(timm_models.__all__)
    assert all(callable(getattr(timm_models, n)) for n in timm_models.__all__)


@pytest.mark.parametrize(
    "name,dim,tokens", [("vim_tiny", 192, 197), ("vim_small_stride8", 384, 730)]
)
def test_shapes_of_released_models(name, dim, tokens):
    m = vimstm.create_model(name, depth=1)
    assert m.embed_dim == dim and m.pos_embed.shape == (1, tokens, dim)
    assert m.layers[0].mixer.d_inner == 2 * dim and m.layers[0].mixer.dt_rank == -(-dim // 16)


def test_state_dict_keys_are_official():
    sd = vimstm.create_model("vim_tiny", depth=2).state_dict()
    top = {k for k in sd if not k.startswith("layers.")}
    assert top == {
        "cls_token",
        "pos_embed",
        "patch_embed.proj.weight",
        "patch_embed.proj.bias",
        "head.weight",
        "head.bias",
        "norm_f.weight",
    }
    for i in range(2):
        assert {
            k[len(f"layers.{i}.") :] for k in sd if k.startswith(f"layers.{i}.")
        } == OFFICIAL_BLOCK_KEYS
    assert sd["layers.0.mixer.A_log"].dtype == torch.float32


def test_class_token_is_inserted_in_the_middle(tiny_model):
    m = tiny_model
    with torch.no_grad():
        m.pos_embed.zero_()
    x = torch.randn(2, 3, 32, 32)
    tokens, pos = m.embed(x)
    assert pos == 16 // 2 and tokens.shape[1] == 17
    torch.testing.assert_close(tokens[:, pos], m.cls_token[0].expand(2, -1))
    patches = m.patch_embed(x)
    torch.testing.assert_close(tokens[:, :pos], patches[:, :pos])
    torch.testing.assert_close(tokens[:, pos + 1 :], patches[:, pos:])


def test_logits_are_read_at_the_class_token(tiny_model):
    m, x = tiny_model, torch.randn(2, 3, 32, 32)
    feats = {}
    m.norm_f.register_forward_hook(lambda mod, inp, out: feats.update(all=out[0]))
    with torch.no_grad():
        logits = m(x)
    torch.testing.assert_close(logits, m.head(feats["all"][:, 8]))


def test_mixer_equals_official_flip_formulation(tiny_model):
    """Backward branch = flip, causal conv, scan, flip back (the official bimamba v2 code)."""
    mix = tiny_model.layers[0].mixer
    h = torch.randn(2, 17, 32)
    with torch.no_grad():
        ours = mix(h)
        xz = mix.in_proj(h).transpose(1, 2)

        def branch(xz, conv, x_proj, dt_proj, a_log, D):
            x, z = xz.chunk(2, dim=1)
            xc = causal_conv1d_ref(x, conv.weight, conv.bias)
            dbl = x_proj(xc.transpose(1, 2))
            dt, B, C = dbl.split([mix.dt_rank, mix.d_state, mix.d_state], dim=-1)
            return selective_scan_ref(
                xc,
                dt_proj.weight @ dt.transpose(1, 2),
                -torch.exp(a_log),
                B.transpose(1, 2),
                C.transpose(1, 2),
                D,
                z,
                dt_proj.bias,
            )

        f = branch(xz, mix.conv1d, mix.x_proj, mix.dt_proj, mix.A_log, mix.D)
        b = branch(xz.flip(-1), mix.conv1d_b, mix.x_proj_b, mix.dt_proj_b, mix.A_b_log, mix.D_b)
        official = mix.out_proj(((f + b.flip(-1)) / 2).transpose(1, 2))
    torch.testing.assert_close(ours, official, rtol=1e-5, atol=1e-6)


def test_residual_stays_fp32_under_low_precision(tiny_model):
    blk = tiny_model.layers[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        hidden, residual = blk(torch.randn(2, 17, 32, dtype=torch.bfloat16), None)
        assert residual.dtype == torch.float32 and hidden.dtype == torch.bfloat16
        _, residual = blk(hidden, residual)
    assert residual.dtype == torch.float32


def test_overrides_and_clear_errors():
    m = vimstm.create_model("vim_tiny", **TINY, in_chans=1, d_state=4)
    assert m.patch_embed.proj.in_channels == 1 and m.layers[0].mixer.A_log.shape == (64, 4)
    assert m(torch.randn(1, 1, 32, 32)).shape == (1, 10)
    with pytest.raises(ConfigError, match="unknown model"):
        vimstm.create_model("vim_huge")
    with pytest.raises(ConfigError, match="unknown option"):
        vimstm.create_model("vim_tiny", depht=3)
    with pytest.raises(ConfigError, match="does not fit the patch grid"):
        vimstm.create_model("vim_tiny", img_size=225, depth=1)
    with pytest.raises(ConfigError, match="smaller than the patch"):
        patch_grid(8, 16, 16)
    with pytest.raises(ConfigError, match="expects 32x32"):
        m(torch.randn(1, 1, 64, 64))


def test_dynamic_img_size_resamples_the_position_embedding():
    """Progressive resizing: a smaller input runs through a resampled position embedding, with
    the class row kept and re-inserted in the middle, and gradients reach the parameter."""
    from vimstm.models.vim import resample_pos_embed

    m = vimstm.create_model("vim_tiny", **{**TINY, "patch_size": 4, "stride": 4},
                            dynamic_img_size=True)
    pos = m.pos_embed.detach()
    same = resample_pos_embed(pos, (8, 8), (8, 8))
    torch.testing.assert_close(same, pos)  # the model's own grid: unchanged
    small = resample_pos_embed(pos, (8, 8), (4, 4), antialias=True)
    assert small.shape == (1, 17, pos.shape[-1])
    torch.testing.assert_close(small[:, 8], pos[:, 32])  # class row moved to the new middle
    x = torch.randn(2, 3, 16, 16)
    m(x).sum().backward()
    assert m.pos_embed.grad is not None and m.pos_embed.grad.abs().sum() > 0
    ref = m.patch_embed.proj(x).flatten(2).transpose(1, 2)
    tokens, cls_index = m.embed(x)
    assert cls_index == 8 and tokens.shape[1] == 17
    torch.testing.assert_close(tokens[:, :8], ref[:, :8] + small[:, :8])
    with pytest.raises(ConfigError, match="does not fit the patch grid"):
        m(torch.randn(1, 3, 18, 18))
    fixed = vimstm.create_model("vim_tiny", **{**TINY, "patch_size": 4, "stride": 4})
    with pytest.raises(ConfigError, match="dynamic_img_size=True"):
        fixed(x)


@pytest.mark.parametrize("img,patch,stride", [(224, 16, 16), (64, 16, 16), (32, 2, 2),
                                              (40, 16, 8)])
def test_patch_embed_equals_its_conv(img, patch, stride):
    """The gathered-patch matrix product (16x16 patches) is the conv's linear map, forward and
    backward, also under autocast; small or overlapping patches run the conv itself."""
    torch.manual_seed(0)
    pe = PatchEmbed(img, patch, stride, 3, 24)
    x = torch.randn(2, 3, img, img, requires_grad=True)
    out = pe(x)
    ref = pe.proj(x).flatten(2).transpose(1, 2)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(ref)
    grads = torch.autograd.grad(out, (x, pe.proj.weight, pe.proj.bias), g)
    refs = torch.autograd.grad(ref, (x, pe.proj.weight, pe.proj.bias), g)
    for a, b in zip(grads, refs):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low, low_ref = pe(x), pe.proj(x).flatten(2).transpose(1, 2)
    assert low.dtype == low_ref.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), ref, rtol=2e-2, atol=2e-2)


def test_stride8_grid():
    assert patch_grid(224, 16, 8) == (27, 27)
    assert patch_grid(32, 2, 2) == (16, 16)


def test_drop_path_only_in_training():
    m = vimstm.create_model("vim_tiny", **TINY, drop_path_rate=0.5)
    x = torch.randn(4, 3, 32, 32)
    m.eval()
    with torch.no_grad():
        torch.testing.assert_close(m(x), m(x))
    m.train()
    torch.manual_seed(1)
    a = m(x)
    torch.manual_seed(2)
    assert not torch.allclose(a, m(x))


def test_ssm_stats_survive_cuda_autocast_fp32_softplus(monkeypatch):
    """CUDA autocast runs softplus in fp32 on fp16 inputs; the recorded stats must cope."""
    import torch.nn.functional as F

    import vimstm.models.vim as vim_mod

    real = F.softplus
    monkeypatch.setattr(vim_mod.F, "softplus", lambda x, *a, **k: real(x.float(), *a, **k))
    m = vimstm.create_model("vim_tiny", **TINY).eval().half()
    vimstm.patch(m, method="stm", ratio=0.3)
    with torch.no_grad():
        out = m(torch.randn(2, 3, 32, 32).half())
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    stats = m.layers[0].mixer.last_ssm
    assert stats is not None and stats.log_decay_fwd.dtype == torch.float32


def test_ssm_stats_from_the_scan_equal_the_direct_computation():
    """The Δ statistics handed out by the scan (dispatch) are the channel means of Δ and of
    Δ·mean_n(A), computed here from the recorded per-channel Δ."""
    m = vimstm.create_model("vim_tiny", **TINY).eval()
    mixer = m.layers[1].mixer
    mixer.record = ("decay", "delta")
    with torch.no_grad():
        m(torch.randn(2, 3, 32, 32))
    ssm = mixer.last_ssm
    d = mixer.d_inner
    full = delta_from_inputs(ssm.dt_low, ssm.dt_weight, ssm.dt_bias)  # (b, l, 2 d), fwd first
    a_mean = -torch.exp(torch.stack((mixer.A_log, mixer.A_b_log))).mean(-1)  # (2, d)
    ts = ssm.token_stats
    for k in range(2):
        dk = full[..., k * d:(k + 1) * d]
        assert torch.allclose(ts[:, k], dk.mean(-1), atol=1e-6, rtol=1e-5)
        assert torch.allclose(ts[:, 2 + k], (dk * a_mean[k]).mean(-1), atol=1e-6, rtol=1e-5)
    assert (ts[:, 2:] <= 0).all() and (ts[:, :2] > 0).all()  # log-decays, mean Δ
