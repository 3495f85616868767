"""The evidence on the CIFAR-10 reference model: every method against dense, with paired stats.

One process, one pass per configuration over the test split (kept on the device):

* **main**: dense, then every method at the literature's operating points: mean token reduction
  0.17 / 0.27 / 0.36 / 0.46 (``reduction=``, AMVim's and R-MeeTo's definition) and 0.2 / 0.4
  (STM's stated 20% / 40%, the targets), ``ratio=`` 0.2 / 0.4 (share of the patch tokens gone
  by the last block) and GFLOPs-matched points (``flops=`` 0.8 / 0.6); the reduction points on
  the papers' schedule (``--reduction-schedule``: the same r after every second block; 0.46
  is out of its reach on 24 blocks and is reported as not run), the others on the default
  schedule (merges after blocks 6, 12, 18 of 24);
* **ablation**: STM with one part changed at each ablation point (ratio 0.4 and flops 0.6 on
  the default schedule, mean token reduction 0.36 and 0.4 on the papers'): protection window
  0/2/8/16 (default 4), fading gamma/none (default ssm), weights size (default b), similarity
  b/delta (default x), a merged token's size capped at 4 or 8 patches (default: no cap), the
  fade's strength 0.5 or 0.25 (default 1);
* **calibrated**: STM with ``vimstm calibrate``'s schedule (its functions and defaults: KL
  sensitivity of every candidate step on ``--calib-images`` 256 training images, probe 25%,
  at most 3 steps; measured once under the evaluation autocast, allocated per point) at the
  GFLOPs of the default schedule at each ablation point; the schedule documents are kept in
  the JSON's ``meta.calibration`` (written to a file, ``--schedule FILE`` reads one).

Each row: top-1 on the images given, agreement with the dense predictions and KL from the dense
logits, the operating point (mean token reduction, ratio, tokens in the last block, GMACs in
the literature convention and with both scan directions), images/s (CUDA: fp16, batch 256,
CUDA-graph replay as ``vimstm bench`` does by default) and the speed-up over dense
(measured first and again last in the same process, on the same GPU: the faster of the two;
with shards, each row against its own GPU's dense), and the difference in top-1 against dense
and against STM (default options) at the same point, each with a 95% paired-bootstrap interval
over the images and McNemar's p-value (:mod:`vimstm.engine.stats`); ``distinct`` says
whether the interval excludes 0. Whether each row got each image right is saved
(``*_correct.npz``: one packed bit vector per row and the SHA-256 of the label vector, never
the labels or the predictions, so no part of the data set is stored) so every comparison can
be recomputed.

``--finetuned DIR`` evaluates the runs of ``vimstm finetune`` under DIR instead (each
subfolder with a ``last.pth``; its merging options are read from the checkpoint; its EMA
weights when the run kept them, ``--model-ema``, as ``vimstm export`` would write): the
fine-tuned model, and the original weights with the same merging, with differences against the
original dense model, the dense fine-tune (``--method dense``: the control), the STM fine-tune
at the same point and the same configuration training-free.

    # GPU, the whole split (benchmarks/reproduce.sh cifar-evidence prints this command)
    python benchmarks/cifar_evidence.py --checkpoint W --data .data/cifar10/test.tar.xz \\
        --calib-data .data/cifar10/train.tar.xz --out results/cifar10 \\
        --markdown results/cifar10/evidence.md
    # fine-tuned runs (benchmarks/reproduce.sh cifar-finetune)
    python benchmarks/cifar_evidence.py --checkpoint W --data ... --finetuned runs/ft \\
        --out results/cifar10 --markdown results/cifar10/evidence_finetune.md
    # two GPUs: one shard each (every shard measures its own dense row), then merge
    CUDA_VISIBLE_DEVICES=0 python benchmarks/cifar_evidence.py ... --shard 0/2 &
    CUDA_VISIBLE_DEVICES=1 python benchmarks/cifar_evidence.py ... --shard 1/2; wait
    python benchmarks/cifar_evidence.py --out results/cifar10 --merge-shards 2 --markdown ...
    # CPU check on 64 images
    OMP_NUM_THREADS=1 python benchmarks/cifar_evidence.py --data test.tar.xz --limit 64 \\
        --calib-data train.tar.xz --calib-images 8 --batch-size 32 --out /tmp/ev

Writes ``OUT/evidence.{json,csv,png}`` and ``OUT/evidence_correct.npz`` (``evidence_finetune.*``
with ``--finetuned``); ``--plot-only`` redraws the PNG from the JSON, ``--stats-only``
recomputes the statistics, tables and plot from the saved JSON and correctness vectors.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import shlex
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import vimstm
from vimstm.data import build_eval_loader
from vimstm.engine.model_args import add_model_args, model_from_args
from vimstm.engine.paths import check_output_dir, check_output_file
from vimstm.engine.stats import compare
from vimstm.errors import VimstmError
from vimstm.flops import count_flops
from vimstm.merge import METHODS, parse_merge_opts

ABLATIONS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("protect=0", {"protect": 0}), ("protect=2", {"protect": 2}), ("protect=8", {"protect": 8}),
    ("protect=16", {"protect": 16}), ("fading=gamma", {"fading": "gamma"}),
    ("fading=none", {"fading": "none"}), ("weights=size", {"weights": "size"}),
    ("similarity=b", {"similarity": "b"}), ("similarity=delta", {"similarity": "delta"}),
    ("max_size=4", {"max_size": 4}), ("max_size=8", {"max_size": 8}),
    ("fade_power=0.5", {"fade_power": 0.5}), ("fade_power=1", {"fade_power": 1.0}),  # full fade
)
SCHEDULE_OPTS = ("every", "shape")  # --merge-opt keys that shape the schedule, not the method
# the reduction points' schedule (--reduction-schedule): the same r after every second block
REDUCTION_SCHEDULE = "every=2,shape=even"
STATS = ("diff", "lo", "hi", "p_exact", "p_chi2", "distinct")


@dataclass
class Config:
    """One row to evaluate: ``kw`` goes to ``vimstm.patch`` (nothing for dense)."""

    label: str
    method: str
    group: str  # dense | main | ablation | calibrated | finetuned | training-free
    point: str | None = None  # "ratio=0.4": rows at one point are compared with STM's
    variant: str = "default"
    kw: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None  # finetuned rows: their own weights
    error: str | None = None  # why it cannot run (a calibration that found no schedule)
    order: int = 0  # place in the whole plan (shards are merged back in this order)


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise VimstmError(f"{text!r}: give comma-separated numbers, e.g. 0.2,0.4") from None


def parse_point(point: str) -> dict[str, float]:
    key, _, val = point.partition("=")
    if key not in ("ratio", "reduction", "flops") or not val:
        raise VimstmError(f"operating point {point!r}: use ratio=F, reduction=F or flops=F")
    return {key: _floats(val)[0]}


# One H100, results/cifar10/evidence.json (2026-11-28): 120 rows in 148 s (190 s with the
# calibration); a row's evaluation of 8,000 images took 0.73 s (median; bf16, CUDA graphs) and
# its speed measurement (3 warm-up + 10 timed forwards of 256, CUDA-graph capture) about 0.43 s.
H100_EVAL_IPS, H100_BENCH_S = 11000.0, 0.45


def gpu_estimate(rows: int, images: int, bench: bool) -> str:
    """The expected wall time of the rows on one H100 (from the published speeds)."""
    s = rows * (images / H100_EVAL_IPS + (H100_BENCH_S if bench else 0.0)) + 3.0
    return (f"expected on one H100: about {s / 60:.1f} min for the rows (+ data loading, "
            "calibration and the first Triton compilations)")


def main_points(args: argparse.Namespace) -> list[str]:
    return ([f"reduction={v:g}" for v in _floats(args.reductions)]
            + [f"ratio={v:g}" for v in _floats(args.ratios)]
            + [f"flops={v:g}" for v in _floats(args.flops)])


def plan(methods: list[str], points: list[str], ablation_points: list[str],
         calibrated: bool, reduction_kw: dict[str, Any] | None = None) -> list[Config]:
    """The training-free rows in table order (``reduction_kw``: the reduction points'
    schedule options, e.g. every=2, shape=even)."""

    def at(point: str) -> dict[str, Any]:
        kw = parse_point(point)
        return {**kw, **(reduction_kw or {})} if "reduction" in kw else kw

    out = [Config("dense", "dense", "dense")]
    for point in points:
        for m in methods:
            extra = {"seed": 0} if m == "random" else {}
            out.append(Config(f"{m} {point}", m, "main", point, kw={**at(point), **extra}))
    for point in ablation_points:
        if point not in points:  # the default STM row that the ablations are compared with
            out.append(Config(f"stm {point}", "stm", "ablation", point, kw=at(point)))
        for name, opts in ABLATIONS:
            out.append(Config(f"stm {point} {name}", "stm", "ablation", point, name,
                              {**at(point), **opts}))
        if calibrated:  # kw (the schedule) is filled in once the sensitivity is known
            out.append(Config(f"stm {point} calibrated", "stm", "calibrated", point,
                              "calibrated"))
    return out


# --------------------------------------------------------------------------- measuring
class Runner:
    """The model, the test images on the device and the dense reference logits."""

    def __init__(self, model: torch.nn.Module, batches: list, dev: torch.device,
                 amp: str | None, bench: bool, bench_batch: int, bench_runs: int) -> None:
        self.model, self.batches, self.dev = model, batches, dev
        self.amp, self.bench, self.bench_batch = amp, bench, bench_batch
        self.bench_runs = bench_runs
        self.labels = torch.cat([y for _, y in batches])
        self.dense_logits: list[torch.Tensor] | None = None

    @torch.inference_mode()
    def predict(self, model: torch.nn.Module) -> tuple[np.ndarray, float]:
        """Predicted class per image (uint8) and the mean KL(dense || model) of the logits."""
        dt = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.amp or "")
        preds, kl, logits_all = [], 0.0, []
        for k, (x, _) in enumerate(self.batches):
            with torch.autocast(self.dev.type, dtype=dt or torch.float32, enabled=dt is not None):
                logits = model(x).float()
            if self.dense_logits is None:
                logits_all.append(logits)
            ref = (self.dense_logits or logits_all)[k]
            kl += float(torch.nn.functional.kl_div(logits.log_softmax(-1), ref.log_softmax(-1),
                                                   log_target=True, reduction="sum"))
            preds.append(logits.argmax(-1).to(torch.uint8).cpu())
        if self.dense_logits is None:
            self.dense_logits = logits_all
        return torch.cat(preds).numpy(), kl / len(self.labels)

    def speed(self, model: torch.nn.Module) -> dict[str, float] | None:
        if not self.bench:
            return None
        from vimstm.engine.benchmark import measure_throughput

        r = measure_throughput(model, batch_size=self.bench_batch, dtype="fp16", device=self.dev,
                               warmup=3, runs=self.bench_runs,
                               cuda_graph=self.dev.type == "cuda")
        return {"images_per_s": round(r["images_per_s"], 1),
                "ms_per_batch": round(r["ms_per_batch"], 3), "spread": round(r["spread"], 3)}


def run_config(runner: Runner, model: torch.nn.Module, cfg: Config) -> tuple[dict, np.ndarray]:
    """Patch ``model`` as ``cfg`` says, measure it, unpatch; (row, per-image correctness)."""
    t0 = time.perf_counter()
    vimstm.unpatch(model)
    if cfg.method != "dense":
        vimstm.patch(model, method=cfg.method, **cfg.kw)
    try:
        rep = count_flops(model)
        preds, kl = runner.predict(model)
        t_eval = time.perf_counter() - t0
        speed = runner.speed(model)
        merger = getattr(model, "merger", None)
        options = {k: v for k, v in merger.options.items()} if merger is not None else {}
    finally:
        vimstm.unpatch(model)
        if runner.dev.type == "cuda":  # each patch captured its own CUDA graphs
            torch.cuda.empty_cache()
    dense_pred = None if runner.dense_logits is None else torch.cat(
        [v.argmax(-1).cpu() for v in runner.dense_logits]).numpy()
    correct = preds == runner.labels.numpy()
    row: dict[str, Any] = {
        "label": cfg.label, "group": cfg.group, "order": cfg.order, "method": cfg.method,
        "point": cfg.point,
        "variant": cfg.variant, "images": int(correct.size),
        "top1": round(100.0 * float(correct.mean()), 3),
        "agree_dense": None if dense_pred is None else round(
            100.0 * float((preds == dense_pred).mean()), 3),
        "kl_dense": round(kl, 5),
        **{k: (round(v, 6) if isinstance(v, float) else v)
           for k, v in rep.operating_point().items()},
        "schedule": {i: r for i, r in enumerate(merger.schedule) if r} if merger else {},
        "options": options, "eval_s": round(t_eval, 2),
    }
    if speed:
        row.update(speed)
    row["seconds"] = round(time.perf_counter() - t0, 2)
    return row, correct


def add_stats(rows: list[dict], correct: dict[str, np.ndarray], refs: dict[str, Any],
              resamples: int, seed: int) -> None:
    """``vs_<name>``: the paired comparison of each row with the reference row ``refs[name]``
    (a label, or a function of the row giving a label; None: no comparison); ``correct``: each
    row's per-image correctness."""
    for row in rows:
        for name, ref in refs.items():
            other = ref(row) if callable(ref) else ref
            if other is None or other == row["label"] or other not in correct:
                continue
            r = compare(correct[row["label"]], correct[other], resamples, seed)
            row[f"vs_{name}"] = {"ref": other, **{k: (round(r[k], 4) if isinstance(r[k], float)
                                                     else r[k]) for k in (*STATS, "b01", "b10")}}


