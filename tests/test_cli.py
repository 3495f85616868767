"""The command line: `vimstm models` and `vimstm eval` end to end on a tiny model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from vimstm.cli import main
from vimstm.data import eval_transform
from vimstm.models.checkpoint import atomic_save
from vimstm.models.registry import create_model, get_spec, list_specs, weights_dir

ARCH = dict(depth=1, embed_dim=32, img_size=32, patch_size=8, stride=8)
ARCH_FLAGS = ["--depth", "1", "--embed-dim", "32", "--img-size", "32", "--patch-size", "8",
              "--stride", "8"]
CLASSES = ("owl", "cat", "eel")  # sorted: cat 0, eel 1, owl 2


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("cls")
    rng = np.random.default_rng(1)
    for c, cls in enumerate(CLASSES):
        (root / cls).mkdir()
        for j in range(4 + c):
            size = [(32, 32), (50, 40), (37, 61)][j % 3]
            arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / cls / f"{j}.{'png' if j % 2 else 'jpg'}")
    return root


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("vim_tiny", num_classes=3, **ARCH)
    return atomic_save({"model": model.state_dict()}, tmp_path_factory.mktemp("ck") / "t.pth")


def _eval_args(ckpt, folder, *extra):
    return ["eval", "--model", "vim_tiny", "--checkpoint", str(ckpt), *ARCH_FLAGS,
            "--num-classes", "3", "--data", str(folder), "--workers", "0", "--no-progress",
            *extra]


def test_models_lists_aliases_and_official_names(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for spec in list_specs():
        assert spec.alias in out and spec.name in out


def test_eval_end_to_end_matches_a_manual_evaluation(ckpt, folder, tmp_path, capsys):
    out_json = tmp_path / "sub" / "res.json"
    assert main(_eval_args(ckpt, folder, "--batch-size", "4", "--json", str(out_json))) == 0
    printed = capsys.readouterr().out
    assert "top-1" in printed and "top-5" in printed and "images/s" in printed
    assert "mean token reduction 0.000" in printed and "(both directions)" in printed
    res = json.loads(out_json.read_text())
    assert res["operating_point"]["ratio"] == 0 and res["operating_point"]["gmacs_full"] > 0
    for key in ("top1", "top5", "images", "skipped", "seconds", "images_per_s", "model",
                "num_classes", "crop_pct", "img_size", "device"):
        assert key in res
    assert res["images"] == 15 and res["skipped"] == 0 and res["num_classes"] == 3
    assert res["img_size"] == 32 and res["crop_pct"] == 0.875 and res["labels"] == "folders"
    # the same numbers by hand: sorted folder labels, the model's transform, argmax
    model = create_model("vim_tiny", checkpoint=ckpt, num_classes=3, **ARCH).eval()
    t = eval_transform(32, 0.875)
    hits1 = hits3 = 0
    for label, cls in enumerate(sorted(CLASSES)):
        for f in sorted((folder / cls).iterdir()):
            with torch.no_grad():
                logits = model(t(Image.open(f).convert("RGB"))[None])[0]
            hits1 += int(logits.argmax()) == label
            hits3 += 1  # 3 classes: top-5 always holds the label
    assert res["top1"] == pytest.approx(100 * hits1 / 15)
    assert res["top5"] == pytest.approx(100 * hits3 / 15)


def test_eval_limit_and_ema(ckpt, folder, tmp_path):
    torch.manual_seed(1)
    a = create_model("vim_tiny", num_classes=3, **ARCH).state_dict()
    b = create_model("vim_tiny", num_classes=3, **ARCH).state_dict()
    both = atomic_save({"model": a, "model_ema": b}, tmp_path / "both.pth")
    only_b = atomic_save(b, tmp_path / "b.safetensors")
    runs = {}
    for name, path, extra in [("ema", both, ["--use-ema"]), ("b", only_b, []),
                              ("lim", only_b, ["--limit", "5"])]:
        out = tmp_path / f"{name}.json"
        assert main(_eval_args(path, folder, "--json", str(out), *extra)) == 0
        runs[name] = json.loads(out.read_text())
    assert runs["ema"]["top1"] == runs["b"]["top1"]
    assert runs["lim"]["images"] == 5


@pytest.mark.parametrize("case", ["ckpt", "data", "classes", "weights", "empty"])
def test_eval_errors_are_one_line_exit_2(case, ckpt, folder, tmp_path, capsys):
    ckpt5 = atomic_save(create_model("vim_tiny", num_classes=5, **ARCH).state_dict(),
                        tmp_path / "five.safetensors")
    args = {
        "ckpt": _eval_args(tmp_path / "missing.pth", folder),
        "data": _eval_args(ckpt, tmp_path / "no_such_dir"),
        "classes": ["eval", "--model", "vim_tiny", "--checkpoint", str(ckpt5), *ARCH_FLAGS,
                    "--num-classes", "5", "--data", str(folder), "--workers", "0"],
        "weights": ["eval", "--model", "vim_tiny", "--data", str(folder)],
        "empty": _eval_args(ckpt, tmp_path),
    }[case]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vimstm eval: error:") and len(err.splitlines()) == 1
    expect = {"ckpt": "not found", "data": "not found", "classes": "--synsets FILE",
              "weights": "--pretrained", "empty": "no class folders"}[case]
    assert expect in err


def test_eval_cifar_model_says_when_bundled_weights_are_missing(folder, capsys, monkeypatch,
                                                               tmp_path):
    import vimstm.models.registry as registry

    monkeypatch.setattr(registry, "weights_dir", lambda: tmp_path)
    assert main(["eval", "--model", "vim_tiny_cifar10", "--data", str(folder)]) == 2
    assert "no bundled weights" in capsys.readouterr().err


def test_bundled_cifar_weights_load_by_name():
    """The shipped reference weights load with pretrained=True (no checkpoint argument)."""
    spec = get_spec("vim_tiny_cifar10")
    assert (weights_dir() / spec.weights).is_file()
    model = create_model("vim_tiny_cifar10", pretrained=True)
    fresh = create_model("vim_tiny_cifar10")
    w, w0 = model.head.weight, fresh.head.weight
    assert w.shape == (10, 192) and torch.isfinite(w).all() and not torch.equal(w, w0)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_eval_with_merging_reports_method(ckpt, folder, tmp_path, capsys):
    merge = pytest.importorskip("vimstm.merge")
    if not hasattr(merge, "add_merge_args"):
        pytest.skip("merge CLI options not there yet")
    torch.manual_seed(0)
    deep = atomic_save({"model": create_model("vim_tiny", num_classes=3,
                                              **{**ARCH, "depth": 4}).state_dict()},
                       tmp_path / "deep.pth")
    args = _eval_args(deep, folder, "--json", str(tmp_path / "m.json"), "--method", "stm",
                      "--ratio", "0.25")
    args[args.index("--depth") + 1] = "4"
    assert main(args) == 0
    res = json.loads((tmp_path / "m.json").read_text())
    assert res["method"] == "stm" and res["ratio"] == 0.25 and res["images"] == 15
    assert "stm" in capsys.readouterr().out


def test_cpu_threads_leave_a_core_free_unless_told(monkeypatch):
    from vimstm.cli import cpu_threads

    monkeypatch.delenv("VIMSTM_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert cpu_threads() == 1
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert cpu_threads() == 7
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert cpu_threads() == 3
    monkeypatch.setenv("VIMSTM_THREADS", "2")
    assert cpu_threads() == 2


# ---------------------------------------------------------------- no silent wrong answers


def test_ratio_without_method_merges_with_stm_and_says_so(ckpt, folder, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(_eval_args(ckpt, folder, "--ratio", "0.3", "--json", str(out))) == 0
    captured = capsys.readouterr()
    assert "--ratio given without --method: merging with stm" in captured.err
    res = json.loads(out.read_text())
    assert res["method"] == "stm" and res["ratio"] == 0.3


@pytest.mark.parametrize("flag", [["--ratio", "0.3"], ["--r", "2"], ["--flops", "0.7"]])
def test_bench_schedule_without_method_is_merged(flag, tmp_path, capsys):
    out = tmp_path / "b.json"
    assert main(["bench", "--model", "vim_tiny", "--device", "cpu", *ARCH_FLAGS, "--depth", "4",
                 "--batch-size", "1", "--warmup", "0", "--runs", "1", *flag,
                 "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert "stm" in data and data["stm"]["gmacs_literature"] < data["dense"]["gmacs_literature"]


def test_schedule_with_method_none_is_refused(ckpt, folder, capsys):
    assert main(_eval_args(ckpt, folder, "--method", "none", "--ratio", "0.3")) == 2
    assert "would be ignored with --method none" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["sweep", "viz"])
def test_no_weights_is_refused_where_accuracy_or_merges_matter(command, folder, tmp_path,
                                                               capsys):
    image = next(folder.glob("*/*.png"))
    args = {"sweep": ["sweep", "--model", "vim_tiny", "--data", str(folder),
                      "--out", str(tmp_path / "s")],
            "viz": ["viz", "--model", "vim_tiny", "--image", str(image),
                    "--out", str(tmp_path / "v.png")]}[command]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "random weights" in err and "--pretrained" in err
    assert not (tmp_path / "s" / "sweep.csv").exists() and not (tmp_path / "v.png").exists()


def test_checkpoint_and_pretrained_together_are_refused(ckpt, folder, capsys):
    assert main(_eval_args(ckpt, folder, "--pretrained")) == 2
    assert "give one of them" in capsys.readouterr().err


@pytest.mark.parametrize("case", ["eval", "bench", "sweep", "viz", "export"])
def test_unwritable_output_fails_before_the_work(case, ckpt, folder, tmp_path, capsys,
                                                 monkeypatch):
    import vimstm.engine.evaluate as ev

    bad = "/proc/vimstm-no/such"
    image = next(folder.glob("*/*.png"))
    args = {
        "eval": _eval_args(ckpt, folder, "--json", f"{bad}/r.json"),
        "bench": ["bench", "--device", "cpu", *ARCH_FLAGS, "--runs", "1", "--json",
                  f"{bad}/b.json"],
        "sweep": ["sweep", "--model", "vim_tiny", "--checkpoint", str(ckpt), *ARCH_FLAGS,
                  "--num-classes", "3", "--out", bad],
        "viz": ["viz", "--model", "vim_tiny", "--checkpoint", str(ckpt), *ARCH_FLAGS,
                "--num-classes", "3", "--image", str(image), "--out", f"{bad}/v.png"],
        "export": ["export", str(ckpt), "-o", f"{bad}/w.safetensors"],
    }[case]

    def no_work(*a, **k):
        raise AssertionError("the work started before the output path was checked")

    monkeypatch.setattr(ev, "evaluate", no_work)
    monkeypatch.setattr("vimstm.engine.benchmark.measure_throughput", no_work)
    monkeypatch.setattr("vimstm.engine.sweep.run_sweep", no_work)
    monkeypatch.setattr("vimstm.viz.visualize", no_work)
    monkeypatch.setattr("vimstm.engine.train.export_weights", no_work)
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and bad in err and "writable" in err


def test_sweep_prints_rows_as_they_finish(tiny_model):
    from vimstm.engine.sweep import run_sweep

    seen = []
    rows = run_sweep(tiny_model, None, ["stm"], [0.25, 0.5], bench=None,
                     on_row=lambda r: seen.append((r["method"], r["ratio"])))
    assert seen == [("dense", 0.0), ("stm", 0.25), ("stm", 0.5)] and len(rows) == 3
