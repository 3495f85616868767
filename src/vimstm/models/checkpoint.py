"""Safe checkpoint loading and writing, and the export of a run's weights.

Reads official release files (``{'model': state_dict}``), full training checkpoints
(``model``, ``model_ema``, ``optimizer``, ``args`` as an argparse.Namespace ...), plain state
dicts and safetensors. Pickles are read with ``torch.load(weights_only=True)`` and only
``argparse.Namespace`` allow-listed; anything else needs ``trust=True`` (an explicit opt-in).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from vimstm.errors import CheckpointError
from vimstm.models.vim import resample_pos_embed
from vimstm.runtime import DTYPES

SAFE_GLOBALS: list[Any] = [argparse.Namespace]


def checkpoint_format(path: str | Path) -> str:
    """``"safetensors"``, ``"zip"`` (torch.save), ``"pickle"`` (legacy torch.save) or
    ``"unknown"``, from the file's first bytes (the name's suffix is not trusted)."""
    with open(path, "rb") as f:
        head = f.read(9)
        size = os.fstat(f.fileno()).st_size
    if head[:4] == b"PK\x03\x04":
        return "zip"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:  # pickle PROTO opcode
        return "pickle"
    if len(head) == 9 and head[8:9] == b"{" and 8 < int.from_bytes(head[:8], "little") + 8 <= size:
        return "safetensors"
    return "unknown"


def read_checkpoint(path: str | Path, trust: bool = False) -> Any:
    """Read a checkpoint file without running arbitrary pickled code (unless ``trust``).

    The format comes from the content: a file that is none of safetensors, torch's zip or
    legacy pickle format is reported as not a checkpoint, a damaged one as corrupt; only a
    readable file holding objects outside the allow-list gets the ``--trust-checkpoint`` advice.
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint not found: {p}")
    if p.is_dir():
        raise CheckpointError(f"checkpoint path is a folder, not a file: {p}")
    if p.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {p} is empty (0 bytes): the download or copy failed")
    fmt = checkpoint_format(p)
    corrupt = (f"cannot read checkpoint {p}: it looks truncated or corrupt ({{}}); download or "
               "copy it again")
    if fmt == "unknown":
        with open(p, "rb") as f:
            head = f.read(16)
        raise CheckpointError(f"{p} is not a checkpoint: it is neither a PyTorch file (zip or "
                              f"pickle) nor safetensors (it starts with {head!r}); check the path")
    if fmt == "safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(p))
        except Exception as e:
            raise CheckpointError(corrupt.format(f"safetensors: {_first_line(e)}")) from None
    try:
        if trust:
            return torch.load(p, map_location="cpu", weights_only=False)
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e).split("\n")
        detail = next((m for m in msg if "GLOBAL" in m or "Unsupported global" in m), None)
        if trust or detail is None:  # not an allow-list refusal: the file itself is broken
            raise CheckpointError(corrupt.format(f"UnpicklingError: {msg[0][:160]}")) from None
        raise CheckpointError(
            f"checkpoint {p} holds Python objects that are not allowed by default "
            f"({detail.strip()}). Only load it if you trust its source, with "
            "trust_checkpoint=True (CLI: --trust-checkpoint)"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError,
            IndexError, TypeError, AttributeError, ImportError) as e:
        raise CheckpointError(corrupt.format(f"{type(e).__name__}: {_first_line(e)}")) from None


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0][:160] if str(e).strip() else ""