def dense_reference(rows: list[dict], meta: dict) -> float | None:
    """The dense images/s that the speed-ups divide by: the faster of dense's two measurements
    in the run (first row and ``meta['dense_images_per_s_end']``, the same GPU). Another
    process on the machine can only slow a measurement down, so the faster one is the closer."""
    first = next((r.get("images_per_s") for r in rows if r["group"] == "dense"), None)
    end = (meta.get("dense_images_per_s_end") or {}).get("images_per_s")
    return max((v for v in (first, end) if v), default=None)


def add_speedups(rows: list[dict], ref: float | None) -> None:
    """``speedup``: each row's images/s over ``ref`` (its own GPU's dense)."""
    for r in rows:
        r.pop("speedup", None)
        if r.get("images_per_s") and ref:
            r["speedup"] = round(r["images_per_s"] / ref, 3)


def stm_at(row: dict) -> str | None:
    """The STM row (default options) at the row's operating point."""
    return None if row["point"] is None else f"stm {row['point']}"


# --------------------------------------------------------------------------- outputs
def flat(row: dict) -> dict[str, Any]:
    out = {}
    for k, v in row.items():
        if isinstance(v, dict) and k.startswith("vs_"):
            out.update({f"{k}_{s}": v.get(s) for s in ("ref", *STATS)})
        elif isinstance(v, dict):
            out[k] = json.dumps(v, sort_keys=True)
        else:
            out[k] = v
    return out


