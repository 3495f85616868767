"""``vimstm sweep``: accuracy, GFLOPs and images/s over merging methods and ratios.

One model is loaded once; for every (method, ratio) it is patched, evaluated on the data set
(:func:`vimstm.engine.evaluate.evaluate`), counted (:func:`vimstm.flops.count_flops`) and,
unless ``--no-bench``, timed on random input (:func:`vimstm.engine.benchmark.measure_throughput`),
then unpatched. The dense model is the first row. Writes ``sweep.csv``, ``sweep.json`` and two
plots: ``acc_vs_throughput.png`` and ``acc_vs_gflops.png``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from vimstm.errors import ConfigError
from vimstm.models.checkpoint import atomic_write

FIELDS = (
    "method", "setting", "ratio", "mean_token_reduction", "tokens_last_block", "top1", "top5",
    "images", "gmacs_literature", "gmacs_full", "merge_gmacs", "reduction_literature",
    "images_per_s", "ms_per_batch", "speedup", "pre", "schedule", "options", "error",
)
AXES = ("ratio", "reduction", "flops")


def run_sweep(
    model: Any,
    loader: Iterable | None,
    methods: Sequence[str],
    ratios: Sequence[float],
    options: dict[str, Any] | None = None,
    device: str = "cpu",
    amp: str | None = None,
    bench: dict[str, Any] | None = None,
    progress: bool = False,
    axis: str = "ratio",
    schedule: str | None = None,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Rows of results: the dense model, then every method x value (0 is the dense row).

    Args:
        model: a dense model, patched and unpatched in turn.
        loader: evaluation data (:func:`vimstm.data.build_eval_loader`); None skips accuracy.
        methods: merging methods (:data:`vimstm.merge.METHODS`).
        ratios: values of ``axis``, each run with every method.
        options: patch options per method, e.g. ``{"stm": {"protect": 2}}``.
        device: where the model runs.
        amp: autocast precision for accuracy (``fp16``, ``bf16`` or None).
        bench: :func:`~vimstm.engine.benchmark.measure_throughput` arguments; None skips timing.
        progress: progress bars.
        axis: the patch argument the values are given as: ``ratio``, ``reduction`` or ``flops``.
        schedule: passed to every patch: a preset such as ``"even-blocks"``, or a schedule
            file (then one row per method and no values).
        on_row: called with each row as soon as it is measured (with its ``speedup`` over the
            dense row), e.g. to print it.

    Returns:
        One dict per configuration. Every row reports the realised ``ratio`` (share of patch
        tokens gone by the last block), ``mean_token_reduction`` (the papers' ratio),
        ``tokens_last_block`` and both GMAC conventions; ``setting`` says what was asked for.
    """
    from vimstm.flops import count_flops
    from vimstm.merge import patch, unpatch

    options = options or {}
    rows: list[dict[str, Any]] = []

    if axis not in AXES:
        raise ConfigError(f"sweep axis {axis!r}: choose one of {', '.join(AXES)}")

    def measure(method: str, setting: str) -> dict[str, Any]:
        row: dict[str, Any] = {"method": method, "setting": setting, "error": ""}
        flops = count_flops(model)
        row.update(
            **flops.operating_point(),
            merge_gmacs=flops.merge_gmacs, reduction_literature=flops.reduction_literature,
            schedule=list(getattr(model.merger, "schedule", []) or []),
            pre=int(getattr(model.merger, "pre", 0) or 0),
            options=dict(getattr(model.merger, "options", {}) or {}),
        )
        if loader is not None:
            from vimstm.engine.evaluate import evaluate

            res = evaluate(model, loader, device=device, amp=amp, progress=progress,
                           desc=f"{method} {setting}")
            row.update(top1=res["top1"], top5=res["top5"], images=res["images"])
        if bench is not None:
            from vimstm.engine.benchmark import measure_throughput

            res = measure_throughput(model, device=device, **bench,
                                     desc=f"{method} {setting} speed" if progress else None)
            row.update(images_per_s=res["images_per_s"], ms_per_batch=res["ms_per_batch"])
        return row

    from vimstm.merge import PRESETS

    def finish(row: dict[str, Any]) -> None:
        base, ips = dense.get("images_per_s"), row.get("images_per_s")
        row["speedup"] = ips / base if ips and base else None
        rows.append(row)
        if on_row is not None:
            on_row(row)

    unpatch(model)
    dense = measure("dense", "dense")
    finish(dense)
    from_file = schedule is not None and schedule not in PRESETS
    values: Sequence[float | None] = [None] if from_file else [v for v in ratios if v != 0]
    for method in methods:
        for value in values:
            kw = {} if value is None else {axis: value}
            setting = " ".join([f"{k}={v}" for k, v in kw.items()]
                               + ([f"schedule={schedule}"] if schedule else []))
            try:
                patch(model, method=method, schedule=schedule, **kw, **options.get(method, {}))
                row = measure(method, setting)
            except ConfigError as e:  # e.g. a ratio this method cannot reach on this model
                row = {"method": method, "setting": setting, "ratio": value, "error": str(e)}
            finally:
                unpatch(model)
            finish(row)
    return rows


