"""Count what a forward asks of the device: aten ops, host-data tensors and host syncs.

Token merging is cheap only if it is a handful of device kernels per step. On a GPU, the costly
patterns are (a) many small ops (launch overhead), (b) tensors built from host data
(``torch.tensor(...)``, a CPU ``arange`` moved to the device, a Python number turned into a
tensor: host-to-device copies) and (c) host synchronisations (``.item()``, ``.tolist()``,
``bool(tensor)``, ``nonzero``, boolean-mask indexing). All three can be measured without a GPU:

* :func:`count_ops` runs one forward under a :class:`TorchDispatchMode` and counts the aten ops,
  attributed to the merger (``merge``: its ``begin/step/end`` hooks), the mixers' SSM statistics
  (``stats``: ``Mamba._stats``) and the rest of the model (``model``);
* with ``fake_device="cuda"`` the forward runs on a *fake* CUDA device
  (:class:`~torch._subclasses.fake_tensor.FakeTensorMode`: shapes only, no data, no GPU needed),
  so a tensor that would be created on the host, or copied from it, shows up exactly as it would
  on a GPU: a factory whose result lands on the CPU, or a CPU-to-CUDA ``_to_copy``/``copy_``.

>>> from vimstm.merge.opcount import count_ops
>>> counts = count_ops(model, images)            # real run on the model's device
>>> counts.per_step("merge"), counts.syncs, counts.host_tensors
"""

from __future__ import annotations

from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

SECTIONS = ("model", "stats", "merge")

# ops that read device data back to the host (or whose output shape depends on the data)
_SYNC_OPS = {
    aten._local_scalar_dense.default,  # .item(), .tolist(), bool(t), int(t), float(t)
    aten.nonzero.default,
    aten.nonzero_static.default,
    aten.masked_select.default,
    aten.unique_consecutive.default,
    aten._unique2.default,
    aten.is_nonzero.default,
    aten.equal.default,
    aten.allclose.default,
}
# tensors built from Python data on the host
_HOST_DATA_OPS = {aten.lift_fresh.default, aten.lift_fresh_copy.default, aten.scalar_tensor.default}
# ops that create a tensor without reading another one (launch an allocation / fill kernel)
_FACTORY_NAMES = {
    "arange", "zeros", "ones", "full", "empty", "eye", "linspace", "rand", "randn", "randint",
    "scalar_tensor", "empty_strided", "new_zeros", "new_ones", "new_full", "new_empty",
    "zeros_like", "ones_like", "full_like", "empty_like", "rand_like", "randn_like",
}


def _is_bool_index(func: Any, args: tuple) -> bool:
    """Boolean-mask indexing (``x[mask]``, ``x[mask] = v``): a hidden ``nonzero`` (sync)."""
    if func not in (aten.index.Tensor, aten.index_put.default, aten.index_put_.default,
                    aten._index_put_impl_.default):
        return False
    idx = args[1] if len(args) > 1 else ()
    return any(isinstance(t, Tensor) and t.dtype in (torch.bool, torch.uint8) for t in idx)


def _devices(obj: Any, out: list[torch.device]) -> None:
    if isinstance(obj, Tensor):
        out.append(obj.device)
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            _devices(o, out)


@dataclass
class OpCounts:
    """What one forward dispatched, per section (``model``, ``stats``, ``merge``)."""

    ops: Counter = field(default_factory=Counter)  # all aten ops (views included)
    kernels: Counter = field(default_factory=Counter)  # ops that are not views
    factories: Counter = field(default_factory=Counter)  # tensor creations from shapes
    host_tensors: Counter = field(default_factory=Counter)  # tensors made from host data
    h2d_copies: Counter = field(default_factory=Counter)  # CPU -> device copies (fake device)
    syncs: Counter = field(default_factory=Counter)  # device -> host reads
    merge_steps: int = 0  # merge steps that removed tokens
    stats_calls: int = 0
    names: dict[str, Counter] = field(default_factory=dict)  # section -> op name -> count
    problems: list[str] = field(default_factory=list)  # "section: op" of each bad op

    def per_step(self, section: str = "merge", what: str = "kernels") -> float:
        """Mean count per merge step (``merge``) or per statistics call (``stats``)."""
        n = self.merge_steps if section == "merge" else self.stats_calls
        return getattr(self, what)[section] / max(n, 1)

    def total(self, what: str = "kernels") -> int:
        return sum(getattr(self, what).values())

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"merge_steps": self.merge_steps, "stats_calls": self.stats_calls}
        for what in ("ops", "kernels", "factories", "host_tensors", "h2d_copies", "syncs"):
            c = getattr(self, what)
            out[what] = {s: c[s] for s in SECTIONS} | {"total": sum(c.values())}
        out["problems"] = list(self.problems)
        return out


