"""Closed-form FLOPs (multiply-accumulates) of Vision Mamba, dense or with token merging.

Two conventions, both in GMACs per image (papers call these "GFLOPs"):

``gmacs_literature`` reproduces the numbers of the Vim/R-MeeTo/ToP-ViM papers (ViM-Ti 1.45,
S 5.08, B 18.87 at 224). It is the count of R-MeeTo's ``calculate_flop_inference`` (read in
NUS-HPC-AI-Lab/R-MeeTo, ``image_task/models/vim``; it follows the fvcore-style handler of
state-spaces/mamba issue 110), which counts **one** scan direction. Per block with L tokens,
model width C, d_inner = 2C, state N, dt_rank R, conv width K:

* in_proj ``L·C·2d_inner`` and out_proj ``L·d_inner·C``;
* causal conv1d ``(L+K-1)·d_inner·K``; x_proj ``L·d_inner·(R+2N)``; dt_proj ``L·R·d_inner``;
* selective scan ``9·L·d_inner·N`` plus ``L·d_inner`` for D and ``L·d_inner`` for the z gate;

plus the patch embedding ``(M+1)·C·3p²`` (counted over the M patches and the class token, as
R-MeeTo) and the head ``C·classes``. Norms, residual adds, SiLU and softplus are not counted.

``gmacs_full`` adds what the model really runs on top of that: the backward direction's conv1d,
x_proj, dt_proj and selective scan (the bimamba-v2 mixer runs both), i.e. the literature count
plus one more copy of those four terms per block.

Both include ``merge_gmacs``: the cost of the merging steps (similarity, weights and applying
the plan to hidden_states and residual; :meth:`Merger.merge_macs`), which is also reported
alone. Token counts per block come from the merger's schedule, without running the model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class FlopsReport:
    gmacs_literature: float
    gmacs_full: float
    merge_gmacs: float
    tokens_per_block: list[int]
    dense_gmacs_literature: float
    dense_gmacs_full: float
    per_block_gmacs_full: list[float] = field(default_factory=list)
    num_patches: int = 0

    @property
    def reduction_literature(self) -> float:
        """Fraction of the dense literature GMACs saved."""
        return 1.0 - self.gmacs_literature / self.dense_gmacs_literature

    @property
    def reduction_full(self) -> float:
        return 1.0 - self.gmacs_full / self.dense_gmacs_full

    @property
    def mean_token_reduction(self) -> float:
        """The papers' reduction ratio: mean over blocks of the share of patch tokens removed
        before the block runs (:func:`vimstm.merge.schedule.mean_token_reduction`)."""
        m, t = self.num_patches, self.tokens_per_block
        return sum(m + 1 - n for n in t) / (len(t) * m)

    @property
    def token_ratio(self) -> float:
        """vimstm's ``ratio``: the share of patch tokens gone by the last block."""
        return (self.num_patches + 1 - self.tokens_per_block[-1]) / self.num_patches

    @property
    def tokens_last_block(self) -> int:
        """Tokens entering the last block (class token included)."""
        return self.tokens_per_block[-1]

    def operating_point(self) -> dict[str, Any]:
        """Where this schedule sits on every paper's axis (see :func:`describe`)."""
        return {
            "mean_token_reduction": self.mean_token_reduction,
            "ratio": self.token_ratio,
            "tokens_last_block": self.tokens_last_block,
            "gmacs_literature": self.gmacs_literature,
            "gmacs_full": self.gmacs_full,
        }

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["reduction_literature"] = self.reduction_literature
        d["reduction_full"] = self.reduction_full
        d.update(self.operating_point())
        return d


def operating_point(model: Any) -> dict[str, Any]:
    """Mean token reduction, ratio, tokens in the last block and GMACs (both conventions)."""
    return count_flops(model).operating_point()


def describe(point: dict[str, Any]) -> str:
    """One line of :func:`operating_point`'s numbers, each named by its definition."""
    return (f"mean token reduction {point['mean_token_reduction']:.3f}  ratio "
            f"{point['ratio']:.3f}  tokens in the last block {point['tokens_last_block']}  "
            f"GMACs {point['gmacs_literature']:.3f} (literature) / {point['gmacs_full']:.3f} "
            "(both directions)")


def model_dims(model: Any) -> dict[str, int]:
    """The sizes the FLOPs formulas read (C, di, N, R, K, M, in_chans, p2, classes)."""
    mixer = model.layers[0].mixer
    p = model.patch_embed.patch_size
    return {
        "C": model.embed_dim, "di": mixer.d_inner, "N": mixer.d_state, "R": mixer.dt_rank,
        "K": mixer.d_conv, "M": model.patch_embed.num_patches,
        "in_chans": model.patch_embed.proj.in_channels, "p2": p[0] * p[1],
        "classes": model.num_classes,
    }


def block_macs(d: dict[str, int], length: int, both_directions: bool) -> float:
    """MACs of one Vim block over ``length`` tokens (see the module docstring)."""
    proj = length * d["C"] * 2 * d["di"] + length * d["di"] * d["C"]
    direction = (
        (length + d["K"] - 1) * d["di"] * d["K"]
        + length * d["di"] * (d["R"] + 2 * d["N"])
        + length * d["R"] * d["di"]
        + 9 * length * d["di"] * d["N"]
        + 2 * length * d["di"]
    )
    return float(proj + direction * (2 if both_directions else 1))


def count_flops(model: Any, merger: Any = None) -> FlopsReport:
    """FLOPs of ``model`` (patched or not) at its image size; ``merger`` overrides model.merger."""
    d = model_dims(model)
    merger = merger if merger is not None else getattr(model, "merger", None)
    t0 = d["M"] + 1
    c0 = d["M"] // 2
    depth = len(model.layers)
    if merger is not None:
        tokens, _ = merger.simulate(t0, c0)
        tokens = tokens[:depth]
        schedule = list(merger.schedule) + [0] * depth
    else:
        tokens, schedule = [t0] * depth, [0] * depth
    stem = t0 * d["C"] * d["in_chans"] * d["p2"] + d["C"] * max(d["classes"], 0)
    lit = stem + sum(block_macs(d, n, False) for n in tokens)
    per_full = [block_macs(d, n, True) for n in tokens]
    full = stem + sum(per_full)
    merge = 0.0
    if merger is not None:
        if getattr(merger, "pre", 0):
            merge += merger.merge_macs(t0, merger.pre, d["C"], d["N"], d["di"])
        for i in range(depth - 1):
            if schedule[i] > 0:
                merge += merger.merge_macs(tokens[i], schedule[i], d["C"], d["N"], d["di"])
    dense_lit = stem + depth * block_macs(d, t0, False)
    dense_full = stem + depth * block_macs(d, t0, True)
    g = 1e-9
    return FlopsReport(
        gmacs_literature=(lit + merge) * g,
        gmacs_full=(full + merge) * g,
        merge_gmacs=merge * g,
        tokens_per_block=list(tokens),
        dense_gmacs_literature=dense_lit * g,
        dense_gmacs_full=dense_full * g,
        per_block_gmacs_full=[v * g for v in per_full],
        num_patches=d["M"],
    )
