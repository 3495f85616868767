"""Triton kernels vs the reference on the CPU, under Triton's interpreter, in a fresh process.

The cases live in ``triton_cases.py``; they need TRITON_INTERPRET=1 before Triton is first
imported, which this pytest process (torch and timm import Triton) cannot guarantee.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

CASES = Path(__file__).with_name("triton_cases.py")


def test_triton_kernels_under_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    root = CASES.parents[2]
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-x", "-p", "no:cacheprovider", "-rs", str(CASES)],
        cwd=root, env=env, capture_output=True, text=True, timeout=600,
    )
    tail = (proc.stdout + proc.stderr)[-4000:]
    assert proc.returncode == 0, tail
    summary = proc.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "skipped" not in summary, tail
