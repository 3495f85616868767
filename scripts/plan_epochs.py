"""How many epochs of `scripts/train_cifar10.sh` fit a wall-time budget, from measured speed.

Give `vimstm bench --train --json` results at two or more image sizes (same model, batch and
GPU type as the run); the time per image is fitted linear in the token count, an epoch at size
r costs ``images / gpus * t(r) / efficiency`` plus the per-epoch evaluation of the model and its
EMA (inference taken as a third of a training step) and a checkpoint, and the largest epoch
count whose total fits the budget is printed as JSON (``epochs``), with progressive resizing
(``--min-res``, ``--res-ramp``) as the training run will do it.

    for r in 16 24 32; do vimstm bench --train --model vim_tiny_cifar10 --dtype bf16 \\
        --batch-size 256 --img-size $r --json probe$r.json; done
    python scripts/plan_epochs.py --budget-s 1110 --gpus 2 --min-res 16 probe*.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from vimstm.engine.train import epoch_img_size
from vimstm.models.vim import patch_grid


def plan(probes: list[tuple[int, float]], budget_s: float, gpus: int, full: int = 32,
         patch: int = 2, min_res: int | None = None, ramp: tuple[float, float] = (0.2, 0.5),
         train_images: int = 50000, val_images: int = 8000, efficiency: float = 0.9,
         checkpoint_s: float = 0.5) -> dict:
    """``probes``: (tokens, seconds per image) of the training step; returns the plan."""
    tokens = np.array([p[0] for p in probes], float)
    seconds = np.array([p[1] for p in probes], float)
    slope, base = np.polyfit(tokens, seconds, 1) if len(probes) > 1 else (0.0, seconds[0])

    def per_image(size: int) -> float:
        gh, gw = patch_grid(size, patch, patch)
        return float(base + slope * (gh * gw + 1))

    evals = 2 * val_images / gpus * per_image(full) / 3 + checkpoint_s

    def epoch_s(size: int) -> float:
        return train_images / gpus * per_image(size) / efficiency + evals

    best = None
    for epochs in range(1, 1000):
        total = sum(epoch_s(epoch_img_size(e, epochs, full, min_res, ramp, 2 * patch))
                    for e in range(epochs))
        if total > budget_s:
            break
        best = (epochs, total)
    if best is None:
        raise SystemExit(f"not even one epoch fits {budget_s:g} s ({epoch_s(full):.0f} s each)")
    return {"epochs": best[0], "predicted_s": round(best[1], 1),
            "epoch_s_full": round(epoch_s(full), 2),
            "epoch_s_min": round(epoch_s(min_res or full), 2),
            "eval_s_per_epoch": round(evals, 2),
            "plain_epochs": int(budget_s // epoch_s(full)),
            "fit": {"s_per_image": base, "s_per_image_per_token": slope},
            "probes": probes}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("probes", nargs="+", help="`vimstm bench --train --json` files")
    p.add_argument("--budget-s", type=float, required=True, help="training wall time (s)")
    p.add_argument("--gpus", type=int, default=1)
    p.add_argument("--min-res", type=int, default=None, help="as `vimstm train --min-res`")
    p.add_argument("--res-ramp", type=float, nargs=2, default=(0.2, 0.5))
    p.add_argument("--full", type=int, default=32, help="the model's image size")
    p.add_argument("--patch", type=int, default=2, help="patch size = stride")
    p.add_argument("--efficiency", type=float, default=0.9,
                   help="real training loop / benchmark speed (data, DDP, EMA)")
    args = p.parse_args()
    probes = []
    for f in args.probes:
        d = json.loads(Path(f).read_text())["dense"]
        probes.append((int(d["operating_point"]["tokens_last_block"]), 1.0 / d["images_per_s"]))
    out = plan(probes, args.budget_s, args.gpus, args.full, args.patch, args.min_res,
               tuple(args.res_ramp), efficiency=args.efficiency)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
