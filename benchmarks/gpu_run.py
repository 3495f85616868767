"""One GPU session: correctness of the Triton kernels, tile sweeps, model throughput, training.

Run on the GPU machine: ``PYTHONPATH=src python benchmarks/gpu_run.py --out DIR [--parts ...]``
(parts: check, scan, bwd, models, train). The timing lambdas are called inside their loop.
"""
# ruff: noqa: B023

from __future__ import annotations

import argparse
import contextlib
import json
import time

import torch
import triton

from vimstm.ops import triton_scan as ts
from vimstm.ops.scan_ref import causal_conv1d_ref, selective_scan_ref

LOG: list[str] = []


def say(*a) -> None:
    s = " ".join(str(x) for x in a)
    print(s, flush=True)
    LOG.append(s)


def rel(a, b) -> float:
    return ((a.float() - b.float()).norm() / max(b.float().norm().item(), 1e-3)).item()


def scan_inputs(b, d, n, L, dtype, channels_last=False, grad=False):
    dev = "cuda"
    def r(*s):
        return torch.randn(*s, device=dev)
    if channels_last:
        u = r(b, L, d).transpose(1, 2)
        delta = (r(b, L, d) * 0.5).transpose(1, 2)
        z = r(b, L, d).transpose(1, 2)
        bc = r(b, L, 2 * n)
        B = bc[..., :n].transpose(1, 2)
        C = bc[..., n:].transpose(1, 2)
    else:
        u, delta, z = r(b, d, L), r(b, d, L) * 0.5, r(b, d, L)
        B, C = r(b, n, L), r(b, n, L)
    A = -torch.exp(torch.log(torch.arange(1, n + 1, device=dev).float()).repeat(d, 1))
    D = torch.ones(d, device=dev)
    bias = torch.rand(d, device=dev) * -4 - 2
    ts_ = [u.to(dtype), delta.to(dtype), A, B.to(dtype), C.to(dtype), D, z.to(dtype), bias]
    if grad:
        ts_ = [t.detach().requires_grad_() for t in ts_]
    return ts_


def check_correctness() -> bool:
    ok = True
    for kern in ("seq", "chunk"):
      ts.FWD_KERNEL = kern
      ts.BWD_KERNEL = kern
      ts.FWD_T = ts.BWD_T
      for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for rev in (False, True):
            for L in (1, 7, 197, 257):
                ins = scan_inputs(2, 96, 16, L, dtype, channels_last=(L == 197), grad=True)
                o1 = selective_scan_ref(*ins, True, rev)
                g = torch.randn_like(o1)
                g1 = torch.autograd.grad(o1, ins, g)
                o2 = ts.selective_scan_triton(*ins, True, rev)
                g2 = torch.autograd.grad(o2, ins, g)
                tol = 2e-5 if dtype == torch.float32 else 2e-2
                errs = [rel(o2, o1)] + [rel(a, b) for a, b in zip(g2, g1)]
                limit = tol * (50 if dtype == torch.float32 else 1)
                bad = max(errs) > limit or any(e != e for e in errs)
                ok &= not bad
                if bad or L == 197:
                    say(f"scan {kern} {dtype} rev={rev} L={L} out/grad rel errs",
                        [f"{e:.1e}" for e in errs], "BAD" if bad else "ok")
    for rev in (False, True):
        x = torch.randn(2, 96, 197, device="cuda", requires_grad=True)
        w = torch.randn(96, 1, 4, device="cuda", requires_grad=True)
        bb = torch.randn(96, device="cuda", requires_grad=True)
        o1 = causal_conv1d_ref(x, w, bb, rev)
        g = torch.randn_like(o1)
        g1 = torch.autograd.grad(o1, [x, w, bb], g)
        o2 = ts.causal_conv1d_triton(x, w, bb, rev)
        g2 = torch.autograd.grad(o2, [x, w, bb], g)
        errs = [rel(o2, o1)] + [rel(a, b) for a, b in zip(g2, g1)]
        say(f"conv rev={rev}", [f"{e:.1e}" for e in errs])
        ok &= max(errs) < 1e-4
    ts.FWD_KERNEL = "seq"
    ts.BWD_KERNEL = "seq"
    # fused direction sum
    ins = scan_inputs(2, 96, 16, 197, torch.float32, channels_last=True, grad=True)
    yf = selective_scan_ref(*ins, True, False)
    o1 = (yf + selective_scan_ref(*ins, True, True)) / 2
    g = torch.randn_like(o1)
    g1 = torch.autograd.grad(o1, ins, g)
    yf2 = ts.selective_scan_triton(*ins, True, False)
    o2 = ts.selective_scan_triton(*ins, True, True, out_add=yf2, out_scale=0.5)
    g2 = torch.autograd.grad(o2, ins, g)
    errs = [rel(o2, o1)] + [rel(a, b) for a, b in zip(g2, g1)]
    say("fused fwd+bwd sum", [f"{e:.1e}" for e in errs])
    ok &= max(errs) < 1e-4
    from vimstm.models.vim import RMSNorm
    from vimstm.ops.triton_norm import add_rmsnorm_triton
    norm = RMSNorm(384).cuda()
    norm.weight.data.uniform_(0.5, 1.5)
    x = torch.randn(8, 197, 384, device="cuda", dtype=torch.float16)
    r = torch.randn(8, 197, 384, device="cuda")
    r1 = r + x.float()
    o1 = norm(r1, out_dtype=x.dtype)
    o2, r2 = add_rmsnorm_triton(x, r, norm.weight, norm.eps, x.dtype)
    say("add+rmsnorm", f"{rel(o2, o1):.1e} {rel(r2, r1):.1e}")
    ok &= rel(o2, o1) < 1e-3
    # whole model: triton vs reference logits
    from vimstm.models.registry import create_model
    m = create_model("vim_small", scan_backend="reference").cuda().eval()
    x = torch.randn(4, 3, 224, 224, device="cuda")
    with torch.no_grad():
        a = m(x)
        m.set_scan_backend("triton")
        b = m(x)
    say("vim_small logits triton vs reference: max abs", f"{(a - b).abs().max().item():.2e}",
        "scale", f"{a.abs().max().item():.2f}")
    ok &= (a - b).abs().max().item() < 1e-3
    return ok


