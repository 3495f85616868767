"""CUDA-graph replay of a merged model's inference forward, keyed by input shape.

A merged ViM runs many small kernels (scans, merge steps) per block; at inference on a GPU the
host issuing them, not the GPU, sets the pace, and fewer tokens then barely show. ``patch``
therefore installs :class:`GraphedForward` (``graphs=True``, the default): the first call with a
new input shape (and dtype, device, autocast state) captures the forward into a CUDA graph, later
calls of that shape copy the input in and replay it. Everything else runs the forward as it is:
CPU tensors, training mode, autograd, ``trace_source``, tensor subclasses (fake or traced
tensors) and calls made inside another capture (``vimstm bench --cuda-graph``). A forward that
cannot be captured (it synchronises with the host) is run eagerly from then on, with one
warning.

Replays return a fresh copy of the output, and ``model.merge_info`` as the captured call left
it (its tensors are the graph's and are refreshed by each replay). Replacing the parameters
(``model.half()``, ``model.to(...)``, a new ``load_state_dict(assign=True)``), switching the scan
backend (``set_scan_backend``) or changing the merger (a new ``patch``, its schedule or options)
is detected and recaptures; in-place updates of parameters are read by the next replay as they
are.
"""

from __future__ import annotations

import copy
import warnings
from collections import OrderedDict
from typing import Any

import torch
from torch import Tensor

MAX_GRAPHS = 8  # shapes kept per model (each graph holds its own memory pool)

# Parameters, buffers or submodules registered on any module since import (torch's global
# registration hooks count them): while it stands still, a model's modules are the ones seen
# before, and only their parameters' data pointers need checking on each call.
_registrations = 0
_hooks: list[Any] = []


def _count(*_: Any) -> None:
    global _registrations
    _registrations += 1


def _watch_registrations() -> None:
    if not _hooks:
        from torch.nn.modules import module as M

        _hooks.extend(h(_count) for h in (M.register_module_parameter_registration_hook,
                                          M.register_module_buffer_registration_hook,
                                          M.register_module_module_registration_hook))


class GraphedForward:
    """Callable installed as ``model.forward``; see the module docstring."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.graphs: OrderedDict[tuple, Any] = OrderedDict()  # key -> (graph, x, out, info) | None
        self.captures = 0  # graphs captured (tests, diagnostics)
        self.replays = 0
        self.scans = 0  # walks over the model's modules (tests, diagnostics)
        self._param_dicts: list[dict] = []
        self._seen = -1  # _registrations when _param_dicts was built
        _watch_registrations()

    def eager(self, x: Tensor, *args: Any, **kwargs: Any) -> Any:
        return type(self.model).forward(self.model, x, *args, **kwargs)

    def usable(self, x: Any, args: tuple, kwargs: dict) -> bool:
        """Whether this call may be captured/replayed (else it runs eagerly)."""
        merger = getattr(self.model, "merger", None)
        return (type(x) is Tensor and x.is_cuda  # plain tensors: no fake or traced ones
                and not args and not kwargs
                and not self.model.training and not torch.is_grad_enabled()
                and merger is not None and not getattr(merger, "trace_source", False)
                and torch.cuda.is_available() and not torch.cuda.is_current_stream_capturing())

    def key(self, x: Tensor) -> tuple:
        amp = torch.is_autocast_enabled("cuda")
        if self._seen != _registrations:  # modules may have changed: walk them again
            self._param_dicts = [m._parameters for m in self.model.modules() if m._parameters]
            self._seen = _registrations
            self.scans += 1
        # the data pointers catch .half() / .to() and parameters set into the dicts directly
        params = tuple(p.data_ptr() for d in self._param_dicts for p in d.values()
                       if p is not None)
        return (tuple(x.shape), x.dtype, x.device, amp,
                torch.get_autocast_dtype("cuda") if amp else None,
                torch.is_inference_mode_enabled(), params, self.config())

    def config(self) -> tuple:
        """What the captured kernels depend on besides the input and the parameters: the
        scan backend of every mixer and the merger (object, schedule, options)."""
        m = self.model
        merger = m.merger
        backends = tuple(layer.mixer.scan_backend for layer in getattr(m, "layers", ()))
        return (backends, id(merger), tuple(merger.schedule), merger.pre,
                repr(sorted(merger.options.items())))

    def __call__(self, x: Any, *args: Any, **kwargs: Any) -> Any:
        if not self.usable(x, args, kwargs):
            return self.eager(x, *args, **kwargs)
        key = self.key(x)
        if key not in self.graphs:
            self.graphs[key] = self.capture(x)
            while len(self.graphs) > MAX_GRAPHS:
                self.graphs.popitem(last=False)
        self.graphs.move_to_end(key)
        entry = self.graphs[key]
        if entry is None:  # not capturable: eager from now on for this shape
            return self.eager(x)
        graph, static_x, static_out, info = entry
        static_x.copy_(x)
        graph.replay()
        self.replays += 1
        self.model.merge_info = dict(info)
        return static_out.clone()

    def capture(self, x: Tensor) -> tuple | None:
        """Warm up on a side stream, capture one forward; None if it cannot be captured."""
        dev = x.device
        static_x = x.clone()
        stream = torch.cuda.Stream(dev)
        stream.wait_stream(torch.cuda.current_stream(dev))
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.stream(stream):
                self.eager(static_x)  # first call: lazy allocations, Triton compilation
                # thread_local: a DataLoader pin-memory thread may use CUDA meanwhile
                with torch.cuda.graph(graph, stream=stream, capture_error_mode="thread_local"):
                    static_out = self.eager(static_x)
        except RuntimeError as e:  # a host synchronisation inside the forward
            torch.cuda.current_stream(dev).wait_stream(stream)
            warnings.warn(f"vimstm: this merged model's forward cannot be captured in a CUDA "
                          f"graph ({str(e).splitlines()[0][:120]}); running it eagerly",
                          stacklevel=3)
            return None
        torch.cuda.current_stream(dev).wait_stream(stream)
        self.captures += 1
        return graph, static_x, static_out, dict(getattr(self.model, "merge_info", {}))

    def __deepcopy__(self, memo: dict) -> GraphedForward:
        return GraphedForward(copy.deepcopy(self.model, memo))  # graphs are not copied


def install(model: Any) -> None:
    """Make ``model(x)`` replay CUDA graphs where it can (see :class:`GraphedForward`)."""
    model.__dict__["forward"] = GraphedForward(model)


def remove(model: Any) -> None:
    """Undo :func:`install` (and free the graphs)."""
    if isinstance(model.__dict__.get("forward"), GraphedForward):
        del model.__dict__["forward"]


def installed(model: Any) -> GraphedForward | None:
    """The model's :class:`GraphedForward`, if any."""
    f = model.__dict__.get("forward")
    return f if isinstance(f, GraphedForward) else None
