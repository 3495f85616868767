"""Official weights from the Hugging Face Hub, through ``huggingface_hub`` (as timm fetches).

``hf_hub_download`` keeps its own cache (``HF_HOME`` / ``HF_HUB_CACHE``) and honours
``HF_HUB_OFFLINE=1``; a file fetched once loads from the cache afterwards, with no network.
"""

from __future__ import annotations

from pathlib import Path

from vimstm.errors import CheckpointError, ConfigError


def hub_url(repo_id: str, filename: str) -> str:
    """The browser/``curl`` address of a file in a Hub model repository."""
    return f"https://huggingface.co/{repo_id}/resolve/main/{filename}"


def download_weights(repo_id: str, filename: str) -> Path:
    """The local path of ``filename`` from ``repo_id``: from the cache, else downloaded.

    Raises one-line errors that name the repository, the file and how to pass a local copy.
    """
    instead = (f"download {hub_url(repo_id, filename)} where you have network and pass it as "
               "checkpoint=PATH (CLI: --checkpoint PATH)")
    try:
        from huggingface_hub import constants, hf_hub_download
    except ImportError:
        raise ConfigError(f"fetching {filename} from the Hugging Face Hub needs huggingface_hub "
                          f"(pip install huggingface_hub); or {instead}") from None
    import logging

    hub_log = logging.getLogger("huggingface_hub")
    level = hub_log.level
    hub_log.setLevel(logging.ERROR)  # its retry warnings would add lines to the one error below
    try:
        return Path(hf_hub_download(repo_id=repo_id, filename=filename))
    except Exception as e:  # offline, no route to the Hub, file or repository missing
        text = str(e).strip()
        why = text.splitlines()[0].split(". ")[0][:200] if text else type(e).__name__
        where = ("HF_HUB_OFFLINE is set and the file is not in the cache "
                 f"{constants.HF_HUB_CACHE}" if constants.HF_HUB_OFFLINE
                 else f"{type(e).__name__}: {why}")
        raise CheckpointError(f"could not get {filename} from the Hugging Face Hub repository "
                              f"{repo_id} ({where}); {instead}") from None
    finally:
        hub_log.setLevel(level)
