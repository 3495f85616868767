"""Vision Mamba architecture, registry and checkpoints."""

from vimstm.models import timm_models
from vimstm.models.checkpoint import atomic_save, load_checkpoint, read_checkpoint
from vimstm.models.registry import create_model, get_spec, list_models, list_specs
from vimstm.models.vim import Block, Mamba, RMSNorm, TokenState, VisionMamba

__all__ = [
    "Block",
    "Mamba",
    "RMSNorm",
    "TokenState",
    "VisionMamba",
    "atomic_save",
    "create_model",
    "get_spec",
    "list_models",
    "list_specs",
    "load_checkpoint",
    "read_checkpoint",
]

timm_models.register()
