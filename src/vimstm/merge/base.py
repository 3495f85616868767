"""The merger protocol that :class:`~vimstm.models.vim.VisionMamba` calls between blocks.

A merger decides, for every sample, where each token goes (``dest``: its slot in the shorter
sequence, or a trash slot when it is dropped) and with which weight (``wn``: weights that sum
to one inside each group). :func:`apply_merge` then forms every new token as the weighted sum
of its group, with one ``scatter_add`` into a fresh buffer per tensor, so the same plan merges
hidden_states, the fp32 residual, the token sizes and the traced source identically, stays
differentiable, and costs no host synchronisation (all counts are known from the schedule).

A step's plan is a :data:`MergePlan`, which applies itself. Methods whose groups are at most
two tokens and keep the token order (STM, random, pruning) return a :class:`PairPlan`: per new
slot, its first and last token and the last one's weight, merged by two row gathers and one
``lerp`` per tensor (contiguous outputs, no atomics). Bipartite merging (groups of any size)
returns a :class:`GroupPlan`, merged by ``scatter_add``. Which kernels run (Triton or PyTorch)
is decided by :mod:`vimstm.ops.dispatch` from the model's scan backend.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor

from vimstm.errors import ConfigError
from vimstm.ops import dispatch
from vimstm.ops.merge_ref import apply_pairs


def apply_merge(x: Tensor, dest: Tensor, wn: Tensor | None, new_len: int, trash: bool) -> Tensor:
    """``out[b, dest[b, t]] += wn[b, t] * x[b, t]``; slot ``new_len`` (trash) is cut off.

    Three kernels (weight, zero buffer, scatter_add), no host synchronisation; ``x`` may be
    (batch, tokens) or (batch, tokens, channels).
    """
    if x.dim() == 2:
        src = x if wn is None else x * wn.to(x.dtype)
        out = x.new_zeros(x.shape[0], new_len + int(trash))
        out.scatter_add_(1, dest, src)
        return out[:, :new_len] if trash else out
    b, _, d = x.shape
    src = x if wn is None else x * wn.to(x.dtype).unsqueeze(-1)
    out = x.new_zeros(b, new_len + int(trash), d)  # fresh buffer: in-place add is autograd-safe
    out.scatter_add_(1, dest.unsqueeze(-1).expand(-1, -1, d), src)
    return out[:, :new_len] if trash else out


def pair_plan(
    dest: Tensor, wn: Tensor, new_len: int, sorted_dest: bool, grid: tuple[Tensor, Tensor]
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(first, last, weight of last, is-pair) per new slot, as :class:`PairPlan` holds them.

    Valid for plans whose groups are one token or two (consecutive in the sorted order) and
    whose weights sum to one per group; dropped tokens (``dest == new_len``) are left out.
    ``first`` and ``last`` are flat row indices into ``(batch * tokens)``; ``grid`` is
    :func:`pair_grid`'s (slot numbers, row offsets) for this shape.
    """
    slots, base = grid
    if sorted_dest:
        order, sd = None, dest
    else:
        sd, order = dest.sort(dim=1, stable=True)
    lo = torch.searchsorted(sd, slots)
    hi = torch.searchsorted(sd, slots, right=True) - 1
    if order is not None:
        lo, hi = order.gather(1, lo), order.gather(1, hi)
    w_last = wn.gather(1, hi).view(-1, 1)
    is_pair = (hi != lo).view(-1, 1)
    return (lo + base).view(-1), (hi + base).view(-1), w_last, is_pair


