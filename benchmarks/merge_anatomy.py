"""Why pruning matches STM on vim_tiny_cifar10: where the removed tokens sit, which step costs
what, and whether averaging a pair hurts against dropping one of its tokens.

Runs on the CPU on a few hundred of the 1,000 embedded CIFAR-10 test images
(``vimstm.data.demo_cifar10``, evenly spaced, 10 classes), at the papers' operating point
``reduction=0.36, every=2, shape="even"`` (11 steps of 16-17 tokens, 75 tokens at the end).

Parts (``--parts``, default all):

* ``outcome``: top-1, agreement, KL(dense || merged) per image and the largest final token for
  STM (default options, protect=0, fading=none, max_size=4/8/16, fade_power=0.5/0.25),
  prune-top, prune-norm, random, and two cross variants that swap one half of a method:
  ``stm-keep`` (STM's pairs, but each pair keeps its larger-weight token instead of the weighted
  average: a pruning with STM's choice) and ``prune-top-merge`` (prune-top's choice, but each
  dropped token is averaged, size-weighted, into its preceding kept token on the same side of
  the class token: a merging with pruning's choice). Paired bootstrap intervals of the
  differences in KL and top-1 against STM.
* ``steps``: KL after the first k merge steps only (k = 1 .. 11) per method.
* ``where``: where the removed patches sit: for pruning the dropped patches, for STM the
  patches that end in a group of more than one; border ring, centre, distance to the class
  token in scan order; the size of the final groups; the spatial spread of STM's pairs.
* ``window``: with protect=0, how many of STM's pairs touch the ``--window`` (4) tokens on
  either side of the class token, step by step, the scan distance from the class token to the
  nearest pair, and the rank of those tokens' cost.

``--point`` replaces the operating point (e.g. ``ratio=0.4`` or ``flops=0.6``: the default
schedule, merges after blocks 6, 12, 18). ``--data`` takes the images from CIFAR-10 class
folders instead (the training split chose STM's ``fade_power`` default; the JSON's
``stm_defaults`` says what the row ``stm`` ran with).

    # the runs behind results/cifar10/why_pruning.md (CPU, a few minutes each)
    export OMP_NUM_THREADS=1 PYTHONPATH=src
    python benchmarks/merge_anatomy.py --images 256 --parts outcome \\
        --out results/cifar10/why_pruning_outcome.json
    python benchmarks/merge_anatomy.py --images 128 --steps-images 32 --where-images 128 \\
        --parts steps,where,window --out results/cifar10/why_pruning_anatomy.json
    python benchmarks/merge_anatomy.py --images 96 --steps-images 96 --parts steps \\
        --steps-methods stm,prune-top,prune-norm --out results/cifar10/why_pruning_steps.json
    # STM with a cap on a merged token's size (max_size) against the others, at 0.36 and 0.4
    # (``--reduction``), and on a disjoint image set (``--shift 2``): why_pruning.md
    python benchmarks/merge_anatomy.py --images 256 --parts outcome --reduction 0.4 \\
        --outcome-methods "stm,stm max_size=4,stm max_size=8,prune-top,prune-norm,random" \\
        --out results/cifar10/snowball_r040.json
    # STM with a weaker fade (fade_power) against the others, at 0.36 and 0.4: why_pruning.md
    python benchmarks/merge_anatomy.py --images 256 --parts outcome --reduction 0.36 \\
        --outcome-methods "stm,stm fade_power=0.5,stm fade_power=0.25,prune-norm,prune-top" \\
        --out results/cifar10/fade_power_r036.json
    # STM's default options on 512 training images (benchmarks/stm_default_select.py applies
    # the rule to the outputs): why_pruning.md, "Choosing the default on training images"
    python benchmarks/merge_anatomy.py --data ../shared/data/cifar10/train.tar.xz --images 512 \
        --parts outcome --reduction 0.36 --dense-cache /tmp/dense512.pt \
        --outcome-methods "stm,stm max_size=3,stm fade_power=0.25" --out train_r036.json
    # why protect 0..16 changes nothing: the nearest pair STM (protect=0) takes, per point
    python benchmarks/merge_anatomy.py --images 128 --where-images 128 --parts window \
        --window 16 --point ratio=0.4 --out results/cifar10/protect_window_ratio04.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import time
from typing import Any

import numpy as np
import torch
from torch import Tensor

import vimstm
from vimstm import merge as vmerge
from vimstm.data import demo_cifar10, model_transform, open_dataset
from vimstm.errors import DataError
from vimstm.merge.base import GroupPlan, group_normalize
from vimstm.merge.prune import TopPruneMerger
from vimstm.merge.stm import STMMerger
from vimstm.models.checkpoint import atomic_write

POINT = {"reduction": 0.36, "every": 2, "shape": "even"}
WINDOW = 4


class KeepSTM(STMMerger):
    """STM's pair choice, but a pair keeps its larger-weight token (no averaging)."""

    name = "stm-keep"

    def plan(self, hidden, residual, state, ssm, r):
        p = super().plan(hidden, residual, state, ssm, r)
        return p._replace(w_last=(p.w_last > 0.5).float())


