"""PatchEmbed as a matrix product over the gathered patches against its strided conv, in one
process: fp16 inference (dense, and STM at 60% of the GFLOPs with the patched model's CUDA
graphs) of vim_tiny and vim_small at batch 256, alternating twice; then bf16 training steps of
vim_tiny (16x16 patches) and vim_tiny_cifar10 (2x2) at batch 256, first variant repeated.

    PYTHONPATH=src python benchmarks/patch_embed_ab.py --json results/h100/patch_embed_ab.json
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from typing import Any

import torch

import vimstm
from vimstm.engine.benchmark import measure_throughput, measure_training
from vimstm.models import vim as V
from vimstm.models.checkpoint import atomic_write


def _gather_all(self: V.PatchEmbed, x: torch.Tensor) -> torch.Tensor:
    """The matrix product for any non-overlapping patch size (the shipped rule aside)."""
    ph, pw = self.patch_size
    dtype = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else x.dtype
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // ph, ph, w // pw, pw).permute(0, 2, 4, 1, 3, 5)
    x = x.to(dtype, memory_format=torch.contiguous_format).reshape(b, -1, c * ph * pw)
    return torch.nn.functional.linear(x, self.proj.weight.reshape(self.proj.out_channels, -1),
                                      self.proj.bias)


def _conv(self: V.PatchEmbed, x: torch.Tensor) -> torch.Tensor:
    return self.proj(x).flatten(2).transpose(1, 2)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", default=None)
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("patch_embed_ab needs a CUDA GPU")
        return 2
    impl = {"gemm": _gather_all, "conv": _conv}
    out: dict[str, Any] = {"device": torch.cuda.get_device_name(), "command": " ".join(sys.argv)}
    print(f"{out['device']}; inference fp16 batch 256, training bf16 batch 256; "
          f"command: {out['command']}")
    for name in ("vim_tiny", "vim_small"):
        dense = vimstm.create_model(name).cuda().eval()
        for k, variant in enumerate(("gemm", "conv", "gemm", "conv")):
            V.PatchEmbed.forward = impl[variant]  # type: ignore[method-assign]
            merged = vimstm.patch(copy.deepcopy(dense), method="stm", flops=0.6)
            kw = dict(batch_size=256, dtype="fp16", device="cuda", warmup=5, runs=30)
            d = measure_throughput(dense, **kw)["images_per_s"]
            m = measure_throughput(merged, **kw)["images_per_s"]
            out[f"{name} inference {variant} #{k}"] = {"dense": d, "merged": m}
            print(f"{name:18s} inference {variant}: dense {d:8.1f}  STM flops 0.6 {m:8.1f} img/s",
                  flush=True)
            del merged
        del dense
        torch.cuda.empty_cache()
    for name in ("vim_tiny", "vim_tiny_cifar10"):
        for variant in ("gemm", "conv", "gemm"):
            V.PatchEmbed.forward = impl[variant]  # type: ignore[method-assign]
            torch.manual_seed(0)
            r = measure_training(vimstm.create_model(name), batch_size=256, dtype="bf16",
                                 device="cuda", warmup=3, runs=10)
            out.setdefault(f"{name} training", []).append([variant, r["images_per_s"]])
            print(f"{name:18s} training  {variant}: {r['images_per_s']:8.1f} img/s", flush=True)
            torch.cuda.empty_cache()
    if args.json:
        atomic_write(args.json, json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