def pair_grid(b: int, t: int, new_len: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Slot numbers (b, new_len) and flat row offsets (b, 1) that :func:`pair_plan` uses."""
    slots = torch.arange(new_len, device=device).expand(b, new_len).contiguous()
    return slots, (torch.arange(b, device=device) * t).unsqueeze(1)


class PairPlan(NamedTuple):
    """A merge into groups of one or two tokens that keeps the order (STM, random, pruning).

    Per new slot (flat over the batch): ``first`` and ``last`` token as rows of
    (batch * tokens), the weight of ``last`` and whether the slot is a pair (a lone token is
    copied exactly); see :func:`pair_plan`.
    """

    first: Tensor  # (batch * new_len,) int64
    last: Tensor
    w_last: Tensor  # (batch * new_len, 1) fp32
    is_pair: Tensor  # (batch * new_len, 1) bool
    cls_index: int  # the class token's index after the step

    def apply(self, hidden: Tensor, residual: Tensor, state: Any,
              backend: str) -> tuple[Tensor, Tensor]:
        """Merge hidden and residual (weighted) and ``state``'s sizes and sources (summed)."""
        hidden, residual = dispatch.pair_lerp(hidden, residual, self.first, self.last,
                                              self.w_last, backend)
        state.size = apply_pairs(state.size, self.first, self.last, self.is_pair)
        if state.source is not None:
            state.source = apply_pairs(state.source, self.first, self.last, self.is_pair)
        return hidden, residual


class GroupPlan(NamedTuple):
    """A merge into groups of any size (bipartite): each token's new slot and its weight."""

    dest: Tensor  # (batch, tokens) int64: the slot of each token; new_len is the trash slot
    wn: Tensor  # (batch, tokens): weights summing to one inside each group
    new_len: int
    trash: bool  # whether some tokens are dropped (dest == new_len)
    cls_index: int

    def apply(self, hidden: Tensor, residual: Tensor, state: Any,
              backend: str) -> tuple[Tensor, Tensor]:
        """Merge hidden and residual (weighted) and ``state``'s sizes and sources (summed)."""
        dest, n, trash = self.dest, self.new_len, self.trash
        hidden = apply_merge(hidden, dest, self.wn, n, trash)
        residual = apply_merge(residual, dest, self.wn, n, trash)
        state.size = apply_merge(state.size, dest, None, n, trash)
        if state.source is not None:
            state.source = apply_merge(state.source, dest, None, n, trash)
        return hidden, residual


MergePlan = PairPlan | GroupPlan


def group_normalize(dest: Tensor, w: Tensor, new_len: int) -> Tensor:
    """Weights ``w`` (batch, tokens) divided by their group's sum."""
    total = w.new_zeros(w.shape[0], new_len + 1).scatter_add_(1, dest, w)
    return w / total.gather(1, dest).clamp_min_(1e-12)


def split_sides(tokens: int, cls_index: int, r: int) -> tuple[int, int]:
    """Balanced removals (left, right) of the class token; the odd one goes to the longer side."""
    n_left, n_right = cls_index, tokens - 1 - cls_index
    half, odd = r // 2, r % 2  # (not divmod: torch.compile traces // and % on symbolic ints)
    r_left = half + (odd if n_left > n_right else 0)
    return r_left, r - r_left


class Merger:
    """Base class: schedule bookkeeping and the ``begin/step/end`` hooks.

    Subclasses implement :meth:`plan` (the merge of one step) and the closed-form
    :meth:`cap`, :meth:`next_cls` and :meth:`merge_macs` that schedules and FLOPs use.
    """

    name = "base"
    needs_ssm = False  # record the previous block's SSM statistics
    ssm_parts: tuple[str, ...] = ("B", "decay", "importance")  # what of them (SSM_PARTS)
    needs_delta = False
    backend = "reference"  # merge kernels: "triton" where the model's scan runs Triton (begin)
    sorted_dest = False  # a PairPlan's dest is non-decreasing (no sort needed in pair_plan)
    option_defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, **options: Any) -> None:
        unknown = sorted(set(options) - set(self.option_defaults))
        if unknown:
            allowed = ", ".join(sorted(self.option_defaults)) or "none"
            raise ConfigError(
                f"unknown option(s) {unknown} for method {self.name!r}; allowed: {allowed}"
            )
        self.options = {**self.option_defaults, **options}
        self._cache: dict[Any, Any] = {}  # index tensors per (shape, device), built once
        self.schedule: list[int] = []
        self.pre = 0  # tokens removed before block 0, from the embeddings (the peers' schedule)
        self.trace_source = False
        # plans handed over between models (``benchmarks/ft_gap.py --swap``: one model's
        # weights with another's merge decisions): the plans this merger makes are appended to
        # ``record``; while ``replay`` holds plans, each step applies the next of them instead
        # of planning its own
        self.record: list[Any] | None = None
        self.replay: deque[Any] | None = None
        self._saved_recording: list[tuple[Any, ...]] = []  # the mixers' flags before attach
        self._check_options()

    def _check_options(self) -> None:
        """Validate ``self.options`` (subclasses)."""

    # -- closed form ------------------------------------------------------------------
    def cap(self, tokens: int, cls_index: int, r: int) -> bool:
        """Whether ``r`` tokens can be removed from ``tokens`` (class token at ``cls_index``)."""
        raise NotImplementedError

    def next_cls(self, tokens: int, cls_index: int, r: int) -> int:
        """The class token's index after removing ``r`` tokens."""
        raise NotImplementedError

    def merge_macs(self, tokens: int, r: int, dim: int, d_state: int, d_inner: int) -> float:
        """Multiply-accumulates of one merge step (per image)."""
        return 2.0 * tokens * dim  # applying the plan to hidden_states and residual

    def check_pre(self) -> None:
        """ConfigError if this method cannot merge before block 0 (no previous block's SSM)."""
        if self.needs_ssm:
            raise ConfigError(
                f"method {self.name!r} reads the previous block's scan, which does not exist "
                "before block 0; the 'even-blocks' schedule merges there: use every=2 (merges "
                "before blocks 2, 4, ...) or a method that reads the tokens (stm, tome, rmeeto, "
                "prune-norm, random)"
            )

    def simulate(self, tokens: int, cls_index: int) -> tuple[list[int], list[int]]:
        """Tokens and class-token index entering each block; ConfigError if a step can't run."""
        if self.pre:
            if not self.cap(tokens, cls_index, self.pre):
                raise ConfigError(
                    f"method {self.name!r} cannot remove {self.pre} tokens before block 0 (from "
                    f"{tokens} tokens, {self.options}); lower the ratio/r"
                )
            cls_index = self.next_cls(tokens, cls_index, self.pre)
            tokens -= self.pre
        toks, clss = [tokens], [cls_index]
        for i, r in enumerate(self.schedule):
            if r and not self.cap(tokens, cls_index, r):
                raise ConfigError(
                    f"method {self.name!r} cannot remove {r} tokens after block {i} (from "
                    f"{tokens} tokens, {self.options}); lower the ratio/r, or shift removals "
                    "to earlier blocks, e.g. r=(r, -0.5)"
                )
            cls_index = self.next_cls(tokens, cls_index, r) if r else cls_index
            tokens -= r
            toks.append(tokens)
            clss.append(cls_index)
        return toks, clss

    # -- installation (vimstm.merge.patch / unpatch) ----------------------------------------
    def attach(self, model: Any) -> None:
        """Install on ``model``: ``model.merger``, and SSM recording in the blocks whose
        statistics a merge step reads (only the parts it reads)."""
        self._saved_recording = []
        for i, layer in enumerate(model.layers):
            mixer = layer.mixer
            self._saved_recording.append(mixer.record)
            step_follows = i < len(self.schedule) and self.schedule[i] > 0
            if self.needs_ssm and step_follows:
                mixer.record = tuple(self.ssm_parts) + (
                    ("delta",) if self.needs_delta else ())
        model.merger = self
        model.merge_info = {}

    def detach(self, model: Any) -> None:
        """Undo :meth:`attach`: the mixers' recording as it was, no merger."""
        for layer, record in zip(model.layers, self._saved_recording):
            layer.mixer.record = record
            if record is None:
                layer.mixer.last_ssm = None
        self._saved_recording = []
        model.merger = None
        model.merge_info = {}

    # -- hooks called by VisionMamba.forward_features -----------------------------------
    def cached(self, key: Any, build: Any) -> Any:
        """``build()`` once per ``key`` (index tensors of a step's shape, on its device)."""
        out = self._cache.get(key)
        if out is None:
            out = self._cache[key] = build()
        return out

    def begin(self, model: Any, hidden: Tensor, state: Any) -> Any:
        b, t, _ = hidden.shape
        self.backend = dispatch.merge_backend(getattr(model, "scan_backend", "auto"),
                                              hidden.device.type)
        # token sizes (batch, tokens) fp32; one expand of a cached row, no fill kernel per call
        dev = hidden.device
        ones = self.cached(("ones", t, dev), lambda: torch.ones(1, t, device=dev))
        state.size = ones.expand(b, t)
        if self.trace_source:
            eye = torch.eye(t, device=hidden.device, dtype=torch.float32)
            state.source = eye.unsqueeze(0).expand(b, t, t)
        self._tokens = [t]
        self._cls = [state.cls_index]
        return state

    def step(self, model: Any, i: int, hidden: Tensor, residual: Tensor | None, state: Any):
        """Merge before block ``i``: ``schedule[i - 1]`` tokens, or ``pre`` before block 0.

        Before block 0 there is no residual yet: it becomes the embeddings and the mixer output
        zero, which block 0 adds up to the same input; no previous block's SSM exists there.
        """
        if i == 0:
            r = self.pre
            if r and residual is None:
                residual, hidden = hidden.float(), torch.zeros_like(hidden)
        else:
            r = self.schedule[i - 1] if i - 1 < len(self.schedule) else 0
        if r > 0:
            if self.replay is not None:
                if not self.replay:
                    raise RuntimeError("the planner made fewer merge plans than this model's "
                                       "schedule applies: give both the same merge options")
                plan = self.replay.popleft()
            else:
                ssm = model.layers[i - 1].mixer.last_ssm if self.needs_ssm and i > 0 else None
                # the plan is index and weight bookkeeping: no autograd, and no autocast (its
                # few matrix products must stay fp32; similarities read the block input as is)
                with torch.no_grad(), torch.autocast(hidden.device.type, enabled=False):
                    plan = self.plan(hidden, residual, state, ssm, r)
                if self.record is not None:
                    self.record.append(plan)
            tokens = hidden.shape[1]
            hidden, residual = plan.apply(hidden, residual, state, self.backend)
            if self.replay is not None and hidden.shape[1] != tokens - r:
                raise RuntimeError(f"the planner's merge step before block {i} keeps "
                                   f"{hidden.shape[1]} of {tokens} tokens, this model's schedule "
                                   f"{tokens - r}: give both the same merge options")
            state.cls_index = plan.cls_index
        if i == 0:  # the counts entering block 0 replace the embedding's
            self._tokens, self._cls = [], []
        self._tokens.append(hidden.shape[1])
        self._cls.append(state.cls_index)
        return hidden, residual, state

    def pairs(self, dest: Tensor, wn: Tensor, new_len: int, cls_index: int) -> PairPlan:
        """The :class:`PairPlan` of a plan given by destination and weight per token."""
        b, t, dev = dest.shape[0], dest.shape[1], dest.device
        grid = self.cached(("pair_grid", b, t, new_len, dev), lambda: pair_grid(b, t, new_len, dev))
        return PairPlan(*pair_plan(dest, wn, new_len, self.sorted_dest, grid), cls_index)

    def end(self, model: Any, hidden: Tensor, state: Any) -> None:
        info: dict[str, Any] = {
            "method": self.name,
            "tokens_per_block": list(self._tokens),
            "cls_index_per_block": list(self._cls),
            "size": state.size.unsqueeze(-1),
        }
        if state.source is not None:
            info["source"] = state.source
        model.merge_info = info

    def plan(self, hidden: Tensor, residual: Tensor, state: Any, ssm: Any, r: int) -> MergePlan:
        """The merge that removes ``r`` tokens from this step's sequence."""
        raise NotImplementedError

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"{type(self).__name__}({opts})"


