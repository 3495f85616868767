"""Compare vimstm's logits with the official hustvl/Vim code on the same random weights.

Needs a checkout of https://github.com/hustvl/Vim (``--vim-repo``) and ``einops``, which that
code imports (``pip install einops``). The official model code is
imported from there as it is; only its CUDA extensions (selective_scan_cuda, causal_conv1d_cuda)
and the Triton RMSNorm are replaced by the reference functions that ship in that same checkout,
so this runs on a CPU. With mamba_ssm and causal_conv1d installed on a GPU machine, pass
``--real-kernels`` to use them instead.

    python benchmarks/check_official.py --vim-repo ../Vim --models vim_tiny vim_small
"""

from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F

import vimstm
from vimstm.models.registry import get_spec


def install_cpu_stand_ins() -> None:
    """Fake the official CUDA extensions with the official reference math (CPU)."""

    def conv_fwd(x, weight, bias, *args):
        silu = args[-1] if args else True
        w = weight.shape[-1]
        y = F.conv1d(x, weight[:, None, :], bias, padding=w - 1, groups=x.shape[1])[
            ..., : x.shape[-1]
        ]
        return F.silu(y) if silu else y

    def scan_fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        from mamba_ssm.ops.selective_scan_interface import selective_scan_ref

        out = selective_scan_ref(u, delta, A, B, C, D, None, delta_bias, delta_softplus)
        out_z = out * F.silu(z.float()).to(out.dtype) if z is not None else out
        return out, None, out_z

    sys.modules["causal_conv1d_cuda"] = types.SimpleNamespace(causal_conv1d_fwd=conv_fwd)
    sys.modules["selective_scan_cuda"] = types.SimpleNamespace(fwd=scan_fwd)
    cc = types.ModuleType("causal_conv1d")
    cc.causal_conv1d_fn = None
    cc.causal_conv1d_update = None
    sys.modules["causal_conv1d"] = cc
    for name in ("mamba_ssm.utils.generation", "mamba_ssm.utils.hf"):
        m = types.ModuleType(name)
        m.GenerationMixin = object
        m.load_config_hf = m.load_state_dict_hf = None
        sys.modules[name] = m
    mm = types.ModuleType("mamba_ssm.models.mixer_seq_simple")
    mm.MambaLMHeadModel = None
    sys.modules["mamba_ssm.models.mixer_seq_simple"] = mm


def load_official(repo: Path, real_kernels: bool):
    sys.path[:0] = [str(repo / "vim"), str(repo / "mamba-1p1p1")]
    if not real_kernels:
        install_cpu_stand_ins()
    import models_mamba  # type: ignore

    if not real_kernels:
        from mamba_ssm.ops.triton.layer_norm import rms_norm_ref  # type: ignore

        def rms_norm_fn(
            x, weight, bias, residual=None, prenorm=False, residual_in_fp32=False, eps=1e-6, **_
        ):
            out = rms_norm_ref(
                x, weight, bias, residual=residual, eps=eps, prenorm=prenorm, upcast=True
            )
            if prenorm:
                y, res = out
                return y.to(x.dtype), res.float() if residual_in_fp32 else res
            return out.to(x.dtype)

        models_mamba.rms_norm_fn = rms_norm_fn
    return models_mamba


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--vim-repo", type=Path, required=True)
    ap.add_argument(
        "--models",
        nargs="+",
        default=["vim_tiny", "vim_small", "vim_base", "vim_tiny_stride8", "vim_small_stride8"],
    )
    ap.add_argument("--depth", type=int, default=None, help="fewer blocks for a quick check")
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--real-kernels", action="store_true")
    args = ap.parse_args()
    official = load_official(args.vim_repo, args.real_kernels)
    torch.manual_seed(0)
    worst = 0.0
    for name in args.models:
        spec = get_spec(name)
        over = {"depth": args.depth} if args.depth else {}
        if args.depth:  # the registered functions fix depth=24: build the same class directly
            ref = official.VisionMamba(
                patch_size=16,
                stride=spec.kwargs.get("stride", 16),
                embed_dim=spec.kwargs["embed_dim"],
                depth=args.depth,
                rms_norm=True,
                residual_in_fp32=True,
                fused_add_norm=True,
                final_pool_type="mean",
                if_abs_pos_embed=True,
                if_rope=False,
                if_rope_residual=False,
                bimamba_type="v2",
                if_cls_token=True,
                if_divide_out=True,
                use_middle_cls_token=True,
            )
        else:
            ref = getattr(official, spec.name)()
        ref = ref.to(args.device).eval()
        with torch.no_grad():  # held-out random weights: perturb every tensor
            for p in ref.parameters():
                p.add_(torch.randn_like(p) * 0.02)
        ours = vimstm.create_model(name, scan_backend="reference", **over).to(args.device).eval()
        ours.load_state_dict(ref.state_dict(), strict=True)
        x = torch.randn(args.batch_size, 3, 224, 224, device=args.device)
        with torch.no_grad():
            a, b = ref(x), ours(x)
        d = (a - b).abs().max().item()
        worst = max(worst, d)
        tokens = ours.pos_embed.shape[1]
        print(
            f"{name:20s} depth {len(ours.layers):2d} tokens {tokens:4d} max|dlogit| {d:.3e} "
            f"(logit scale {a.abs().max().item():.2f})",
            flush=True,
        )
    print(f"worst max|dlogit| {worst:.3e}: {'PASS' if worst < 1e-4 else 'FAIL'} (< 1e-4)")
    sys.exit(0 if worst < 1e-4 else 1)


if __name__ == "__main__":
    main()
