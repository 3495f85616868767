"""The `gpu`-marked Triton tests on a machine without CUDA: each module in a fresh process with
Triton's interpreter on from the start (TRITON_INTERPRET=1 must precede Triton's first import,
which this process has already done). conftest starts these runs in the background when
collection ends; each test here waits for its module's run. On CUDA they run in-process and this
test is left out."""

from __future__ import annotations

import pytest

from conftest import GPU_CASES_HERE, INTERPRETER_RUNS

pytest.importorskip("triton")
# the longest first, so the background thread finishes as early as it can
MODULES = ["tests/ops/test_triton_scan.py", "tests/ops/test_mixer.py",
           "tests/merge/test_triton_merge.py", "tests/ops/test_triton_norm.py"]


@pytest.mark.skipif(GPU_CASES_HERE, reason="the gpu cases run in this process")
@pytest.mark.parametrize("module", MODULES)
def test_gpu_cases_under_interpreter(module: str) -> None:
    proc = INTERPRETER_RUNS[module].result()
    tail = (proc.stdout + proc.stderr)[-4000:]
    assert proc.returncode == 0, tail
    summary = proc.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "skipped" not in summary and "deselected" not in summary, tail
