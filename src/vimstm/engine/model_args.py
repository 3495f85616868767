"""One path from command-line flags to a model, shared by eval, bench, sweep, viz, train and
finetune: the same flags, checked the same way, before any work starts.

Weights: ``--checkpoint FILE`` (official release files, training checkpoints, state dicts,
safetensors), or ``--pretrained`` (the model's released weights: bundled in the package, or the
official file fetched from the Hugging Face Hub into its cache); a model with bundled weights
uses them when neither is given. Commands that need trained weights refuse a model that would
otherwise run on random weights.
"""

from __future__ import annotations

import argparse
from typing import Any, Literal

from vimstm.errors import ConfigError
from vimstm.ops.dispatch import BACKENDS

ARCH_OPTIONS = ("depth", "embed_dim", "num_classes", "patch_size", "stride", "d_state")
Weights = Literal["required", "optional", "initial", "none"]


def add_model_args(p: argparse.ArgumentParser, weights: Weights = "required",
                   model_default: str | None = None) -> None:
    """``--model --checkpoint --pretrained --trust-checkpoint --use-ema --scan-backend
    --img-size`` and the architecture overrides; ``weights`` as in :func:`model_from_args`."""
    g = p.add_argument_group("model")
    g.add_argument("--model", required=model_default is None, default=model_default,
                   help="registered model name or alias (see `vimstm models`)")
    if weights != "none":
        note = {"required": "", "optional": " (speed does not depend on them)",
                "initial": "; training starts from these weights (default: random)"}[weights]
        g.add_argument("--checkpoint", default=None,
                       help="weights file: an official release .pth, a training checkpoint, a "
                            f"state dict or .safetensors{note}")
        g.add_argument("--pretrained", action="store_true",
                       help="the model's released weights: bundled, or the official file from "
                            "the Hugging Face Hub (cached; HF_HUB_OFFLINE=1 uses the cache only)")
        g.add_argument("--use-ema", action="store_true",
                       help="load the EMA weights of a training checkpoint")
    g.add_argument("--trust-checkpoint", action="store_true",
                   help="allow pickled Python objects in checkpoints (only for files you trust)")
    g.add_argument("--scan-backend", default="auto", choices=BACKENDS,
                   help="selective-scan implementation (default: triton on CUDA, else the "
                        "PyTorch reference)")
    g.add_argument("--img-size", type=int, default=None,
                   help="input size (default: the model's; another size interpolates the "
                        "position embedding)")
    arch = p.add_argument_group("architecture overrides (for checkpoints of non-registered shapes)")
    for name in ARCH_OPTIONS:
        arch.add_argument("--" + name.replace("_", "-"), type=int, default=None)


def arch_overrides(args: argparse.Namespace) -> dict[str, int]:
    """The architecture overrides given on the command line, and ``img_size``."""
    out = {k: v for k in (*ARCH_OPTIONS, "img_size") if (v := getattr(args, k, None)) is not None}
    bad = {k: v for k, v in out.items() if v < 1}
    if bad:
        k, v = next(iter(bad.items()))
        raise ConfigError(f"--{k.replace('_', '-')} must be at least 1, got {v}")
    return out


def weights_source(args: argparse.Namespace, weights: Weights = "required") -> dict[str, Any]:
    """``checkpoint=`` / ``pretrained=`` for :func:`vimstm.create_model`, or a one-line error."""
    from vimstm.models.registry import get_spec

    spec = get_spec(args.model)
    checkpoint = getattr(args, "checkpoint", None)
    pretrained = bool(getattr(args, "pretrained", False))
    if checkpoint is not None and pretrained:
        raise ConfigError("--checkpoint and --pretrained both name weights; give one of them")
    if (checkpoint is None and not pretrained and spec.bundled_path is not None
            and weights != "initial"):
        pretrained = True  # the bundled weights are the model's default (not for training)
    if weights == "required" and checkpoint is None and not pretrained:
        if spec.hf_hub_id:
            hint = (f"pass --pretrained (the official {spec.hf_hub_filename} from the Hugging "
                    f"Face Hub repository {spec.hf_hub_id}) or --checkpoint FILE")
        else:
            hint = "pass --checkpoint FILE (a trained model)"
        raise ConfigError(f"model {args.model!r} has no bundled weights and none were given, so "
                          f"it would run on random weights; {hint}")
    return {"checkpoint": checkpoint, "pretrained": pretrained,
            "use_ema": bool(getattr(args, "use_ema", False)),
            "trust_checkpoint": bool(getattr(args, "trust_checkpoint", False))}


def model_from_args(args: argparse.Namespace, weights: Weights = "required",
                    **overrides: Any) -> Any:
    """Build the model the flags describe (see :func:`add_model_args`).

    ``weights``: ``"required"`` refuses to run on random weights, ``"optional"`` allows them
    (speed only), ``"initial"`` loads weights only when they are named (training: from scratch
    by default), ``"none"`` builds an untrained model. ``overrides``
    add to the command line's (e.g. ``num_classes`` from the training data).
    """
    from vimstm.models.registry import create_model

    source = weights_source(args, weights) if weights != "none" else {}
    return create_model(args.model, scan_backend=args.scan_backend,
                        **source, **{**arch_overrides(args), **overrides})
