"""The mixer's x_proj and dt_proj products at the training step's shapes, with x_dbl's Δ part
``dt_rank`` wide (hustvl/Vim's layout: vim_tiny's rows of 12 + 2*16 = 44 elements) against
:mod:`vimstm.ops.mixer`'s layout (Δ's part padded to a multiple of 8 with zero weights: rows of
48), forward and backward, as the custom op runs them (both directions, bf16).

Prints the CUDA time of each product (median of ``--runs``, CUDA events) and the kernels cuBLAS
picked (torch.profiler): 4-byte-aligned operands get Ampere-generation ``align2`` kernels.

    PYTHONPATH=src python benchmarks/gemm_align.py                  # vim_tiny_cifar10, batch 256
    PYTHONPATH=src python benchmarks/gemm_align.py --tokens 197 --json results/h100/gemm_align.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from kernel_variants import gpu_ready
from torch.profiler import ProfilerActivity, profile

from vimstm.ops.mixer import padded_dt_proj, padded_rank, padded_x_proj


def products(m: int, d: int, r: int, n: int, padded: bool, dev: str = "cuda"
             ) -> tuple[dict[str, Callable[[], object]], int, int]:
    """The six products of one layout on random bf16 operands laid out as the op holds them,
    x_dbl's row width and dt_proj's K."""
    bf = torch.bfloat16
    xw = torch.randn(2, r + 2 * n, d, device=dev, dtype=bf)  # stacked weights, as _stacked
    dtw = torch.randn(2, d, r, device=dev, dtype=bf)
    k = r
    if padded:
        xw, dtw, k = padded_x_proj(xw, r), padded_dt_proj(dtw, r), padded_rank(r)
    w = xw.shape[1]
    xc = torch.randn(2, m, d, device=dev, dtype=bf)  # conv output, token-major
    x_dbl = torch.bmm(xc, xw.transpose(1, 2))  # (2, m, w)
    ddelta = torch.randn(2, m, d, device=dev, dtype=bf)
    dx_dbl = torch.randn(2, m, w, device=dev, dtype=bf)
    du = torch.randn(2, m, d, device=dev, dtype=bf)
    dt = x_dbl[..., :k]  # dt_proj's input: a strided view of x_dbl
    return {
        "fwd   x_dbl = xc @ xw^T (bmm)": lambda: torch.bmm(xc, xw.transpose(1, 2)),
        "fwd   delta = dt @ dtw^T (bmm)": lambda: torch.bmm(dt, dtw.transpose(1, 2)),
        "bwd   d dt = ddelta @ dtw (bmm)": lambda: torch.bmm(ddelta, dtw),
        "bwd   d dtw = ddelta^T @ dt (2 mm)": lambda: [
            torch.mm(ddelta[j].t(), dt[j]) for j in range(2)],
        "bwd   d xw = dx_dbl^T @ xc (2 mm)": lambda: [
            torch.mm(dx_dbl[j].t(), xc[j]) for j in range(2)],
        "bwd   du += dx_dbl @ xw (baddbmm_)": lambda: du.baddbmm_(dx_dbl, xw),
    }, w, k


def time_us(fn: Callable[[], object], runs: int) -> float:
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(runs):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) * 1e3)
    return statistics.median(times)


def kernels(fn: Callable[[], object]) -> list[str]:
    """Names of the CUDA kernels one call launches."""
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sorted({e.key for e in prof.key_averages() if e.device_type.name == "CUDA"})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--tokens", type=int, default=257, help="257: vim_tiny_cifar10 (32x32, p2)")
    ap.add_argument("--d-inner", type=int, default=384)
    ap.add_argument("--dt-rank", type=int, default=12)
    ap.add_argument("--d-state", type=int, default=16)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if not gpu_ready("gemm_align", "it times cuBLAS kernels", args.json):
        return 2
    m = args.batch_size * args.tokens
    print(f"{torch.cuda.get_device_name()}, bf16, batch {args.batch_size} x {args.tokens} tokens "
          f"(m = {m} rows per direction), d_inner {args.d_inner}, dt_rank {args.dt_rank}, "
          f"d_state {args.d_state}, median of {args.runs}; torch {torch.__version__}; "
          f"command: {' '.join(sys.argv)}")
    out: dict = {"device": torch.cuda.get_device_name(), "dtype": "bf16", "rows": m,
                 "command": " ".join(sys.argv), "layouts": {}}
    for padded in (False, True):
        torch.manual_seed(0)
        prods, w, k = products(m, args.d_inner, args.dt_rank, args.d_state, padded)
        name = f"{'padded' if padded else 'unpadded'} (x_dbl rows of {w}, dt_proj K = {k})"
        print(f"\n{name}")
        rows = {}
        for label, fn in prods.items():
            us = time_us(fn, args.runs)
            ks = kernels(fn)
            rows[label] = {"us": round(us, 1), "kernels": ks}
            print(f"  {label:38s} {us:8.1f} us  {' | '.join(ks)}", flush=True)
        total = sum(r["us"] for r in rows.values())
        print(f"  {'all six':38s} {total:8.1f} us per mixer (x depth for a step)")
        out["layouts"][name] = {"products": rows, "total_us": round(total, 1)}
        del prods
        torch.cuda.empty_cache()
    a, b = (v["total_us"] for v in out["layouts"].values())
    print(f"\npadded - unpadded: {b - a:+.1f} us per mixer")
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
