"""Plot the CIFAR-10 reference results: top-1 against GMACs and against H100 images/s.

    python benchmarks/plot_cifar_results.py results/cifar10   # writes cifar10_results.png there
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

COLORS = {"stm": "C3", "tome": "C0", "rmeeto": "C1", "prune-top": "C2", "prune-norm": "C4",
          "random": "C7", "dense": "k"}


def main(folder: str) -> None:
    root = Path(folder)
    rows = json.loads((root / "cifar_results.json").read_text())["rows"]
    ft_file = root / "finetune_1epoch.json"
    ft = json.loads(ft_file.read_text())["runs"] if ft_file.exists() else {}
    main_rows = [r for r in rows if r["label"].count(" ") <= 1]  # dense + method target
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, xlabel in ((axes[0], "gmacs", "GMACs per image (literature convention)"),
                            (axes[1], "images_per_s", "images/s (H100, fp16, batch 256)")):
        for method, color in COLORS.items():
            pts = sorted((r[key], r["top1"]) for r in main_rows if r["method"] == method)
            if not pts:
                continue
            xs, ys = zip(*pts)
            ax.plot(xs, ys, "o-" if method != "dense" else "*", color=color, label=method,
                    markersize=10 if method == "dense" else 5)
            if method in ft and ft[method] and key == "gmacs":
                flops_row = next(r for r in main_rows if r["method"] == method
                                 and r.get("flops") == 0.6)
                ax.plot([flops_row[key]], [ft[method]["val_top1"]], "^", color=color,
                        markersize=8, markerfacecolor="none")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("CIFAR-10 test top-1 (%)")
        ax.grid(alpha=0.3)
    axes[0].set_title("training-free (circles), 1-epoch fine-tune (triangles)", fontsize=9)
    axes[1].set_title("training-free", fontsize=9)
    axes[1].legend(fontsize=8)
    fig.suptitle("vim_tiny_cifar10 (63.7% dense): ratio 0.2 / 0.4 and flops 0.6, default "
                 "schedule", fontsize=10)
    fig.tight_layout()
    fig.savefig(root / "cifar10_results.png", dpi=110)
    print(f"wrote {root / 'cifar10_results.png'}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "results/cifar10")
