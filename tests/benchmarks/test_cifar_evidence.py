"""benchmarks/cifar_evidence.py end to end on embedded CIFAR-10 images and a small model.

The full-size reference model takes about 10 s per 32-image forward on one CPU thread, so the
run here uses a 4-block, dim-32 model at the reference geometry (32x32, patch 2: 256 patch
tokens, so every protection window fits) with random weights; the numbers are meaningless,
the rows, statistics and files are what is checked.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import vimstm
from conftest import load_script
from vimstm.data import demo_cifar10
from vimstm.engine.stats import compare
from vimstm.merge import METHODS

ARCH = ["--depth", "4", "--embed-dim", "32", "--patch-size", "2", "--stride", "2",
        "--d-state", "4"]


ev = load_script("benchmarks/cifar_evidence.py")


@pytest.fixture(autouse=True)
def _one_thread():
    """Many tiny forwards: one thread (two fight over a shared 2-core machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """32 of the embedded test images (spread over the classes) as class folders."""
    ds = demo_cifar10()
    root = tmp_path_factory.mktemp("cifar") / "test"
    for i in np.linspace(0, len(ds) - 1, 32).astype(int):
        folder = root / ds.classes[ds.targets[i]]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:04d}.jpg").write_bytes(ds._jpeg[ds._offsets[i]:ds._offsets[i + 1]])
    return root


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = vimstm.create_model("vim_tiny_cifar10", depth=4, embed_dim=32, patch_size=2,
                                stride=2, d_state=4)
    path = tmp_path_factory.mktemp("w") / "small.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def test_the_default_plan_has_every_method_point_and_ablation():
    defaults = {a.dest: a.default for a in ev.build_parser()._actions}
    args = ev.argparse.Namespace(**{k: defaults[k] for k in ("reductions", "ratios", "flops")})
    points = ev.main_points(args)
    assert points == ["reduction=0.17", "reduction=0.2", "reduction=0.27", "reduction=0.36",
                      "reduction=0.4", "reduction=0.46", "ratio=0.2", "ratio=0.4", "flops=0.8",
                      "flops=0.6"]
    abl = ["ratio=0.4", "flops=0.6", "reduction=0.36", "reduction=0.4"]
    assert defaults["ablation_points"] == ",".join(abl)
    cfgs = ev.plan(list(METHODS), points, abl, calibrated=True)
    labels = [c.label for c in cfgs]
    assert len(labels) == len(set(labels)) == 1 + 7 * 10 + 4 * 14
    for m in ("stm", "tome", "rmeeto", "prune-top", "prune-norm", "random", "mtr"):
        assert all(f"{m} {p}" in labels for p in points)
    for p in abl:
        for v in ("protect=0", "protect=2", "protect=8", "protect=16", "fading=gamma",
                  "fading=none", "weights=size", "similarity=b", "similarity=delta",
                  "max_size=4", "max_size=8", "fade_power=0.5", "fade_power=1",
                  "calibrated"):
            assert f"stm {p} {v}" in labels
    # an ablation point outside the main points brings its own default STM row
    extra = ev.plan(["stm"], ["ratio=0.2"], ["flops=0.7"], calibrated=False)
    assert "stm flops=0.7" in [c.label for c in extra]


