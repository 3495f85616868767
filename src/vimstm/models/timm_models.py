"""timm entry points for every registered model, so ``timm.create_model("vim_tiny")`` works.

timm's ``register_model`` lists each entry point in its module's ``__all__`` and reads its
pretrained configuration from the module's ``default_cfgs``: the official weights' Hub repository
and file (``hf_hub_id``/``hf_hub_filename``), mean, std, crop and input size. With
``pretrained=True`` an entry point loads the file that configuration names (after timm's
``pretrained_cfg_overlay``: ``file=`` a local path, or another ``hf_hub_id``), through
``huggingface_hub`` and its cache as timm does; the bundled CIFAR-10 weights load from the package.
"""

from __future__ import annotations

from typing import Any

from vimstm.models.registry import ModelSpec, create_model, list_specs
from vimstm.models.vim import VisionMamba

__all__: list[str] = []  # the entry-point names, added by timm.register_model
default_cfgs: dict[str, dict[str, Any]] = {}  # timm's pretrained configurations, by name


def _cfg(spec: ModelSpec) -> dict[str, Any]:
    img = spec.kwargs.get("img_size", 224)
    return {
        "hf_hub_id": spec.hf_hub_id, "hf_hub_filename": spec.hf_hub_filename,
        "num_classes": spec.kwargs.get("num_classes", 1000), "input_size": (3, img, img),
        "mean": spec.mean, "std": spec.std, "crop_pct": spec.crop_pct,
        "interpolation": "bicubic", "first_conv": "patch_embed.proj", "classifier": "head",
        "license": "apache-2.0", "paper_ids": "arXiv:2401.09417",
        "origin_url": "https://github.com/hustvl/Vim",
    }


def _entry_point(spec: ModelSpec, key: str) -> Any:
    def fn(pretrained: bool = False, **kwargs: Any) -> VisionMamba:
        cfg_arg = kwargs.pop("pretrained_cfg", None)
        overlay = kwargs.pop("pretrained_cfg_overlay", None)
        kwargs.pop("cache_dir", None)
        checkpoint = None
        if pretrained:
            from timm.models import resolve_pretrained_cfg

            cfg = resolve_pretrained_cfg(key, pretrained_cfg=cfg_arg,
                                         pretrained_cfg_overlay=overlay)
            if cfg.file:
                checkpoint = cfg.file
            elif spec.bundled_path is None and cfg.hf_hub_id and cfg.hf_hub_filename:
                from vimstm.models.hub import download_weights

                checkpoint = str(download_weights(cfg.hf_hub_id, cfg.hf_hub_filename))
        return create_model(spec.alias, checkpoint=checkpoint, pretrained=pretrained, **kwargs)

    fn.__name__ = fn.__qualname__ = key
    fn.__module__ = __name__
    fn.__doc__ = f"vimstm model {spec.alias} (see :func:`vimstm.models.registry.create_model`)."
    return fn


def register() -> None:
    """Register every official name and alias with timm; names timm already has are kept."""
    try:
        from timm.models import is_model, register_model
    except ImportError:  # timm is optional for inference
        return
    for spec in list_specs():
        for key in sorted({spec.name, spec.alias}):
            if is_model(key):
                continue
            default_cfgs[key] = _cfg(spec)
            fn = _entry_point(spec, key)
            globals()[key] = fn
            register_model(fn)
