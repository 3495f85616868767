"""``measure_throughput`` and ``vimstm bench`` on the CPU with tiny models."""

from __future__ import annotations

import json

import pytest
import torch

import vimstm
from vimstm.cli import main
from vimstm.engine.benchmark import measure_throughput, measure_training
from vimstm.errors import ConfigError

TINY = dict(depth=2, embed_dim=32, img_size=32, patch_size=8, stride=8, num_classes=10)


def test_measure_throughput_keys_and_values():
    model = vimstm.create_model("vim_tiny", scan_backend="reference", **TINY)
    r = measure_throughput(model, batch_size=2, dtype="bf16", device="cpu", warmup=1, runs=3)
    assert r["images_per_s"] > 0 and r["ms_per_batch"] > 0
    assert abs(r["images_per_s"] * r["ms_per_batch"] / 1e3 - 2) < 1e-6
    assert r["dtype"] == "bf16" and r["batch_size"] == 2 and r["device_name"] == "cpu"
    assert not model.training


@pytest.mark.parametrize("kw", [dict(dtype="fp8"), dict(runs=0), dict(cuda_graph=True)])
def test_measure_throughput_rejects_bad_options(kw):
    model = vimstm.create_model("vim_tiny", scan_backend="reference", **TINY)
    with pytest.raises(ConfigError):
        measure_throughput(model, batch_size=1, device="cpu", warmup=0, **{"runs": 1, **kw})


def test_bench_cli_writes_json(tmp_path, capsys):
    out = tmp_path / "b.json"
    rc = main(["bench", "--model", "vim_tiny", "--device", "cpu", "--img-size", "32",
               "--batch-size", "1", "--warmup", "0", "--runs", "1", "--json", str(out)])
    assert rc == 0
    text = out.read_text()
    assert "NaN" not in text  # strict JSON: the CPU has no peak memory, written as null
    data = json.loads(text)
    assert data["scan_backend"] == "reference" and data["dense"]["images_per_s"] > 0
    assert data["dense"]["peak_mem_mb"] is None and data["dense"]["spread"] == 0.0
    printed = capsys.readouterr().out
    assert "command: vimstm bench" in printed and "images/s" in printed


def test_bench_cli_bad_dtype_is_a_clean_error():
    with pytest.raises(SystemExit) as e:
        main(["bench", "--device", "cpu", "--dtype", "fp64"])
    assert e.value.code == 2


def test_bench_cli_dense_vs_merged(tmp_path, capsys):
    pytest.importorskip("vimstm.merge")
    out = tmp_path / "m.json"
    rc = main(["bench", "--model", "vim_tiny", "--device", "cpu", "--img-size", "48",
               "--batch-size", "1", "--warmup", "0", "--runs", "1", "--method", "stm",
               "--ratio", "0.3", "--json", str(out)])
    assert rc == 0
    data = json.loads(out.read_text())
    tokens = data["stm"]["tokens_per_block"]
    assert tokens[0] == 10 and tokens[-1] < tokens[0]
    assert data["speedup"] > 0
    printed = capsys.readouterr().out
    assert "tokens per block" in printed
    assert "cuda_graph: False" in printed  # graphs are the default on CUDA only
    # both GMAC conventions, and the speed-up as a share of the GFLOPs reduction
    d, m = data["dense"], data["stm"]
    assert m["gmacs_literature"] < d["gmacs_literature"] < d["gmacs"]
    assert "fewer" in printed and "of the reduction" in printed
    # where the point sits on every paper's axis
    point = m["operating_point"]
    assert point["tokens_last_block"] == tokens[-1] and point["mean_token_reduction"] > 0
    assert point["mean_token_reduction"] < point["ratio"] and "mean red." in printed


def test_relative_spread():
    from vimstm.engine.benchmark import relative_spread

    assert relative_spread([1.0]) == 0.0
    assert relative_spread([1.0, 1.0, 1.0, 1.0]) == 0.0
    assert relative_spread([1.0, 2.0, 3.0, 4.0, 5.0]) == pytest.approx(2.0 / 3.0)


def test_measure_training_steps_the_optimizer():
    """A training step: train mode, the weights move, images/s and the step time agree."""
    model = vimstm.create_model("vim_tiny", scan_backend="reference", **TINY)
    before = model.head.weight.detach().clone()
    r = measure_training(model, batch_size=2, dtype="fp32", device="cpu", warmup=0, runs=2)
    assert r["train"] and r["images_per_s"] > 0 and r["runs"] == 2
    assert abs(r["images_per_s"] * r["ms_per_batch"] / 1e3 - 2) < 1e-6
    assert model.training and not torch.equal(model.head.weight, before)


def test_bench_train_cli(tmp_path, capsys):
    out = tmp_path / "t.json"
    rc = main(["bench", "--train", "--model", "vim_tiny", "--device", "cpu", "--img-size", "32",
               "--depth", "2", "--embed-dim", "32", "--batch-size", "2", "--dtype", "fp32",
               "--warmup", "0", "--runs", "1", "--json", str(out)])
    assert rc == 0
    data = json.loads(out.read_text())
    assert data["train"] and data["dense"]["train"] and data["dense"]["images_per_s"] > 0
    assert "training step" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="cuda-graph"):
        from vimstm.cli import build_parser
        from vimstm.engine.benchmark import run

        run(build_parser().parse_args(["bench", "--train", "--cuda-graph", "--device", "cpu"]))


def test_bench_cli_compile_mode_and_cuda_graph_conflict(capsys):
    """reduce-overhead replays CUDA graphs itself: asking for --cuda-graph too is one clear
    line before any work; a plain --compile means the default mode."""
    assert main(["bench", "--device", "cpu", "--compile", "reduce-overhead",
                 "--cuda-graph"]) == 2
    err = capsys.readouterr().err
    assert "reduce-overhead replays CUDA graphs itself" in err and "Traceback" not in err
    from vimstm.cli import build_parser

    args = build_parser().parse_args(["bench", "--compile"])
    assert args.compile == "default"
    args = build_parser().parse_args(["train", "--model", "vim_tiny", "--data", "d",
                                      "--output", "o", "--compile", "reduce-overhead"])
    assert args.compile == "reduce-overhead"