def write_outputs(rows: list[dict[str, Any]], out_dir: str | Path, meta: dict[str, Any]) -> dict:
    """Write sweep.csv, sweep.json and the plots; return the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / "sweep.csv", "json": out / "sweep.json"}
    table = io.StringIO(newline="")
    w = csv.DictWriter(table, fieldnames=FIELDS, extrasaction="ignore")
    w.writeheader()
    for row in rows:
        w.writerow({k: _csv_value(row.get(k)) for k in FIELDS})
    atomic_write(paths["csv"], table.getvalue())
    atomic_write(paths["json"], json.dumps({"meta": meta, "rows": rows}, indent=2, default=str))
    paths.update(plot(rows, out))
    return paths


def _csv_value(v: Any) -> Any:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return "" if v is None else v


def plot(rows: list[dict[str, Any]], out_dir: Path) -> dict[str, Path]:
    """Accuracy against images/s and against GFLOPs, one line per method (matplotlib, Agg)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - optional dependency
        print("vimstm sweep: matplotlib is not installed; skipping the plots (pip install "
              "vimstm[plot])")
        return {}
    ok = [r for r in rows if not r.get("error") and r.get("top1") is not None]
    dense = next((r for r in ok if r["method"] == "dense"), None)
    written: dict[str, Path] = {}
    for key, xlabel, name in (
        ("images_per_s", "images/s", "acc_vs_throughput.png"),
        ("gmacs_literature", "GFLOPs (GMACs, literature convention)", "acc_vs_gflops.png"),
    ):
        pts = [r for r in ok if r.get(key) is not None and math.isfinite(float(r[key]))]
        if not pts:
            continue
        fig, ax = plt.subplots(figsize=(6, 4.5))
        for method in dict.fromkeys(r["method"] for r in pts if r["method"] != "dense"):
            line = sorted((r for r in pts if r["method"] == method), key=lambda r: r[key])
            if dense is not None and dense.get(key) is not None:
                line = [dense, *line]
            ax.plot([r[key] for r in line], [r["top1"] for r in line], "o-", label=method, ms=4)
        if dense is not None and dense.get(key) is not None:
            ax.plot([dense[key]], [dense["top1"]], "k*", ms=12, label="dense")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("top-1 (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        written[name] = out_dir / name
        atomic_write(written[name], lambda tmp, fig=fig: fig.savefig(tmp, dpi=120, format="png"))
        plt.close(fig)
    return written


# ---------------------------------------------------------------- CLI


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(
            f"--ratios {text!r}: give comma-separated numbers, e.g. 0.1,0.2"
        ) from None


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "sweep",
        help="accuracy, GFLOPs and images/s over merging methods and ratios (CSV, JSON, plots)",
    )
    from vimstm.engine.model_args import add_model_args

    add_model_args(p, weights="required")
    p.add_argument("--data", default=None, help="evaluation data (see `vimstm eval`); "
                   "without it only GFLOPs and images/s are measured")
    p.add_argument("--methods", default="stm,tome,rmeeto,prune-top,prune-norm,random",
                   help="comma-separated methods")
    p.add_argument("--ratios", default="0.1,0.2,0.3,0.4,0.5",
                   help="comma-separated values of --axis (default: ratios)")
    p.add_argument("--axis", choices=AXES, default="ratio",
                   help="what --ratios are: ratio (share of patch tokens gone by the last "
                   "block), reduction (the papers' mean share removed per block) or flops "
                   "(share of the dense GFLOPs kept)")
    p.add_argument("--schedule", default=None, metavar="PRESET|FILE",
                   help="'even-blocks' (the peers' schedule) or a `vimstm calibrate` file "
                   "(then one row per method; --ratios is not used)")
    p.add_argument("--merge-opt", action="append", default=[], metavar="[METHOD:]KEY=VALUE",
                   help="method option (repeatable); prefix METHOD: to give it to one method")
    p.add_argument("--out", default="sweep_out", help="output folder")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--batch-size", type=int, default=64, help="evaluation batch size")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    p.add_argument("--limit", type=int, default=None, help="evaluate only N images")
    p.add_argument("--amp", default=None, help="autocast dtype for evaluation (bf16, fp16)")
    p.add_argument("--no-bench", action="store_true", help="skip the images/s measurement")
    p.add_argument("--bench-batch", type=int, default=256)
    p.add_argument("--bench-dtype", default="fp32")
    p.add_argument("--bench-runs", type=int, default=30)
    p.set_defaults(func=run)