class _Counter(TorchDispatchMode):
    def __init__(self, counts: OpCounts, device: torch.device) -> None:
        super().__init__()
        self.c = counts
        self.device = device
        self.section = ["model"]
        self.depth = 0  # > 0 inside an op (a fake-tensor decomposition re-dispatching)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.depth or func.namespace == "prim":  # prim.device: a fake tensor's metadata
            return func(*args, **kwargs)
        self.depth += 1
        try:
            return self._count(func, args, kwargs)
        finally:
            self.depth -= 1

    def _count(self, func, args, kwargs):
        s = self.section[-1]
        c = self.c
        c.ops[s] += 1
        name = func.overloadpacket.__name__
        c.names.setdefault(s, Counter())[name] += 1
        if not func.is_view:
            c.kernels[s] += 1
        bad = None
        if func in _SYNC_OPS or _is_bool_index(func, args):
            c.syncs[s] += 1
            bad = "sync"
        if func in _HOST_DATA_OPS:
            c.host_tensors[s] += 1
            bad = "host tensor"
        if name in _FACTORY_NAMES:
            c.factories[s] += 1
        out = func(*args, **kwargs)
        if self.device.type != "cpu":
            if name in _FACTORY_NAMES and isinstance(out, Tensor) and out.device.type == "cpu":
                c.host_tensors[s] += 1  # made on the host, bound to be moved
                bad = "host tensor"
            if func in (aten._to_copy.default, aten.copy_.default, aten.copy.default):
                src: list[torch.device] = []
                _devices(args[1] if func is not aten._to_copy.default else args[0], src)
                dst = out.device if isinstance(out, Tensor) else None
                if src and src[0].type == "cpu" and dst is not None and dst.type != "cpu":
                    c.h2d_copies[s] += 1
                    bad = "host-to-device copy"
        if bad is not None:
            c.problems.append(f"{s}: {name} ({bad})")
        return out


def _wrap(obj: Any, attr: str, mode: _Counter, section: str, on_call=None) -> Any:
    """Replace ``obj.attr`` by a wrapper that attributes its ops to ``section``."""
    fn = getattr(obj, attr)

    def wrapped(*a, **k):
        mode.section.append(section)
        try:
            out = fn(*a, **k)
            if on_call is not None:
                on_call(a, out)
            return out
        finally:
            mode.section.pop()

    setattr(obj, attr, wrapped)
    return fn


def count_ops(
    model: Any,
    images: Tensor,
    fake_device: str | None = None,
    amp_dtype: Any = None,
    warmup: bool = True,
) -> OpCounts:
    """Run ``model(images)`` under ``no_grad`` and count one forward's aten ops (module docs).

    ``fake_device="cuda"`` runs on fake CUDA tensors (no data, no GPU): host-side creations and
    host-to-device copies are then reported as on a real GPU; ``amp_dtype`` (e.g.
    ``torch.float16``) runs under autocast, as ``vimstm bench --dtype fp16`` does (autocast
    needs a real device, so on a fake one the parameters are cast to ``amp_dtype``, and the
    mixers use the PyTorch reference scan, as Triton kernels need real memory). With
    ``warmup`` a first, uncounted forward fills the merger's per-shape caches, so the count is
    that of every later forward. The model's own state (caches included) is left as it was.
    """
    merger = getattr(model, "merger", None)
    mixers = [layer.mixer for layer in getattr(model, "layers", [])]
    saved = [(m, m.__dict__.get("last_ssm"), m.scan_backend) for m in mixers]
    saved_cache = dict(merger._cache) if merger is not None and hasattr(merger, "_cache") else None
    device = torch.device(fake_device) if fake_device else images.device
    with ExitStack() as stack:
        fake_state = None
        if fake_device:
            from torch._subclasses.fake_tensor import FakeTensorMode

            fake = stack.enter_context(FakeTensorMode(allow_non_fake_inputs=True))
            tensors = dict(model.named_parameters()) | dict(model.named_buffers())
            cast = amp_dtype or torch.float32
            fake_state = {n: fake.from_tensor(t).to(device, cast if t.is_floating_point() else None)
                          for n, t in tensors.items()}
            images = fake.from_tensor(images).to(device, cast)
            amp_dtype = None
        if fake_device:  # Triton kernels need real memory: fake runs use the PyTorch scan
            for m in mixers:
                m.scan_backend = "reference"
        try:
            if warmup:
                _count_once(model, images, device, fake_state, amp_dtype)
            return _count_once(model, images, device, fake_state, amp_dtype)
        finally:
            if fake_device:  # drop whatever fake tensors the run cached
                for m, last, backend in saved:
                    m.last_ssm, m.scan_backend = last, backend
                if saved_cache is not None:
                    merger._cache = saved_cache


def _count_once(
    model: Any, images: Tensor, device: torch.device, fake_state: Any, amp_dtype: Any
) -> OpCounts:
    counts = OpCounts()
    merger = getattr(model, "merger", None)
    mixers = [layer.mixer for layer in getattr(model, "layers", [])]
    mode = _Counter(counts, device)

    def step_done(a: tuple, out: Any) -> None:
        if a[2].shape[1] != out[0].shape[1]:  # hidden lost tokens
            counts.merge_steps += 1

    def stats_done(a: tuple, out: Any) -> None:
        counts.stats_calls += 1

    restore: list[tuple[Any, str]] = []
    if merger is not None:
        for hook in ("begin", "step", "end"):
            _wrap(merger, hook, mode, "merge", step_done if hook == "step" else None)
            restore.append((merger, hook))
    for mixer in mixers:
        _wrap(mixer, "_stats", mode, "stats", stats_done)
        restore.append((mixer, "_stats"))
    try:
        amp = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else ExitStack()
        with torch.no_grad(), amp, mode:
            if fake_state is not None:
                from torch.func import functional_call

                functional_call(model, fake_state, (images,))
            else:
                model(images)
    finally:
        for obj, attr in restore:
            obj.__dict__.pop(attr, None)
    return counts
