"""Shared pytest fixtures: tiny models that run fast on two CPU cores."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import ModuleType

import pytest
import torch

import vimstm

# before any fixture: module-scoped ones (a training run reused by several tests) must compute
# with the same thread count as the tests that compare against them
torch.set_num_threads(2)

# Tests marked `gpu` run Triton kernels: in this process on CUDA or when Triton's interpreter was
# on from the start (TRITON_INTERPRET=1); otherwise test_triton_interpreter.py runs them in a
# fresh process with the interpreter on, and they are deselected here.
GPU_CASES_HERE = torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"
ROOT = Path(__file__).resolve().parents[1]


def load_script(path: str) -> ModuleType:
    """A script of the repository (``"benchmarks/merge_anatomy.py"``) imported as a module and
    registered in ``sys.modules`` under its stem (dataclasses look their module up there)."""
    spec = importlib.util.spec_from_file_location(Path(path).stem, ROOT / path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def run_gpu_cases_under_interpreter(module: str) -> subprocess.CompletedProcess:
    """The `gpu` cases of one test module in a fresh process with Triton's interpreter on."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", "-m", "gpu",
         module], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )


# Interpreter runs started as soon as collection ends, one at a time on a background thread, so
# they use the second core while this process runs the other tests; each test waits for its own.
INTERPRETER_RUNS: dict[str, Future] = {}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if GPU_CASES_HERE:
        return
    kept = [it for it in items if it.get_closest_marker("gpu") is None]
    if len(kept) < len(items):
        config.hook.pytest_deselected(items=[it for it in items if it not in kept])
        items[:] = kept


def pytest_collection_finish(session: pytest.Session) -> None:
    # after every deselection (-k, -m, ...): only the runs of tests that will run are started
    if GPU_CASES_HERE:
        return
    modules = [it.callspec.params["module"] for it in session.items
               if getattr(it, "originalname", "") == "test_gpu_cases_under_interpreter"]
    if modules:
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="triton-interpreter")
        for module in modules:
            INTERPRETER_RUNS[module] = pool.submit(run_gpu_cases_under_interpreter, module)
        pool.shutdown(wait=False)


def pytest_sessionfinish(session: pytest.Session) -> None:
    # a run stopped early (-x, Ctrl-C) does not wait for interpreter runs that have not started
    for run in INTERPRETER_RUNS.values():
        run.cancel()


TINY = dict(depth=2, embed_dim=32, img_size=32, patch_size=8, stride=8, num_classes=10)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def tiny_model():
    """A 2-block, dim-32 ViM on 32x32 images with 16 patch tokens + the class token."""
    return vimstm.create_model("vim_tiny", scan_backend="reference", **TINY).eval()


SMALL = dict(depth=4, embed_dim=32, img_size=32, patch_size=4, stride=4, num_classes=10)


@pytest.fixture(scope="module")
def small_model():
    """A 4-block, dim-32 ViM with 64 patch tokens + the class token (one per test module)."""
    torch.manual_seed(0)
    return vimstm.create_model("vim_tiny", scan_backend="reference", **SMALL).eval()
