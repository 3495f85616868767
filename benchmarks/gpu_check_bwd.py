"""On the GPU: the seq and chunk scan backwards agree (exit 1 if not) and how long each takes."""

import sys

import torch
import triton.testing

from vimstm.ops import triton_scan as ts

torch.manual_seed(0)
b, d, L, n = 64, 384, 257, 16
x = torch.randn(b, L, 2 * d, device="cuda", dtype=torch.bfloat16)
u, z = x[..., :d].transpose(1, 2), x[..., d:].transpose(1, 2)
delta = torch.randn(b, L, d, device="cuda", dtype=torch.bfloat16).transpose(1, 2) * 0.5
bc = torch.randn(b, L, 2 * n, device="cuda", dtype=torch.bfloat16)
B, C = bc[..., :n].transpose(1, 2), bc[..., n:].transpose(1, 2)
A = -torch.rand(d, n, device="cuda") - 0.1
D, bias = torch.randn(d, device="cuda"), torch.randn(d, device="cuda") * 0.3
ins = [t.detach().requires_grad_() for t in (u, delta, A, B, C, D, z, bias)]
g = torch.randn(b, d, L, device="cuda", dtype=torch.bfloat16)
grads, ms = {}, {}
for kind in ("chunk", "seq"):
    ts.BWD_KERNEL = kind
    out = ts.selective_scan_triton(*ins, True, False)
    grads[kind] = torch.autograd.grad(out, ins, g)

    def run():
        o = ts.selective_scan_triton(*ins, True, False)
        torch.autograd.grad(o, ins, g)

    ms[kind] = triton.testing.do_bench(run)
ok = True
names = ["u", "delta", "A", "B", "C", "D", "z", "bias"]
for name, a, c in zip(names, grads["seq"], grads["chunk"]):
    rel = ((a.float() - c.float()).norm() / c.float().norm().clamp_min(1e-6)).item()
    ok &= rel < 2e-2
    print(f"{name}: rel diff seq vs chunk {rel:.2e}")
print(f"fwd+bwd ms at (b={b}, d={d}, L={L}): chunk {ms['chunk']:.3f}  seq {ms['seq']:.3f}")
sys.exit(0 if ok else 1)