def bench_scan(results: dict) -> None:
    from triton.testing import do_bench

    b, d, L, n = 128, 384, 197, 16
    best = {}
    for cl in (False, True):
        ins = scan_inputs(b, d, n, L, torch.float32, channels_last=cl)
        ts.FWD_KERNEL = "seq"
        for cfg in [(32, 4, 1), (16, 2, 1), (16, 1, 1), (64, 4, 1), (32, 2, 1), (64, 8, 1),
                    (16, 2, 4), (32, 4, 4), (32, 2, 2), (8, 1, 1)]:
            ts.SEQ_BLOCK_D, ts.SEQ_WARPS, ts.SEQ_UNROLL = cfg
            try:
                ms = do_bench(lambda: ts._scan_forward(*ins, True, False, False), warmup=25,
                              rep=100, return_mode="median")
            except Exception as e:
                say(f"cfg {cfg} failed: {type(e).__name__}: {str(e)[:200]}")
                continue
            results[f"seq cl={cl} {cfg}"] = ms
            best.setdefault(cl, (1e9, None))
            if ms < best[cl][0]:
                best[cl] = (ms, cfg)
            say(f"seq fwd (128,384,197,16) fp32+z channels_last={cl} cfg={cfg}: {ms:.3f} ms")
        ts.FWD_KERNEL = "chunk"
        ts.FWD_BLOCK_D, ts.FWD_T, ts.FWD_WARPS = 32, 8, 4
        ms = do_bench(lambda: ts._scan_forward(*ins, True, False, False), return_mode="median")
        say(f"chunk fwd cl={cl} (32,8,4): {ms:.3f} ms")
    ts.FWD_KERNEL = "seq"
    ts.SEQ_BLOCK_D, ts.SEQ_WARPS, ts.SEQ_UNROLL = best[True][1]
    results["best_seq"] = best
    say("best seq cfg (channels-last):", best[True], "(channel-first):", best[False])
    # shrinking token counts: no recompile, time per length
    def ncache():
        return sum(len(c[0]) if isinstance(c, tuple) else len(c)
                   for c in ts._scan_fwd_seq_kernel.device_caches.values())

    try:
        before = ncache()
    except Exception:
        before = None
    for Ln in (197, 160, 121, 99, 64, 33):
        ins = scan_inputs(b, d, n, Ln, torch.float32, channels_last=True)
        ms = do_bench(lambda: ts._scan_forward(*ins, True, False, False), return_mode="median")
        say(f"seq fwd L={Ln}: {ms:.3f} ms")
    if before is not None:
        with contextlib.suppress(Exception):
            say("seq kernel compiled variants before/after the lengths:", before, ncache())