class MergePrune(TopPruneMerger):
    """prune-top's choice, but each dropped token is averaged (size-weighted) into the kept
    token before it on its side of the class token (the one after it where none is)."""

    name = "prune-top-merge"

    def plan(self, hidden, residual, state, ssm, r):
        p = super().plan(hidden, residual, state, ssm, r)
        b, t = hidden.shape[:2]
        new_len = t - r
        c, new_c = state.cls_index, p.cls_index
        keep = torch.zeros(b * t, dtype=torch.bool, device=hidden.device)
        keep[p.first] = True  # every slot of a pruning plan is one kept token
        keep = keep.view(b, t)
        prev = keep.long().cumsum(1) - 1  # slot of the kept token at or before each token
        pos = torch.arange(t, device=hidden.device).unsqueeze(0)
        nxt = prev + 1
        bad_prev = (prev < 0) | ((pos > c) & (prev == new_c))
        dest = torch.where(keep, prev, torch.where(bad_prev, nxt, prev)).clamp(max=new_len - 1)
        wn = group_normalize(dest, state.size.float(), new_len)
        return GroupPlan(dest, wn, new_len, False, new_c)


vmerge._CLASSES.update({"stm-keep": KeepSTM, "prune-top-merge": MergePrune})


class Recorder:
    """Wraps a merger's ``plan`` to keep every step's (tokens, class index, plan, source)."""

    def __init__(self, merger: Any) -> None:
        self.steps: list[dict[str, Any]] = []
        inner = merger.plan

        def plan(hidden, residual, state, ssm, r):
            p = inner(hidden, residual, state, ssm, r)
            self.steps.append({"t": hidden.shape[1], "c": state.cls_index, "plan": p,
                               "source": None if state.source is None else state.source.clone(),
                               "cost": getattr(merger, "_last_cost", None)})
            return p

        merger.plan = plan


def image_indices(total: int, n: int, shift: int = 0) -> np.ndarray:
    """``n`` evenly spaced indices of ``total`` (the first and the last included; class-sorted
    data keeps every class); ``shift`` moves every index (a disjoint set while it is below the
    spacing)."""
    return (np.linspace(0, total - 1, n).round().astype(int) + shift) % total


def images(n: int, model: Any, shift: int = 0,
           data: str | None = None) -> tuple[Tensor, Tensor, np.ndarray]:
    """``n`` evenly spaced images and labels, and their indices: of the embedded test images,
    or of ``data`` (a folder or archive of CIFAR-10 class folders, e.g. the training split)."""
    if data is None:
        ds = demo_cifar10(model_transform(model))
    else:
        ds = open_dataset(data, transform=model_transform(model))
        expected = demo_cifar10().classes
        if list(ds.classes) != list(expected):
            raise DataError(f"{data} has the classes {ds.classes}, not CIFAR-10's {expected}; "
                            "give a folder or archive of the 10 CIFAR-10 class folders")
    idx = image_indices(len(ds), n, shift)
    xs, ys = zip(*(ds[int(i)] for i in idx))
    return torch.stack(xs), torch.tensor(ys), idx