def test_evidence_end_to_end(images: Path, weights: Path, tmp_path: Path):
    out = tmp_path / "out"
    md = tmp_path / "ev.md"
    run = ["--checkpoint", str(weights), *ARCH, "--data", str(images), "--calib-data",
           str(images), "--calib-images", "8", "--reductions", "0.17,0.2", "--ratios", "0.4",
           "--flops", "0.65", "--batch-size", "32", "--workers", "0", "--out", str(out),
           "--ablation-points", "ratio=0.4,flops=0.6"]  # 4 blocks: no papers' schedule at 0.36
    # as two shards (one GPU each on a machine with two), merged with the statistics
    assert ev.main([*run, "--shard", "0/2"]) == 0
    assert ev.main([*run, "--shard", "1/2"]) == 0
    assert ev.main(["--out", str(out), "--merge-shards", "2", "--resamples", "500",
                    "--markdown", str(md)]) == 0
    data = json.loads((out / "evidence.json").read_text())
    assert [r["order"] for r in data["rows"]] == sorted(r["order"] for r in data["rows"])
    rows = {r["label"]: r for r in data["rows"]}
    assert not data["meta"].get("not_run")
    points = ["reduction=0.17", "reduction=0.2", "ratio=0.4", "flops=0.65"]
    expected = {"dense"} | {f"{m} {p}" for m in METHODS for p in points}
    expected |= {f"stm ratio=0.4 {v}" for v, _ in ev.ABLATIONS} | {"stm ratio=0.4 calibrated"}
    expected |= {"stm flops=0.6"} | {f"stm flops=0.6 {v}" for v, _ in ev.ABLATIONS}
    expected |= {"stm flops=0.6 calibrated"}
    assert set(rows) == expected
    for label, r in rows.items():
        assert r["images"] == 32 and 0 <= r["top1"] <= 100
        assert r["gmacs_full"] > r["gmacs_literature"] > 0
        if label != "dense":
            assert r["tokens_last_block"] < rows["dense"]["tokens_last_block"]
            assert r["vs_dense"]["ref"] == "dense"
            assert r["vs_dense"]["lo"] <= r["vs_dense"]["diff"] <= r["vs_dense"]["hi"]
        compared = r["method"] != "stm" or r["variant"] != "default"
        if label != "dense" and compared:
            assert r["vs_stm"]["ref"] == f"stm {r['point']}"
        else:
            assert "vs_stm" not in r
    # calibrated rows: the GFLOPs of the default STM schedule at the same point, or fewer
    for p in ("ratio=0.4", "flops=0.6"):
        assert (rows[f"stm {p} calibrated"]["gmacs_literature"]
                <= rows[f"stm {p}"]["gmacs_literature"] + 1e-9)
    # the saved correctness vectors reproduce the statistics; no labels or predictions are kept
    correct, digest = ev.load_correct(out / "evidence_correct.npz")
    assert set(correct) == expected and len(digest) == 64
    assert all(v.dtype == bool and v.size == 32 for v in correct.values())
    assert set(np.load(out / "evidence_correct.npz").files) == {
        "names", "labels_sha256", "images", *(f"c{i}" for i in range(len(expected)))}
    r = compare(correct["tome ratio=0.4"], correct["dense"], resamples=500)
    assert rows["tome ratio=0.4"]["vs_dense"]["diff"] == pytest.approx(r["diff"], abs=1e-3)
    assert rows["tome ratio=0.4"]["top1"] == pytest.approx(100 * correct["tome ratio=0.4"].mean())
    text = md.read_text()
    assert all(f"| {label} |" in text for label in expected)
    # the pivot: every other method against STM at every point
    assert "| point | STM top-1 | mtr | tome | rmeeto | prune-top | prune-norm | random |" in text
    assert all(f"| {p} | " in text for p in points)
    assert (out / "evidence.png").stat().st_size > 0
    assert (out / "evidence.csv").read_text().count("\n") == len(expected) + 1
    # reduction points on the papers' schedule (every=2: one step in 4 blocks), the others on
    # the default one (3 steps)
    assert list(rows["stm reduction=0.2"]["schedule"]) == ["1"]
    assert len(rows["stm ratio=0.4"]["schedule"]) == 3
    # the statistics again from the saved files alone
    md.unlink()
    assert ev.main(["--out", str(out), "--stats-only", "--resamples", "500",
                    "--markdown", str(md)]) == 0
    again = {r["label"]: r for r in json.loads((out / "evidence.json").read_text())["rows"]}
    assert again["tome ratio=0.4"]["vs_stm"] == rows["tome ratio=0.4"]["vs_stm"]
    assert md.read_text() == text


