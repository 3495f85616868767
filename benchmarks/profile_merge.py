"""Where the forward of a merged model spends its GPU time (torch.profiler, top kernels and ops).

    PYTHONPATH=src python benchmarks/profile_merge.py --model vim_tiny --method stm --flops 0.6
    PYTHONPATH=src python benchmarks/profile_merge.py --method prune-top --flops 0.6 --every 4
    PYTHONPATH=src python benchmarks/profile_merge.py --model vim_tiny --compare-dense

Prints the device, the command and a table of the kernels and ops sorted by their own CUDA time
(fp16 autocast, eager, after 3 warm-up forwards). ``--compare-dense`` instead lists each
kernel's CUDA time in the dense and in the merged forward (both eager, no CUDA graphs) with
their ratio, against the ratio of GFLOPs kept: the kernels that save less than their share.
"""

from __future__ import annotations

import argparse
import shlex
import sys

import torch
from torch.profiler import ProfilerActivity, profile

from vimstm.merge import METHODS, patch
from vimstm.models.registry import create_model
from vimstm.runtime import autocast


def kernel_ms(model: torch.nn.Module, x: torch.Tensor, dtype: str, reps: int = 5) -> dict:
    """CUDA milliseconds per forward of each kernel (eager, after 3 warm-up forwards)."""
    with torch.no_grad(), autocast(x.device, dtype):
        for _ in range(3):
            model(x)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(reps):
                model(x)
            torch.cuda.synchronize()
    out: dict[str, float] = {}
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            out[e.name] = out.get(e.name, 0.0) + e.device_time_total / reps / 1e3
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="vim_tiny")
    p.add_argument("--method", default="stm", choices=METHODS)
    p.add_argument("--flops", type=float, default=0.6, help="fraction of the dense GFLOPs kept")
    p.add_argument("--every", type=int, default=None,
                   help="merge after every k-th block (default: the library's, depth // 4)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--dtype", default="fp16", choices=("fp32", "fp16", "bf16"))
    p.add_argument("--rows", type=int, default=30, help="table rows")
    p.add_argument("--compare-dense", action="store_true",
                   help="per-kernel CUDA time of the dense against the merged forward")
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("profile_merge.py profiles CUDA kernels: run it on a GPU machine", file=sys.stderr)
        return 2
    dev = torch.device("cuda")
    model = create_model(args.model).to(dev).eval()
    size = model.patch_embed.img_size[0]
    x = torch.randn(args.batch_size, 3, size, size, device=dev)
    opts = {} if args.every is None else {"every": args.every}
    dense = kernel_ms(model, x, args.dtype) if args.compare_dense else None
    patch(model, method=args.method, flops=args.flops, graphs=not args.compare_dense, **opts)
    m = model.patch_embed.num_patches
    tokens = model.merger.simulate(m + 1, m // 2)[0]
    print(f"device {torch.cuda.get_device_name(dev)}, dtype {args.dtype}, batch "
          f"{args.batch_size}, {args.method} at flops {args.flops}, tokens per block {tokens}")
    print("command: python " + shlex.join(sys.argv))
    if dense is not None:
        merged = kernel_ms(model, x, args.dtype)
        td, tm = sum(dense.values()), sum(merged.values())
        print(f"CUDA time per forward: dense {td:.2f} ms, merged {tm:.2f} ms "
              f"(ratio {tm / td:.3f}; GFLOPs kept {args.flops}; ideal {td * args.flops:.2f} ms)")
        print(f"{'dense ms':>9} {'merged ms':>9} {'ratio':>6} {'excess ms':>9}  kernel "
              f"(excess = merged - flops * dense)")
        names = sorted(set(dense) | set(merged),
                       key=lambda n: -(merged.get(n, 0) - args.flops * dense.get(n, 0)))
        for n in names[:args.rows]:
            d, mm = dense.get(n, 0.0), merged.get(n, 0.0)
            ratio = f"{mm / d:6.3f}" if d else "   new"
            print(f"{d:9.3f} {mm:9.3f} {ratio} {mm - args.flops * d:9.3f}  {n[:90]}")
        return 0
    with torch.no_grad(), autocast(dev, args.dtype):
        for _ in range(3):
            model(x)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            model(x)
            torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=args.rows,
                                    max_name_column_width=70))
    return 0


if __name__ == "__main__":
    sys.exit(main())
