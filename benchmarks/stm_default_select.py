"""Apply the rule that chose STM's default ``fade_power`` / ``max_size`` to merge_anatomy runs on
training images (results/cifar10/why_pruning.md, "Choosing the default on training images").

Reads ``merge_anatomy.py --parts outcome`` JSON files of the same images (checked), pairs every
row with every other row of the same point by image, and prints each candidate's mean KL(dense
|| merged), agreement with dense and top-1, with 95% paired-bootstrap intervals (2,000
resamples, seed 0) against STM as it was before the choice (``stm max_size=none
fade_power=1``; a file's row ``stm`` is renamed by the defaults it records, ``stm_defaults``).
Other rows change only the options they name from the file's defaults.

The rule, fixed before the numbers were seen: a candidate qualifies when its KL interval
against the reference lies below 0 at both papers' points (reduction 0.36 and 0.4, every=2,
shape=even) and does not lie above 0 at either default-schedule point (ratio 0.4, flops 0.6).

    python benchmarks/stm_default_select.py results/cifar10/stm_defaults_train_*.json \\
        --out results/cifar10/stm_defaults_train_summary.json
    # again on the 91.91% weights, against the default of then (fade_power=0.25)
    cd results/cifar10 && python ../../benchmarks/stm_default_select.py \\
        stm_defaults91_train_{r036,r040,r036_combo,r040_combo,ratio04,flops06}.json \\
        --reference "stm max_size=none fade_power=0.25" \\
        --out stm_defaults91_train_summary.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from vimstm.models.checkpoint import atomic_write

_spec = importlib.util.spec_from_file_location(
    "merge_anatomy", Path(__file__).resolve().parent / "merge_anatomy.py")
ma = importlib.util.module_from_spec(_spec)
sys.modules["merge_anatomy"] = ma
_spec.loader.exec_module(ma)

PAPERS = ("reduction=0.36", "reduction=0.4")
DEFAULT_SCHEDULE = ("ratio=0.4", "flops=0.6")
REFS = ("stm max_size=none fade_power=1",)


def point_name(point: dict[str, Any]) -> str:
    key = next(k for k in ("reduction", "ratio", "flops") if k in point)
    return f"{key}={point[key]}"


def load(files: list[str]) -> dict[str, dict[str, tuple[np.ndarray, ...]]]:
    """{point: {row: (correct, KL, agree) per image}} over all files (same images checked)."""
    points: dict[str, dict[str, tuple[np.ndarray, ...]]] = {}
    indices = None
    for f in files:
        d = json.loads(Path(f).read_text())
        if indices is None:
            indices = (d.get("data"), d["indices"])
        elif (d.get("data"), d["indices"]) != indices:
            raise SystemExit(f"{f} is not on the same images as {files[0]}")
        o = d["outcome"]
        rows = points.setdefault(point_name(d["point"]), {})
        if "stm_defaults" not in d:
            raise SystemExit(f"{f} does not say which STM defaults its row 'stm' ran with")
        sd = d["stm_defaults"]
        plain = f"stm max_size={str(sd['max_size']).lower()} fade_power={sd['fade_power']:g}"
        for name in o["rows"]:
            rows[plain if name == "stm" else name] = (np.array(o["per_image_correct"][name], float),
                          np.array(o["per_image_kl"][name], float),
                          np.array(o["per_image_agree"][name], float))
    return points


def summarize(points: dict[str, dict[str, tuple[np.ndarray, ...]]],
              ref_names: tuple[str, ...] = REFS) -> dict[str, Any]:
    out: dict[str, Any] = {"points": {}, "qualifies": {}}
    for point, rows in points.items():
        ref = next((n for n in ref_names if n in rows), None)
        if ref is None:
            raise SystemExit(f"{point}: no reference row ({', '.join(ref_names)}) among "
                             f"{', '.join(rows)}")
        c0, k0, a0 = rows[ref]
        res = {"reference": ref, "rows": {}}
        for name, (c, k, a) in rows.items():
            r = {"kl": float(k.mean()), "agree": float(a.mean() * 100),
                 "top1": float(c.mean() * 100)}
            if name != ref:
                r.update(kl_vs_ref=ma.boot(k - k0), agree_vs_ref=ma.boot((a - a0) * 100),
                         top1_vs_ref=ma.boot((c - c0) * 100))
            res["rows"][name] = r
        out["points"][point] = res
    cands = {n for p in PAPERS if p in out["points"] for n in out["points"][p]["rows"]
             if n != out["points"][p]["reference"]}
    for name in sorted(cands):
        kl = {p: out["points"].get(p, {}).get("rows", {}).get(name, {}).get("kl_vs_ref")
              for p in PAPERS + DEFAULT_SCHEDULE}
        lower = all(kl[p] is not None and kl[p][2] < 0 for p in PAPERS)
        # None: not run on the default schedule (only the candidates that passed were)
        not_raised = (None if any(kl[p] is None for p in DEFAULT_SCHEDULE)
                      else all(kl[p][1] <= 0 for p in DEFAULT_SCHEDULE))
        out["qualifies"][name] = {"lower_at_both_papers_points": lower,
                                  "not_raised_on_default_schedule": not_raised,
                                  "qualifies": lower and bool(not_raised)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="+")
    ap.add_argument("--pair", action="append", default=[], metavar="A:B",
                    help="also print row A against row B at every point (e.g. a combination "
                         "against its best single option)")
    ap.add_argument("--reference", default=REFS[0],
                    help="the row every candidate is compared with (default: STM before the "
                         "first choice; the second choice, on the 91.91%% weights, used "
                         "'stm max_size=none fade_power=0.25')")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    points = load(args.files)
    out = summarize(points, (args.reference,))
    out["pairs"] = {}
    for spec in args.pair:
        a, b = spec.split(":")
        out["pairs"][spec] = {p: ma.boot(rows[a][1] - rows[b][1]) for p, rows in points.items()
                              if a in rows and b in rows}
    for point, res in out["points"].items():
        print(f"{point} (reference: {res['reference']})")
        for name, r in res["rows"].items():
            line = f"  {name:34s} KL {r['kl']:.4f} agree {r['agree']:.2f} top1 {r['top1']:.2f}"
            if "kl_vs_ref" in r:
                k, g = r["kl_vs_ref"], r["agree_vs_ref"]
                line += f"  dKL {k[0]:+.4f} [{k[1]:+.4f}, {k[2]:+.4f}]"
                line += f"  dagree {g[0]:+.2f} [{g[1]:+.2f}, {g[2]:+.2f}]"
            print(line)
    for spec, per in out["pairs"].items():
        print(spec, {p: [round(v, 4) for v in d] for p, d in per.items()})
    print("qualifies:", {n: q["qualifies"] for n, q in out["qualifies"].items()})
    if args.out:
        atomic_write(args.out, json.dumps(out, indent=1))
        print("wrote", args.out)


if __name__ == "__main__":
    main()