def test_finetuned_runs_are_evaluated_with_their_controls(images: Path, weights: Path,
                                                         tmp_path: Path):
    from vimstm.cli import build_parser
    from vimstm.engine import train as T

    runs = tmp_path / "ft"
    for name, merge in (("dense", ["--method", "dense"]),
                        ("stm", ["--method", "stm", "--ratio", "0.4"]),
                        ("tome", ["--method", "tome", "--ratio", "0.4"])):
        T.fit(build_parser().parse_args(
            ["finetune", "--model", "vim_tiny_cifar10", *ARCH, "--checkpoint", str(weights),
             "--data", str(images), "--output", str(runs / name), "--epochs", "1",
             "--limit-train", "8", "--batch-size", "8", "--workers", "0", "--no-progress",
             "--aa", "none", "--mixup", "0", "--cutmix", "0", *merge]))
    out = tmp_path / "out"
    rc = ev.main(["--checkpoint", str(weights), *ARCH, "--data", str(images), "--finetuned",
                  str(runs), "--batch-size", "32", "--workers", "0", "--out", str(out),
                  "--resamples", "200", "--markdown", str(tmp_path / "ft.md")])
    assert rc == 0
    rows = {r["label"]: r for r in json.loads((out / "evidence_finetune.json").read_text())["rows"]}
    assert set(rows) == {"dense", "dense ft", "stm ratio=0.4 ft", "stm ratio=0.4 free",
                         "tome ratio=0.4 ft", "tome ratio=0.4 free"}
    tome = rows["tome ratio=0.4 ft"]
    assert tome["vs_dense"]["ref"] == "dense" and tome["vs_dense_ft"]["ref"] == "dense ft"
    assert tome["vs_stm"]["ref"] == "stm ratio=0.4 ft"
    assert tome["vs_free"]["ref"] == "tome ratio=0.4 free"
    assert rows["tome ratio=0.4 free"]["vs_stm"]["ref"] == "stm ratio=0.4 free"
    assert rows["stm ratio=0.4 ft"]["tokens_last_block"] < rows["dense ft"]["tokens_last_block"]
    text = (tmp_path / "ft.md").read_text()
    assert "| tome ratio=0.4 ft |" in text and "| ratio=0.4 | " in text  # and the pivot
    # the plot of the fine-tuned points over the training-free lines (from evidence.json)
    data = json.loads((out / "evidence_finetune.json").read_text())
    free = [{**r, "group": "main"} if r["group"] == "training-free" else r
            for r in data["rows"] if r["group"] in ("dense", "training-free")]
    (out / "evidence.json").write_text(json.dumps({"meta": data["meta"], "rows": free}))
    assert ev.main(["--finetuned", str(runs), "--out", str(out), "--plot-only"]) == 0
    assert (out / "evidence_finetune.png").stat().st_size > 0


def test_finetune_schedule_options_belong_to_the_point(tmp_path: Path):
    """Runs fine-tuned on the tables' schedule (--merge-opt every=2 --merge-opt shape=even at a
    reduction point) are the tables' points, with the STM run as their reference."""
    runs = {"dense": {"method": "dense"},
            "stm": {"method": "stm", "reduction": 0.2, "merge_opt": ["every=2", "shape=even"]},
            "prune": {"method": "prune-top", "reduction": 0.2,
                      "merge_opt": ["every=2", "shape=even"]},
            "stm_p0": {"method": "stm", "reduction": 0.2,
                       "merge_opt": ["every=2", "shape=even", "protect=0"]},
            "stm_e3": {"method": "stm", "reduction": 0.2, "merge_opt": ["every=3"]},
            "stm_ratio": {"method": "stm", "ratio": 0.4}}
    for name, a in runs.items():
        (tmp_path / name).mkdir()
        torch.save({"args": a}, tmp_path / name / "last.pth")
    cfgs = {c.label: c for c in ev.finetune_configs(tmp_path, False)}
    assert set(cfgs) == {"dense ft", "stm reduction=0.2 ft", "prune-top reduction=0.2 ft",
                         "stm reduction=0.2 ft protect=0", "stm reduction=0.2 every=3 ft",
                         "stm ratio=0.4 ft"}
    stm, prune = cfgs["stm reduction=0.2 ft"], cfgs["prune-top reduction=0.2 ft"]
    assert stm.point == prune.point == "reduction=0.2" and stm.variant == "default"
    assert stm.kw == {"reduction": 0.2, "every": 2, "shape": "even"}
    assert cfgs["stm reduction=0.2 ft protect=0"].variant == "protect=0"
    rows = [{"label": c.label, "group": "finetuned", "method": c.method, "point": c.point,
             "variant": c.variant} for c in cfgs.values()]
    prune_row = next(r for r in rows if r["method"] == "prune-top")
    assert ev.refs_for(rows, True)["stm"](prune_row) == "stm reduction=0.2 ft"


