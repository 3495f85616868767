"""``vimstm viz``: draw the merged token groups over an image, as ToMe's visualisation does.

The model runs once with ``trace_source=True``; every final token's ``source`` row marks the
patches it holds. Each group is painted with its mean colour and outlined, so merged regions
look like superpixels. The class token's place (between patch ``M//2 - 1`` and ``M//2`` in
scan order) is marked with a star, and the patches of the protected window (for methods with
``protect``: the final tokens within ``w`` of the class token) are outlined in red.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vimstm.errors import ConfigError, DataError
from vimstm.models.checkpoint import atomic_write


def group_map(source: Tensor, grid: tuple[int, int], cls_orig: int) -> np.ndarray:
    """(gh, gw) array: the final token index holding each patch (-1: pruned)."""
    src = source[0]  # (tokens, original tokens incl. class token)
    keep = torch.ones(src.shape[1], dtype=torch.bool)
    keep[cls_orig] = False
    patches = src[:, keep]  # (tokens, M)
    held = patches.sum(0) > 0
    owner = torch.where(held, patches.argmax(0), torch.full_like(held, -1, dtype=torch.long))
    return owner.view(*grid).cpu().numpy()


MIN_PATCH_PIXELS = 12  # small images are enlarged so that 1-pixel outlines leave patches visible


def upscale(image: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """``image`` enlarged (nearest neighbour, whole factor) until a patch spans at least
    MIN_PATCH_PIXELS pixels: a 32x32 CIFAR image with 2-pixel patches is drawn at 192x192."""
    h, w, _ = image.shape
    patch = min(h / grid[0], w / grid[1])
    k = max(1, int(np.ceil(MIN_PATCH_PIXELS / patch)))
    return image.repeat(k, axis=0).repeat(k, axis=1) if k > 1 else image


def render(image: np.ndarray, owner: np.ndarray, protected: set[int], cls_patch: int) -> Any:
    """A matplotlib figure of the groups over ``image`` (H, W, 3 in [0, 1])."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    image = upscale(image, owner.shape)
    h, w, _ = image.shape
    gh, gw = owner.shape
    ph, pw = h / gh, w / gw
    # per-pixel owner map
    rows = np.minimum((np.arange(h) / ph).astype(int), gh - 1)
    cols = np.minimum((np.arange(w) / pw).astype(int), gw - 1)
    pix = owner[rows][:, cols]
    out = image.copy()
    for g in np.unique(pix):
        m = pix == g
        out[m] = image[m].mean(0) if g >= 0 else 0.0  # pruned patches are black
    edge = np.zeros((h, w), dtype=bool)
    edge[:-1] |= pix[:-1] != pix[1:]
    edge[:, :-1] |= pix[:, :-1] != pix[:, 1:]
    out[edge] = 1.0
    fig, axes = plt.subplots(1, 2, figsize=(8, 4.3))
    axes[0].imshow(image)
    axes[0].set_title("input")
    axes[1].imshow(out)
    n_groups = len(np.unique(owner[owner >= 0]))
    axes[1].set_title(f"{n_groups} tokens (+ class token)")
    for g in protected:
        for r, c in zip(*np.nonzero(owner == g)):
            axes[1].add_patch(plt.Rectangle((c * pw - 0.5, r * ph - 0.5), pw, ph, fill=False,
                                            edgecolor="red", linewidth=1.2))
    r, c = divmod(cls_patch, gw)
    axes[1].plot([c * pw - 0.5], [r * ph + ph / 2 - 0.5], marker="*", color="yellow", ms=14,
                 markeredgecolor="black")
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    return fig


def visualize(
    model: Any, image_path: str | Path, out: str | Path, method: str = "stm",
    ratio: float | None = 0.5, r: Any = None, **options: Any,
) -> dict[str, Any]:
    """Patch ``model``, run it on one image, write the PNG; return what was drawn."""
    from PIL import Image, UnidentifiedImageError

    from vimstm.data import model_transform
    from vimstm.merge import patch, unpatch

    path = Path(image_path)
    if not path.is_file():
        raise DataError(f"image {path} does not exist")
    try:
        img = Image.open(path).convert("RGB")
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"cannot read image {path}: {e}") from None
    x = model_transform(model)(img).unsqueeze(0)
    cfg = getattr(model, "default_cfg", {}) or {}
    mean = torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406))).view(3, 1, 1)
    std = torch.tensor(cfg.get("std", (0.229, 0.224, 0.225))).view(3, 1, 1)
    shown = (x[0] * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()
    if r is not None or options.get("flops") is not None:
        ratio = None  # the schedule is given another way
    patch(model, method=method, ratio=ratio, r=r, trace_source=True, **options)
    try:
        dev = next(model.parameters()).device
        with torch.no_grad():
            logits = model(x.to(dev))
        info = dict(model.merge_info)
        w = int(model.merger.options.get("protect", 0))
    finally:
        unpatch(model)
    grid = model.patch_embed.grid_size
    m = model.patch_embed.num_patches
    cls_orig = m // 2
    source = info["source"].cpu()
    c = info["cls_index_per_block"][-1]
    t = source.shape[1]
    protected = {i for i in range(c - w, c + w + 1) if 0 <= i < t and i != c}
    owner = group_map(source, grid, cls_orig)
    fig = render(shown, owner, protected, cls_orig)
    out = atomic_write(out, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    import matplotlib.pyplot as plt

    plt.close(fig)
    return {"out": str(out), "tokens": t, "tokens_per_block": info["tokens_per_block"],
            "cls_index": c, "top1": int(logits.argmax(-1).item())}


def default_out(image: str | Path, method: str) -> Path:
    """``$VIMSTM_CACHE/viz/<image name>-<method>.png`` (never the working directory)."""
    from vimstm.data import cache_dir

    return cache_dir() / "viz" / f"{Path(image).stem}-{method}.png"


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("viz", help="draw the merged token groups over an image")
    p.add_argument("--image", required=True, help="image file")
    from vimstm.engine.model_args import add_model_args

    add_model_args(p, weights="required")
    p.add_argument("--out", default=None,
                   help="output PNG (default: $VIMSTM_CACHE/viz/IMAGE-METHOD.png, "
                        "VIMSTM_CACHE defaulting to ~/.cache/vimstm)")
    from vimstm.merge import add_merge_args

    add_merge_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vimstm.engine.model_args import model_from_args
    from vimstm.engine.paths import check_output_file
    from vimstm.merge import is_dense, parse_merge_opts, parse_r_arg

    method = args.method or "stm"
    if is_dense(method):
        raise ConfigError("viz needs a merging method (--method stm, tome, ...)")
    ratio = args.ratio
    if ratio is None and args.r is None and args.flops is None:
        ratio = 0.5
    out = check_output_file(args.out or default_out(args.image, method), "--out")
    model = model_from_args(args, weights="required").eval()
    opts = parse_merge_opts(args.merge_opt)
    if args.flops is not None:
        opts["flops"] = args.flops
    res = visualize(model, args.image, out, method=method, ratio=ratio,
                    r=parse_r_arg(args.r), **opts)
    print(f"wrote {res['out']}: {res['tokens']} tokens in the last block "
          f"(per block {res['tokens_per_block']}), class token at {res['cls_index']}")
    return 0
