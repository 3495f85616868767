"""CPU images/s of a model with the reference scan, optionally against an older scan in the same
process (``--before-rev``: ``src/vimstm/ops/scan_ref.py`` as of that git revision).

Times whole forwards (no_grad, batch ``--batch-size``, random input) by wall clock and by this
process's CPU time (less sensitive to other processes on a shared machine), median of
``--runs``; before and after alternate so that both see the same load.

    python benchmarks/cpu_speed.py --before-rev 9f44f3f --before-threads 2 --threads 1
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import vimstm
from vimstm.ops import dispatch


def old_scan(rev: str):
    """``selective_scan_ref`` of ``rev`` (loaded from git, not installed)."""
    root = Path(__file__).resolve().parent.parent
    src = subprocess.run(["git", "-C", str(root), "show", f"{rev}:src/vimstm/ops/scan_ref.py"],
                         check=True, capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "scan_ref_before.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("scan_ref_before", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod.selective_scan_ref


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="vim_tiny_cifar10")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1, help="threads for the current scan")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--before-rev", default=None, help="git revision of the scan to compare")
    ap.add_argument("--before-threads", type=int, default=None,
                    help="threads for the older scan (default: --threads)")
    ap.add_argument("--before-runs", type=int, default=2)
    args = ap.parse_args()
    model = vimstm.create_model(args.model, pretrained=vimstm.models.get_spec(
        args.model).has_weights).eval()
    x = torch.randn(args.batch_size, *model.default_cfg["input_size"])
    now = dispatch.selective_scan_ref
    setups = [("after", now, args.threads, args.runs)]
    if args.before_rev:
        setups.insert(0, ("before", old_scan(args.before_rev),
                          args.before_threads or args.threads, args.before_runs))
    print("command:", " ".join(["python", *sys.argv]))
    print(f"model {args.model}, CPU, fp32, batch {args.batch_size}, torch {torch.__version__}")
    times: dict[str, list[tuple[float, float]]] = {name: [] for name, *_ in setups}
    outs = {}
    with torch.no_grad():
        for rep in range(max(s[3] for s in setups)):
            for name, fn, threads, runs in setups:
                if rep >= runs:
                    continue
                torch.set_num_threads(threads)
                dispatch.selective_scan_ref = fn
                w0, c0 = time.perf_counter(), time.process_time()
                outs[name] = model(x)
                times[name].append((time.perf_counter() - w0, time.process_time() - c0))
                print(f"  {name} run {rep + 1}: {times[name][-1][0]:.2f} s wall, "
                      f"{times[name][-1][1]:.2f} s CPU", flush=True)
    dispatch.selective_scan_ref = now
    res = {}
    for name, _, threads, _ in setups:
        wall = statistics.median(t[0] for t in times[name])
        cpu = statistics.median(t[1] for t in times[name])
        res[name] = (args.batch_size / wall, args.batch_size / cpu)
        print(f"{name:6s} {threads} thread(s): {res[name][0]:.2f} images/s (wall), "
              f"{res[name][1]:.2f} images/CPU-s")
    if "before" in res:
        print(f"speed-up: {res['after'][0] / res['before'][0]:.1f}x wall, "
              f"{res['after'][1] / res['before'][1]:.1f}x per CPU second; max |dlogit| "
              f"{(outs['after'] - outs['before']).abs().max().item():.2e}")


if __name__ == "__main__":
    main()
