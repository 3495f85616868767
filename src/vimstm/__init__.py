"""vimstm: Vision Mamba with Sequential Token Merging (STM).

>>> import vimstm
>>> model = vimstm.create_model("vim_tiny")          # or checkpoint="vim_t_midclstok_76p1acc.pth"
>>> vimstm.patch(model, method="stm", ratio=0.2)     # merge 20% of the tokens
"""

from vimstm.errors import CheckpointError, ConfigError, DataError, VimstmError
from vimstm.merge import patch, unpatch
from vimstm.models import VisionMamba, create_model, list_models, load_checkpoint

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "VimstmError",
    "VisionMamba",
    "__version__",
    "create_model",
    "list_models",
    "load_checkpoint",
    "patch",
    "unpatch",
]
