"""On the GPU: the fused merge kernels give the same merged logits as the PyTorch path."""

import torch

import vimstm

torch.manual_seed(0)
m = vimstm.create_model("vim_tiny").cuda().eval()
x = torch.randn(8, 3, 224, 224, device="cuda")
for method in ("stm", "random", "prune-norm", "prune-top"):
    opts = {"seed": 0} if method == "random" else {}
    vimstm.patch(m, method=method, flops=0.6, every=4, **opts)
    with torch.no_grad():
        m.set_scan_backend("reference")
        ref = m(x)
        m.set_scan_backend("auto")
        out = m(x)
    err = (out - ref).abs().max().item()
    print(f"{method}: max |logit diff| triton vs reference {err:.2e} "
          f"tokens {m.merge_info['tokens_per_block'][-1]}", "OK" if err < 1e-2 else "MISMATCH")
    vimstm.unpatch(m)
