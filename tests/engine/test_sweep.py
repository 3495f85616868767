"""vimstm sweep over methods and ratios on a tiny synthetic data set."""

from __future__ import annotations

import csv
import json

import torch

from vimstm.engine.sweep import run_sweep, write_outputs


def test_sweep_writes_csv_json_and_plots(tiny_model, tmp_path):
    g = torch.Generator().manual_seed(0)
    loader = [(torch.randn(4, 3, 32, 32, generator=g), torch.randint(0, 10, (4,), generator=g))
              for _ in range(2)]
    bench = {"batch_size": 2, "runs": 1, "warmup": 0}
    rows = run_sweep(tiny_model, loader, ["stm", "tome"], [0.0, 0.25, 0.85], bench=bench)
    assert [(r["method"], r["ratio"]) for r in rows] == [
        ("dense", 0.0), ("stm", 0.25), ("stm", 0.85), ("tome", 0.25), ("tome", 0.85)]
    stm = rows[1]
    assert not stm["error"] and stm["images"] == 8 and stm["tokens_last_block"] == 17 - 4
    assert stm["gmacs_literature"] < rows[0]["gmacs_literature"]
    assert rows[2]["error"]  # 85% in one step is more than adjacent pairing can do
    assert tiny_model.merger is None
    paths = write_outputs(rows, tmp_path, {"model": "tiny"})
    with open(paths["csv"]) as f:
        table = list(csv.DictReader(f))
    assert len(table) == 5 and table[1]["method"] == "stm"
    data = json.loads(paths["json"].read_text())
    assert data["meta"]["model"] == "tiny" and len(data["rows"]) == 5
    for name in ("acc_vs_throughput.png", "acc_vs_gflops.png"):
        assert (tmp_path / name).stat().st_size > 1000


def test_sweep_over_reduction_and_schedule_file(small_model, tmp_path):
    from vimstm.merge.schedule import mean_token_reduction, schedule_document

    loader = [(torch.randn(2, 3, 32, 32), torch.tensor([1, 2]))]
    rows = run_sweep(small_model, loader, ["tome", "mtr"], [0.2], axis="reduction",
                     schedule="even-blocks")
    tome, mtr = rows[1], rows[2]
    assert tome["setting"] == "reduction=0.2 schedule=even-blocks" and not tome["error"]
    assert abs(tome["mean_token_reduction"] - 0.2) < 0.05 and tome["pre"] > 0
    assert tome["mean_token_reduction"] == mean_token_reduction(tome["schedule"], 4, 64,
                                                                tome["pre"])
    assert "before block 0" in mtr["error"]  # mtr reads the previous block's Δ
    rows = run_sweep(small_model, loader, ["mtr"], [0.2], axis="reduction")
    assert not rows[1]["error"] and abs(rows[1]["mean_token_reduction"] - 0.2) < 0.05
    path = tmp_path / "s.json"
    path.write_text(json.dumps(schedule_document([8, 4, 0], 4, 64)))
    rows = run_sweep(small_model, None, ["stm", "tome"], [0.1, 0.2], schedule=str(path))
    assert [r["schedule"] for r in rows[1:]] == [[8, 4, 0], [8, 4, 0]]
    assert rows[1]["tokens_last_block"] == 65 - 12 and rows[1]["ratio"] == 12 / 64


def test_sweep_cli_takes_architecture_overrides(tmp_path):
    import json

    import numpy as np
    from PIL import Image

    import vimstm
    from vimstm.cli import main
    from vimstm.models.checkpoint import atomic_save

    arch = dict(depth=2, embed_dim=32, patch_size=8, stride=8, num_classes=3)
    ckpt = atomic_save({"model": vimstm.create_model("vim_tiny_cifar10", **arch).state_dict()},
                       tmp_path / "w.pth")
    rng = np.random.default_rng(0)
    for c in ("a", "b", "c"):
        (tmp_path / "data" / c).mkdir(parents=True)
        for j in range(2):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
                tmp_path / "data" / c / f"{j}.png")
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in arch.items()]
    out = tmp_path / "sweep"
    assert main(["sweep", "--model", "vim_tiny_cifar10", "--checkpoint", str(ckpt), *flags,
                 "--data", str(tmp_path / "data"), "--methods", "stm", "--ratios", "0.25",
                 "--no-bench", "--workers", "0", "--out", str(out)]) == 0
    rows = json.loads((out / "sweep.json").read_text())
    rows = rows["rows"] if isinstance(rows, dict) else rows
    assert {r["method"] for r in rows} >= {"stm"} and len(rows) >= 2
