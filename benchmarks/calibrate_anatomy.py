"""Why STM's calibrated schedule loses at a large budget: the schedule ``vimstm calibrate``
picks, how much of each step's choice is left, and its modelled against its measured damage.

Reads the sensitivity that the evidence run measured (``evidence.json``, ``meta.calibration``:
KL per candidate step, 256 training images, bf16, probe 64 tokens), allocates the schedule at
the GFLOPs of each point as the evidence run did (``vimstm.engine.calibrate.allocate``,
``max_steps`` 3) and with no limit on the steps, and reports per step: tokens in, tokens
removed, the most STM could remove there (``cap``: every unprotected token in a pair) and the
modelled KL ``s_i (r_i / r_probe)^2``. On ``--images`` images (CPU, fp32) it then measures
KL(dense || merged), top-1 and agreement with dense for the papers' schedule at the point
(``every=2, shape=even``), the calibrated schedules, and each calibrated step alone (against
its modelled KL), with paired 95% bootstrap intervals against the papers' schedule.

    export OMP_NUM_THREADS=1 PYTHONPATH=src
    python benchmarks/calibrate_anatomy.py --data ../shared/data/cifar10/train.tar.xz \\
        --images 256 --point reduction=0.4 --out results/cifar10/calibrated_r040.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

import vimstm
from vimstm.engine.calibrate import allocate
from vimstm.flops import count_flops
from vimstm.merge import build_merger
from vimstm.merge.schedule import mean_token_reduction
from vimstm.models.checkpoint import atomic_write

_spec = importlib.util.spec_from_file_location(
    "merge_anatomy", Path(__file__).resolve().parent / "merge_anatomy.py")
ma = importlib.util.module_from_spec(_spec)
sys.modules["merge_anatomy"] = ma
_spec.loader.exec_module(ma)


def steps_table(model: Any, sched: list[int], sens: dict[int, float],
                r_probe: int) -> list[dict[str, Any]]:
    """Per merging step: tokens in, removed, STM's cap there, the share of the cap used and the
    modelled KL of the step alone."""
    merger = build_merger(model, "stm", r=[0] * len(sched))
    tokens, cls = model.patch_embed.num_patches + 1, model.patch_embed.num_patches // 2
    out = []
    for i, r in enumerate(sched):
        if not r:
            continue
        cap = max(k for k in range(tokens) if merger.cap(tokens, cls, k))
        out.append({"after_block": i, "tokens_in": tokens, "removed": r, "cap": cap,
                    "share_of_cap": round(r / cap, 3),
                    "modelled_kl": sens[i] * (r / r_probe) ** 2})
        cls = merger.next_cls(tokens, cls, r)
        tokens -= r
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--evidence", default="results/cifar10/evidence.json",
                    help="evidence JSON whose meta.calibration holds the sensitivity")
    ap.add_argument("--data", default=None, help="images (default: the embedded test images)")
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--point", default="reduction=0.4",
                    help="an evidence point with a calibrated row (reduction=0.4, flops=0.6, ...)")
    ap.add_argument("--dense-cache", default=None, help="as merge_anatomy.py --dense-cache")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    cal = json.loads(Path(args.evidence).read_text())["meta"]["calibration"]
    if args.point not in cal["schedules"]:
        raise SystemExit(f"{args.evidence} has no calibrated schedule at {args.point}; it has "
                         f"{', '.join(cal['schedules'])}")
    torch.manual_seed(0)
    model = vimstm.create_model("vim_tiny_cifar10", pretrained=True).eval()
    depth, m = len(model.layers), model.patch_embed.num_patches
    sens = dict(zip(cal["steps"], cal["kl"]))
    target = cal["schedules"][args.point]["target_flops"]
    key, val = args.point.split("=")
    papers = {key: float(val), **({"every": 2, "shape": "even"} if key == "reduction" else {})}
    merger = build_merger(model, "stm", **papers)
    papers_sched = list(merger.schedule)
    scheds = {"papers' schedule": papers_sched,
              "calibrated, at most 3 steps": allocate(model, "stm", {}, cal["steps"],
                                                      cal["kl"], flops=target, max_steps=3),
              "calibrated, no step limit": allocate(model, "stm", {}, cal["steps"], cal["kl"],
                                                    flops=target, max_steps=None)}
    res: dict[str, Any] = {"point": args.point, "target_flops": target, "device": "cpu",
                           "dtype": "fp32", "sensitivity_probe_tokens": cal["probe_tokens"],
                           "schedules": {}}
    for name, s in scheds.items():
        merger.schedule = s
        rep = count_flops(model, merger=merger)
        res["schedules"][name] = {
            "schedule": {i: r for i, r in enumerate(s) if r},
            "mean_token_reduction": round(mean_token_reduction(s, depth, m), 4),
            "flops_kept": round(rep.gmacs_literature / rep.dense_gmacs_literature, 4),
            "tokens_last_block": rep.tokens_last_block,
            "steps": steps_table(model, s, sens, cal["probe_tokens"]),
        }
        res["schedules"][name]["modelled_kl"] = sum(
            st["modelled_kl"] for st in res["schedules"][name]["steps"])
        print(name, {k: v for k, v in res["schedules"][name].items() if k != "steps"},
              flush=True)

    print(f"vim_tiny_cifar10, CPU ({platform.machine()}), fp32, torch threads "
          f"{torch.get_num_threads()}", flush=True)
    x, y, idx = ma.images(args.images, model, 0, args.data)
    dense = ma.dense_logits(model, x, args.data, idx, args.dense_cache)
    res.update(data=args.data or "embedded test images (demo_cifar10)", indices=idx.tolist(),
               weights_fingerprint=ma.weights_fingerprint(model))

    def measure(sched: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        vimstm.patch(model, method="stm", r=sched)
        try:
            lg = ma.logits_of(model, x)
        finally:
            vimstm.unpatch(model)
        return ((lg.argmax(-1) == y).float().numpy(), ma.kl(dense, lg).numpy(),
                (lg.argmax(-1) == dense.argmax(-1)).float().numpy())

    per = {name: measure(s) for name, s in scheds.items()}
    ref = per["papers' schedule"]
    res["outcome"] = {}
    for name, (c, k, a) in per.items():
        row = {"top1": float(c.mean() * 100), "agree": float(a.mean() * 100),
               "kl": float(k.mean()), "median_kl": float(np.median(k))}
        if name != "papers' schedule":
            row.update(top1_vs_papers=ma.boot((c - ref[0]) * 100), kl_vs_papers=ma.boot(k - ref[1]),
                       agree_vs_papers=ma.boot((a - ref[2]) * 100))
        res["outcome"][name] = row
        print(name, row, flush=True)
    # each step of the 3-step calibrated schedule alone (as the sensitivity was probed, from
    # all 257 tokens) and the schedule cut after it, against the modelled KL
    cal3 = scheds["calibrated, at most 3 steps"]
    for st in res["schedules"]["calibrated, at most 3 steps"]["steps"]:
        i = st["after_block"]
        alone = [0] * (depth - 1)
        alone[i] = st["removed"]
        st["measured_kl_alone"] = float(measure(alone)[1].mean())
        if any(cal3[i + 1:]):  # the schedule cut after this step (the last: the whole one)
            cut = cal3[:i + 1] + [0] * (depth - 2 - i)
            st["measured_kl_through"] = float(measure(cut)[1].mean())
        print(st, flush=True)
    if args.out:
        atomic_write(args.out, json.dumps(res, indent=1))
        print("wrote", args.out)


if __name__ == "__main__":
    main()