def bench_bwd(results: dict) -> None:
    from triton.testing import do_bench

    b, d, L, n = 128, 384, 197, 16
    ins = scan_inputs(b, d, n, L, torch.float32, channels_last=True, grad=True)
    timing: dict = {}
    # (kernel, BLOCK_D, T, warps); T is also where the forward saves the states
    cfgs = [("seq", 16, 8, 1), ("seq", 16, 16, 1), ("seq", 32, 8, 1), ("seq", 32, 8, 2),
            ("seq", 8, 8, 1), ("seq", 16, 4, 1), ("chunk", 8, 8, 2), ("chunk", 4, 8, 1),
            ("chunk", 8, 8, 1), ("chunk", 4, 8, 2), ("chunk", 8, 4, 2), ("chunk", 4, 4, 1),
            ("chunk", 16, 8, 4)]
    for cfg in cfgs:
        kern, block_d, t, warps = cfg
        ts.BWD_KERNEL, ts.BWD_T = kern, t
        if kern == "seq":
            ts.BWD_SEQ_BLOCK_D, ts.BWD_SEQ_WARPS = block_d, warps
        else:
            ts.BWD_BLOCK_D, ts.BWD_WARPS = block_d, warps
        out = ts.selective_scan_triton(*ins, True, False)
        g = torch.randn_like(out)
        ms = do_bench(lambda: torch.autograd.grad(out, ins, g, retain_graph=True), warmup=25,
                      rep=100, return_mode="median")
        results[f"bwd {cfg}"] = ms
        timing[cfg] = ms
        say(f"scan bwd (128,384,197,16) fp32+z cfg={cfg}: {ms:.3f} ms")
    for kern in ("chunk", "seq"):  # the seq kernel's best is set last: it is the default
        best = min((c for c in timing if c[0] == kern), key=timing.get)
        ts.BWD_KERNEL, ts.BWD_T = kern, best[2]
        if kern == "seq":
            ts.BWD_SEQ_BLOCK_D, ts.BWD_SEQ_WARPS = best[1], best[3]
        else:
            ts.BWD_BLOCK_D, ts.BWD_WARPS = best[1], best[3]
        say(f"best {kern} bwd", best)


def bench_models(results: dict) -> None:
    from vimstm.engine.benchmark import measure_throughput
    from vimstm.models.registry import create_model

    for name in ("vim_tiny", "vim_small", "vim_base"):
        m = create_model(name, scan_backend="triton").cuda()
        for dtype in ("fp32", "fp16", "bf16"):
            r = measure_throughput(m, batch_size=256, dtype=dtype, warmup=3, runs=10)
            results[f"{name} {dtype}"] = r
            say(f"{name} {dtype} b256: {r['images_per_s']:.1f} img/s, {r['peak_mem_mb']:.0f} MB")
        if name == "vim_tiny":
            r = measure_throughput(m, batch_size=256, dtype="fp16", warmup=3, runs=10,
                                   cuda_graph=True)
            say(f"{name} fp16 b256 cuda graph: {r['images_per_s']:.0f} img/s")
            torch.backends.cuda.matmul.allow_tf32 = True
            r = measure_throughput(m, batch_size=256, dtype="fp32", warmup=3, runs=10)
            torch.backends.cuda.matmul.allow_tf32 = False
            say(f"{name} fp32+tf32 b256: {r['images_per_s']:.0f} img/s")
            from torch.profiler import ProfilerActivity, profile
            x = torch.randn(256, 3, 224, 224, device="cuda")
            for dt in (torch.float32, torch.float16):
                with torch.no_grad(), torch.autocast("cuda", dtype=dt, enabled=dt != torch.float32):
                    m(x)
                    with profile(activities=[ProfilerActivity.CUDA]) as prof:
                        m(x)
                        torch.cuda.synchronize()
                tab = prof.key_averages().table(sort_by="cuda_time_total", row_limit=14,
                                                max_name_column_width=60)
                say(f"profile vim_tiny {dt}:\n" + tab)
        del m
        torch.cuda.empty_cache()


def bench_train(results: dict) -> None:
    from vimstm.models.registry import create_model

    for backend, bs, steps in (("triton", 128, 6), ("reference", 8, 3)):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        m = create_model("vim_small", scan_backend=backend).cuda().train()
        opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
        x = torch.randn(bs, 3, 224, 224, device="cuda")
        y = torch.randint(0, 1000, (bs,), device="cuda")
        times = []
        for _ in range(steps):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = torch.nn.functional.cross_entropy(m(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        t = sorted(times[1:])[len(times[1:]) // 2]
        mem = torch.cuda.max_memory_allocated() / 2**30
        results[f"train {backend}"] = dict(batch=bs, s_per_step=t, img_s=bs / t, peak_gb=mem)
        say(f"train vim_small bf16 {backend} batch {bs}: {t*1e3:.0f} ms/step, {bs/t:.0f} img/s, "
            f"peak {mem:.1f} GB")
        del m, opt
        torch.cuda.empty_cache()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--parts", default="check,scan,models,train")
    args = ap.parse_args()
    results: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                     "triton": triton.__version__}
    say(results)
    parts = args.parts.split(",")
    try:
        if "check" in parts:
            results["correct"] = check_correctness()
            say("CORRECT:", results["correct"])
        if "scan" in parts:
            bench_scan(results)
        if "bwd" in parts:
            bench_bwd(results)
        if "models" in parts:
            bench_models(results)
        if "train" in parts:
            bench_train(results)
    finally:
        with open(f"{args.out}/results.json", "w") as f:
            json.dump(results, f, indent=1, default=str)
        with open(f"{args.out}/log.txt", "w") as f:
            f.write("\n".join(LOG))


if __name__ == "__main__":
    main()
