"""Model registry: hustvl's registered names, short aliases and the data each model expects.

timm learns these names in :mod:`vimstm.models.timm_models`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vimstm.errors import ConfigError
from vimstm.models.vim import VisionMamba

_SUFFIX = "bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2"


@dataclass(frozen=True)
class ModelSpec:
    """A registered architecture and the data it expects."""

    name: str
    alias: str
    kwargs: dict[str, Any]
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)  # ImageNet
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    crop_pct: float = 0.875
    weights: str | None = None  # bundled safetensors file in vimstm/weights
    hf_hub_id: str | None = None  # Hugging Face Hub repository of the official weights
    hf_hub_filename: str | None = None  # the release file in it

    @property
    def has_weights(self) -> bool:
        """Whether ``pretrained=True`` has weights to load (bundled or on the Hub)."""
        return self.bundled_path is not None or self.hf_hub_id is not None

    @property
    def bundled_path(self) -> Path | None:
        """The bundled weights file, if this model has one and it is installed."""
        if self.weights is None:
            return None
        path = weights_dir() / self.weights
        return path if path.is_file() else None


# The official release files (hustvl/Vim README, "Model Weights": one Hub repository per size;
# the stride-8 "+" models are the *_ft_* files of the same repository).
_HUB_TINY, _HUB_SMALL, _HUB_BASE = ("hustvl/Vim-tiny-midclstok", "hustvl/Vim-small-midclstok",
                                    "hustvl/Vim-base-midclstok")
_SPECS: list[ModelSpec] = [
    ModelSpec(f"vim_tiny_patch16_224_{_SUFFIX}", "vim_tiny", dict(embed_dim=192),
              hf_hub_id=_HUB_TINY, hf_hub_filename="vim_t_midclstok_76p1acc.pth"),
    ModelSpec(f"vim_tiny_patch16_stride8_224_{_SUFFIX}", "vim_tiny_stride8",
              dict(embed_dim=192, stride=8),
              hf_hub_id=_HUB_TINY, hf_hub_filename="vim_t_midclstok_ft_78p3acc.pth"),
    ModelSpec(f"vim_small_patch16_224_{_SUFFIX}", "vim_small", dict(embed_dim=384),
              hf_hub_id=_HUB_SMALL, hf_hub_filename="vim_s_midclstok_80p5acc.pth"),
    ModelSpec(f"vim_small_patch16_stride8_224_{_SUFFIX}", "vim_small_stride8",
              dict(embed_dim=384, stride=8),
              hf_hub_id=_HUB_SMALL, hf_hub_filename="vim_s_midclstok_ft_81p6acc.pth"),
    ModelSpec("vim_base_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_middle_cls_token_div2",
              "vim_base", dict(embed_dim=768),
              hf_hub_id=_HUB_BASE, hf_hub_filename="vim_b_midclstok_81p9acc.pth"),
    ModelSpec("vim_tiny_cifar10", "vim_tiny_cifar10",
              dict(embed_dim=192, img_size=32, patch_size=2, stride=2, num_classes=10),
              mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616), crop_pct=1.0,
              weights="vim_tiny_cifar10.safetensors"),
]
_BY_NAME: dict[str, ModelSpec] = {key: s for s in _SPECS for key in (s.name, s.alias)}

OVERRIDES = (
    "depth", "embed_dim", "img_size", "patch_size", "stride", "num_classes", "in_chans",
    "d_state", "drop_rate", "drop_path_rate", "if_divide_out", "d_conv", "expand",
    "dynamic_img_size",
)


def list_specs() -> list[ModelSpec]:
    """Every registered spec, in registration order."""
    return list(_SPECS)


def list_models(aliases: bool = True) -> list[str]:
    """Registered model names (short aliases by default)."""
    return [s.alias if aliases else s.name for s in _SPECS]


def get_spec(name: str) -> ModelSpec:
    """The spec registered under ``name`` (official name or alias)."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ConfigError(
            f"unknown model {name!r}; registered models: {', '.join(list_models())}"
        ) from None


def weights_dir() -> Path:
    """The folder of the bundled weights (``vimstm/weights``)."""
    return Path(__file__).resolve().parent.parent / "weights"


def create_model(
    name: str,
    checkpoint: str | Path | None = None,
    scan_backend: str = "auto",
    pretrained: bool = False,
    use_ema: bool = False,
    trust_checkpoint: bool = False,
    **overrides: Any,
) -> VisionMamba:
    """Build a registered model; optionally load ``checkpoint`` or, with ``pretrained``, its
    released weights: the bundled file, or the official file from the Hugging Face Hub (cached).

    ``overrides`` may change depth, embed_dim, img_size, patch_size, stride, num_classes,
    in_chans, d_state, dynamic_img_size (any input size that tiles the patch grid) and drop
    rates. With another ``img_size`` than the checkpoint's, the
    position embedding is interpolated, keeping the class-token row.
    """
    spec = get_spec(name)
    unknown = sorted(set(overrides) - set(OVERRIDES))
    if unknown:
        raise ConfigError(f"unknown option(s) {unknown} for create_model; allowed: {OVERRIDES}")
    kwargs = {**spec.kwargs, **{k: v for k, v in overrides.items() if v is not None}}
    model = VisionMamba(scan_backend=scan_backend, **kwargs)
    model.default_cfg = {  # type: ignore[assignment]
        "architecture": spec.name, "mean": spec.mean, "std": spec.std, "crop_pct": spec.crop_pct,
        "input_size": (kwargs.get("in_chans", 3), *model.patch_embed.img_size),
        "num_classes": model.num_classes, "interpolation": "bicubic",
    }
    model.vimstm_name = spec.alias  # type: ignore[assignment]
    from vimstm.models.checkpoint import load_checkpoint

    if pretrained and checkpoint is None:
        checkpoint = pretrained_weights(spec)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint, use_ema=use_ema, trust=trust_checkpoint)
    return model


def pretrained_weights(spec: ModelSpec) -> Path:
    """The file ``pretrained=True`` loads for ``spec``: bundled, else fetched from the Hub."""
    if spec.bundled_path is not None:
        return spec.bundled_path
    if spec.hf_hub_id and spec.hf_hub_filename:
        from vimstm.models.hub import download_weights

        return download_weights(spec.hf_hub_id, spec.hf_hub_filename)
    if spec.weights:
        raise ConfigError(f"the bundled weights of {spec.alias!r} ({weights_dir() / spec.weights}) "
                          "are not installed; reinstall vimstm or pass checkpoint=PATH")
    raise ConfigError(f"{spec.alias!r} has no released weights; pass checkpoint=PATH")
