"""Where the forward of a merged model spends its GPU time (torch.profiler, top kernels and ops).

    PYTHONPATH=src python benchmarks/profile_merge.py --model vim_tiny --method stm --flops 0.6
    PYTHONPATH=src python benchmarks/profile_merge.py --method prune-top --flops 0.6 --every 4

Prints the device, the command and a table of the kernels and ops sorted by their own CUDA time
(fp16 autocast, eager, after 3 warm-up forwards).
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
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("profile_merge.py profiles CUDA kernels: run it on a GPU machine", file=sys.stderr)
        return 2
    dev = torch.device("cuda")
    model = create_model(args.model).to(dev).eval()
    size = model.patch_embed.img_size[0]
    x = torch.randn(args.batch_size, 3, size, size, device=dev)
    opts = {} if args.every is None else {"every": args.every}
    patch(model, method=args.method, flops=args.flops, **opts)
    m = model.patch_embed.num_patches
    tokens = model.merger.simulate(m + 1, m // 2)[0]
    print(f"device {torch.cuda.get_device_name(dev)}, dtype {args.dtype}, batch "
          f"{args.batch_size}, {args.method} at flops {args.flops}, tokens per block {tokens}")
    print("command: python " + shlex.join(sys.argv))
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