def _method_options(items: list[str], methods: Sequence[str]) -> dict[str, dict[str, Any]]:
    from vimstm.merge import parse_merge_opts

    out: dict[str, dict[str, Any]] = {m: {} for m in methods}
    for item in items:
        head, _, rest = item.partition(":")
        if rest and "=" not in head:
            if head not in out:
                raise ConfigError(f"--merge-opt {item!r}: {head!r} is not among --methods")
            out[head].update(parse_merge_opts([rest]))
        else:
            for m in methods:
                out[m].update(parse_merge_opts([item]))
    return out


def run(args: argparse.Namespace) -> int:
    import torch

    from vimstm.merge import METHODS

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise ConfigError(f"unknown method(s) {bad}; choose from {', '.join(METHODS)}")
    ratios = _floats(args.ratios)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    from vimstm.engine.model_args import model_from_args
    from vimstm.engine.paths import check_output_dir

    check_output_dir(args.out, "--out")
    # accuracy needs trained weights; GFLOPs and speed alone do not
    model = model_from_args(args, weights="required" if args.data else "optional")
    model = model.to(device).eval()
    loader = None
    if args.data:
        from vimstm.data import build_eval_loader

        loader = build_eval_loader(args.data, model, batch_size=args.batch_size,
                                   workers=args.workers, limit=args.limit)
    bench = None if args.no_bench else {"batch_size": args.bench_batch,
                                        "dtype": args.bench_dtype, "runs": args.bench_runs}
    rows = run_sweep(model, loader, methods, ratios, _method_options(args.merge_opt, methods),
                     device=device, amp=args.amp, bench=bench, progress=True, axis=args.axis,
                     schedule=args.schedule, on_row=print_row)
    meta = {"model": args.model, "checkpoint": args.checkpoint, "data": args.data,
            "device": device, "limit": args.limit, "bench": bench}
    paths = write_outputs(rows, args.out, meta)
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def print_row(r: dict[str, Any]) -> None:
    """One line per finished setting (flushed: a long sweep shows its rows as they come)."""
    if r.get("error"):
        print(f"{r['method']:>10s} {r['setting']}  skipped: {r['error']}", flush=True)
        return
    top1 = f"{r['top1']:6.2f}" if r.get("top1") is not None else "   n/a"
    ips = f"{r['images_per_s']:9.1f}" if r.get("images_per_s") else "      n/a"
    print(f"{r['method']:>10s} {r['setting']:<16s} top1 {top1}  mean reduction "
          f"{r['mean_token_reduction']:.3f}  ratio {r['ratio']:.3f}  tokens(last) "
          f"{r['tokens_last_block']}  GMACs {r['gmacs_literature']:.3f} lit / "
          f"{r['gmacs_full']:.3f} full  img/s {ips}", flush=True)
