"""timm entry points for every registered model, so ``timm.create_model("vim_tiny")`` works.

timm's ``register_model`` lists each entry point in its module's ``__all__``; the entry points
are attributes of this module, so that list is true.
"""

from __future__ import annotations

from typing import Any

from vimstm.models.registry import create_model, list_specs
from vimstm.models.vim import VisionMamba

__all__: list[str] = []  # the entry-point names, added by timm.register_model


def _entry_point(alias: str, key: str) -> Any:
    def fn(pretrained: bool = False, **kwargs: Any) -> VisionMamba:
        for k in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
            kwargs.pop(k, None)
        return create_model(alias, pretrained=pretrained, **kwargs)

    fn.__name__ = fn.__qualname__ = key
    fn.__module__ = __name__
    fn.__doc__ = f"vimstm model {alias} (see :func:`vimstm.models.registry.create_model`)."
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
            fn = _entry_point(spec.alias, key)
            globals()[key] = fn
            register_model(fn)