def extract_state_dict(obj: Any, use_ema: bool = False) -> dict[str, Tensor]:
    """The model weights inside whatever a checkpoint file holds."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"checkpoint holds a {type(obj).__name__}, not a state dict")
    if use_ema:
        for key in ("model_ema", "ema", "state_dict_ema"):
            if key in obj and isinstance(obj[key], Mapping):
                sd = obj[key]
                break
        else:
            raise CheckpointError(
                "use_ema was asked for but the checkpoint has no EMA weights "
                f"(keys: {sorted(obj)[:10]})"
            )
    else:
        sd = obj
        for key in ("model", "state_dict", "module"):
            if key in obj and isinstance(obj[key], Mapping):
                sd = obj[key]
                break
    tensors = {k: v for k, v in sd.items() if isinstance(v, Tensor)}
    if not tensors:
        raise CheckpointError("checkpoint holds no tensors: is it a model checkpoint?")
    out = {}
    for k, v in tensors.items():
        for prefix in ("module.", "_orig_mod."):
            if k.startswith(prefix):
                k = k[len(prefix) :]
        out[k] = v
    return out


def describe_state_dict(sd: Mapping[str, Tensor]) -> str:
    """Which registered model a state dict fits, from its shapes (for error messages)."""
    from vimstm.models.registry import list_specs

    try:
        dim = sd["patch_embed.proj.weight"].shape[0]
        patch = tuple(sd["patch_embed.proj.weight"].shape[-2:])
        depth = len({k.split(".")[1] for k in sd if k.startswith("layers.")})
        tokens = sd["pos_embed"].shape[1]
        classes = sd["head.weight"].shape[0] if "head.weight" in sd else 0
        d_state = sd["layers.0.mixer.A_log"].shape[1]
    except (KeyError, IndexError):
        return "not a Vision Mamba checkpoint (no patch_embed / pos_embed / layers keys)"
    fits = []
    for s in list_specs():
        kw = s.kwargs
        if kw.get("embed_dim") == dim and depth == kw.get("depth", 24):
            fits.append(s.alias)
    guess = f"; it fits {' or '.join(fits)}" if fits else ""
    return (
        f"embed_dim {dim}, depth {depth}, patch {patch[0]}, {tokens} tokens "
        f"(with the class token), d_state {d_state}, {classes} classes{guess}"
    )


def interpolate_pos_embed(pos: Tensor, new_tokens: int, new_grid: tuple[int, int]) -> Tensor:
    """Resize a middle-class-token position embedding to ``new_grid``, keeping the class row.

    The class-token row sits at index M//2 of the M+1 rows; it is kept as it is, the M patch
    rows are resized bicubically as a square grid, and the class row is re-inserted at M'//2.
    (The official fine-tuning code keeps row 0, which is a patch row for middle-class models.)
    """
    m_old = pos.shape[1] - 1
    side = round(m_old**0.5)
    if side * side != m_old:
        raise CheckpointError(
            f"cannot interpolate a position embedding of {m_old} patches: not square"
        )
    out = resample_pos_embed(pos, (side, side), new_grid)
    assert out.shape[1] == new_tokens
    return out


def load_state_dict_checked(model: nn.Module, sd: Mapping[str, Tensor], source: str = "") -> None:
    """``load_state_dict`` with one clear error naming disagreeing keys and the fitting model."""
    sd = dict(sd)
    own = model.state_dict()
    if "pos_embed" in sd and "pos_embed" in own and sd["pos_embed"].shape != own["pos_embed"].shape:
        same_dim = sd["pos_embed"].shape[-1] == own["pos_embed"].shape[-1]
        if same_dim and hasattr(model, "patch_embed"):
            sd["pos_embed"] = interpolate_pos_embed(
                sd["pos_embed"], own["pos_embed"].shape[1], model.patch_embed.grid_size
            )
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shapes = sorted(
        f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(sd) & set(own)
        if sd[k].shape != own[k].shape
    )
    if missing or unexpected or shapes:
        name = getattr(model, "vimstm_name", type(model).__name__)
        parts = [f"checkpoint{(' ' + source) if source else ''} does not fit model {name}."]
        if shapes:
            parts.append(f"{len(shapes)} shape mismatch(es), e.g. " + "; ".join(shapes[:3]))
        if missing:
            parts.append(f"{len(missing)} missing key(s), e.g. {missing[:3]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[:3]}")
        parts.append(f"The file holds: {describe_state_dict(sd)}.")
        raise CheckpointError(" ".join(parts))
    model.load_state_dict(sd, strict=True)


def load_checkpoint(
    model: nn.Module, path: str | Path, use_ema: bool = False, trust: bool = False
) -> nn.Module:
    """Load weights from ``path`` into ``model`` (release, training, plain or safetensors)."""
    sd = extract_state_dict(read_checkpoint(path, trust=trust), use_ema=use_ema)
    load_state_dict_checked(model, sd, source=str(path))
    return model


def atomic_write(path: str | Path, data: str | bytes | Callable[[str], Any]) -> Path:
    """Write ``path`` all at once: into a temporary file beside it, synced, then renamed over it.

    A reader (or a run killed mid-write) sees the old file or the new one, never a part.

    Args:
        path: the file to write; its folder is created.
        data: the content (``str`` is written as UTF-8), or a function that writes the file
            whose name it is given (``torch.save``, safetensors' ``save_file`` ...).
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    os.close(fd)
    try:
        if callable(data):
            data(tmp)
        else:
            with open(tmp, "wb") as f:
                f.write(data.encode() if isinstance(data, str) else data)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, p)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return p


