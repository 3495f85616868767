"""The conv1d kernels alone at the mixer's shapes, under KernelConfig tile variants, in one process.

    PYTHONPATH=src python benchmarks/conv_speed.py                  # the shipped tiles
    PYTHONPATH=src python benchmarks/conv_speed.py --variant default: \\
        --variant seg64:conv_fwd_segment=64,conv_bwd_segment=64 --json conv_speed.json

x is the first half of an in_proj output ``(b, l, 2 * d_inner)`` seen as ``(b, d, l)``, the
outputs ``(2, b, l, d)`` seen as ``(2, b, d, l)``, as :mod:`vimstm.ops.mixer` lays them out
(vim_tiny_cifar10 by default: 257 tokens, d_inner 384, batch 256, bf16, fp32 weights). Per
variant: the CUDA time of one ``conv_fwd`` and one ``conv_bwd`` call (CUDA events over
``--iters`` calls after a warm-up; the backward's includes the sum of its weight-gradient
partials), the kernel's own time (torch.profiler) and its effective bandwidth: the bytes of
x read and both directions written (forward), of x and both gradients read and dx written
(backward), over the kernel's time. Each variant's outputs are compared with the first
variant's (largest absolute difference over the largest magnitude), so a variant that computes
something else shows.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch
from kernel_variants import gpu_ready, parse_variant
from torch.profiler import ProfilerActivity, profile

from vimstm.ops import triton_scan


def _time(fn, iters: int) -> float:
    """Microseconds per call, CUDA events around ``iters`` calls."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1e3 / iters


def _kernel_us(fn, name: str, iters: int = 20) -> float:
    """The device time per call of the kernels whose name holds ``name`` (torch.profiler)."""
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    return sum(e.device_time_total for e in prof.key_averages() if name in e.key) / iters


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variant", action="append", default=[],
                    help="name:field=value,... of KernelConfig (repeatable; 'default:' for "
                         "the shipped configuration)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--tokens", type=int, default=257)
    ap.add_argument("--d-inner", type=int, default=384)
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if not gpu_ready("conv_speed", "the Triton kernels are what it times", args.json):
        return 2
    b, L, d = args.batch_size, args.tokens, args.d_inner
    dev, bf = torch.device("cuda"), torch.bfloat16
    g = torch.Generator(device=dev).manual_seed(0)
    xz = torch.randn(b, L, 2 * d, device=dev, dtype=bf, generator=g)
    x = xz[..., :d].transpose(1, 2)
    w = tuple(torch.randn(d, 4, device=dev, generator=g) * 0.5 for _ in range(2))
    cb = tuple(torch.randn(d, device=dev, generator=g) * 0.1 for _ in range(2))
    out = torch.empty(2, b, L, d, device=dev, dtype=bf).transpose(2, 3)
    gout = torch.randn(2, b, L, d, device=dev, dtype=bf, generator=g).transpose(2, 3)
    dxz = torch.zeros_like(xz)
    dx = dxz[..., :d].transpose(1, 2)
    elem = b * L * d * 2
    print(f"{torch.cuda.get_device_name()}, bf16, batch {b}, {L} tokens, d_inner {d}, "
          f"{args.iters} calls; command: {' '.join(sys.argv)}")
    print(f"{'variant':28s} {'fwd us':>8s} {'kernel':>8s} {'GB/s':>6s}   {'bwd us':>8s} "
          f"{'kernel':>8s} {'GB/s':>6s}   max |diff| / max |first|: out / dx / dw")
    base, rows, ref = triton_scan.CONFIG, {}, None
    for name, fields in [parse_variant(v) for v in (args.variant or ["default:"])]:
        triton_scan.CONFIG = dataclasses.replace(base, **fields)

        def fwd():
            triton_scan.conv_fwd(x, w, cb, out)

        def bwd():
            return triton_scan.conv_bwd(x, w, cb, gout, dx)

        try:
            for _ in range(3):
                fwd()
                dw, db = bwd()
            torch.cuda.synchronize()
            got = (out.clone(), dx.clone(), torch.cat((dw.flatten(), db.flatten())))
            r = {"fields": fields, "fwd_us": _time(fwd, args.iters),
                 "bwd_us": _time(bwd, args.iters),
                 "fwd_kernel_us": _kernel_us(fwd, "_conv_fwd"),
                 "bwd_kernel_us": _kernel_us(bwd, "_conv_bwd")}
        except Exception as e:  # one variant that fails to compile or launch: go on
            print(f"{name:28s} failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}",
                  flush=True)
            rows[name] = {"fields": fields, "error": f"{type(e).__name__}: {e}"[:2000]}
            continue
        ref = ref or got
        r["max_rel_diff"] = [((a.float() - c.float()).abs().max() / c.float().abs().max()).item()
                             for a, c in zip(got, ref)]
        r["fwd_GBps"] = 3 * elem / r["fwd_kernel_us"] / 1e3
        r["bwd_GBps"] = 4 * elem / r["bwd_kernel_us"] / 1e3
        rows[name] = r
        diff = " / ".join(f"{v:.2g}" for v in r["max_rel_diff"])
        print(f"{name:28s} {r['fwd_us']:8.1f} {r['fwd_kernel_us']:8.1f} {r['fwd_GBps']:6.0f}   "
              f"{r['bwd_us']:8.1f} {r['bwd_kernel_us']:8.1f} {r['bwd_GBps']:6.0f}   {diff}",
              flush=True)
    triton_scan.CONFIG = base
    if args.json is not None:
        args.json.write_text(json.dumps({
            "device": torch.cuda.get_device_name(), "batch_size": b, "tokens": L,
            "d_inner": d, "iters": args.iters, "command": " ".join(sys.argv),
            "variants": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
