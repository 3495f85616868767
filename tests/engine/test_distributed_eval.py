"""Under torchrun (2 CPU processes, gloo) eval counts every image once and equals one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from PIL import Image


def _folder(root):
    rng = np.random.default_rng(0)
    n = 0
    for c, cls in enumerate(("ant", "bee", "cow")):
        for j in range(3 + c):  # 3 + 4 + 5 = 12 readable images
            d = root / cls
            d.mkdir(parents=True, exist_ok=True)
            size = (32, 32) if j % 2 else (48, 40)
            Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(d / f"{j}.png")
            n += 1
    (root / "bee" / "zz_broken.jpg").write_bytes(b"not an image")  # 13 files: odd
    return n


def _eval(cmd_prefix, args, out, env):
    proc = subprocess.run([*cmd_prefix, *args, "--json", str(out)], env=env, capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text()), proc


def test_torchrun_two_processes_equal_one(tmp_path, monkeypatch):
    pytest.importorskip("torch.distributed")
    import torch.distributed as dist

    if not dist.is_gloo_available():
        pytest.skip("gloo backend not available")
    from vimstm.models.checkpoint import atomic_save
    from vimstm.models.registry import create_model

    n_good = _folder(tmp_path / "data")
    archive = tmp_path / "data.tar.gz"  # the 2-process run reads it from an archive
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "data", arcname="val")
    monkeypatch.setenv("VIMSTM_CACHE", str(tmp_path / "cache"))
    model = create_model("vim_tiny", depth=1, embed_dim=32, img_size=32, patch_size=8, stride=8,
                         num_classes=3)
    ckpt = atomic_save({"model": model.state_dict()}, tmp_path / "tiny.pth")
    args = ["eval", "--model", "vim_tiny", "--checkpoint", str(ckpt), "--depth", "1",
            "--embed-dim", "32", "--img-size", "32", "--patch-size", "8", "--stride", "8",
            "--num-classes", "3", "--data", str(tmp_path / "data"), "--batch-size", "2",
            "--workers", "0", "--device", "cpu", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    from vimstm.cli import main

    assert main([*args, "--json", str(tmp_path / "one.json")]) == 0  # one process, in-process
    one = json.loads((tmp_path / "one.json").read_text())
    args[args.index("--data") + 1] = str(archive)  # ranks share one extraction
    two, proc = _eval([sys.executable, "-m", "torch.distributed.run", "--standalone",
                       "--nproc-per-node", "2", "-m", "vimstm.cli"], args, tmp_path / "two.json",
                      {**env, "VIMSTM_CACHE": str(tmp_path / "cache")})
    assert two["world_size"] == 2 and one["world_size"] == 1
    assert one["images"] == two["images"] == n_good  # no padded duplicates, none lost
    assert one["skipped"] == two["skipped"] == 1  # the broken file, counted once
    assert one["top1"] == two["top1"] and one["top5"] == two["top5"]
    assert proc.stdout.count("top-1") == 1  # only rank 0 prints
    assert len(list((tmp_path / "cache" / "data").iterdir())) == 1  # one extraction, no temp


def test_helpers_are_no_ops_without_torchrun(monkeypatch):
    import torch

    from vimstm.engine import distributed as d
    from vimstm.errors import ConfigError

    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    info = d.init_distributed("cpu")
    assert (info.rank, info.world_size, info.enabled, info.device.type) == (0, 1, False, "cpu")
    t = torch.tensor([3.0, 4.0])
    assert d.all_reduce_sum(t).tolist() == [3.0, 4.0] and d.is_main()
    d.barrier()
    d.cleanup()
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            d.init_distributed("cuda")
