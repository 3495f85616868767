"""Choose the fine-tune recipe of the evidence on held-out training images, never the test split.

The evidence's distillation fine-tune (``benchmarks/reproduce.sh cifar-finetune``: 2 epochs of
``vimstm finetune`` at ``--lr 5e-5``, the finetune defaults otherwise) left even the dense
control 0.33 points below the original model on the test split. This probe fine-tunes the
DENSE model (``--method dense``) from the evidence's weights, as long as the evidence does
(``FT_EPOCHS``), with each candidate recipe below, on the training split less 5,000
class-balanced held-out images (``--holdout 5000``), and scores every run on those held-out
images after its last epoch. ``--eval-start`` scores the unfine-tuned weights on the same
images in the same pipeline.

The rule, fixed before any run:

* A candidate's score is the held-out top-1 after the last epoch of the weights the evidence
  would evaluate: the EMA weights for a run with ``--model-ema`` (``cifar_evidence.py
  --finetuned`` loads a run's EMA weights when it kept them), the raw weights otherwise.
* The current recipe (the first candidate) stays unless another candidate scores at least
  ``MARGIN`` (0.2 points: 10 of 5,000 images) above it; then the highest-scoring one is chosen
  (equal scores: the earlier in the list). The unfine-tuned score is reported beside them; a
  chosen recipe still below it is said plainly (fine-tuning the dense model then costs
  accuracy whatever the recipe).
* The chosen candidate's flags go into ``FT_ARGS`` of ``cifar-finetune`` (printed at the end).

    python benchmarks/ft_recipe.py --plan              # the candidates: NAME<TAB>FLAGS
    python benchmarks/ft_recipe.py --runs runs/ft_recipe --out results/cifar10  # the table
    # both through benchmarks/reproduce.sh cifar-ft-recipe (one run per GPU)

Writes ``OUT/ft_recipe.json`` and ``OUT/ft_recipe.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

MARGIN = 0.2  # points of held-out top-1 a candidate must gain over the current recipe
HOLDOUT = 5000
# name, flags added to `vimstm finetune`'s defaults, why. The first is the current recipe.
CANDIDATES: list[tuple[str, str, str]] = [
    ("lr5e-5", "--lr 5e-5", "the current recipe (FT_ARGS default)"),
    ("lr2e-5", "--lr 2e-5", "R-MeeTo's learning rate (for a total batch of 512)"),
    ("lr1e-5", "--lr 1e-5", "smaller still: a converged model may need only a nudge"),
    ("lr5e-5-nomix", "--lr 5e-5 --mixup 0 --cutmix 0",
     "no mixup/cutmix: the heavy ImageNet mixing of the defaults off"),
    ("lr5e-5-ema", "--lr 5e-5 --model-ema", "the current recipe with an EMA of the weights"),
    ("lr5e-5-own-aug",
     "--lr 5e-5 --aa rand-m6-n2-mstd0.5-inc1 --mixup 0.1 --cutmix 1.0 --reprob 0",
     "the augmentation the model was trained with (scripts/train_cifar10.sh) instead of "
     "R-MeeTo's ImageNet one"),
]


def score_of(flags: str, entry: dict[str, Any]) -> float:
    """The held-out top-1 the rule uses: EMA weights when the run kept them, else the raw."""
    key = "holdout_ema_top1" if "--model-ema" in flags.split() else "holdout_top1"
    if key not in entry:
        raise SystemExit(f"ft_recipe.py: the last log entry has no {key} (was the run given "
                         f"--holdout and, for EMA, --model-ema?): {sorted(entry)}")
    return float(entry[key])


def choose(rows: list[dict[str, Any]], margin: float = MARGIN) -> dict[str, Any]:
    """The rule: the first row (the current recipe) unless another beats it by ``margin``;
    then the highest score, the earlier row on a tie."""
    current = rows[0]
    best = max(rows, key=lambda r: r["score"])  # max keeps the first of equal scores
    return best if best["score"] >= current["score"] + margin - 1e-9 else current


def read_run(run: Path, flags: str, trust: bool = False) -> dict[str, Any]:
    """One candidate's finished run: its last log entry, start score and checked arguments."""
    from vimstm.engine.train_state import LAST, START_EVAL, iter_history
    from vimstm.models.checkpoint import read_checkpoint

    need = [run / "log.jsonl", run / START_EVAL, run / LAST]
    missing = [str(p) for p in need if not p.is_file()]
    if missing:
        raise SystemExit(f"ft_recipe.py: run {run} is missing {', '.join(missing)}; run "
                         "`benchmarks/reproduce.sh cifar-ft-recipe` (finished runs are kept)")
    a = read_checkpoint(run / LAST, trust=trust).get("args", {})
    log = list(iter_history(run))
    last = log[-1]
    if last["epoch"] + 1 != a.get("epochs"):
        raise SystemExit(f"ft_recipe.py: run {run} stopped after epoch {last['epoch'] + 1} of "
                         f"{a.get('epochs')}; run the part again to finish it (--resume auto)")
    if a.get("method") != "dense" or not a.get("holdout"):
        raise SystemExit(f"ft_recipe.py: run {run} is not a dense fine-tune with --holdout "
                         f"(method {a.get('method')}, holdout {a.get('holdout')})")
    start = json.loads((run / START_EVAL).read_text())
    return {"score": score_of(flags, last), "holdout_top1": last.get("holdout_top1"),
            "holdout_ema_top1": last.get("holdout_ema_top1"), "epochs": a["epochs"],
            "holdout": a["holdout"], "lr": a.get("lr"), "start_top1": start["holdout_top1"]}