def labels_digest(labels: np.ndarray) -> str:
    """SHA-256 of the label vector: shards check they saw the same images, in the same order."""
    return hashlib.sha256(np.ascontiguousarray(labels, dtype=np.int64).tobytes()).hexdigest()


def save_correct(path: Path, correct: dict[str, np.ndarray], digest: str) -> None:
    np.savez_compressed(path, names=np.array(list(correct)), labels_sha256=np.array(digest),
                        images=np.array(len(next(iter(correct.values())))),
                        **{f"c{i}": np.packbits(v) for i, v in enumerate(correct.values())})


def load_correct(path: Path) -> tuple[dict[str, np.ndarray], str]:
    """Each row's per-image correctness (bool) and the labels' digest, from :func:`save_correct`."""
    z = np.load(path, allow_pickle=False)
    n = int(z["images"])
    return ({str(k): np.unpackbits(z[f"c{i}"], count=n).astype(bool)
             for i, k in enumerate(z["names"])}, str(z["labels_sha256"]))


def write_tables(rows: list[dict], correct: dict[str, np.ndarray], digest: str,
                 meta: dict, stem: Path) -> None:
    stem.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    flats = [flat(r) for r in rows]
    keys: list[str] = []
    for f in flats:
        keys += [k for k in f if k not in keys]
    with open(stem.with_suffix(".csv"), "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        w.writerows(flats)
    save_correct(stem.parent / f"{stem.name}_correct.npz", correct, digest)


def _delta(row: dict, name: str) -> str:
    v = row.get(f"vs_{name}")
    if not v:
        return "–"
    mark = "" if v["distinct"] else " ≈"
    return f"{v['diff']:+.2f} [{v['lo']:+.2f}, {v['hi']:+.2f}]{mark}"


TARGETS = {"reduction=0.2": -1.0, "reduction=0.4": -2.0}  # STM's ImageNet claims (issue 10)


def versus_stm(rows: list[dict], group: str) -> list[str]:
    """The claims at a glance: STM against dense at the targets' points, and every other
    method against STM at every point (a pivot of the ``vs_stm`` differences)."""
    sel = [r for r in rows if r["group"] == group and r["point"] and r["variant"] == "default"]
    points = list(dict.fromkeys(r["point"] for r in sel))
    others = list(dict.fromkeys(r["method"] for r in sel if r["method"] != "stm"))
    if not points or not others:
        return []
    at = {(r["point"], r["method"]): r for r in sel}
    lines = []
    for point, limit in TARGETS.items():
        r = at.get((point, "stm"))
        if r and r.get("vs_dense"):
            v = r["vs_dense"]
            ok = ("missed" if v["diff"] < limit else "met" if v["lo"] >= limit
                  else "met, but the interval reaches below it")
            lines.append(f"- STM at {point}: {v['diff']:+.2f} points against dense "
                         f"[{v['lo']:+.2f}, {v['hi']:+.2f}] (target: at least {limit:+.1f}; "
                         f"{ok})")
    lines += ["", "#### Each method against STM at the same point (its top-1 minus STM's; ≈: "
              "the images cannot tell them apart)", "",
              "| point | STM top-1 | " + " | ".join(others) + " |",
              "| --- | ---: |" + " ---: |" * len(others)]
    for point in points:
        stm = at.get((point, "stm"))
        cells = [point, f"{stm['top1']:.2f}" if stm else "–"]
        cells += [_delta(at[(point, m)], "stm") if (point, m) in at else "–" for m in others]
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


def markdown(rows: list[dict], meta: dict, finetuned: bool = False) -> str:
    """RESULTS.md-ready tables: one per group, the columns the issue asks for."""
    dense = next((r for r in rows if r["group"] == "dense"), None)
    sharded = any(r.get("shard") for r in rows)
    lines = [f"<!-- {meta['command']} -->",
             f"{meta['model']}, {meta['images']} test images, {meta['device']}; top-1 in "
             f"{meta['amp'] or 'fp32'}; images/s: {meta['speed']}.{_speed_reference(meta)} Δ: "
             f"top-1 difference in points with its 95% paired-bootstrap interval over the same "
             f"images ({meta['resamples']} resamples); ≈: the interval contains 0 (the images "
             "cannot tell the two apart).", ""]
    compare_cols = (("dense", "Δ vs dense"), ("stm", "Δ vs STM same point"))
    if finetuned:
        compare_cols = (("dense", "Δ vs dense"), ("dense_ft", "Δ vs dense fine-tuned"),
                        ("stm", "Δ vs STM fine-tuned"), ("free", "Δ vs training-free"))
    groups = (("finetuned", "Fine-tuned"), ("training-free", "The same configurations "
              "training-free (original weights)")) if finetuned else (
        ("main", "Every method against dense"), ("ablation", "STM ablations"),
        ("calibrated", "Calibrated schedule (STM)"))
    lines += versus_stm(rows, "finetuned" if finetuned else "main")
    for group, title in groups:
        sel = [r for r in rows if r["group"] == group]
        if not sel:
            continue
        if not finetuned and dense is not None:
            sel = [dense, *sel]
        head = ["configuration", "top-1", *[c for _, c in compare_cols], "GMACs (lit.)",
                "GMACs (full)", "mean red.", "tokens last", *(["GPU"] if sharded else []),
                "img/s", "speed-up", "agree %"]
        lines += [f"#### {title}", "", "| " + " | ".join(head) + " |",
                  "| --- |" + " ---: |" * (len(head) - 1)]
        for r in sel:
            ips = r.get("images_per_s")
            cells = [r["label"], f"{r['top1']:.2f}", *[_delta(r, k) for k, _ in compare_cols],
                     f"{r['gmacs_literature']:.3f}", f"{r['gmacs_full']:.3f}",
                     f"{r['mean_token_reduction']:.3f}", str(r["tokens_last_block"]),
                     *([str(r.get("shard") or "–").split("/")[0]] if sharded else []),
                     f"{ips:.0f}" if ips else "–",
                     f"{r['speedup']:.2f}x" if r.get("speedup") else "–",
                     "–" if r.get("agree_dense") is None else f"{r['agree_dense']:.1f}"]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    for what, title in (("not_run", "Not run (the method cannot reach that point)"),
                        ("failed", "FAILED")):
        if meta.get(what):
            lines += [f"{title}:", "", *[f"- {k}: {v}" for k, v in meta[what].items()], ""]
    return "\n".join(lines)


def _speed_reference(meta: dict) -> str:
    """The dense images/s the speed-ups divide by, per GPU, and the measurements behind it."""
    refs = meta.get("dense_images_per_s_ref_by_shard")
    if refs:
        firsts = meta.get("dense_images_per_s_by_shard") or []
        ends = meta.get("dense_images_per_s_end_by_shard") or []
        per = "; ".join(
            f"GPU {k}: {_ips(ref)} (first {_ips(a)}, last {_ips(b)})"
            for k, (ref, a, b) in enumerate(zip(refs, firsts, ends)))
        return (" Speed-up: over the dense images/s of the row's own GPU, the faster of dense's "
                f"two measurements there (first and last in the run): {per}.")
    ref = meta.get("dense_images_per_s_ref")
    if not ref:
        return ""
    end = (meta.get("dense_images_per_s_end") or {}).get("images_per_s")
    return (f" Speed-up: over dense's {_ips(ref)} images/s, the faster of its measurements "
            f"first and last in the run (last: {_ips(end)}).")


def _ips(v: float | None) -> str:
    return "–" if not v else f"{v:,.0f}"


COLORS = {"stm": "C3", "tome": "C0", "rmeeto": "C1", "prune-top": "C2", "prune-norm": "C4",
          "random": "C7", "mtr": "C5"}


def plot(data: dict, path: Path) -> None:
    """Top-1 against GMACs and against the speed-up over dense (images/s over dense's on the
    same GPU, so shards on several GPUs share one axis), a line per method: solid through the
    default-schedule points (ratio, flops), dashed through the reduction points (their own
    schedule); fine-tuned points as triangles when ``data['finetuned']`` holds them. The
    top-1 axis starts 15 points below dense (lower rows are marked at its foot)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, meta = data["rows"], data["meta"]
    ft = data.get("finetuned") or []
    dense = next(r for r in rows if r["group"] == "dense")
    floor = dense["top1"] - 15.0
    main_rows = [r for r in rows if r["group"] == "main"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for ax, key, xlabel in ((axes[0], "gmacs_literature", "GMACs per image (literature)"),
                            (axes[1], "speedup", "speed-up over dense (images/s over dense's on "
                             f"the same GPU; {meta['speed']})")):
        if dense.get(key) is None:
            ax.text(0.5, 0.5, "not measured (CPU run)", ha="center", transform=ax.transAxes)
            ax.set_xlabel(xlabel)
            continue
        for method in dict.fromkeys(r["method"] for r in main_rows):
            color = COLORS.get(method)
            for family, style in ((False, "o-"), (True, "s--")):
                pts = sorted((r[key], r["top1"]) for r in main_rows if r["method"] == method
                             and str(r["point"]).startswith("reduction=") == family)
                if not pts:
                    continue
                xs, ys = zip(*pts)
                ax.plot(xs, [max(y, floor) for y in ys], style, color=color, markersize=4,
                        label=None if family else method, alpha=0.8 if family else 1.0)
                low = [(x, y) for x, y in pts if y < floor]
                for x, y in low:
                    ax.annotate(f"{y:.0f}", (x, floor), fontsize=7, color=color,
                                xytext=(0, 3), textcoords="offset points", ha="center")
            fpts = sorted((r[key], r["top1"]) for r in ft if r["method"] == method
                          and r.get(key) is not None)
            if fpts:
                ax.plot(*zip(*fpts), "^", color=color, markersize=8, markerfacecolor="none")
        ax.plot([dense[key]], [dense["top1"]], "*", color="k", markersize=12, label="dense")
        ax.axhline(dense["top1"], color="k", lw=0.7, ls=":")
        ax.set_ylim(floor - 0.5, dense["top1"] + 1.0)
        ax.set_xlabel(textwrap.fill(xlabel, 80), fontsize=9)
        ax.set_ylabel("CIFAR-10 test top-1 (%)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{meta['model']}: {dense['top1']:.2f}% dense, {meta['images']} test images; "
                 "training-free: solid = ratio/flops points (default schedule), dashed = "
                 "reduction points" + ("; triangles: fine-tuned" if ft else ""), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


def plot_finetuned(rows: list[dict], out: Path) -> None:
    """``evidence_finetune.png``: the training-free lines of ``out/evidence.json`` with the
    fine-tuned points (at the GMACs of their schedules)."""
    free = out / "evidence.json"
    if not free.exists():
        print(f"# no {free}: no plot of the fine-tuned points (bring the training-free run's "
              "JSON there and rerun with --plot-only)")
        return
    data = json.loads(free.read_text())
    plot({**data, "finetuned": [r for r in rows if r["group"] == "finetuned"]},
         out / "evidence_finetune.png")


# --------------------------------------------------------------------------- the runs
def calibrate_rows(cfgs: list[Config], model: torch.nn.Module, args: argparse.Namespace,
                   dev: torch.device, whole: list[Config]) -> dict:
    """Fill in the calibrated rows' schedules: the sensitivity on training images, once, then
    one allocation per point at the GFLOPs of the default STM schedule there."""
    from vimstm.engine.calibrate import allocate, sensitivity
    from vimstm.merge.schedule import merge_slots, schedule_document

    todo = [c for c in cfgs if c.group == "calibrated"]
    if not todo:
        return {}
    t0 = time.perf_counter()
    loader = build_eval_loader(args.calib_data, model, batch_size=args.batch_size,
                               workers=args.workers, limit=args.calib_images)
    calib = [x.to(dev) for x, *_ in loader if x.numel()]
    depth, m = len(model.layers), model.patch_embed.num_patches
    steps = merge_slots(depth, args.calib_every)
    dt = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.amp or "")
    print(f"# calibration: {sum(len(x) for x in calib)} images of {args.calib_data}, "
          f"{len(steps)} candidate steps", flush=True)
    with torch.autocast(dev.type, dtype=dt or torch.float32, enabled=dt is not None):
        sens, r_probe = sensitivity(model, calib, "stm", {}, steps, 0.25, dev, progress=False)
    out = {"images": sum(len(x) for x in calib), "steps": steps, "kl": sens,
           "probe_tokens": r_probe, "schedules": {}}
    stm_rows = {c.label: c for c in whole}
    for c in todo:
        vimstm.patch(model, method="stm", **stm_rows[f"stm {c.point}"].kw)
        rep = count_flops(model)
        vimstm.unpatch(model)
        target = rep.gmacs_literature / rep.dense_gmacs_literature
        try:
            sched = allocate(model, "stm", {}, steps, sens, flops=target, max_steps=3)
        except vimstm.ConfigError as e:
            c.error = str(e)
            continue
        doc = schedule_document(sched, depth, m, method="stm")
        c.kw = {"schedule": doc}
        out["schedules"][c.point] = {"target_flops": round(target, 5),
                                     "steps": {i: r for i, r in enumerate(sched) if r},
                                     "document": doc}  # as a file: --schedule FILE
    out["seconds"] = round(time.perf_counter() - t0, 1)
    print(f"# calibration done in {out['seconds']} s: " + "; ".join(
        f"{p}: {s['steps']}" for p, s in out["schedules"].items()), flush=True)
    return out


def kept_ema(path: str | Path, args: argparse.Namespace) -> bool:
    """Whether the fine-tune run's checkpoint holds EMA weights (``--model-ema``)."""
    from vimstm.models.checkpoint import read_checkpoint

    return read_checkpoint(path, trust=args.trust_checkpoint).get("model_ema") is not None


def finetune_configs(root: Path, trust: bool,
                     reduction_kw: dict[str, Any] | None = None) -> list[Config]:
    """One config per fine-tune run under ``root``: its merging read from the checkpoint.

    Schedule options (``every``, ``shape``) belong to the operating point, as in the
    training-free tables: a run on the tables' schedule for its axis (``reduction_kw`` for
    reduction points, the default schedule for ratio / flops) has the plain point
    (``reduction=0.2``), any other schedule is named in the point; the variant holds only the
    method's own options."""
    from vimstm.models.checkpoint import read_checkpoint

    cfgs = []
    for ck in sorted(root.glob("*/last.pth")):
        a = read_checkpoint(ck, trust=trust).get("args", {})
        method = a.get("method") or "dense"
        if method in ("none", "dense"):
            method = "dense"
        kw: dict[str, Any] = {}
        point = None
        for key in ("ratio", "reduction", "flops"):
            if a.get(key) is not None:
                kw[key] = a[key]
                point = f"{key}={a[key]:g}"
        if a.get("r") is not None or a.get("schedule") is not None:
            raise VimstmError(f"{ck}: runs with --r or --schedule are not evaluated here; use "
                              "--ratio, --reduction or --flops")
        opts = parse_merge_opts(a.get("merge_opt"))
        kw.update(opts)
        sched = {k: v for k, v in opts.items() if k in SCHEDULE_OPTS}
        if reduction_kw is None:
            reduction_kw = parse_merge_opts(REDUCTION_SCHEDULE.split(","))
        usual = reduction_kw if "reduction" in kw else {}
        if point and sched != usual:
            point += " " + (",".join(f"{k}={v}" for k, v in sched.items()) or "default-schedule")
        if method == "random":
            kw.setdefault("seed", 0)
        variant = ",".join(f"{k}={v}" for k, v in opts.items()
                           if k not in SCHEDULE_OPTS) or "default"
        label = f"{method} {point} ft" if point else f"{method} ft"
        if variant != "default":
            label += f" {variant}"
        cfgs.append(Config(label, method, "finetuned", point, variant, kw, str(ck)))
    if not cfgs:
        raise VimstmError(f"no fine-tune runs under {root} (expected {root}/<run>/last.pth from "
                          "`vimstm finetune --output`)")
    return cfgs


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_args(p, weights="optional", model_default="vim_tiny_cifar10")
    p.add_argument("--random-init", action="store_true",
                   help="no weights (smoke tests of this script only)")
    p.add_argument("--data", required=False, help="CIFAR-10 test split (folder or tar)")
    p.add_argument("--out", default="results/cifar10")
    p.add_argument("--markdown", default=None, metavar="FILE",
                   help="also write RESULTS.md-ready tables here")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--reductions", default="0.17,0.2,0.27,0.36,0.4,0.46",
                   help="mean token reduction points (the papers' definition; 0.2 and 0.4: "
                   "STM's stated 20%% and 40%%)")
    p.add_argument("--reduction-schedule", default=REDUCTION_SCHEDULE,
                   help="schedule options of the reduction points ('default': the default "
                   "schedule; every=2,shape=even: the same r after every second block, the "
                   "papers' schedule without their merge before block 0)")
    p.add_argument("--ratios", default="0.2,0.4", help="STM's ratio points")
    p.add_argument("--flops", default="0.8,0.6", help="GFLOPs-matched points (share kept)")
    p.add_argument("--ablation-points",
                   default="ratio=0.4,flops=0.6,reduction=0.36,reduction=0.4")
    p.add_argument("--no-ablations", action="store_true")
    p.add_argument("--calib-data", default=None,
                   help="training images for the calibrated schedule (without: no such rows)")
    p.add_argument("--calib-images", type=int, default=256)
    p.add_argument("--calib-every", type=int, default=1, help="candidate steps every k blocks")
    p.add_argument("--finetuned", default=None, metavar="DIR",
                   help="evaluate the `vimstm finetune` runs in DIR/*/ instead")
    p.add_argument("--limit", type=int, default=None, help="evaluate only N test images")
    p.add_argument("--batch-size", type=int, default=500, help="evaluation batch")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--amp", choices=("bf16", "fp16", "none"), default=None,
                   help="evaluation autocast (default: bf16 on CUDA, fp32 on the CPU)")
    p.add_argument("--bench", action=argparse.BooleanOptionalAction, default=None,
                   help="measure images/s (default: on CUDA only)")
    p.add_argument("--bench-batch", type=int, default=256)
    p.add_argument("--bench-runs", type=int, default=10, help="timed forwards (median)")
    p.add_argument("--resamples", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--plot-only", action="store_true", help="redraw OUT/evidence.png")
    p.add_argument("--shard", default=None, metavar="K/N",
                   help="run shard K of N (one GPU each: CUDA_VISIBLE_DEVICES=K), writing "
                   "OUT/evidence_shardK.*; then --merge-shards N")
    p.add_argument("--merge-shards", type=int, default=None, metavar="N",
                   help="merge OUT/evidence_shard{0..N-1} into OUT/evidence.* with the stats")
    p.add_argument("--stats-only", action="store_true",
                   help="recompute the statistics, tables and plot from OUT's saved JSON and "
                   "predictions (e.g. with another --resamples or --seed)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except VimstmError as e:
        print(f"cifar_evidence: {e}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    stem = out / ("evidence_finetune" if args.finetuned else "evidence")
    if args.plot_only:
        data = json.loads(stem.with_suffix(".json").read_text())
        if args.finetuned:
            plot_finetuned(data["rows"], out)
        else:
            plot(data, stem.with_suffix(".png"))
        return 0
    if args.merge_shards:
        if args.markdown:
            check_output_file(Path(args.markdown), "--markdown")
        rows, correct, digest, meta = merge_shards(out, args.merge_shards)
        return finish(rows, correct, digest, meta, args, stem)
    if args.stats_only:  # recompute the statistics and outputs from a run's saved files
        if args.markdown:
            check_output_file(Path(args.markdown), "--markdown")
        data = json.loads(stem.with_suffix(".json").read_text())
        correct, digest = load_correct(stem.parent / f"{stem.name}_correct.npz")
        rows = [{k: v for k, v in r.items() if not k.startswith("vs_")} for r in data["rows"]]
        return finish(rows, correct, digest, data["meta"], args, stem)
    if not args.data:
        raise VimstmError("give --data (the CIFAR-10 test split)")
    check_output_dir(out, "--out")
    if args.markdown:
        check_output_file(Path(args.markdown), "--markdown")
    if args.calib_data and not Path(args.calib_data).exists():
        raise VimstmError(f"--calib-data {args.calib_data} does not exist")
    methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise VimstmError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    dev = torch.device(args.device)
    amp = args.amp or ("bf16" if dev.type == "cuda" else None)
    amp = None if amp == "none" else amp
    bench = dev.type == "cuda" if args.bench is None else args.bench
    red = ({} if args.reduction_schedule == "default"
           else parse_merge_opts(args.reduction_schedule.split(",")))
    if args.finetuned:
        cfgs = finetune_configs(Path(args.finetuned), args.trust_checkpoint, red)
    else:
        ablation_points = [] if args.no_ablations else [
            v for v in args.ablation_points.split(",") if v]
        for pt in ablation_points:
            parse_point(pt)
        cfgs = plan(methods, main_points(args), ablation_points, bool(args.calib_data), red)
        if not args.calib_data:
            print("# no --calib-data: the calibrated-schedule rows are left out", flush=True)
        for i, c in enumerate(cfgs):
            c.order = i
        whole = cfgs
        if args.shard:
            cfgs = shard_of(cfgs, *parse_shard(args.shard))
            stem = out / f"evidence_shard{parse_shard(args.shard)[0]}"
    model = model_from_args(args, "none" if args.random_init else "required").to(dev).eval()

    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    speed = (f"{name}, fp16, batch {args.bench_batch}, CUDA-graph replay, median of "
             f"{args.bench_runs}" if bench and dev.type == "cuda" else
             f"{name}, fp16, batch {args.bench_batch}, median of {args.bench_runs}" if bench
             else "not measured")
    print(f"# {command}")
    t_load = time.perf_counter()
    loader = build_eval_loader(args.data, model, batch_size=args.batch_size,
                               workers=args.workers, limit=args.limit)
    batches = [(x.to(dev), y) for x, y, _ in loader if x.numel()]
    runner = Runner(model, batches, dev, amp, bench, args.bench_batch, args.bench_runs)
    n = len(runner.labels)
    print(f"# {args.model} on {n} images of {args.data} ({time.perf_counter() - t_load:.1f} s "
          f"to load), {name}, eval {amp or 'fp32'} batch {args.batch_size}, speed: {speed}, "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}", flush=True)
    meta: dict[str, Any] = {"command": command, "model": args.model,
                            "checkpoint": args.checkpoint, "device": name, "images": n,
                            "data": args.data, "amp": amp, "speed": speed,
                            "resamples": args.resamples, "seed": args.seed,
                            "date": time.strftime("%Y-%m-%d %H:%M")}

    rows: list[dict] = []
    correct: dict[str, np.ndarray] = {}
    started = time.perf_counter()
    first_row_at: dict[str, float] = {}  # the ETA counts from the first row (not calibration)

    def record(cfg: Config, mdl: torch.nn.Module, k: int, total: int) -> dict:
        try:
            if cfg.error:
                raise vimstm.ConfigError(cfg.error)
            row, ok = run_config(runner, mdl, cfg)
        except vimstm.ConfigError as e:  # the method cannot reach this point: say so, go on
            print(f"[{k}/{total}] {cfg.label}: not run: {e}", flush=True)
            meta.setdefault("not_run", {})[cfg.label] = str(e)
            return {}
        except Exception as e:  # a bug in one row must not cost the others (one GPU call)
            import traceback

            traceback.print_exc()
            print(f"[{k}/{total}] {cfg.label}: FAILED: {type(e).__name__}: {e}", flush=True)
            meta.setdefault("failed", {})[cfg.label] = f"{type(e).__name__}: {e}"
            vimstm.unpatch(mdl)
            return {}
        rows.append(row)
        correct[cfg.label] = ok
        first = first_row_at.setdefault("t", time.perf_counter() - row["seconds"])
        eta = (time.perf_counter() - first) / len(rows) * (total - k)
        ips = f"  {row['images_per_s']:.0f} img/s" if "images_per_s" in row else ""
        print(f"[{k}/{total}] {cfg.label}: top-1 {row['top1']:.2f}  GMACs "
              f"{row['gmacs_literature']:.3f}{ips}  ({row['seconds']:.1f} s; about "
              f"{eta / 60:.1f} min left)", flush=True)
        return row

    if args.finetuned:
        # the original dense model, and per run: the original weights with the same merging
        # (training-free) and the fine-tuned weights
        free = {c.label: Config(c.label.replace(" ft", " free"), c.method, "training-free",
                                c.point, c.variant, c.kw) for c in cfgs}
        total = 1 + 2 * len(cfgs) - sum(c.method == "dense" for c in cfgs)
        record(Config("dense", "dense", "dense"), model, 1, total)
        k = 1
        from vimstm.models.checkpoint import load_checkpoint

        ft_model = model_from_args(args, "none" if args.random_init else "required").to(dev)
        for c in cfgs:
            if c.method != "dense":
                k += 1
                record(free[c.label], model, k, total)
            load_checkpoint(ft_model, c.checkpoint, use_ema=kept_ema(c.checkpoint, args),
                            trust=args.trust_checkpoint)
            k += 1
            record(c, ft_model.eval(), k, total)
    else:
        meta["calibration"] = (calibrate_rows(cfgs, model, args, dev, whole)
                               if args.calib_data else None)
        total = len(cfgs) + int(bench)
        print(f"# plan: {len(cfgs)} configurations x {n} images, images/s: {bench}; "
              f"{gpu_estimate(len(cfgs), n, bench)}", flush=True)
        for k, c in enumerate(cfgs, 1):
            row = record(c, model, k, total)
            if k == 1 and row:
                per = row["seconds"]
                print(f"# dense took {per:.1f} s: about {per * len(cfgs) / 60:.1f} min for all "
                      f"{len(cfgs)} rows (merged rows are faster to evaluate)", flush=True)
        if bench:  # dense again at the end: how much the speed drifted during the run
            meta["dense_images_per_s_end"] = runner.speed(model)
            print(f"# dense at the end: {meta['dense_images_per_s_end']}", flush=True)
    meta["seconds"] = round(time.perf_counter() - started, 1)
    meta["dense_images_per_s_ref"] = dense_reference(rows, meta)
    add_speedups(rows, meta["dense_images_per_s_ref"])
    if args.shard:  # statistics and tables once the shards are merged (--merge-shards)
        meta["shard"] = args.shard
        for r in rows:
            r["shard"] = args.shard
        stem.parent.mkdir(parents=True, exist_ok=True)
        write_tables(rows, correct, labels_digest(runner.labels.numpy()), meta, stem)
        print(f"wrote {stem}.json and {stem.name}_correct.npz (shard {args.shard}; merge with "
              "--merge-shards)")
        return 1 if meta.get("failed") else 0
    return finish(rows, correct, labels_digest(runner.labels.numpy()), meta, args, stem)


def parse_shard(text: str) -> tuple[int, int]:
    k, _, n = text.partition("/")
    try:
        k_, n_ = int(k), int(n)
    except ValueError:
        k_, n_ = -1, 0
    if not 0 <= k_ < n_:
        raise VimstmError(f"--shard {text!r}: give K/N with 0 <= K < N, e.g. 0/2")
    return k_, n_


def shard_of(cfgs: list[Config], k: int, n: int) -> list[Config]:
    """Shard k of n: dense (every shard measures its own, for the speed-ups and as the
    reference of KL and agreement), every n-th other row, and the calibrated rows all in the
    last shard (one calibration)."""
    rest = [c for c in cfgs[1:] if c.group != "calibrated"]
    mine = [c for i, c in enumerate(rest) if i % n == k]
    if k == n - 1:
        mine += [c for c in cfgs if c.group == "calibrated"]
    return [cfgs[0], *mine]


def merge_shards(out: Path, n: int) -> tuple[list[dict], dict, str, dict]:
    """The rows, per-image correctness, labels' digest and meta of ``n`` shard runs, in plan
    order; dense from shard 0 (every shard evaluates it, and all must agree)."""
    rows, correct, metas, digest, dense, refs, firsts = [], {}, [], None, None, [], []
    for k in range(n):
        stem = out / f"evidence_shard{k}"
        if not stem.with_suffix(".json").exists():
            raise VimstmError(f"{stem}.json is missing: run every shard 0..{n - 1} first")
        data = json.loads(stem.with_suffix(".json").read_text())
        ok, d = load_correct(stem.parent / f"{stem.name}_correct.npz")
        names = list(ok)
        if digest is None:
            digest, dense = d, ok[names[0]]
        elif d != digest or not np.array_equal(dense, ok[names[0]]):
            raise VimstmError(f"shard {k} evaluated other images or predicted differently with "
                              "the dense model; rerun the shards with the same arguments")
        metas.append(data["meta"])
        firsts.append(next((r.get("images_per_s") for r in data["rows"]
                            if r["group"] == "dense"), None))
        refs.append(dense_reference(data["rows"], data["meta"]))
        add_speedups(data["rows"], refs[-1])  # this shard's GPU
        for r, name in zip(data["rows"], names):
            if r["group"] == "dense" and k > 0:
                continue
            rows.append(r)
            correct[name] = ok[name]
    rows.sort(key=lambda r: r.get("order", 0))
    meta = dict(metas[0])
    meta.pop("shard", None)
    meta["command"] = " & ".join(m["command"] for m in metas)
    meta["seconds"] = max(m["seconds"] for m in metas)
    meta["dense_images_per_s_by_shard"] = firsts
    meta["dense_images_per_s_end_by_shard"] = [
        (m.get("dense_images_per_s_end") or {}).get("images_per_s") for m in metas]
    meta["dense_images_per_s_ref_by_shard"] = refs
    meta.pop("dense_images_per_s_end", None)  # shard 0's: in the list above
    meta["dense_images_per_s_ref"] = refs[0]
    meta["calibration"] = next((m["calibration"] for m in metas if m.get("calibration")), None)
    for key in ("not_run", "failed"):
        merged = {k: v for m in metas for k, v in (m.get(key) or {}).items()}
        if merged:
            meta[key] = merged
    meta["speed"] += (f"; {n} shards, one GPU each: a row's images/s is from its own GPU "
                      "(column GPU)")
    return rows, correct, digest, meta


def refs_for(rows: list[dict], finetuned: bool) -> dict[str, Any]:
    """What each row is compared with (:func:`add_stats`): dense and STM at the same point;
    fine-tuned rows also with the dense fine-tune (the control) and their training-free self."""
    if not finetuned:
        return {"dense": "dense", "stm": stm_at}
    dense_ft = next((r["label"] for r in rows
                     if r["group"] == "finetuned" and r["method"] == "dense"), None)
    return {
        "dense": "dense",
        "dense_ft": lambda r: dense_ft if r["group"] == "finetuned" else None,
        "stm": lambda r: None if r["point"] is None else (
            f"stm {r['point']} ft" if r["group"] == "finetuned" else f"stm {r['point']} free"),
        "free": lambda r: r["label"].replace(" ft", " free")
        if r["group"] == "finetuned" and r["method"] != "dense" else None}


def finish(rows: list[dict], correct: dict[str, np.ndarray], digest: str, meta: dict,
           args: argparse.Namespace, stem: Path) -> int:
    """The paired statistics, then every output: JSON, CSV, predictions, markdown, plot."""
    finetuned = stem.name == "evidence_finetune"
    add_stats(rows, correct, refs_for(rows, finetuned), args.resamples, args.seed)
    meta.update(resamples=args.resamples, seed=args.seed)
    stem.parent.mkdir(parents=True, exist_ok=True)
    write_tables(rows, correct, digest, meta, stem)
    print(f"wrote {stem}.json, .csv and {stem.name}_correct.npz ({meta['seconds']:.0f} s)")
    if args.markdown:
        Path(args.markdown).write_text(markdown(rows, meta, finetuned) + "\n")
        print(f"wrote {args.markdown}")
    if not finetuned:
        plot({"meta": meta, "rows": rows}, stem.with_suffix(".png"))
    else:
        plot_finetuned(rows, stem.parent)
    _summary(rows)
    if meta.get("failed"):
        print(f"cifar_evidence: {len(meta['failed'])} row(s) FAILED (the tracebacks are above; "
              f"the others are written): {', '.join(meta['failed'])}", file=sys.stderr)
        return 1
    return 0


def _summary(rows: list[dict]) -> None:
    """The rows with their differences, as one plain table on stdout."""
    print(f"\n{'configuration':<34} {'top-1':>7} {'Δ dense [95% CI]':>25} "
          f"{'Δ STM [95% CI]':>25} {'GMACs':>6} {'img/s':>7}")
    for r in rows:
        ips = r.get("images_per_s")
        print(f"{r['label']:<34} {r['top1']:>7.2f} {_delta(r, 'dense'):>25} "
              f"{_delta(r, 'stm'):>25} {r['gmacs_literature']:>6.3f} "
              f"{'–' if not ips else f'{ips:.0f}':>7}")
    print("≈: the 95% interval contains 0")


if __name__ == "__main__":
    raise SystemExit(main())