def test_bad_input_is_one_line(tmp_path: Path, capsys):
    assert ev.main(["--data", str(tmp_path), "--methods", "stm,nope", "--out",
                    str(tmp_path / "o")]) == 2
    assert "unknown method" in capsys.readouterr().err


def test_a_failing_row_costs_only_itself(images: Path, weights: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch, capsys):
    real = ev.run_config

    def flaky(runner, model, cfg):
        if cfg.label == "tome reduction=0.2":
            raise RuntimeError("boom")
        return real(runner, model, cfg)

    monkeypatch.setattr(ev, "run_config", flaky)
    rc = ev.main(["--checkpoint", str(weights), *ARCH, "--data", str(images), "--methods",
                  "stm,tome", "--reductions", "0.2", "--ratios", "", "--flops", "",
                  "--no-ablations", "--batch-size", "32", "--workers", "0", "--out",
                  str(tmp_path)])
    assert rc == 1 and "1 row(s) FAILED" in capsys.readouterr().err
    data = json.loads((tmp_path / "evidence.json").read_text())
    assert [r["label"] for r in data["rows"]] == ["dense", "stm reduction=0.2"]
    assert data["meta"]["failed"] == {"tome reduction=0.2": "RuntimeError: boom"}


def test_shards_merge_into_the_unsharded_run(images: Path, weights: Path, tmp_path: Path):
    common = ["--checkpoint", str(weights), *ARCH, "--data", str(images), "--methods",
              "stm,tome,random", "--reductions", "0.2", "--ratios", "", "--flops", "",
              "--no-ablations", "--batch-size", "32", "--workers", "0", "--resamples", "300"]
    assert ev.main([*common, "--out", str(tmp_path / "one")]) == 0
    for k in range(2):
        assert ev.main([*common, "--out", str(tmp_path / "sh"), "--shard", f"{k}/2"]) == 0
    assert ev.main(["--out", str(tmp_path / "sh"), "--merge-shards", "2",
                    "--resamples", "300"]) == 0
    one = json.loads((tmp_path / "one" / "evidence.json").read_text())["rows"]
    merged = json.loads((tmp_path / "sh" / "evidence.json").read_text())["rows"]
    assert [r["label"] for r in merged] == [r["label"] for r in one]
    for a, b in zip(one, merged):
        assert (a["top1"], a.get("vs_dense"), a.get("vs_stm")) == \
            (b["top1"], b.get("vs_dense"), b.get("vs_stm"))
    assert ev.main([*common, "--out", str(tmp_path / "x"), "--shard", "2/2"]) == 2
    assert ev.main(["--out", str(tmp_path / "x"), "--merge-shards", "2"]) == 2


