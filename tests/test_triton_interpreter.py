"""The `gpu`-marked Triton tests on a machine without CUDA: each module in a fresh process with
Triton's interpreter on from the start (TRITON_INTERPRET=1 must precede Triton's first import,
which this process has already done). On CUDA they run in-process and this test is left out."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import GPU_CASES_HERE

pytest.importorskip("triton")
ROOT = Path(__file__).resolve().parents[1]
MODULES = ["tests/merge/test_triton_merge.py", "tests/ops/test_triton_scan.py",
           "tests/ops/test_triton_norm.py", "tests/ops/test_mixer.py"]


@pytest.mark.skipif(GPU_CASES_HERE, reason="the gpu cases run in this process")
@pytest.mark.parametrize("module", MODULES)
def test_gpu_cases_under_interpreter(module: str) -> None:
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", "-m", "gpu",
         module], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    tail = (proc.stdout + proc.stderr)[-4000:]
    assert proc.returncode == 0, tail
    summary = proc.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "skipped" not in summary and "deselected" not in summary, tail