def logits_of(model: Any, x: Tensor, batch: int = 64) -> Tensor:
    with torch.no_grad():
        return torch.cat([model(x[i:i + batch]).float() for i in range(0, len(x), batch)])


def kl(dense: Tensor, other: Tensor) -> Tensor:
    """KL(dense || other) per image (nats)."""
    p = dense.log_softmax(-1)
    return (p.exp() * (p - other.log_softmax(-1))).sum(-1)


def boot(d: np.ndarray, n: int = 2000, seed: int = 0) -> list[float]:
    """Mean and 95% bootstrap interval of ``d`` (per-image paired differences)."""
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), (n, len(d)))].mean(1)
    return [float(d.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def boot_median(a: np.ndarray, b: np.ndarray, n: int = 2000, seed: int = 0) -> list[float]:
    """``median(a) - median(b)`` and its 95% paired-bootstrap interval (the same resampled
    images for both)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), (n, len(a)))
    d = np.median(a[idx], 1) - np.median(b[idx], 1)
    return [float(np.median(a) - np.median(b)), float(np.percentile(d, 2.5)),
            float(np.percentile(d, 97.5))]


def paired(a: tuple[np.ndarray, ...], b: tuple[np.ndarray, ...]) -> dict[str, list[float]]:
    """Differences a - b of (correct, KL, largest token, agrees with dense) per image, paired
    intervals."""
    return {"top1": boot((a[0] - b[0]) * 100), "kl": boot(a[1] - b[1]),
            "median_kl": boot_median(a[1], b[1]), "largest_token": boot(a[2] - b[2]),
            "agree": boot((a[3] - b[3]) * 100)}


METHODS = {
    "stm": {"method": "stm"},
    "stm protect=0": {"method": "stm", "protect": 0},
    "stm fading=none": {"method": "stm", "fading": "none"},
    "stm-keep": {"method": "stm-keep"},
    "prune-top": {"method": "prune-top"},
    "prune-top-merge": {"method": "prune-top-merge"},
    "prune-norm": {"method": "prune-norm"},
    "random": {"method": "random", "seed": 0},
    "stm max_size=4": {"method": "stm", "max_size": 4},
    "stm max_size=8": {"method": "stm", "max_size": 8},
    "stm max_size=16": {"method": "stm", "max_size": 16},
    "stm fade_power=0.5": {"method": "stm", "fade_power": 0.5},
    "stm fade_power=0.25": {"method": "stm", "fade_power": 0.25},
}


def method_opts(name: str) -> dict[str, Any]:
    """A row's ``patch`` options: a name of ``METHODS`` or "METHOD KEY=VALUE ..."."""
    if name in METHODS:
        return METHODS[name]
    method, *items = name.split()
    return {"method": method, **vmerge.parse_merge_opts(items)}


def part_outcome(model: Any, x: Tensor, y: Tensor, dense: Tensor,
                 methods: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"images": len(x), "dense_top1": float((dense.argmax(-1) == y)
                                                                 .float().mean() * 100)}
    rows, per = {}, {}
    for name in methods:
        opts = method_opts(name)
        t0 = time.time()
        vmerge.patch(model, **POINT, **opts)
        lg, largest = [], []
        for i in range(0, len(x), 64):
            lg.append(logits_of(model, x[i:i + 64]))
            largest.append(model.merge_info["size"].squeeze(-1).amax(-1))  # patches, largest token
        lg, largest = torch.cat(lg), torch.cat(largest).float()
        vmerge.unpatch(model)
        correct = (lg.argmax(-1) == y).float().numpy()
        agree = (lg.argmax(-1) == dense.argmax(-1)).float().numpy()
        k = kl(dense, lg).numpy()
        per[name] = (correct, k, largest.numpy(), agree)
        rows[name] = {"top1": float(correct.mean() * 100), "agree": float(agree.mean() * 100),
                      "kl": float(k.mean()), "median_kl": float(np.median(k)),
                      "largest_token": float(largest.mean()), "seconds": round(time.time() - t0, 1)}
        print(name, rows[name], flush=True)
    for name in per:
        if name != "stm" and "stm" in per:
            d = paired(per[name], per["stm"])
            rows[name]["top1_vs_stm"], rows[name]["kl_vs_stm"] = d["top1"], d["kl"]
            rows[name]["median_kl_vs_stm"] = d["median_kl"]
            rows[name]["agree_vs_stm"] = d["agree"]
            rows[name]["largest_token_vs_stm"] = d["largest_token"]
    # each cross variant against the method whose choice it keeps; STM variants against pruning
    out["pairs"] = {f"{a} - {b}": paired(per[a], per[b])
                    for a, b in (("stm-keep", "stm"), ("prune-top-merge", "prune-top"),
                                 ("prune-top", "prune-norm"), ("stm fading=none", "stm"),
                                 ("random", "stm"),
                                 *((n, m) for n in per
                                   if n.startswith(("stm max_size", "stm fade_power"))
                                   for m in ("prune-norm", "prune-top")))
                    if a in per and b in per}
    out["per_image_kl"] = {name: [round(float(v), 5) for v in p[1]] for name, p in per.items()}
    out["per_image_correct"] = {name: [int(v) for v in p[0]] for name, p in per.items()}
    out["per_image_largest_token"] = {name: [int(v) for v in p[2]] for name, p in per.items()}
    out["per_image_agree"] = {name: [int(v) for v in p[3]] for name, p in per.items()}
    out["rows"] = rows
    return out


def part_steps(model: Any, x: Tensor, dense: Tensor, methods: list[str]) -> dict[str, Any]:
    full = vmerge.build_merger(model, "stm", **POINT).schedule
    slots = [i for i, r in enumerate(full) if r]
    res: dict[str, Any] = {"images": len(x), "schedule": full, "kl_after_k_steps": {}}
    per: dict[str, list[np.ndarray]] = {}
    for name in methods:
        per[name] = []
        for k in range(1, len(slots) + 1):
            sched = [r if i in slots[:k] else 0 for i, r in enumerate(full)]
            vmerge.patch(model, method=METHODS[name]["method"], r=sched)
            per[name].append(kl(dense, logits_of(model, x)).numpy())
            vmerge.unpatch(model)
        res["kl_after_k_steps"][name] = [float(v.mean()) for v in per[name]]
        print(name, [round(float(v.mean()), 4) for v in per[name]], flush=True)
    res["kl_vs_stm_after_k_steps"] = {
        name: [boot(a - b) for a, b in zip(per[name], per["stm"])]
        for name in methods if name != "stm" and "stm" in per}
    return res


def patch_xy(model: Any) -> tuple[np.ndarray, np.ndarray, int]:
    gh, gw = model.patch_embed.grid_size
    m = gh * gw
    return np.arange(m) // gw, np.arange(m) % gw, m // 2


def part_where(model: Any, x: Tensor) -> dict[str, Any]:
    rows_, cols, cls_orig = patch_xy(model)
    gh, gw = model.patch_embed.grid_size
    m = gh * gw
    border = (rows_ == 0) | (rows_ == gh - 1) | (cols == 0) | (cols == gw - 1)
    ring2 = (np.minimum.reduce([rows_, cols, gh - 1 - rows_, gw - 1 - cols]) <= 1)
    centre = ((rows_ >= gh // 4) & (rows_ < 3 * gh // 4) & (cols >= gw // 4)
              & (cols < 3 * gw // 4))
    # scan distance of patch p to the class token (inserted between patches m//2-1 and m//2)
    scan_dist = np.where(np.arange(m) < cls_orig, cls_orig - np.arange(m),
                         np.arange(m) - cls_orig + 1)
    res: dict[str, Any] = {"images": len(x), "uniform": {
        "border": float(border.mean()), "ring2": float(ring2.mean()),
        "centre": float(centre.mean()), "scan_dist": float(scan_dist.mean())}}
    for name in ("stm", "stm fading=none", "random", "prune-top", "prune-norm"):
        vmerge.patch(model, **POINT, **METHODS[name], trace_source=True)
        rec = Recorder(model.merger)
        logits_of(model, x, batch=len(x))
        src = model.merge_info["source"].cpu()
        vmerge.unpatch(model)
        keepcols = [i for i in range(m + 1) if i != cls_orig]
        patches = src[:, :, keepcols]  # (b, final tokens, patches)
        group = patches.sum(-1, keepdim=True)  # patches per final token
        held = patches.sum(1) > 0  # (b, m)
        in_big = ((patches > 0) & (group > 1)).any(1)  # patch in a group of > 1
        touched = (~held) | in_big  # dropped, or averaged with another patch
        t = touched.numpy().astype(float)
        w = t / t.sum(1, keepdims=True)
        row = {"touched_per_image": float(t.sum(1).mean()),
               "touched_border": float((w * border).sum(1).mean()),
               "touched_ring2": float((w * ring2).sum(1).mean()),
               "touched_centre": float((w * centre).sum(1).mean()),
               "touched_scan_dist": float((w * scan_dist).sum(1).mean()),
               "untouched_share_border": float(1 - t[:, border].mean()),
               "untouched_share_centre": float(1 - t[:, centre].mean()),
               "touched_map_4x4": (t.mean(0).reshape(4, gh // 4, 4, gw // 4).mean((1, 3))
                                   .round(3).tolist()),
               "dropped_per_image": float((~held).float().sum(1).mean()),
               "final_group_size_max": float(group.amax((1, 2)).float().mean()),
               "share_in_groups_gt8": float(((patches > 0) & (group > 8)).any(1).float().mean()),
               "final_groups_gt8_per_image": float((group > 8).float().sum((1, 2)).mean())}
        big = patches[torch.arange(len(x)), group[..., 0].argmax(1)] > 0  # (b, m) largest group
        bn = big.numpy()
        row["largest_group_rows_spanned"] = float(np.mean([len(set(rows_[v])) for v in bn]))
        row["largest_group_scan_dist"] = float((bn * scan_dist).sum(1).mean()
                                               / max(bn.sum(1).mean(), 1))
        # the spatial spread of STM's pairs: distance between the two members' patch centroids
        if name.startswith("stm"):
            dists, wraps = [], []
            for s in rec.steps:
                p, sr = s["plan"], s["source"][:, :, keepcols].float()
                first, last = p.first[p.is_pair.view(-1)], p.last[p.is_pair.view(-1)]
                rows2 = sr.reshape(-1, m)
                a, z = rows2[first], rows2[last]
                cy = torch.tensor(rows_, dtype=torch.float32)
                cx = torch.tensor(cols, dtype=torch.float32)

                def centroid(v, cy=cy, cx=cx):
                    n = v.sum(-1).clamp_min(1)
                    return (v @ cy) / n, (v @ cx) / n

                (ay, ax), (zy, zx) = centroid(a), centroid(z)
                d = ((ay - zy) ** 2 + (ax - zx) ** 2).sqrt()
                dists.append(float(d.mean()))
                wraps.append(float((d > 3).float().mean()))
            row["pair_centroid_dist_per_step"] = [round(v, 2) for v in dists]
            row["pair_far_share_per_step"] = [round(v, 3) for v in wraps]
        res[name] = row
        print(name, {k: v for k, v in row.items() if k != "touched_map_4x4"}, flush=True)
    return res


def part_window(model: Any, x: Tensor, **opts: Any) -> dict[str, Any]:
    """STM with protect=0: pairs touching the WINDOW tokens on each side of the class token,
    where on its side each pair sits, and how many patches its two tokens already hold."""
    res: dict[str, Any] = {"images": len(x), "window": WINDOW, "options": opts, "per_step": []}
    merger = vmerge.build_merger(model, "stm", **POINT, protect=0, trace_source=True, **opts)
    costs: list[Tensor] = []
    inner_costs = merger._costs

    def costs_hook(*args):
        cost, score = inner_costs(*args)
        costs.append(score.clone())  # (b, 2 sides, n_a): the rank score, low = merged first
        return cost, score

    merger._costs = costs_hook
    rec = Recorder(merger)
    vmerge.unpatch(model)
    merger.attach(model)
    logits_of(model, x, batch=len(x))
    vmerge.unpatch(model)
    for s, score in zip(rec.steps, costs):
        p, t, c = s["plan"], s["t"], s["c"]
        b = x.shape[0]
        pair = p.is_pair.view(b, -1)
        lo = p.first.view(b, -1) - torch.arange(b).unsqueeze(1) * t
        hi = p.last.view(b, -1) - torch.arange(b).unsqueeze(1) * t
        near = pair & (((lo - c).abs() <= WINDOW) | ((hi - c).abs() <= WINDOW))
        # scan distance from the class token to the nearer token of each pair (inf: no pair)
        gap = torch.where(hi < c, c - hi, lo - c).float().masked_fill(~pair, float("inf"))
        nearest = gap.amin(1)  # per image
        # where the pair sits on its side: 0 beside the class token, 1 at the sequence's end
        side_len = torch.where(lo < c, torch.tensor(c), torch.tensor(t - 1 - c)).float()
        rel_dist = ((lo - c).abs().float() / side_len)[pair]
        size = s["source"].sum(-1).reshape(-1)  # patches held by each token before the step
        held = (size[p.first] + size[p.last]).view(b, -1)[pair]
        # the A tokens nearest the class token: the last valid ones of each side's list
        layout = merger._layout(t, c, t - p.first.numel() // b, x.device)
        a = layout.a_tok  # (2, n_a)
        near_a = ((a - c).abs() <= WINDOW) & ~layout.invalid
        valid = ~layout.invalid
        rank = score.masked_fill(~valid, float("inf")).argsort(-1).argsort(-1).float()
        n_valid = valid.sum(-1).float()  # (2,)
        rel = (rank / n_valid.view(1, 2, 1))  # 0: merged first, ~1: merged last
        res["per_step"].append({
            "tokens": t, "cls": c, "pairs_per_image": float(pair.sum(1).float().mean()),
            "pairs_in_window_per_image": float(near.sum(1).float().mean()),
            "nearest_pair_distance_min": float(nearest.min()),
            "nearest_pair_distance_mean": float(nearest.mean()),
            "images_with_window_pair": float(near.any(1).float().mean()),
            "pair_rel_dist": float(rel_dist.mean()),
            "pairs_in_outer_quarter": float((rel_dist > 0.75).float().mean()),
            "pair_patches_mean": float(held.mean()),
            "pairs_holding_8_or_more": float((held >= 8).float().mean()),
            "window_A_rank_rel": float(rel[:, near_a].mean()) if near_a.any() else None,
        })
        print(res["per_step"][-1], flush=True)
    return res


def weights_fingerprint(model: Any) -> str:
    """sha256 of the model's parameters and buffers (a cache of other weights is not used)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()


def dense_logits(model: Any, x: Tensor, data: str | None, idx: np.ndarray,
                 cache: str | None) -> Tensor:
    """The dense model's logits of ``x``, through ``cache`` when given (keyed by the weights,
    the data and the image indices; a cache of other weights or images is recomputed and
    overwritten)."""
    key = {"weights": weights_fingerprint(model), "data": data, "indices": idx.tolist()}
    if cache and os.path.exists(cache):
        saved = torch.load(cache, weights_only=True)
        if saved.get("key") == json.dumps(key):
            return saved["logits"]
    dense = logits_of(model, x)
    if cache:
        tmp = f"{cache}.tmp{os.getpid()}"
        torch.save({"key": json.dumps(key), "logits": dense}, tmp)
        os.replace(tmp, cache)
    return dense


def main() -> None:
    global WINDOW
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--steps-images", type=int, default=64)
    ap.add_argument("--where-images", type=int, default=128)
    ap.add_argument("--outcome-methods", default=",".join(METHODS),
                    help="comma-separated rows: names of METHODS or 'METHOD KEY=VALUE ...' "
                         "(e.g. 'stm fade_power=0.1')")
    ap.add_argument("--steps-methods", default="stm,stm-keep,prune-top,prune-top-merge,prune-norm")
    ap.add_argument("--parts", default="outcome,steps,where,window")
    ap.add_argument("--reduction", type=float, default=POINT["reduction"],
                    help="mean token reduction of the every=2 'even' schedule")
    ap.add_argument("--point", default=None,
                    help="another operating point, as merge options replacing 'reduction=R, "
                         "every=2, shape=even' (e.g. ratio=0.4 or flops=0.6: default schedule)")
    ap.add_argument("--window", type=int, default=WINDOW,
                    help="tokens on each side of the class token the window part counts")
    ap.add_argument("--shift", type=int, default=0,
                    help="move every image index by this much (2: a set disjoint from 0's)")
    ap.add_argument("--data", default=None,
                    help="CIFAR-10 class folders (folder or archive) to take the images from "
                         "instead of the embedded test images, e.g. ../shared/data/cifar10/"
                         "train.tar.xz (evenly spaced over the class-sorted files)")
    ap.add_argument("--dense-cache", default=None,
                    help="file of the dense logits: read when it holds these images' (same "
                         "data, indices), else computed and written (saves the dense pass "
                         "between runs at several points)")
    ap.add_argument("--out", default=None, help="JSON file for the results")
    args = ap.parse_args()
    WINDOW = args.window
    POINT["reduction"] = args.reduction
    if args.point:
        POINT.clear()
        POINT.update(vmerge.parse_merge_opts(args.point.split(",")))
    torch.manual_seed(0)
    model = vimstm.create_model("vim_tiny_cifar10", pretrained=True).eval()
    print(f"vim_tiny_cifar10, CPU ({platform.processor() or platform.machine()}), fp32, "
          f"torch threads {torch.get_num_threads()}, point {POINT}", flush=True)
    x, y, idx = images(args.images, model, args.shift, args.data)
    dense = dense_logits(model, x, args.data, idx, args.dense_cache)
    parts = args.parts.split(",")
    res: dict[str, Any] = {"point": POINT, "device": "cpu", "dtype": "fp32",
                           "shift": args.shift,
                           "data": args.data or "embedded test images (demo_cifar10)",
                           "indices": idx.tolist(),
                           "weights_fingerprint": weights_fingerprint(model),
                           "stm_defaults": STMMerger.option_defaults}  # what the row "stm" is
    if "outcome" in parts:
        res["outcome"] = part_outcome(model, x, y, dense, args.outcome_methods.split(","))
    def spread(n: int) -> slice:  # n of the images, spread over the classes
        return slice(0, None, max(1, len(x) // n))

    s = spread(args.steps_images)
    if "steps" in parts:
        res["steps"] = part_steps(model, x[s][:args.steps_images], dense[s][:args.steps_images],
                                  args.steps_methods.split(","))
    s = spread(args.where_images)
    if "where" in parts:
        res["where"] = part_where(model, x[s][:args.where_images])
    if "window" in parts:
        res["window"] = part_window(model, x[s][:args.where_images])
        res["window_fading_none"] = part_window(model, x[s][:args.where_images], fading="none")
    if args.out:
        atomic_write(args.out, json.dumps(res, indent=1))
        print("wrote", args.out)


if __name__ == "__main__":
    main()