def table(runs: Path, out: Path, trust: bool = False) -> dict[str, Any]:
    """Read every candidate's run under ``runs``, apply the rule, write JSON and markdown."""
    rows = []
    for name, flags, why in CANDIDATES:
        rows.append({"name": name, "flags": flags, "why": why,
                     **read_run(runs / name, flags, trust)})
    starts = {r["start_top1"] for r in rows}
    holdouts = {r["holdout"] for r in rows}
    if len(holdouts) != 1:
        raise SystemExit(f"ft_recipe.py: the runs held out different numbers of images "
                         f"({sorted(holdouts)}): their scores are not comparable")
    if max(starts) - min(starts) > 1e-6:  # same weights, same images: must agree
        raise SystemExit(f"ft_recipe.py: the runs' start scores differ ({sorted(starts)}): they "
                         "did not start from the same weights on the same images")
    start = rows[0]["start_top1"]
    for r in rows:
        r["delta_vs_start"] = r["score"] - start
        r["delta_vs_current"] = r["score"] - rows[0]["score"]
    chosen = choose(rows)
    result = {"rule": f"the current recipe ({rows[0]['name']}) unless a candidate scores at "
                      f"least {MARGIN} points higher on the held-out images; then the highest",
              "holdout_images": holdouts.pop(), "epochs": rows[0]["epochs"],
              "unfinetuned_holdout_top1": start, "rows": rows, "chosen": chosen["name"],
              "ft_args": chosen["flags"], "chosen_below_unfinetuned": chosen["score"] < start}
    out.mkdir(parents=True, exist_ok=True)
    (out / "ft_recipe.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "ft_recipe.md").write_text(markdown(result))
    return result


def markdown(res: dict[str, Any]) -> str:
    n, start = res["holdout_images"], res["unfinetuned_holdout_top1"]
    lines = [f"Dense fine-tunes of {res['epochs']} epoch(s) on the training split less {n:,} "
             f"held-out images; top-1 on those images (the unfine-tuned model: {start:.2f}). "
             f"Rule: {res['rule']}.", "",
             "| candidate | flags | held-out top-1 | Δ vs unfine-tuned | Δ vs current |",
             "| --- | --- | ---: | ---: | ---: |",
             f"| unfine-tuned | – | {start:.2f} | – | – |"]
    for r in res["rows"]:
        mark = " **(chosen)**" if r["name"] == res["chosen"] else ""
        lines.append(f"| {r['name']}{mark} | `{r['flags']}` | {r['score']:.2f} | "
                     f"{r['delta_vs_start']:+.2f} | {r['delta_vs_current']:+.2f} |")
    lines += ["", f"Chosen: {res['chosen']}: FT_ARGS=\"{res['ft_args']}\"."]
    if res["chosen_below_unfinetuned"]:
        lines.append("The chosen recipe still scores below the unfine-tuned model: on these "
                     "images no candidate fine-tune of this length helps the dense model.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--plan", action="store_true", help="print the candidates: NAME<TAB>FLAGS")
    p.add_argument("--runs", type=Path, help="the folder of the candidates' runs (RUNS/NAME)")
    p.add_argument("--out", type=Path, default=Path("results/cifar10"))
    p.add_argument("--trust-checkpoint", action="store_true")
    a = p.parse_args(argv)
    if a.plan:
        for name, flags, _ in CANDIDATES:
            print(f"{name}\t{flags}")
        return 0
    if a.runs is None:
        p.error("give --plan or --runs RUNS")
    res = table(a.runs, a.out, a.trust_checkpoint)
    sys.stdout.write(markdown(res))
    print(f"wrote {a.out / 'ft_recipe.json'} and {a.out / 'ft_recipe.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
