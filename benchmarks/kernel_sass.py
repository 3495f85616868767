"""SASS instruction counts of the Triton scan, conv1d and merge-similarity kernels, compiled for
sm_90 without a GPU.

    PYTHONPATH=src python benchmarks/kernel_sass.py                       # shipped KernelConfig
    PYTHONPATH=src python benchmarks/kernel_sass.py conv_fwd_segment=64 chunk=16

Each ``field=value`` replaces a tile size of :data:`vimstm.ops.triton_scan.CONFIG`. The launchers of
:mod:`vimstm.ops.triton_scan` run on CPU tensors laid out as the mixer's (vim_tiny_cifar10: d_inner
384, d_state 16, dt_rank 12, 257 tokens, bf16), with a stand-in driver that makes every launch a
compile-only warm-up for sm_90: the kernels get the specialisation (pointer alignment, divisible
integers) of a real launch, which decides Triton's layouts and vector widths. ptxas and nvdisasm
come with Triton. Prints per kernel its registers, spills and shared memory, the innermost loops
(static instruction counts and mix, and the blocks that forward branches skip), and the issued
instructions per token and direction of the scan kernels: the loops of direction 0 weighted by how
often they run (the replay covers 2/3 of the tokens at save_every 24, its chunk-state store 1/8 of
its steps; the forward's state save 1/24 of its tokens). The merge similarities (STM's ``x`` and
``delta``) get the same per-kernel lines, and for the Δ kernel the issued instructions per
adjacent pair (edge) of tokens. The local Triton may differ from the GPU machine's; compare
counts compiled by the same one.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import re
import subprocess
import sys
import tempfile

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.runtime import driver
from triton.runtime.jit import JITFunction

from vimstm.ops import triton_merge as tm
from vimstm.ops import triton_scan as ts
from vimstm.ops.mixer import padded_rank

COMPILED: dict[str, object] = {}
BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
KEYS = ("SHFL", "MUFU", "FFMA", "FMUL", "FADD", "LDG", "STG", "LDS", "STS", "BAR", "LDL", "STL")


class CompileOnlyDriver:
    """Enough of Triton's driver for the launcher to compile for sm_90 and never launch."""

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device=None) -> int:
        return 0

    def get_current_target(self) -> GPUTarget:
        return GPUTarget("cuda", 90, 32)

    def get_active_torch_device(self) -> torch.device:
        return torch.device("cpu")


def _compile_only(run):
    def wrapped(self, *args, grid, warmup, **kwargs):
        kernel = run(self, *args, grid=grid, warmup=True, **kwargs)
        COMPILED[self.fn.__name__] = kernel
        return kernel
    return wrapped


