"""CPU images/s of a model on the reference (PyTorch) path, optionally against older scans in the
same process (``--before-rev``: ``src/vimstm/ops/scan_ref.py`` as of each git revision, run per
direction as the mixer composed it then).

Times whole forwards (no_grad, batch ``--batch-size``, random input) by wall clock and by this
process's CPU time (less sensitive to other processes on a shared machine), median of
``--runs``; the setups alternate round by round, and each speed-up is the median of the
per-round ratios (runs of one round see the same load).

    python benchmarks/cpu_speed.py --before-rev 9f44f3f fdd2c91 --threads 1
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import torch
import torch.nn.functional as F

import vimstm
from vimstm.ops import dispatch
from vimstm.runtime import keep_freed_memory


def old_scan_module(rev: str) -> ModuleType:
    """``vimstm/ops/scan_ref.py`` of ``rev`` (loaded from git, not installed)."""
    root = Path(__file__).resolve().parent.parent
    src = subprocess.run(["git", "-C", str(root), "show", f"{rev}:src/vimstm/ops/scan_ref.py"],
                         check=True, capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / f"scan_ref_{rev}.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location(f"scan_ref_{rev}", path)
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def composed_mixer(scan: ModuleType):
    """The mixer core as it ran before the two-direction CPU path: per direction conv,
    projections and ``scan.selective_scan_ref`` (same contract as ``dispatch.bimamba``)."""

    def bimamba(xz, p, scale, stats=False):
        x, z = xz.transpose(1, 2).chunk(2, dim=1)
        dt_rank, n = p.dt_proj_w[0].shape[1], p.A_log[0].shape[1]
        y, x_dbls = None, []
        for k, reverse in ((0, False), (1, True)):
            xc = scan.causal_conv1d_ref(x, p.conv_w[k], p.conv_b[k], reverse=reverse)
            x_dbl = F.linear(xc.transpose(1, 2), p.x_proj_w[k])
            dt, B, C = torch.split(x_dbl, [dt_rank, n, n], dim=-1)
            delta = (dt @ p.dt_proj_w[k].t()).transpose(1, 2)
            yk = scan.selective_scan_ref(
                xc, delta, -torch.exp(p.A_log[k].float()), B.transpose(1, 2),
                C.transpose(1, 2), p.D[k].float(), z, delta_bias=p.dt_proj_b[k].float(),
                delta_softplus=True, reverse=reverse)
            y = yk if y is None else y + yk
            x_dbls.append(x_dbl)
        return (y * scale).transpose(1, 2), torch.stack(x_dbls), None

    return bimamba


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="vim_tiny_cifar10")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1, help="threads for the current path")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--before-rev", nargs="*", default=[],
                    help="git revisions of the scan to compare (per-direction composition)")
    ap.add_argument("--before-threads", type=int, default=None,
                    help="threads for the older scans (default: --threads)")
    ap.add_argument("--before-runs", type=int, default=3)
    ap.add_argument("--default-malloc", action="store_true",
                    help="leave glibc's malloc as it is (the CLI applies "
                         "vimstm.runtime.keep_freed_memory; so does this script by default)")
    args = ap.parse_args()
    kept = not args.default_malloc and keep_freed_memory()
    model = vimstm.create_model(args.model, pretrained=vimstm.models.get_spec(
        args.model).has_weights).eval()
    x = torch.randn(args.batch_size, *model.default_cfg["input_size"])
    now = dispatch.bimamba_reference
    setups = [(f"before {rev}", composed_mixer(old_scan_module(rev)),
               args.before_threads or args.threads, args.before_runs) for rev in args.before_rev]
    setups.append(("now", now, args.threads, args.runs))
    print("command:", " ".join(["python", *sys.argv]))
    print(f"device: {cpu_name()}, {os.cpu_count()} cores visible, torch {torch.__version__}")
    print(f"model {args.model}, CPU, fp32, batch {args.batch_size}, forward under no_grad, "
          f"malloc: {'freed memory kept (as the CLI)' if kept else 'default'}")
    times: dict[str, list[tuple[float, float]]] = {name: [] for name, *_ in setups}
    outs = {}
    with torch.no_grad():
        for rep in range(max(s[3] for s in setups)):
            for name, fn, threads, runs in setups:
                if rep >= runs:
                    continue
                torch.set_num_threads(threads)
                dispatch.bimamba_reference = fn
                w0, c0 = time.perf_counter(), time.process_time()
                outs[name] = model(x)
                times[name].append((time.perf_counter() - w0, time.process_time() - c0))
                print(f"  {name} run {rep + 1}: {times[name][-1][0]:.2f} s wall, "
                      f"{times[name][-1][1]:.2f} s CPU", flush=True)
    dispatch.bimamba_reference = now
    res = {}
    for name, _, threads, _ in setups:
        wall = statistics.median(t[0] for t in times[name])
        cpu = statistics.median(t[1] for t in times[name])
        res[name] = (args.batch_size / wall, args.batch_size / cpu)
        print(f"{name:16s} {threads} thread(s): {res[name][0]:.2f} images/s (wall), "
              f"{res[name][1]:.2f} images/CPU-s")
    for name, *_ in setups[:-1]:
        # paired: the runs of one round saw the same load, so the median of per-round ratios
        # is robust to load drifting over the whole measurement
        pairs = list(zip(times[name], times["now"]))
        wall = statistics.median(b[0] / a[0] for b, a in pairs)
        cpu = statistics.median(b[1] / a[1] for b, a in pairs)
        print(f"now vs {name}: {wall:.2f}x wall, {cpu:.2f}x per CPU second (median of "
              f"{len(pairs)} paired rounds); max |dlogit| "
              f"{(outs['now'] - outs[name]).abs().max().item():.2e}")

if __name__ == "__main__":
    main()
