"""CUDA-graph replay inside patched models: a no-op on the CPU, exact replays on CUDA."""

from __future__ import annotations

import copy

import pytest
import torch

import vimstm
from vimstm.merge import graphs

ARCH = dict(depth=4, embed_dim=32, img_size=32, patch_size=4, stride=4, num_classes=10)
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def merged(**kw):
    torch.manual_seed(0)
    m = vimstm.create_model("vim_tiny", **ARCH).eval()
    return vimstm.patch(m, method="stm", ratio=0.3, **kw)


def test_installed_by_default_and_removed_by_unpatch():
    m = merged()
    assert graphs.installed(m) is not None
    vimstm.unpatch(m)
    assert graphs.installed(m) is None and "forward" not in m.__dict__
    assert graphs.installed(merged(graphs=False)) is None


def test_cpu_calls_run_the_forward_as_it_is():
    m = merged()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = m(x)
        ref = type(m).forward(m, x)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    g = graphs.installed(m)
    assert g.captures == 0 and g.replays == 0 and not g.graphs
    assert m.merge_info["tokens_per_block"][-1] < m.merge_info["tokens_per_block"][0]


def test_only_cuda_inference_is_captured():
    m = merged()
    g = graphs.installed(m)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert not g.usable(x, (), {})  # a CPU tensor
    m.train()
    assert not g.usable(x, (), {})


def test_deepcopy_gets_its_own_wrapper():
    m = merged()
    c = copy.deepcopy(m)
    gc = graphs.installed(c)
    assert gc is not None and gc.model is c and gc is not graphs.installed(m)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(c(x), m(x), rtol=0, atol=0)


def test_graphs_option_from_the_command_line():
    from vimstm.merge import parse_merge_opts

    m = vimstm.create_model("vim_tiny", **ARCH)
    vimstm.patch(m, method="stm", ratio=0.3, **parse_merge_opts(["graphs=false"]))
    assert graphs.installed(m) is None


def test_key_walks_the_modules_only_after_a_registration():
    m = merged()
    g = graphs.installed(m)
    x = torch.randn(2, 3, 32, 32)
    k0 = g.key(x)
    scans = g.scans
    assert all(g.key(x) == k0 for _ in range(3)) and g.scans == scans  # steady state: no walk
    torch.nn.Linear(2, 2)  # any registration anywhere makes the next key walk the modules again
    assert g.key(x) == k0 and g.scans == scans + 1


def _load_assign(m):
    m.load_state_dict({k: v.clone() for k, v in m.state_dict().items()}, assign=True)


KEY_CHANGES = {  # what a replay must notice: new parameters or modules, another scan backend
    "assign": lambda m: setattr(m.head, "weight",
                                torch.nn.Parameter(torch.zeros_like(m.head.weight))),
    "half": lambda m: m.half(),
    "module": lambda m: setattr(m, "head", torch.nn.Linear(m.head.in_features,
                                                           m.head.out_features)),
    "load_assign": _load_assign,
    "scan_backend": lambda m: m.set_scan_backend(
        "triton" if m.scan_backend != "triton" else "reference"),
    "schedule": lambda m: setattr(m.merger, "schedule", [*m.merger.schedule, 1]),
    "options": lambda m: m.merger.options.update(protect=m.merger.options["protect"] + 2),
}


@pytest.mark.parametrize("change", list(KEY_CHANGES))
def test_key_sees_changed_parameters_modules_backend_and_merge_configuration(change):
    """A replay must not run kernels captured for other parameters, backend or schedule."""
    m = merged()
    g = graphs.installed(m)
    x = torch.randn(2, 3, 32, 32)
    k0 = g.key(x)
    KEY_CHANGES[change](m)
    assert g.key(x) != k0


@cuda
@pytest.mark.parametrize("amp", [None, torch.float16])
def test_cuda_replay_equals_the_eager_forward(amp):
    m = merged().cuda()
    g = graphs.installed(m)
    xs = [torch.randn(4, 3, 32, 32, device="cuda") for _ in range(3)]
    autocast = torch.autocast("cuda", dtype=amp or torch.float32, enabled=amp is not None)
    with torch.no_grad(), autocast:
        outs = [m(x) for x in xs]  # capture, then replays
        refs = [type(m).forward(m, x) for x in xs]
        info = m.merge_info
    assert g.captures == 1 and g.replays == 3
    for o, r in zip(outs, refs):  # every output kept its own values (copies, not the buffer)
        torch.testing.assert_close(o, r)
    assert info["tokens_per_block"] == m.merge_info["tokens_per_block"]
    with torch.no_grad():
        m(torch.randn(2, 3, 32, 32, device="cuda"))  # another shape: another graph
    assert g.captures == 2


@cuda
def test_cuda_replaced_parameters_are_recaptured():
    m = merged().cuda()
    g = graphs.installed(m)
    x = torch.randn(2, 3, 32, 32, device="cuda")
    with torch.no_grad():
        m(x)
        m.head.weight = torch.nn.Parameter(torch.zeros_like(m.head.weight))
        m.head.bias = torch.nn.Parameter(torch.zeros_like(m.head.bias))
        assert float(m(x).abs().max()) == 0.0
    assert g.captures == 2
