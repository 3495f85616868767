"""Process settings for CPU work (vimstm.runtime)."""

from __future__ import annotations

import platform

import pytest
import torch

from vimstm.errors import ConfigError
from vimstm.runtime import compile_mode, compiled, keep_freed_memory


def test_keep_freed_memory_respects_the_environment(monkeypatch):
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")
    assert keep_freed_memory() is False


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="mallopt is glibc's")
def test_keep_freed_memory_applies_on_glibc(monkeypatch):
    for var in ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES"):
        monkeypatch.delenv(var, raising=False)
    assert keep_freed_memory() is True
    x = torch.randn(1 << 20)  # allocation still works, in a block below the new threshold
    assert torch.equal(x * 1, x)


@pytest.mark.parametrize("asked, mode", [(None, None), (False, None), (True, "default"),
                                         ("reduce-overhead", "reduce-overhead")])
def test_compile_mode_names(asked, mode):
    assert compile_mode(asked) == mode


def test_compile_mode_rejects_unknown_names_and_off_leaves_the_model():
    with pytest.raises(ConfigError, match="unknown compile mode 'fast'"):
        compile_mode("fast")
    model = torch.nn.Linear(2, 2)
    assert compiled(model, None) is model
    assert compiled(model, "default") is not model
