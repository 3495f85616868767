"""The selective scan alone: Triton vs the PyTorch reference vs mamba_ssm (where installed).

    PYTHONPATH=src python benchmarks/scan.py [--sizes 128,384,197,16 ...] [--json PATH]

Times the forward (and, with --backward, forward+backward) with ``triton.testing.do_bench``
(CUDA events, median), fp32 inputs with z, D and the dt bias + softplus, for two memory layouts:
"cf" = channel-first contiguous (b, d, l) as mamba_ssm expects, "cl" = channels-last (the
transposed view of a linear layer's output, which is what the vimstm model feeds the kernel).
"""

from __future__ import annotations

import argparse
import json

import torch

DEFAULT_SIZES = ["128,384,197,16", "256,384,197,16", "128,768,197,16", "128,1536,197,16",
                 "128,384,99,16", "128,384,50,16", "64,384,785,16"]


def make(b: int, d: int, L: int, n: int, layout: str, dtype: torch.dtype, grad: bool):
    dev = "cuda"
    if layout == "cl":
        u, delta, z = (torch.randn(b, L, d, device=dev).transpose(1, 2) for _ in range(3))
        bc = torch.randn(b, L, 2 * n, device=dev)
        B, C = bc[..., :n].transpose(1, 2), bc[..., n:].transpose(1, 2)
    else:
        u, delta, z = (torch.randn(b, d, L, device=dev) for _ in range(3))
        B, C = torch.randn(b, n, L, device=dev), torch.randn(b, n, L, device=dev)
    delta = delta * 0.5
    A = -torch.arange(1, n + 1, device=dev, dtype=torch.float32).repeat(d, 1)
    D = torch.ones(d, device=dev)
    bias = torch.rand(d, device=dev) * -4 - 2
    ts = [u.to(dtype), delta.to(dtype), A, B.to(dtype), C.to(dtype), D, z.to(dtype), bias]
    return [t.detach().requires_grad_(grad) for t in ts]


def main() -> None:
    from triton.testing import do_bench

    from vimstm.ops.scan_ref import selective_scan_ref
    from vimstm.ops.triton_scan import selective_scan_triton

    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="*", default=DEFAULT_SIZES, help="b,d,l,n")
    ap.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), default="fp32")
    ap.add_argument("--backward", action="store_true", help="also time forward+backward")
    ap.add_argument("--reference", action="store_true", help="also time the PyTorch reference")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn  # type: ignore
    except ImportError:
        selective_scan_fn = None
    print(f"device: {torch.cuda.get_device_name()}  dtype: {args.dtype}  "
          f"mamba_ssm: {'yes' if selective_scan_fn else 'not installed'}")
    rows = []

    def bench(fn) -> float:
        return do_bench(fn, warmup=25, rep=200, return_mode="median")

    for size in args.sizes:
        b, d, L, n = (int(v) for v in size.split(","))
        for layout in ("cf", "cl"):
            ins = make(b, d, L, n, layout, dtype, False)
            row = {"size": size, "layout": layout}
            with torch.no_grad():
                for key, rev in (("triton_fwd_ms", False), ("triton_rev_fwd_ms", True)):
                    row[key] = bench(
                        lambda ins=ins, rev=rev: selective_scan_triton(*ins, True, rev))
                if selective_scan_fn is not None:
                    row["mamba_ssm_fwd_ms"] = bench(lambda ins=ins: selective_scan_fn(
                        ins[0], ins[1], ins[2], ins[3], ins[4], ins[5], ins[6],
                        delta_bias=ins[7], delta_softplus=True))
                if args.reference and layout == "cf":
                    row["reference_fwd_ms"] = bench(
                        lambda ins=ins: selective_scan_ref(*ins, True, False))
            if args.backward:
                insg = make(b, d, L, n, layout, dtype, True)

                def fwd_bwd(insg=insg):
                    out = selective_scan_triton(*insg, True, False)
                    out.backward(torch.ones_like(out))

                row["triton_fwd_bwd_ms"] = bench(fwd_bwd)
            rows.append(row)
            print("  ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                            for k, v in row.items()), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "dtype": args.dtype,
                       "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
