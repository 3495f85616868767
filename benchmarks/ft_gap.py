"""Why pruning leads STM after the distillation fine-tune: how far each merged model is from the
dense one on the inputs `vimstm finetune` trains on, and whether STM trains as it evaluates.

CPU, inference only (fp32), the bundled vim_tiny_cifar10 weights, ``--images`` evenly spaced
images of ``--data`` (the training split), shuffled once (a fixed permutation) so that a batch
mixes classes as the training loader's do. Conditions (``--conditions``), each built the way
`vimstm finetune` builds its batches (``vimstm.engine.train``: ``train_transform`` of
``vimstm.data`` with the finetune defaults ``--aa rand-m9-mstd0.5-inc1 --reprob 0.25``, then
timm's ``Mixup`` over a batch of ``--batch`` images, label smoothing 0.1):

* ``clean``: the evaluation transform.
* ``aug``: the training transform alone (random crop with reflect padding, flip, RandAugment,
  random erasing), no mixing.
* ``aug+mixup``: then mixup (alpha 0.8) on every batch.
* ``aug+cutmix``: then cutmix (alpha 1.0) on every batch. For cutmix conditions STM also
  traces its tokens' sources: the share of its final tokens (and of the patches in them) that
  hold patches of both images, and how its excess KL over prune-top grows with that share.
* ``clean+cutmix``: cutmix on the evaluation-transform images (cutmix without RandAugment).
* ``train``: the fine-tune's own batches (aug, then mixup 0.8 or cutmix 1.0 with probability
  0.5 each) with the merged model in training mode and drop path 0.1, as `vimstm finetune`
  runs the student; the dense teacher in eval mode. Its KL is the logged ``train_kd`` of the
  first step (the logs average it over the epoch while the weights move).

Per method (``--methods``, at ``--point``, default the evidence tables' ``reduction=0.4,
every=2, shape=even``): KL(dense || merged) per image (the fine-tune's distillation term,
temperature 1), agreement of the argmax with dense's, top-1 against the label (clean and aug
only), and each method's per-image KL difference from STM's with a 95% paired-bootstrap
interval. Every method sees the same images, the same augmentation and (``train``) the same
drop-path draws. ``--ft-change`` instead reads the fine-tuned evidence's per-image correctness
and gives, per method and point, its change from its training-free top-1 minus STM's (paired
per image). ``--check`` instead runs the training-mode checks: STM's logits in ``train()``
with drop path 0 against ``eval()``, and the gradients of a distillation loss through the merge
reaching the blocks before the first merge step. Given the evidence files of several fine-tune
runs (seeds, recipes), ``--ft-change`` also tables them side by side.

With fine-tuned weights (``vimstm export`` of a ``vimstm finetune`` run), on clean images of
``--data`` (the test split), ``--swap METHOD=WEIGHTS`` separates what fine-tuning did to the
merge decisions from what it did to the weights that process the merged tokens: the fine-tuned
weights with the plans the bundled model makes on the same images, and the bundled weights
with the fine-tuned model's plans (top-1, KL from the bundled dense model), and the share of
each image's final tokens, as sets of original tokens, that both models form. With ``--drift
S1,S2,...`` it instead measures how fast those decisions move along the fine-tune's net update:
the share of final tokens the weights ``bundled + s (fine-tuned - bundled)`` form as the bundled
weights do, for each ``s``.

    export OMP_NUM_THREADS=1 PYTHONPATH=src
    D=../shared/data/cifar10/train.tar.xz
    for c in clean aug aug+mixup aug+cutmix clean+cutmix train; do  # 4-7 min each (1 thread)
      python benchmarks/ft_gap.py --data $D --images 512 --conditions $c \\
          --out results/cifar10/ft_gap/$c.json
    done
    python benchmarks/ft_gap.py --check --out results/cifar10/ft_gap/check.json
    python benchmarks/ft_gap.py --table results/cifar10/ft_gap   # the summary table
    # how much more fine-tuning changed each method than STM (the test split's correctness)
    python benchmarks/ft_gap.py --ft-change results/cifar10/evidence_finetune_correct.npz \\
        --out results/cifar10/ft_gap/ft_change.json
    # the four fine-tune runs at 0.4 (seed 0 = the tables, seeds 1 and 2, no mixing)
    F=results/cifar10; python benchmarks/ft_gap.py --ft-change $F/evidence_finetune_correct.npz \\
        $F/ft_seeds/{seed1,seed2,nomix}/evidence_finetune_correct.npz \\
        --out $F/ft_seeds/ft_change_runs.json
    # seed 1's fine-tuned STM and prune-top weights (1,000 test images; ~12 min, 2 threads)
    W=runs/ft12/seed1
    python benchmarks/ft_gap.py --swap stm=$W/ft_stm_r040.safetensors \\
        prune-top=$W/ft_prune-top_r040.safetensors --data ../shared/data/cifar10/test.tar.xz \\
        --images 1000 --out results/cifar10/ft_seeds/swap.json
    python benchmarks/ft_gap.py --swap stm=$W/ft_stm_r040.safetensors \\
        prune-top=$W/ft_prune-top_r040.safetensors --drift 0.02,0.05,0.1,0.25,0.5,1 \\
        --data ../shared/data/cifar10/test.tar.xz --images 500 \\
        --out results/cifar10/ft_seeds/drift.json  # ~15 min, 2 threads
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import platform
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import torch
from timm.data import Mixup
from torch import Tensor

import vimstm
from vimstm import merge as vmerge
from vimstm.data import model_transform, open_dataset, train_transform
from vimstm.engine.train_state import seed_all  # Python (RandAugment), NumPy (Mixup), torch
from vimstm.models.checkpoint import atomic_write

sys.path.insert(0, str(Path(__file__).resolve().parent))
# KL(dense || other) per image (the fine-tune's distillation term at temperature 1) and the
# paired bootstrap, as the merge analysis computes them
from merge_anatomy import boot, kl, logits_of

POINT = "reduction=0.4,every=2,shape=even"
METHODS = "stm,prune-top,prune-norm"
CONDITIONS = ("clean", "aug", "aug+mixup", "aug+cutmix", "clean+cutmix", "train")
AA, REPROB, SMOOTHING, DROP_PATH = "rand-m9-mstd0.5-inc1", 0.25, 0.1, 0.1


def load_images(data: str, n: int, model: Any, augment: bool, seed: int) -> tuple[Tensor, Tensor]:
    """``n`` evenly spaced images of ``data`` in a fixed shuffled order, with the evaluation
    or the fine-tune's training transform."""
    cfg = model.default_cfg
    size = cfg["input_size"][-1]
    tf = (train_transform(size, cfg["mean"], cfg["std"], AA, REPROB) if augment
          else model_transform(model))
    ds = open_dataset(data, transform=tf)
    idx = np.linspace(0, len(ds) - 1, n).round().astype(int)
    idx = idx[np.random.default_rng(seed).permutation(n)]
    seed_all(seed)
    xs, ys = zip(*(ds[int(i)] for i in idx))
    return torch.stack(xs), torch.tensor(ys)


