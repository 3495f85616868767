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


_SPECS: list[ModelSpec] = [
    ModelSpec(f"vim_tiny_patch16_224_{_SUFFIX}", "vim_tiny", dict(embed_dim=192)),
    ModelSpec(f"vim_tiny_patch16_stride8_224_{_SUFFIX}", "vim_tiny_stride8",
              dict(embed_dim=192, stride=8)),
    ModelSpec(f"vim_small_patch16_224_{_SUFFIX}", "vim_small", dict(embed_dim=384)),
    ModelSpec(f"vim_small_patch16_stride8_224_{_SUFFIX}", "vim_small_stride8",
              dict(embed_dim=384, stride=8)),
    ModelSpec("vim_base_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_middle_cls_token_div2",
              "vim_base", dict(embed_dim=768)),
    ModelSpec("vim_tiny_cifar10", "vim_tiny_cifar10",
              dict(embed_dim=192, img_size=32, patch_size=2, stride=2, num_classes=10),
              mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616), crop_pct=1.0,
              weights="vim_tiny_cifar10.safetensors"),
]
_BY_NAME: dict[str, ModelSpec] = {key: s for s in _SPECS for key in (s.name, s.alias)}

OVERRIDES = (
    "depth", "embed_dim", "img_size", "patch_size", "stride", "num_classes", "in_chans",
    "d_state", "drop_rate", "drop_path_rate", "if_divide_out", "d_conv", "expand",
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
    """Build a registered model; optionally load ``checkpoint`` or the bundled weights.

    ``overrides`` may change depth, embed_dim, img_size, patch_size, stride, num_classes,
    in_chans, d_state (and drop rates). With another ``img_size`` than the checkpoint's, the
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
        if spec.weights is None or not (weights_dir() / spec.weights).exists():
            raise ConfigError(
                f"no bundled weights for {name!r}; pass checkpoint=PATH (official release files "
                "load as they are)"
            )
        checkpoint = weights_dir() / spec.weights
    if checkpoint is not None:
        load_checkpoint(model, checkpoint, use_ema=use_ema, trust=trust_checkpoint)
    return model
