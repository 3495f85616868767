"""benchmarks/ft_recipe.py: its candidates are valid finetune flags, its rule picks as its
docstring says, and it refuses runs that cannot be compared."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from conftest import load_script
from vimstm.cli import build_parser
from vimstm.engine.train_state import START_EVAL, write_log
from vimstm.models.checkpoint import atomic_save

fr = load_script("benchmarks/ft_recipe.py")


def test_candidates_are_valid_finetune_flags(capsys: pytest.CaptureFixture[str]) -> None:
    assert fr.main(["--plan"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split("\t")[0] for ln in lines] == [c[0] for c in fr.CANDIDATES]
    assert fr.CANDIDATES[0][1] == "--lr 5e-5"  # the current recipe comes first
    base = ["finetune", "--model", "vim_tiny_cifar10", "--data", "d", "--output", "o",
            "--method", "dense", "--holdout", "5000", "--eval-start"]
    for ln in lines:
        name, flags = ln.split("\t")
        a = build_parser().parse_args(base + shlex.split(flags))
        assert a.holdout == 5000 and a.lr > 0, name


def fake_runs(root: Path, scores: dict[str, float], start: float = 90.0,
              epochs: int = 2) -> Path:
    for name, flags, _ in fr.CANDIDATES:
        run = root / name
        run.mkdir(parents=True)
        s = scores.get(name, 89.0)
        entry = {"epoch": epochs - 1, "holdout_top1": s - 1.0 if "--model-ema" in flags else s}
        if "--model-ema" in flags:
            entry["holdout_ema_top1"] = s
        write_log(run, [{"epoch": 0, "holdout_top1": 10.0}, entry])
        (run / START_EVAL).write_text(json.dumps({"holdout_top1": start}))
        atomic_save({"args": {"epochs": epochs, "method": "dense", "holdout": 5000,
                              "lr": 5e-5}}, run / "last.pth")
    return root


@pytest.mark.parametrize(("scores", "chosen"), [
    ({"lr5e-5": 89.0, "lr2e-5": 89.18}, "lr5e-5"),  # within the margin: the current stays
    ({"lr5e-5": 89.0, "lr2e-5": 89.3, "lr1e-5": 89.5}, "lr1e-5"),  # the highest beyond it
    ({"lr5e-5": 89.0, "lr2e-5": 89.5, "lr1e-5": 89.5}, "lr2e-5"),  # a tie: the earlier
    ({"lr5e-5": 89.0, "lr5e-5-ema": 89.4}, "lr5e-5-ema"),  # EMA runs: their EMA score
])
def test_rule(scores: dict[str, float], chosen: str, tmp_path: Path) -> None:
    res = fr.table(fake_runs(tmp_path / "runs", scores), tmp_path / "out")
    assert res["chosen"] == chosen
    assert res["ft_args"] == dict((n, f) for n, f, _ in fr.CANDIDATES)[chosen]
    assert res["unfinetuned_holdout_top1"] == 90.0 and res["chosen_below_unfinetuned"]
    md = (tmp_path / "out" / "ft_recipe.md").read_text()
    assert f"{chosen} **(chosen)**" in md and "below the unfine-tuned" in md
    assert json.loads((tmp_path / "out" / "ft_recipe.json").read_text())["chosen"] == chosen


def test_refuses_runs_that_cannot_be_compared(tmp_path: Path) -> None:
    runs = fake_runs(tmp_path / "a", {})
    (runs / "lr2e-5" / START_EVAL).write_text(json.dumps({"holdout_top1": 91.0}))
    with pytest.raises(SystemExit, match="start scores differ"):
        fr.table(runs, tmp_path / "out")
    runs = fake_runs(tmp_path / "b", {}, epochs=3)
    atomic_save({"args": {"epochs": 4, "method": "dense", "holdout": 5000}},
                runs / "lr1e-5" / "last.pth")
    with pytest.raises(SystemExit, match="stopped after epoch 3 of 4"):
        fr.table(runs, tmp_path / "out")
    (runs / "lr1e-5" / "log.jsonl").unlink()
    with pytest.raises(SystemExit, match="is missing"):
        fr.table(runs, tmp_path / "out")


def test_evidence_evaluates_the_ema_of_a_run_that_kept_one(tmp_path: Path) -> None:
    """An EMA candidate is scored on its EMA weights, so the evidence must load those."""
    import argparse

    ev = load_script("benchmarks/cifar_evidence.py")
    a = argparse.Namespace(trust_checkpoint=False)
    with_ema = atomic_save({"model": {}, "model_ema": {}}, tmp_path / "e.pth")
    without = atomic_save({"model": {}, "model_ema": None}, tmp_path / "n.pth")
    assert ev.kept_ema(with_ema, a) and not ev.kept_ema(without, a)