def mix(x: Tensor, y: Tensor, batch: int, mixup: float, cutmix: float,
        seed: int) -> Tensor:
    """Mixup/cutmix applied per batch of ``batch`` as in training."""
    m = Mixup(mixup_alpha=mixup, cutmix_alpha=cutmix, prob=1.0, label_smoothing=SMOOTHING,
              num_classes=10)
    seed_all(seed)
    out = []
    for i in range(0, len(x), batch):
        xb, _ = m(x[i:i + batch].clone(), y[i:i + batch])
        out.append(xb)
    return torch.cat(out)


def logits(model: Any, x: Tensor, batch: int, seed: int | None = None) -> Tensor:
    """Logits in batches; ``seed``: reseeded first (the same drop-path draws for each method)."""
    if seed is not None:
        torch.manual_seed(seed)
    return logits_of(model, x, batch)


def pasted_tokens(x0: Tensor, x: Tensor, patch: int = 2) -> Tensor:
    """(images, 257) per original token of the mixed batch ``x``: 1 where most of the patch's
    pixels were pasted from the partner image (differ from ``x0``), 0 where they were kept,
    -1 for the middle class token."""
    b, _, h, w = x.shape
    px = (x != x0).any(1).float()  # (b, h, w)
    frac = px.view(b, h // patch, patch, w // patch, patch).mean((2, 4)).flatten(1)
    lab = (frac > 0.5).long()
    m = lab.shape[1]
    return torch.cat([lab[:, :m // 2], torch.full((b, 1), -1), lab[:, m // 2:]], 1)


def straddles(source: Tensor, label: Tensor) -> tuple[Tensor, Tensor]:
    """Per image: the share of its final tokens that hold patches of both images, and the share
    of its patches that sit in such tokens (``source``: (b, tokens, 257) 0/1 map)."""
    member = source > 0
    pasted = (member & (label == 1).unsqueeze(1)).any(-1)
    kept = (member & (label == 0).unsqueeze(1)).any(-1)
    both = pasted & kept  # (b, tokens)
    patches = (member & (label >= 0).unsqueeze(1)).sum(-1).float()  # per token
    return both.float().mean(1), (patches * both).sum(1) / patches.sum(1)


def run_condition(model: Any, args: argparse.Namespace, cond: str) -> dict[str, Any]:
    augment = cond.startswith("aug") or cond == "train"
    x, y = load_images(args.data, args.images, model, augment, args.seed)
    x0 = x
    if cond.endswith("+mixup"):
        x = mix(x, y, args.batch, 0.8, 0.0, args.seed)
    elif cond.endswith("+cutmix"):
        x = mix(x, y, args.batch, 0.0, 1.0, args.seed)
    elif cond == "train":
        x = mix(x, y, args.batch, 0.8, 1.0, args.seed)
    labelled = cond in ("clean", "aug")
    label = pasted_tokens(x0, x) if cond.endswith("+cutmix") else None
    model.eval()
    t0 = time.time()
    dense = logits(model, x, args.batch)
    out: dict[str, Any] = {"condition": cond, "images": len(x), "dense_seconds":
                           round(time.time() - t0, 1)}
    if labelled:
        out["dense_top1"] = float((dense.argmax(-1) == y).float().mean() * 100)
    point = vmerge.parse_merge_opts(args.point.split(","))
    per: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    rows: dict[str, Any] = {}
    for name in args.methods.split(","):
        t0 = time.time()
        trace = label is not None and name == "stm"  # which images STM's final tokens mix
        vmerge.patch(model, method=name, trace_source=trace, **point)
        if cond == "train":
            model.train()
            lg = logits(model, x, args.batch, seed=args.seed + 1)
            model.eval()
        elif trace:
            parts, shares = [], []
            with torch.no_grad():
                for i in range(0, len(x), args.batch):
                    parts.append(model(x[i:i + args.batch]).float())
                    shares.append(torch.stack(straddles(model.merge_info["source"],
                                                        label[i:i + args.batch]), 1))
            lg, share = torch.cat(parts), torch.cat(shares).numpy()
        else:
            lg = logits(model, x, args.batch)
        vmerge.unpatch(model)
        k = kl(dense, lg).numpy()
        agree = (lg.argmax(-1) == dense.argmax(-1)).float().numpy()
        per[name] = (k, agree)
        rows[name] = {"kl": float(k.mean()), "median_kl": float(np.median(k)),
                      "agree": float(agree.mean() * 100), "seconds": round(time.time() - t0, 1)}
        if labelled:
            rows[name]["top1"] = float((lg.argmax(-1) == y).float().mean() * 100)
        if trace:
            rows[name]["tokens_holding_both_images"] = float(share[:, 0].mean())
            rows[name]["patches_in_tokens_holding_both"] = float(share[:, 1].mean())
            out["per_image_straddle"] = [round(float(v), 4) for v in share[:, 1]]
            out["pasted_patch_share"] = float((label == 1).float().sum(1).mean() / 256)
        print(cond, name, rows[name], flush=True)
    if "stm" in per:
        for name in per:
            if name != "stm":
                rows[name]["kl_minus_stm"] = boot(per[name][0] - per["stm"][0])
                rows[name]["agree_minus_stm"] = boot((per[name][1] - per["stm"][1]) * 100)
    if "per_image_straddle" in out and "prune-top" in per:
        # does STM's excess KL over prune-top grow with its tokens that hold both images?
        st = np.array(out["per_image_straddle"])
        ex = per["stm"][0] - per["prune-top"][0]
        hi = st > np.median(st)
        out["stm_minus_prune_top_kl_by_straddle"] = {
            "spearman": float(np.corrcoef(st.argsort().argsort(), ex.argsort().argsort())[0, 1]),
            "above_median": boot(ex[hi]), "at_or_below_median": boot(ex[~hi]),
            "median_straddle": float(np.median(st))}
    out["rows"] = rows
    out["per_image_kl"] = {n: [round(float(v), 6) for v in p[0]] for n, p in per.items()}
    return out


def run_check(args: argparse.Namespace) -> dict[str, Any]:
    """STM in train() (drop path 0) against eval(), and gradients through the merge."""
    torch.manual_seed(args.seed)
    model = vimstm.create_model("vim_tiny_cifar10", pretrained=True)  # drop path 0
    teacher = vimstm.create_model("vim_tiny_cifar10", pretrained=True).eval()
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        t_logits = teacher(x)
    point = vmerge.parse_merge_opts(args.point.split(","))
    res: dict[str, Any] = {"images": len(x), "input": "torch.randn(8, 3, 32, 32), seed "
                           f"{args.seed}", "drop_path": 0.0}
    for name in args.methods.split(","):
        vmerge.patch(model, method=name, **point)
        model.eval()
        with torch.no_grad():
            ev = model(x)
        model.train()
        tr = model(x)
        tokens = [int(t) for t in model.merge_info.get("tokens_per_block", [])] \
            if isinstance(getattr(model, "merge_info", None), dict) else []
        first = next((i for i, t in enumerate(tokens) if i and t < tokens[0]), None)
        loss = kl(t_logits, tr).mean()
        model.zero_grad(set_to_none=True)
        loss.backward()
        grads = {}
        for i, layer in enumerate(model.layers):
            g = [p.grad for p in layer.parameters() if p.grad is not None]
            sq = sum(float(v.float().pow(2).sum()) for v in g)
            finite = all(bool(torch.isfinite(v).all()) for v in g)
            grads[i] = {"norm": sq ** 0.5, "finite": finite, "with_grad": len(g)}
        pe = model.patch_embed.proj.weight.grad
        vmerge.unpatch(model)
        res[name] = {
            "train_minus_eval_max_abs": float((tr.detach() - ev).abs().max()),
            "eval_logit_max_abs": float(ev.abs().max()),
            "loss": float(loss), "tokens_per_block": tokens, "first_merged_block": first,
            "grad_norm_per_block": [round(grads[i]["norm"], 8) for i in grads],
            "all_grads_finite": all(g["finite"] for g in grads.values()),
            "patch_embed_grad_norm": None if pe is None else float(pe.norm()),
        }
        print(name, {k: v for k, v in res[name].items() if k != "grad_norm_per_block"},
              flush=True)
    model.eval()
    return res


def ft_change(npz: Path) -> dict[str, Any]:
    """From the fine-tuned evidence's per-image correctness: for each method and point in the
    file, how much more fine-tuning changed its top-1 than STM's (its fine-tuned minus
    training-free change, less STM's), and its fine-tuned top-1 minus STM's, per image paired,
    with 95% bootstrap intervals (2,000 resamples), in points."""
    z = np.load(npz, allow_pickle=False)
    n = int(z["images"])
    c = {str(k): np.unpackbits(z[f"c{i}"], count=n).astype(np.int8)
         for i, k in enumerate(z["names"])}
    out: dict[str, Any] = {"source": str(npz), "images": n}
    if "dense ft" in c:
        out["dense ft"] = {"top1": float(c["dense ft"].mean() * 100), "change": [
            v * 100 for v in boot((c["dense ft"] - c["dense"]).astype(float))]}
    for p in ("0.2", "0.4"):
        if f"stm reduction={p} ft" not in c:
            continue
        stm_ft = c[f"stm reduction={p} ft"]
        stm = stm_ft - c[f"stm reduction={p} free"]
        out[f"stm reduction={p}"] = {"top1": float(stm_ft.mean() * 100),
                                     "change": [v * 100 for v in boot(stm.astype(float))]}
        for m in ("prune-top", "prune-norm", "mtr", "rmeeto", "random", "tome"):
            if f"{m} reduction={p} ft" not in c:
                continue
            ft = c[f"{m} reduction={p} ft"]
            ch = ft - c[f"{m} reduction={p} free"]
            out[f"{m} reduction={p}"] = {
                "top1": float(ft.mean() * 100),
                "change": float(ch.mean() * 100), "stm_change": float(stm.mean() * 100),
                "change_minus_stm_change": [v * 100 for v in boot((ch - stm).astype(float))],
                "ft_minus_stm_ft": [v * 100 for v in boot((ft - stm_ft).astype(float))]}
    return out


def runs_table(results: list[dict[str, Any]]) -> str:
    """Markdown: per fine-tune run (one evidence file each), the fine-tuned top-1 at reduction
    0.4, each run's change from training-free, and pruning's lead over fine-tuned STM."""
    lines = ["| run | dense ft (Δ) | STM ft (Δ from free) | prune-top ft (Δ) | prune-norm ft (Δ) "
             "| prune-top − STM, ft | prune-norm − STM, ft |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]

    def ci(v: list[float]) -> str:
        return f"{v[0]:+.2f} [{v[1]:+.2f}, {v[2]:+.2f}]" + (" ≈" if v[1] <= 0 <= v[2] else "")

    for r in results:
        s, pt, pn = (r.get(f"{m} reduction=0.4") for m in ("stm", "prune-top", "prune-norm"))
        d = r.get("dense ft")
        if s is None or pt is None or pn is None:
            continue
        lines.append(
            f"| {r['source']} | {d['top1']:.2f} ({d['change'][0]:+.2f}) | {s['top1']:.2f} "
            f"({s['change'][0]:+.2f}) | {pt['top1']:.2f} ({pt['change']:+.2f}) | "
            f"{pn['top1']:.2f} ({pn['change']:+.2f}) | {ci(pt['ft_minus_stm_ft'])} | "
            f"{ci(pn['ft_minus_stm_ft'])} |")
    return "\n".join(lines) + "\n"


def groups(source: Tensor) -> list[set[frozenset[int]]]:
    """Per image, its final tokens as the sets of original tokens each holds (class token
    included): a merge's partition, or the tokens pruning kept."""
    member = (source > 0).cpu().numpy()
    return [{frozenset(np.flatnonzero(row).tolist()) for row in img} for img in member]


def planned(model: Any, method: str, point: dict[str, Any], x: Tensor, batch: int,
            replay: list[Any] | None = None) -> tuple[Tensor, list[Any], list[Any]]:
    """Logits of ``model`` under ``method``, the merge plans it made (in call order, the
    merger's ``record``) and each image's final tokens (:func:`groups`); with ``replay``, every
    merge step applies the next of those plans instead of planning its own (the merger's
    ``replay``: another model's pair choices and weights, on the same images in the same
    batches; all of them must be applied)."""
    vmerge.patch(model, method=method, trace_source=True, graphs=False, **point)
    merger, made, final = model.merger, [], []
    if replay is None:
        merger.record = made
    else:
        merger.replay = deque(replay)
    parts = []
    try:
        with torch.no_grad():
            for i in range(0, len(x), batch):
                parts.append(model(x[i:i + batch]).float())
                final += groups(model.merge_info["source"])
        if merger.replay:
            raise RuntimeError(f"{len(merger.replay)} replayed plans were not applied")
    finally:
        merger.record = merger.replay = None
        vmerge.unpatch(model)
    return torch.cat(parts), made, final


def _swap_setup(args: argparse.Namespace) -> tuple[Any, Tensor, Tensor, dict[str, Any]]:
    """What ``--swap`` and ``--drift`` start from: the bundled model, ``--images`` clean images
    of ``--data`` with their labels, and the merge point of ``--point``."""
    bundled = vimstm.create_model("vim_tiny_cifar10", pretrained=True).eval()
    x, y = load_images(args.data, args.images, bundled, False, args.seed)
    return bundled, x, y, vmerge.parse_merge_opts(args.point.split(","))


def swap(args: argparse.Namespace) -> dict[str, Any]:
    """Which half of fine-tuning moved a method's accuracy: its merge decisions or the weights
    that process the merged tokens. For each ``METHOD=WEIGHTS`` of ``--swap`` (weights
    fine-tuned under that method), the four combinations of weights (bundled or fine-tuned)
    and plans (made by the bundled or the fine-tuned model on the same image), on clean images
    of ``--data``: top-1, KL from the bundled dense model, each against bundled/bundled
    (paired)."""
    bundled, x, y, point = _swap_setup(args)
    dense = logits(bundled, x, args.batch)
    out: dict[str, Any] = {"images": len(x), "dense_top1": float(
        (dense.argmax(-1) == y).float().mean() * 100)}
    for spec in args.swap:
        method, w = spec.split("=", 1)
        tuned = vimstm.create_model("vim_tiny_cifar10", checkpoint=w).eval()
        t0 = time.time()
        lg_b, plans_b, groups_b = planned(bundled, method, point, x, args.batch)
        lg_t, plans_t, groups_t = planned(tuned, method, point, x, args.batch)
        runs = {"bundled weights, bundled plans": lg_b,
                "fine-tuned weights, fine-tuned plans": lg_t,
                "fine-tuned weights, bundled plans": planned(tuned, method, point, x,
                                                             args.batch, plans_b)[0],
                "bundled weights, fine-tuned plans": planned(bundled, method, point, x,
                                                             args.batch, plans_t)[0]}
        # replay check: the bundled model replaying its own first batch's plans
        steps = len(plans_b) // -(-len(x) // args.batch)
        again = planned(bundled, method, point, x[:args.batch], args.batch, plans_b[:steps])[0]
        replay_err = float((again - lg_b[:args.batch]).abs().max())
        # how far the decisions moved: the share of an image's final tokens (as sets of
        # original tokens) that both models form
        moved = float(np.mean([len(a & b) / len(a) for a, b in zip(groups_b, groups_t)]))
        ref_ok = (lg_b.argmax(-1) == y).float().numpy()
        ref_kl = kl(dense, lg_b).numpy()
        rows = {}
        for name, lg in runs.items():
            ok = (lg.argmax(-1) == y).float().numpy()
            k = kl(dense, lg).numpy()
            rows[name] = {"top1": float(ok.mean() * 100), "kl": float(k.mean()),
                          "top1_minus_bundled": [v * 100 for v in boot(ok - ref_ok)],
                          "kl_minus_bundled": boot(k - ref_kl)}
        out[f"{method} ({Path(w).stem})"] = {"rows": rows, "replay_max_abs_diff": replay_err,
                                              "final_tokens_formed_alike": moved,
                                              "seconds": round(time.time() - t0, 1)}
        print(method, "replaying its own plans: max |logit diff|", replay_err,
              "; final tokens formed alike:", round(moved, 4), flush=True)
        print(method, json.dumps(rows, indent=1), flush=True)
    return out


def drift(args: argparse.Namespace) -> dict[str, Any]:
    """How fast each method's merge decisions move with its weights: for each ``METHOD=WEIGHTS``
    of ``--swap``, the weights ``bundled + s (fine-tuned - bundled)`` for each ``s`` of
    ``--drift``, and the share of each image's final tokens (as sets of original tokens) they
    form as the bundled weights do, on clean images of ``--data``."""
    bundled, x, _, point = _swap_setup(args)
    start = {k: v.clone() for k, v in bundled.state_dict().items()}
    out: dict[str, Any] = {"images": len(x), "scales": args.drift}
    for spec in args.swap:
        method, w = spec.split("=", 1)
        tuned = vimstm.create_model("vim_tiny_cifar10", checkpoint=w).state_dict()
        base = planned(bundled, method, point, x, args.batch)[2]
        model = copy.deepcopy(bundled)
        alike = {}
        for s in args.drift:
            model.load_state_dict({k: v + s * (tuned[k].to(v.dtype) - v) if v.is_floating_point()
                                   else v for k, v in start.items()})
            groups_s = planned(model, method, point, x, args.batch)[2]
            alike[str(s)] = float(np.mean([len(a & b) / len(a)
                                           for a, b in zip(groups_s, base)]))
            print(method, f"s={s}: final tokens formed alike {alike[str(s)]:.4f}", flush=True)
        out[f"{method} ({Path(w).stem})"] = alike
    return out


def table(folder: Path) -> str:
    """Markdown summary of the condition files in ``folder``."""
    lines = ["| condition | method | mean KL to dense | median KL | agree % | KL minus STM's |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for cond in CONDITIONS:
        f = folder / f"{cond}.json"
        if not f.exists():
            continue
        r = json.loads(f.read_text())["result"]
        for name, row in r["rows"].items():
            d = row.get("kl_minus_stm")
            ds = "–" if d is None else f"{d[0]:+.4f} [{d[1]:+.4f}, {d[2]:+.4f}]" + (
                " ≈" if d[1] <= 0 <= d[2] else "")
            lines.append(f"| {cond} | {name} | {row['kl']:.4f} | {row['median_kl']:.5f} | "
                         f"{row['agree']:.1f} | {ds} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", help="CIFAR-10 class folders or archive (the training split)")
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--batch", type=int, default=64,
                    help="images per forward and per mixup/cutmix batch (even)")
    ap.add_argument("--conditions", default="clean",
                    help=f"comma-separated, of {', '.join(CONDITIONS)}")
    ap.add_argument("--methods", default=METHODS)
    ap.add_argument("--point", default=POINT, help="merge options of every method")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--check", action="store_true",
                    help="the training-mode and gradient checks instead of the conditions")
    ap.add_argument("--table", type=Path, default=None, metavar="FOLDER",
                    help="print the summary table of the condition files in FOLDER and stop")
    ap.add_argument("--ft-change", type=Path, nargs="+", default=None, metavar="NPZ",
                    help="instead: each method's fine-tuning change against STM's, from "
                         "evidence_finetune_correct.npz (several: one per fine-tune run, "
                         "and a table across them)")
    ap.add_argument("--swap", nargs="+", default=None, metavar="METHOD=WEIGHTS",
                    help="instead: weights fine-tuned under METHOD with the bundled model's "
                         "merge plans, and the bundled weights with theirs")
    ap.add_argument("--drift", type=lambda t: [float(v) for v in t.split(",")], default=None,
                    metavar="S1,S2,...",
                    help="with --swap, instead: how many of each method's final tokens the "
                         "weights bundled + s (fine-tuned - bundled) form as the bundled do")
    ap.add_argument("--out", default=None, help="JSON file for the results")
    args = ap.parse_args()
    if args.table is not None:
        print(table(args.table), end="")
        return
    if args.ft_change is not None:
        res = [ft_change(f) for f in args.ft_change]
        print(json.dumps(res[0] if len(res) == 1 else res, indent=1))
        if len(res) > 1:
            print(runs_table(res), end="")
        if args.out:
            atomic_write(args.out, json.dumps(
                {"meta": {"ft_change": [str(f) for f in args.ft_change]},
                 "result": res[0] if len(res) == 1 else res}, indent=1) + "\n")
        return
    conds = args.conditions.split(",")
    bad = [c for c in conds if c not in CONDITIONS]
    if bad or args.batch % 2:
        raise SystemExit(f"ft_gap.py: unknown condition(s) {bad} (choose of {CONDITIONS})"
                         if bad else "ft_gap.py: --batch must be even (mixup pairs images)")
    if not args.check and not args.data:
        raise SystemExit("ft_gap.py: give --data (the CIFAR-10 training split)")
    missing = [w for w in (s.split("=", 1)[-1] for s in args.swap or ())
               if not Path(w).is_file()]
    if missing:
        raise SystemExit(f"ft_gap.py: no weights file {missing[0]} (give the fine-tuned "
                         "safetensors that `vimstm export` wrote)")
    print(f"vim_tiny_cifar10, CPU ({platform.machine()}), fp32, torch threads "
          f"{torch.get_num_threads()}, point {args.point}", flush=True)
    meta = {k: v for k, v in vars(args).items() if k not in ("table", "ft_change")}
    meta["swap_sha256"] = {w: hashlib.sha256(Path(w).read_bytes()).hexdigest()[:16]
                            for w in (s.split("=", 1)[-1] for s in args.swap or ())}
    if args.check:
        res: Any = run_check(args)
    elif args.swap:
        res = drift(args) if args.drift else swap(args)
    else:
        model = vimstm.create_model("vim_tiny_cifar10", pretrained=True,
                                    drop_path_rate=DROP_PATH if "train" in conds else 0.0)
        res = {c: run_condition(model, args, c) for c in conds}
        res = res[conds[0]] if len(conds) == 1 else res
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(args.out, json.dumps({"meta": meta, "result": res}, indent=1) + "\n")
        print("wrote", args.out)


if __name__ == "__main__":
    main()
