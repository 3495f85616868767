"""Official weights by name: huggingface_hub against a local fake of its cache (no network)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import vimstm
from vimstm.errors import CheckpointError
from vimstm.models.registry import get_spec

hub_constants = pytest.importorskip("huggingface_hub.constants")
SMALL = dict(depth=2, embed_dim=32, d_state=4)
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def fake_hub_cache(root: Path, repo_id: str, filename: str, payload: dict) -> Path:
    """A cache laid out as huggingface_hub lays it out: refs/main -> snapshots/<commit>/file."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    snap = repo / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    torch.save(payload, snap / filename)
    return snap / filename


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    return tmp_path / "hub"


def official_like(**kw) -> tuple[torch.nn.Module, dict]:
    """A small model and a release-style file ({'model': state_dict}) of it."""
    torch.manual_seed(1)
    m = vimstm.create_model("vim_tiny", **SMALL, **kw).eval()
    return m, {"model": m.state_dict()}


@pytest.mark.parametrize(("alias", "repo", "filename"), [
    ("vim_tiny", "hustvl/Vim-tiny-midclstok", "vim_t_midclstok_76p1acc.pth"),
    ("vim_tiny_stride8", "hustvl/Vim-tiny-midclstok", "vim_t_midclstok_ft_78p3acc.pth"),
    ("vim_small", "hustvl/Vim-small-midclstok", "vim_s_midclstok_80p5acc.pth"),
    ("vim_small_stride8", "hustvl/Vim-small-midclstok", "vim_s_midclstok_ft_81p6acc.pth"),
    ("vim_base", "hustvl/Vim-base-midclstok", "vim_b_midclstok_81p9acc.pth"),
])
def test_registered_release_files(alias, repo, filename):
    spec = get_spec(alias)
    assert (spec.hf_hub_id, spec.hf_hub_filename) == (repo, filename)


def test_pretrained_loads_the_release_file_from_the_hub_cache(offline_cache):
    ref, payload = official_like()
    fake_hub_cache(offline_cache, "hustvl/Vim-tiny-midclstok", "vim_t_midclstok_76p1acc.pth",
                   payload)
    model = vimstm.create_model("vim_tiny", pretrained=True, **SMALL).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=0, atol=0)


def test_timm_create_model_uses_the_same_pretrained_cfg(offline_cache):
    timm = pytest.importorskip("timm")
    cfg = timm.models.get_pretrained_cfg("vim_small_stride8")
    assert (cfg.hf_hub_id, cfg.hf_hub_filename) == ("hustvl/Vim-small-midclstok",
                                                    "vim_s_midclstok_ft_81p6acc.pth")
    ref, payload = official_like(stride=8)
    fake_hub_cache(offline_cache, cfg.hf_hub_id, cfg.hf_hub_filename, payload)
    model = timm.create_model("vim_small_stride8", pretrained=True, embed_dim=32, depth=2,
                              d_state=4).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=0, atol=0)


def test_timm_overlay_file_is_loaded(tmp_path):
    timm = pytest.importorskip("timm")
    ref, payload = official_like()
    torch.save(payload, tmp_path / "local.pth")
    model = timm.create_model("vim_tiny", pretrained=True, **SMALL,
                              pretrained_cfg_overlay={"file": str(tmp_path / "local.pth")})
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), ref(x), rtol=0, atol=0)


def test_offline_without_the_file_names_repo_file_and_local_path(offline_cache):
    with pytest.raises(CheckpointError) as e:
        vimstm.create_model("vim_base", pretrained=True, **SMALL)
    msg = str(e.value)
    assert "\n" not in msg
    for part in ("hustvl/Vim-base-midclstok", "vim_b_midclstok_81p9acc.pth", "HF_HUB_OFFLINE",
                 "--checkpoint PATH",
                 "https://huggingface.co/hustvl/Vim-base-midclstok/resolve/main/"):
        assert part in msg


def test_download_errors_become_one_line(monkeypatch):
    import huggingface_hub

    def refuse(**kw):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(CheckpointError, match=r"OSError: Network is unreachable\); download"):
        vimstm.create_model("vim_small", pretrained=True, **SMALL)