class SelectLayout(NamedTuple):
    """Masks of one step's shape for :class:`LowestScoreMerger` (cached per shape)."""

    is_cls: Tensor  # (1, tokens) bool
    not_left: Tensor  # (1, tokens): masked out when picking the removals left of the class token
    not_right: Tensor
    new_cls: Tensor  # (1, 1) int64: the class token's index after the step
    r_side: tuple[int, int]  # removals (left, right) with balance=True


class LowestScoreMerger(Merger):
    """Base of the methods that take out the ``r`` patch tokens of lowest score (pruning, MTR).

    With ``balance=True`` (default) half of them come from each side of the class token (the
    odd one from the longer side), so its index stays exact for every sample; with
    ``balance=False`` they come from anywhere, and the class token is moved to the middle of the
    kept tokens (its true place would differ between samples). The others keep their order.
    """

    option_defaults: ClassVar[dict[str, Any]] = {"balance": True}

    def _check_options(self) -> None:
        if not isinstance(self.options["balance"], bool):
            raise ConfigError(
                f"{self.name} option balance={self.options['balance']!r} must be true or false")

    def cap(self, tokens: int, cls_index: int, r: int) -> bool:
        if r > tokens - 2:  # keep at least one patch token
            return False
        if not self.options["balance"]:
            return True
        r_left, r_right = split_sides(tokens, cls_index, r)
        return r_left <= cls_index and r_right <= tokens - 1 - cls_index

    def next_cls(self, tokens: int, cls_index: int, r: int) -> int:
        if self.options["balance"]:
            return cls_index - split_sides(tokens, cls_index, r)[0]
        return (tokens - 1 - r) // 2

    def _select_layout(self, t: int, c: int, r: int, dev: torch.device) -> SelectLayout:
        def build() -> SelectLayout:
            pos = torch.arange(t, device=dev).unsqueeze(0)
            return SelectLayout(pos == c, pos >= c, pos <= c,
                                torch.full((1, 1), self.next_cls(t, c, r), device=dev),
                                split_sides(t, c, r))

        return self.cached(("select_layout", t, c, r, str(dev)), build)

    def lowest(self, score: Tensor, layout: SelectLayout, r: int) -> Tensor:
        """Indices (batch, r) of the ``r`` patch tokens of lowest ``score`` (see the class)."""
        score = score.masked_fill(layout.is_cls, math.inf)
        if not self.options["balance"]:
            return score.topk(r, dim=1, largest=False).indices
        r_left, r_right = layout.r_side
        both = torch.stack((score.masked_fill(layout.not_left, math.inf),
                            score.masked_fill(layout.not_right, math.inf)), 1)
        low = both.topk(max(r_left, r_right), dim=-1, largest=False).indices
        return torch.cat((low[:, 0, :r_left], low[:, 1, :r_right]), 1)

    def kept_ranks(self, keep: Tensor, layout: SelectLayout, new_cls: int) -> Tensor:
        """Each token's index among the kept ones, in order (the class token at ``new_cls``)."""
        if self.options["balance"]:
            return keep.long().cumsum(1) - 1
        patch_rank = (keep & ~layout.is_cls).long().cumsum(1) - 1
        return torch.where(layout.is_cls, layout.new_cls,
                           patch_rank + (patch_rank >= new_cls).long())


def block_input(hidden: Tensor, residual: Tensor) -> Tensor:
    """What the next block normalises and reads: residual + mixer output, in fp32."""
    return residual + hidden.float()
