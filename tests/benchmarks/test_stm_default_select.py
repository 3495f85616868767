"""benchmarks/stm_default_select.py: the decision rule on synthetic merge_anatomy outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import load_script

sel = load_script("benchmarks/stm_default_select.py")

OLD = {"max_size": None, "fade_power": 1.0}
N = 200


def _write(path: Path, point: dict, kls: dict[str, np.ndarray], indices=None) -> str:
    rows = {n: {} for n in kls}
    d = {"point": point, "data": "train", "indices": indices or list(range(N)),
         "stm_defaults": OLD,
         "outcome": {"rows": rows, "per_image_kl": {n: k.tolist() for n, k in kls.items()},
                     "per_image_correct": {n: [1] * N for n in kls},
                     "per_image_agree": {n: [1] * N for n in kls}}}
    path.write_text(json.dumps(d))
    return str(path)


def test_only_a_candidate_lower_at_both_points_and_not_higher_elsewhere_qualifies(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.exponential(0.05, N)
    files = []
    for i, red in enumerate((0.36, 0.4)):
        files.append(_write(tmp_path / f"r{i}.json", {"reduction": red, "every": 2},
                            {"stm": base, "stm good": base * 0.8,  # lower everywhere
                             "stm once": base * (0.8 if red == 0.36 else 1.0),  # one point only
                             "stm high": base * 0.8}))
    for i, point in enumerate(({"ratio": 0.4}, {"flops": 0.6})):
        files.append(_write(tmp_path / f"d{i}.json", point,
                            {"stm": base, "stm good": base, "stm once": base,
                             "stm high": base * 1.3}))  # raises KL on the default schedule
    out = sel.summarize(sel.load(files))
    assert out["points"]["reduction=0.36"]["reference"] == "stm max_size=none fade_power=1"
    q = {n: v["qualifies"] for n, v in out["qualifies"].items()}
    assert q == {"stm good": True, "stm once": False, "stm high": False}
    assert out["points"]["reduction=0.4"]["rows"]["stm good"]["kl_vs_ref"][2] < 0


def test_files_of_other_images_are_refused(tmp_path):
    k = {"stm": np.ones(N)}
    a = _write(tmp_path / "a.json", {"reduction": 0.36}, k)
    b = _write(tmp_path / "b.json", {"reduction": 0.4}, k, indices=list(range(1, N + 1)))
    with pytest.raises(SystemExit, match="same images"):
        sel.load([a, b])


def test_reference_can_be_another_row(tmp_path):
    rng = np.random.default_rng(1)
    base = rng.exponential(0.05, N)
    files = [_write(tmp_path / f"r{i}.json", {"reduction": red, "every": 2},
                    {"stm": base, "stm fade_power=0.25": base * 0.7, "stm x": base * 0.8})
             for i, red in enumerate((0.36, 0.4))]
    out = sel.summarize(sel.load(files), ("stm fade_power=0.25",))
    rows = out["points"]["reduction=0.4"]["rows"]
    assert out["points"]["reduction=0.4"]["reference"] == "stm fade_power=0.25"
    assert rows["stm x"]["kl_vs_ref"][1] > 0  # higher than the new reference
    with pytest.raises(SystemExit, match="no reference row"):
        sel.summarize(sel.load(files), ("stm nothing",))
