"""Calibrated schedule vs the default one at equal GFLOPs, on the bundled CIFAR-10 model.

Calibrates on training images (``vimstm calibrate``'s sensitivity, measured once, then one
allocation per target), then evaluates on the test split, for every ``--flops`` target: the
dense model, the default schedule (``patch(method, flops=F)``: 3 geometric steps) and the
calibrated one (``patch(method, schedule=...)``), each with its operating point (mean token
reduction, ratio, tokens in the last block, GMACs in both conventions) and top-1.

    # GPU, the whole 8,000-image test split (a few minutes on one H100)
    CIFAR10=/path/to/cifar10 bash benchmarks/reproduce.sh cifar-calibrate
    python benchmarks/calibrated_schedule.py --device cuda --calib-images 256 --amp bf16 \\
        --flops 0.6,0.8 --out results/cifar10/calibrated_schedule.json
    # CPU subset (the reference scan is slow there)
    python benchmarks/calibrated_schedule.py --device cpu --calib-images 32 --every 2 \\
        --test-limit 200 --flops 0.6 --batch-size 16
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch

from vimstm.data import build_eval_loader
from vimstm.engine.calibrate import allocate, sensitivity
from vimstm.flops import count_flops
from vimstm.merge import patch, unpatch
from vimstm.merge.schedule import merge_slots, schedule_document
from vimstm.models.registry import create_model

DATA = Path("/work/shared/data/cifar10")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="vim_tiny_cifar10")
    p.add_argument("--checkpoint", default=None, help="weights (default: the bundled ones)")
    p.add_argument("--train", default=str(DATA / "train.tar.xz"))
    p.add_argument("--test", default=str(DATA / "test.tar.xz"))
    p.add_argument("--method", default="stm")
    p.add_argument("--flops", default="0.6,0.8", help="targets: fractions of dense GFLOPs kept")
    p.add_argument("--calib-images", type=int, default=256)
    p.add_argument("--test-limit", type=int, default=None, help="test images (default: all)")
    p.add_argument("--every", type=int, default=1, help="candidate steps after every k-th block")
    p.add_argument("--max-steps", type=int, default=3)
    p.add_argument("--probe", type=float, default=0.25)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--amp", default=None, help="bf16 or fp16 for evaluation (default fp32)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=None, help="write the rows and schedules here (JSON)")
    p.add_argument("--sensitivity-from", default=None, metavar="JSON",
                   help="reuse the sensitivity of an earlier run's --out instead of measuring")
    args = p.parse_args()
    targets = [float(v) for v in args.flops.split(",") if v.strip()]
    dev = torch.device(args.device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    print("command: python " + " ".join(shlex.quote(a) for a in sys.argv))
    print(f"device: {name}  dtype: {args.amp or 'fp32'}  batch: {args.batch_size}  "
          f"torch threads: {torch.get_num_threads()}")
    model = create_model(args.model, checkpoint=args.checkpoint,
                         pretrained=args.checkpoint is None).to(dev).eval()
    depth, m = len(model.layers), model.patch_embed.num_patches

    t0 = time.perf_counter()
    if args.sensitivity_from:  # an earlier run's measurement, e.g. to evaluate more images
        prev = json.loads(Path(args.sensitivity_from).read_text())
        steps = [int(k) for k in prev["sensitivity"]]
        sens, r_probe = list(prev["sensitivity"].values()), prev["probe_tokens"]
        n_calib = prev.get("calibration_images", prev["args"]["calib_images"])
        print(f"calibration: {n_calib} training images, from {args.sensitivity_from}")
    else:
        calib = build_eval_loader(args.train, model, batch_size=args.batch_size,
                                  workers=args.workers, limit=args.calib_images)
        batches = [b[0] for b in calib if b[0].numel()]
        n_calib = sum(x.shape[0] for x in batches)
        steps = merge_slots(depth, args.every)
        print(f"calibration: {n_calib} training images, {len(steps)} candidate steps",
              flush=True)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=args.amp == "bf16"):
            sens, r_probe = sensitivity(model, batches, args.method, {}, steps, args.probe, dev)
    calib_s = time.perf_counter() - t0
    schedules = {f: allocate(model, args.method, {}, steps, sens, flops=f,
                             max_steps=args.max_steps or None) for f in targets}

    test = build_eval_loader(args.test, model, batch_size=args.batch_size,
                             workers=args.workers, limit=args.test_limit)
    rows = []

    dense_logits: list[torch.Tensor] = []

    @torch.inference_mode()
    def run(label: str, target: float | None, **kw) -> None:
        """Top-1 (as engine.evaluate counts it: argmax == label), and against the dense
        model's logits: mean KL and the share of images with the same prediction (both far
        less noisy than top-1 on a small subset)."""
        if kw:
            patch(model, method=args.method, **kw)
        try:
            rep = count_flops(model)
            hits = n = agree = 0
            kl = 0.0
            for k, (x, y, *_) in enumerate(test):
                with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=args.amp == "bf16"):
                    logits = model(x.to(dev)).float().cpu()
                if label == "dense":
                    dense_logits.append(logits)
                ref = dense_logits[k]
                hits += int((logits.argmax(-1) == y).sum())
                agree += int((logits.argmax(-1) == ref.argmax(-1)).sum())
                kl += float(torch.nn.functional.kl_div(
                    logits.log_softmax(-1), ref.log_softmax(-1), log_target=True,
                    reduction="sum"))
                n += y.shape[0]
            rows.append({"schedule": label, "target_flops": target,
                         "steps": {i: r for i, r in enumerate(model.merger.schedule) if r}
                         if model.merger else {},
                         **rep.operating_point(), "top1": 100.0 * hits / n,
                         "agree_dense": 100.0 * agree / n, "kl_dense": kl / n, "images": n})
        finally:
            unpatch(model)
        print(f"  {label:<10} flops={target}: top-1 {rows[-1]['top1']:.2f}", flush=True)

    run("dense", None)
    for f in targets:
        run("default", f, flops=f)
        doc = schedule_document(schedules[f], depth, m, method=args.method)
        run("calibrated", f, schedule=doc)

    dense = rows[0]
    print(f"\n{args.model}, {args.method}, test images: {dense['images']}, calibration "
          f"{n_calib} train images ({calib_s:.0f} s), probe {r_probe} "
          "tokens")
    head = (f"{'schedule':<11} {'target':>6} {'mean red.':>9} {'ratio':>6} {'last':>5} "
            f"{'GMACs lit':>9} {'GMACs full':>10} {'top-1':>7} {'Δ dense':>8} {'agree':>6} "
            f"{'KL':>7}  steps")
    print(head)
    print("-" * len(head))
    for r in rows:
        tgt = "-" if r["target_flops"] is None else f"{r['target_flops']:.2f}"
        steps_txt = ",".join(f"{r_}@{i}" for i, r_ in r["steps"].items()) or "-"
        print(f"{r['schedule']:<11} {tgt:>6} {r['mean_token_reduction']:>9.3f} "
              f"{r['ratio']:>6.3f} {r['tokens_last_block']:>5} {r['gmacs_literature']:>9.3f} "
              f"{r['gmacs_full']:>10.3f} {r['top1']:>7.2f} {r['top1'] - dense['top1']:>+8.2f}"
              f" {r['agree_dense']:>6.1f} {r['kl_dense']:>7.4f}  {steps_txt}")
    print("agree: % of test images predicted as the dense model does; KL: mean KL(dense || "
          "merged) of the logits")
    print("steps: tokens@block (merged after that block); sensitivity (KL per step): "
          + ", ".join(f"{i}:{k:.4f}" for i, k in zip(steps, sens)))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"device": name, "args": vars(args), "rows": rows,
                                   "sensitivity": dict(zip(steps, sens)),
                                   "probe_tokens": r_probe, "calibration_images": n_calib},
                                  indent=2))
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