def _shard(out: Path, k: int, n: int, dense_ips: tuple[float, float],
           rows: list[tuple[str, int, float]], correct: dict[str, np.ndarray]) -> None:
    """A synthetic shard run (no model): dense measured first and last at ``dense_ips``, then
    ``rows`` (label, plan order, images/s), as ``--shard k/n`` writes it."""
    def row(label: str, order: int, ips: float) -> dict:
        method, _, point = label.partition(" ")
        return {"label": label, "group": "dense" if method == "dense" else "main",
                "order": order, "method": method, "point": point or None,
                "variant": "default", "images": 64,
                "top1": round(100.0 * float(correct[label].mean()), 3), "agree_dense": 95.0,
                "kl_dense": 0.01, "gmacs_literature": 1.0 - 0.1 * order,
                "gmacs_full": 1.2 - 0.1 * order, "mean_token_reduction": 0.1 * order,
                "tokens_last_block": 257 - 10 * order, "schedule": {}, "options": {},
                "images_per_s": ips, "shard": f"{k}/{n}"}

    meta = {"command": f"python benchmarks/cifar_evidence.py --shard {k}/{n}",
            "model": "vim_tiny_cifar10", "checkpoint": None, "device": "GPU", "images": 64,
            "data": "test", "amp": "bf16", "speed": "fp16, batch 256", "resamples": 50,
            "seed": 0, "seconds": 1.0, "calibration": None, "shard": f"{k}/{n}",
            "dense_images_per_s_end": {"images_per_s": dense_ips[1]}}
    rws = [row("dense", 0, dense_ips[0]), *(row(*r) for r in rows)]
    ev.write_tables(rws, {r["label"]: correct[r["label"]] for r in rws}, "0" * 64, meta,
                    out / f"evidence_shard{k}")


def test_merged_speedups_are_against_each_rows_own_gpu(tmp_path: Path):
    """Shard 1 ran on a slower GPU (dense 800 images/s there, 1000 on shard 0's): its rows'
    speed-ups divide by 800 in the markdown, the JSON and the CSV alike; a dense measurement
    slowed by the other shards (600 first, 800 last) does not count."""
    rng = np.random.default_rng(0)
    correct = {k: rng.random(64) < 0.8 for k in ("dense", "stm ratio=0.4", "tome ratio=0.4",
                                                  "stm flops=0.6")}
    _shard(tmp_path, 0, 2, (1000.0, 990.0), [("stm ratio=0.4", 1, 1300.0)], correct)
    _shard(tmp_path, 1, 2, (600.0, 800.0), [("tome ratio=0.4", 2, 1200.0),
                                            ("stm flops=0.6", 3, 1000.0)], correct)
    md = tmp_path / "ev.md"
    assert ev.main(["--out", str(tmp_path), "--merge-shards", "2", "--resamples", "50",
                    "--markdown", str(md)]) == 0
    data = json.loads((tmp_path / "evidence.json").read_text())
    rows = {r["label"]: r for r in data["rows"]}
    want = {"dense": 1.0, "stm ratio=0.4": 1.3, "tome ratio=0.4": 1.5, "stm flops=0.6": 1.25}
    cells = {}
    for line in md.read_text().splitlines():
        parts = [c.strip() for c in line.strip("|").split("|")]
        if parts[0] in want:  # ..., GPU, img/s, speed-up, agree %
            cells[parts[0]] = (parts[-4], parts[-3], parts[-2])
    assert cells == {"dense": ("0", "1000", "1.00x"), "stm ratio=0.4": ("0", "1300", "1.30x"),
                     "tome ratio=0.4": ("1", "1200", "1.50x"),
                     "stm flops=0.6": ("1", "1000", "1.25x")}
    assert {k: r["speedup"] for k, r in rows.items()} == want
    with open(tmp_path / "evidence.csv") as fh:
        assert {r["label"]: float(r["speedup"]) for r in csv.DictReader(fh)} == want
    assert "GPU 1: 800 (first 600, last 800)" in md.read_text()
    assert data["meta"]["dense_images_per_s_ref_by_shard"] == [1000.0, 800.0]
    # the statistics again from the merged files: the same tables
    text = md.read_text()
    assert ev.main(["--out", str(tmp_path), "--stats-only", "--resamples", "50",
                    "--markdown", str(md)]) == 0
    assert md.read_text() == text