def safetensors_metadata(path: str | Path) -> dict[str, str]:
    """The string metadata of a safetensors file (empty when it has none)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def atomic_save(obj: Any, path: str | Path) -> Path:
    """:func:`atomic_write` of ``obj`` with torch.save, or as safetensors for that suffix."""
    if Path(path).suffix == ".safetensors":
        from safetensors.torch import save_file

        tensors = {k: v.contiguous() for k, v in obj.items()}
        return atomic_write(path, lambda tmp: save_file(tensors, tmp))
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


# Kept in float32 on export: the SSM's decay and step-size parameters (tiny, precision-sensitive).
FP32_SUFFIXES = ("A_log", "A_b_log", ".D", ".D_b", "dt_proj.bias", "dt_proj_b.bias")


def export_weights(checkpoint: str | Path, output: str | Path, use_ema: bool | None = None,
                   dtype: str = "fp16", trust: bool = False) -> Path:
    """Write a training run's weights as safetensors in ``dtype`` (SSM decay parameters: fp32).

    The file's metadata holds the class names, the model name, the merge settings and the
    epoch, when the checkpoint has them.

    Args:
        checkpoint: a training checkpoint (``OUTPUT/last.pth``) or any file
            :func:`read_checkpoint` reads.
        output: the ``.safetensors`` file to write (atomically).
        use_ema: the EMA weights; ``None`` takes them when the checkpoint has them.
        dtype: ``fp16``, ``bf16`` or ``fp32`` for the floating-point tensors.
        trust: allow pickled Python objects in ``checkpoint`` (see :func:`read_checkpoint`).
    """
    from safetensors.torch import save_file

    obj = read_checkpoint(checkpoint, trust=trust)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{checkpoint} does not hold a state dict")
    has_ema = isinstance(obj.get("model_ema"), dict) and bool(obj["model_ema"])
    if use_ema is None:
        use_ema = has_ema
    if use_ema and not has_ema:
        raise CheckpointError(f"{checkpoint} has no EMA weights: export with --weights raw")
    sd = extract_state_dict(obj, use_ema=use_ema)
    cast = DTYPES[dtype]
    tensors = {}
    for k, v in sd.items():
        keep = not v.is_floating_point() or k.endswith(FP32_SUFFIXES)
        tensors[k] = (v if keep else v.to(cast)).contiguous()
    meta = {"format": "pt", "weights": "ema" if use_ema else "raw", "dtype": dtype}
    args = obj.get("args") or {}
    args = vars(args) if isinstance(args, argparse.Namespace) else args
    if obj.get("classes"):
        meta["classes"] = json.dumps(list(obj["classes"]))
    for key in ("model", "method", "ratio", "reduction", "r", "flops", "schedule", "merge_opt"):
        if args.get(key) not in (None, []):
            meta[key] = json.dumps(args[key]) if isinstance(args[key], list) else str(args[key])
    if "epoch" in obj:
        meta["epoch"] = str(int(obj["epoch"]) + 1)
    return atomic_write(output, lambda tmp: save_file(tensors, tmp, metadata=meta))