def launch_all() -> None:
    """Call every launcher once on CPU tensors with the model's layouts (compiles only)."""
    b, L, d, n, r = 2, 257, 384, 16, 12
    bf = torch.bfloat16
    xz = torch.zeros(b, L, 2 * d, dtype=bf)
    rk = padded_rank(r)  # x_dbl's layout: [zeros | dt | B | C]
    xd = torch.zeros(2, b * L, rk + 2 * n, dtype=bf).view(2, b, L, -1)
    B, C = xd[..., rk:rk + n].transpose(2, 3), xd[..., rk + n:].transpose(2, 3)
    xc = torch.zeros(2, b, L, d, dtype=bf).transpose(2, 3)
    delta = torch.zeros(2, b, L, d, dtype=bf).transpose(2, 3)
    z = xz[..., d:].transpose(1, 2)
    A = torch.zeros(d, n)
    p = ts.ScanParams((A, A), (torch.zeros(d),) * 2, (torch.zeros(d),) * 2, a_log=True)
    y = torch.zeros(b, L, d, dtype=bf).transpose(1, 2)
    ys = torch.zeros(b, L, d, dtype=bf).transpose(1, 2)
    ts.scan_fwd(xc, delta, B, C, z, p, y, 0.5, save=True, ys=ys)
    every = ts.CONFIG.save_every
    states = torch.zeros(2, b, -(-L // every) - 1, d, n) if every else None
    du = torch.zeros(2, b, L, d, dtype=bf).transpose(2, 3)
    dxz = torch.zeros(b, L, 2 * d, dtype=bf)
    try:  # the sums after the launch read tensors that no kernel wrote: irrelevant here
        ts.scan_bwd(xc, delta, B, C, z, p, y, states, 0.5, du=du,
                    dz=dxz[..., d:].transpose(1, 2), ys=ys)
    except Exception:
        if "_scan_bwd_kernel" not in COMPILED:
            raise
    w, cb = (torch.zeros(d, 4),) * 2, (torch.zeros(d),) * 2
    x = xz[..., :d].transpose(1, 2)
    ts.conv_fwd(x, w, cb, torch.zeros(2, b, L, d, dtype=bf).transpose(2, 3))
    ts.conv_bwd(x, w, cb, du, dxz[..., :d].transpose(1, 2))
    # merge similarities: the block input (dim 192, half hidden, fp32 residual) and Δ from the
    # recorded dt_proj inputs (a view of x_dbl, fp32 weights as under autocast)
    tm.adjacent_dissimilarity_triton(torch.zeros(b, L, d // 2, dtype=bf), torch.zeros(b, L, d // 2))
    tm.delta_dissimilarity_triton(xd[..., rk - r:rk], torch.zeros(2, d, r), torch.zeros(2, d))


def parse_sass(text: str) -> tuple[list[str], dict[str, int]]:
    """Instructions (without addresses) and the index each label points at."""
    ins, labels = [], {}
    for line in text.splitlines():
        m = re.match(r"\s*(\.L_x_\d+):", line)
        if m:
            labels[m.group(1)] = len(ins)
            continue
        m = re.match(r"\s*/\*[0-9a-f]+\*/\s+(.*?);", line)
        if m:
            ins.append(m.group(1).strip())
    return ins, labels


def opcode(instruction: str) -> str:
    words = instruction.split()
    if words[0].startswith("@"):
        words = words[1:]
    return words[0].split(".")[0]


def inner_loops(ins: list[str], labels: dict[str, int]) -> list[tuple[int, int, list[int]]]:
    """(first, last, sizes of the blocks its forward branches skip) per innermost loop."""
    back = []
    for k, i in enumerate(ins):
        m = re.search(r"BRA\s+`\((\.L_x_\d+)\)", i)
        if m and labels[m.group(1)] <= k:
            back.append((labels[m.group(1)], k))
    inner = [x for x in back if not any(o != x and x[0] <= o[0] and o[1] <= x[1] for o in back)]
    out = []
    for s, e in inner:
        skips = []
        for k in range(s, e):
            m = re.search(r"BRA\s+`\((\.L_x_\d+)\)", ins[k])
            if m and k < labels[m.group(1)] <= e:
                skips.append(labels[m.group(1)] - k - 1)
        out.append((s, e, skips))
    return out


def per_token(name: str, loops: list[tuple[int, list[int]]]) -> str:
    """Issued instructions per token and direction (direction 0's loops, weighted)."""
    first = loops[:len(loops) // 2] if name == "_scan_bwd_kernel" else loops[:1]
    if name == "_scan_fwd_kernel":
        n, skips = first[0]
        return f"{n - sum(skips) * 23 / 24:.0f} (direction 0)"
    names = ["replay", "recompute", "adjoint"][-len(first):]
    weight = {"replay": 16 / 24, "recompute": 1.0, "adjoint": 1.0}
    total, parts = 0.0, []
    for nm, (n, skips) in zip(names, first):
        eff = n - sum(skips) * (7 / 8 if nm == "replay" else 1.0)
        total += weight[nm] * eff
        parts.append(f"{nm} {eff:.0f}")
    return f"{total:.0f} ({', '.join(parts)})"


def per_edge(kernel, loop: int) -> str:
    """Issued instructions per adjacent pair of the Δ kernel: its column loop runs
    2 x d_inner / BLOCK_C times per program of num_warps warps and BLOCK_T - 1 edges."""
    bt, bc, warps = tm.DELTA_BLOCK_T, tm.DELTA_BLOCK_C, kernel.metadata.num_warps
    return f"{loop * 2 * 384 / bc * warps / (bt - 1):.0f} (BLOCK_T {bt}, BLOCK_C {bc})"


def per_conv_pair(name: str, kernel, loops: list[tuple[int, list[int]]]) -> str:
    """Instructions a thread issues per (token, channel) it computes, both directions: the
    longest (unrolled) token loop over its steps and channels per thread."""
    fwd = name == "_conv_fwd_kernel"
    block_d = ts.CONFIG.conv_fwd_block_d if fwd else ts.CONFIG.conv_bwd_block_d
    unroll = ts.CONV_FWD_UNROLL if fwd else ts.CONV_BWD_UNROLL
    if not loops:
        return "no loop found"
    n, _ = max(loops)
    ch = max(1.0, block_d / (32 * kernel.metadata.num_warps))
    return f"{n / unroll / ch:.1f} (loop of {n}, unroll {unroll}, {ch:g} channels per thread)"


def report(name: str, kernel) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        ptx, cubin = os.path.join(tmp, "k.ptx"), os.path.join(tmp, "k.cubin")
        with open(ptx, "w") as f:
            f.write(kernel.asm["ptx"])
        with open(cubin, "wb") as f:
            f.write(kernel.asm["cubin"])
        v = subprocess.run([os.path.join(BIN, "ptxas"), "-arch=sm_90a", "-v", ptx, "-o",
                            os.devnull], capture_output=True, text=True).stderr
        sass = subprocess.run([os.path.join(BIN, "nvdisasm"), "-c", cubin], capture_output=True,
                              text=True).stdout
    regs = re.findall(r"Used (\d+) registers", v)
    spills = re.findall(r"(\d+) bytes spill stores", v)
    ins, labels = parse_sass(sass)
    print(f"{name}: {kernel.metadata.num_warps} warps, {regs[0] if regs else '?'} registers, "
          f"{spills[0] if spills else '?'} bytes of spill stores, {kernel.metadata.shared} B "
          f"shared, {len(ins)} instructions")
    sized = []
    for s, e, skips in inner_loops(ins, labels):
        if e - s < 5:
            continue
        mix = collections.Counter(opcode(i) for i in ins[s:e + 1])
        sized.append((e - s + 1, skips))
        print(f"  loop of {e - s + 1} instructions (skippable blocks {skips}): "
              + " ".join(f"{k}={mix[k]}" for k in KEYS if mix[k]))
    if name.startswith("_scan") and sized:
        print(f"  per token and direction: {per_token(name, sized)}")
    if name == "_delta_dis_kernel" and sized:
        print(f"  per edge: {per_edge(kernel, sized[0][0])}")
    if name.startswith("_conv"):
        print(f"  per token and channel: {per_conv_pair(name, kernel, sized)}")


def main() -> int:
    fields = {f.name for f in dataclasses.fields(ts.KernelConfig)}
    changes = {}
    for item in sys.argv[1:]:
        key, _, value = item.partition("=")
        if key not in fields or not value.lstrip("-").isdigit():
            print(f"{item}: expected field=integer with a KernelConfig field "
                  f"({', '.join(sorted(fields))})")
            return 2
        changes[key] = int(value)
    ts.CONFIG = dataclasses.replace(ts.CONFIG, **changes)
    driver.set_active(CompileOnlyDriver())
    JITFunction.run = _compile_only(JITFunction.run)
    print(f"Triton {triton.__version__}, sm_90, bf16, vim_tiny_cifar10 layouts; "
          f"command: {' '.join(sys.argv)}")
    launch_all()
    for name, kernel in COMPILED.items():
        report(name, kernel)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
