"""Throughput of a whole model (``vimstm bench``), following ToMe's benchmark protocol.

Random input, ``torch.no_grad()``, eval mode, a warm-up, device synchronisation around every
timed run, the median images/s over the timed runs, and the peak device memory. With ``--method``
the dense and the merged model are measured in the same process, one after the other.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from typing import Any

import torch
from torch import Tensor, nn

from vimstm.errors import ConfigError
from vimstm.runtime import COMPILE_MODES, DTYPES, compile_mode, compiled, mark_step, sync

SPREAD_LIMIT = 0.10  # relative interquartile range above which a speed-up is called rough


def _device(device: str | torch.device) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA device is visible; "
                          "use --device cpu")
    return dev


def relative_spread(seconds: list[float]) -> float:
    """Interquartile range over median of timings (0 for fewer than 2)."""
    if len(seconds) < 2:
        return 0.0
    q = statistics.quantiles(seconds, n=4, method="inclusive")
    return (q[2] - q[0]) / statistics.median(seconds)


def measure_throughput(
    model: nn.Module,
    batch_size: int = 256,
    img_size: int | None = None,
    dtype: str = "fp32",
    device: str | torch.device = "cuda",
    warmup: int = 10,
    runs: int = 30,
    cuda_graph: bool = False,
    compile: bool | str = False,
    desc: str | None = None,
) -> dict[str, Any]:
    """Median images/s of ``model`` on random input (fp16/bf16 run under autocast).

    Args:
        model: the model (moved to ``device``; dense or patched).
        batch_size: images per forward.
        img_size: input size (default: the model's).
        dtype: ``fp32``, or ``fp16``/``bf16`` under autocast.
        device: ``cuda`` or ``cpu``.
        warmup: untimed forwards first (and CUDA-graph capture).
        runs: timed forwards (their median counts).
        cuda_graph: replay one captured CUDA graph per forward (CUDA only).
        compile: run the model through ``torch.compile(fullgraph=True)`` (the warm-up
            compiles); True or a mode of :data:`COMPILE_MODES`.
        desc: show a progress bar so labelled.

    Returns:
        images_per_s, ms_per_batch (median), spread (interquartile range / median of the run
        times), peak_mem_mb (None off CUDA), dtype, batch_size, device_name, runs,
        cuda_graph (whether a CUDA graph was replayed) and compile (the mode, or None).
    """
    dev, img_size, in_chans = _setup(model, batch_size, img_size, dtype, device, warmup, runs)
    model = model.to(dev).eval()
    _check_graphs(cuda_graph, compile)
    run_model = compiled(model, compile)
    x = torch.randn(batch_size, in_chans, img_size, img_size, device=dev)
    amp_dtype = DTYPES[dtype]
    use_amp = amp_dtype != torch.float32

    def step() -> torch.Tensor:
        mark_step(compile)
        with torch.autocast(dev.type, dtype=amp_dtype, enabled=use_amp):
            return run_model(x)

    graph = None
    with torch.no_grad():
        if dev.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(dev)
        for _ in range(max(warmup, 1 if cuda_graph else 0, 2 if compile else 0)):
            step()
        sync(dev)
        if cuda_graph:
            if dev.type != "cuda":
                raise ConfigError("--cuda-graph needs a CUDA device")
            graph = torch.cuda.CUDAGraph()
            stream = torch.cuda.Stream(dev)
            stream.wait_stream(torch.cuda.current_stream(dev))
            try:
                with torch.cuda.stream(stream):
                    step()
                    with torch.cuda.graph(graph, stream=stream):
                        step()
            except RuntimeError as e:  # a host sync or CPU work inside the forward
                raise ConfigError(
                    "this model's forward cannot be captured in a CUDA graph (it synchronises "
                    f"with the host: {str(e).splitlines()[0][:120]}); run without --cuda-graph"
                ) from None
            torch.cuda.current_stream(dev).wait_stream(stream)
            sync(dev)
            run_once = graph.replay
        else:
            run_once = step  # type: ignore[assignment]
        times = _timed(run_once, runs, dev, desc, "run")
    return _result(times, dev, dtype, batch_size, cuda_graph=graph is not None,
                   compile=compile_mode(compile))


def _check_graphs(cuda_graph: bool | None, compile: bool | str | None) -> None:
    """Refuse our own CUDA-graph capture on top of ``reduce-overhead``, which replays
    graphs itself."""
    if cuda_graph and compile_mode(compile) == "reduce-overhead":
        raise ConfigError("--compile reduce-overhead replays CUDA graphs itself; drop "
                          "--cuda-graph or pick another compile mode")


def measure_training(
    model: nn.Module,
    batch_size: int = 256,
    img_size: int | None = None,
    dtype: str = "bf16",
    device: str | torch.device = "cuda",
    warmup: int = 3,
    runs: int = 10,
    compile: bool | str = False,
    desc: str | None = None,
) -> dict[str, Any]:
    """Median images/s of one training step: forward, cross-entropy, backward, AdamW step.

    Random images and labels, train mode, fp16/bf16 under autocast (fp16 with a grad scaler),
    fused AdamW on CUDA; ``compile`` runs the model through ``torch.compile(fullgraph=True)``
    (True or a mode of :data:`COMPILE_MODES`). The peak memory covers the timed steps,
    optimizer state included; with ``reduce-overhead`` it covers the warm-up as well, where
    the CUDA graphs are recorded and their memory pool allocated (replays allocate nothing).
    Returns the keys of :func:`measure_throughput` plus ``train: True``.
    """
    dev, img_size, _ = _setup(model, batch_size, img_size, dtype, device, warmup, runs)
    step, _, _ = training_step(model, batch_size, img_size, dtype, dev, compile)
    graphs = compile_mode(compile) == "reduce-overhead"
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
    for _ in range(max(warmup, 2 if compile else 0)):  # compile: the first steps compile
        step()
    sync(dev)
    if dev.type == "cuda" and not graphs:
        torch.cuda.reset_peak_memory_stats(dev)
    times = _timed(step, runs, dev, desc, "step")
    return _result(times, dev, dtype, batch_size, cuda_graph=False,
                   compile=compile_mode(compile), train=True)


def training_step(model: nn.Module, batch_size: int, img_size: int, dtype: str,
                  device: torch.device,
                  compile: bool | str = False) -> tuple[Any, Tensor, Tensor]:
    """``(step, images, labels)``: ``step()`` trains ``model`` (moved to ``device``, train
    mode) one step on fixed random images and labels: forward under autocast (fp16 with a grad
    scaler), cross-entropy, backward, fused AdamW on CUDA; ``compile`` runs the model through
    ``torch.compile(fullgraph=True)``."""
    in_chans = int(model.patch_embed.proj.in_channels)  # type: ignore[union-attr]
    num_classes = int(getattr(model, "num_classes", 1000)) or 1000
    model = model.to(device).train()
    run_model = compiled(model, compile)
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(batch_size, in_chans, img_size, img_size, device=device, generator=gen)
    y = torch.randint(0, num_classes, (batch_size,), device=device, generator=gen)
    amp_dtype = DTYPES[dtype]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=device.type == "cuda")
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    def step() -> None:
        mark_step(compile)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype != torch.float32):
            loss = nn.functional.cross_entropy(run_model(x), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)

    return step, x, y


def _setup(model: nn.Module, batch_size: int, img_size: int | None, dtype: str,
           device: str | torch.device, warmup: int,
           runs: int) -> tuple[torch.device, int, int]:
    """Checked arguments: (device, input size, input channels)."""
    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if batch_size < 1 or runs < 1 or warmup < 0:
        raise ConfigError("batch_size and runs must be >= 1 and warmup >= 0")
    dev = _device(device)
    if img_size is None:
        img_size = int(model.patch_embed.img_size[0])  # type: ignore[union-attr, index]
    return dev, img_size, int(model.patch_embed.proj.in_channels)  # type: ignore[union-attr]


def _timed(fn: Any, runs: int, dev: torch.device, desc: str | None, unit: str) -> list[float]:
    """Seconds of each of ``runs`` calls of ``fn``, the device synchronised around each."""
    from tqdm import tqdm

    times = []
    quiet = desc is None or not sys.stderr.isatty()  # a log file gets no carriage returns
    for _ in tqdm(range(runs), desc=desc, unit=unit, disable=quiet, leave=False):
        sync(dev)
        t0 = time.perf_counter()
        fn()
        sync(dev)
        times.append(time.perf_counter() - t0)
    return times


def _result(times: list[float], dev: torch.device, dtype: str, batch_size: int,
            **flags: Any) -> dict[str, Any]:
    """The result of a timing: median speed, spread, peak memory, what was measured."""
    med = statistics.median(times)
    peak = torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    return {
        "images_per_s": batch_size / med,
        "ms_per_batch": med * 1e3,
        "spread": relative_spread(times),
        "peak_mem_mb": peak,
        "dtype": dtype,
        "batch_size": batch_size,
        "device_name": name,
        "runs": len(times),
        **flags,
    }


def register(subparsers: Any) -> None:
    """Add the ``bench`` command."""
    p = subparsers.add_parser(
        "bench", help="measure images/s of a model (dense, or dense vs merged with --method)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from vimstm.engine.model_args import add_model_args

    add_model_args(p, weights="optional", model_default="vim_tiny")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--dtype", choices=tuple(DTYPES), default="fp32",
                   help="fp16/bf16 run the model under autocast")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed runs first (default 10; 3 with --train)")
    p.add_argument("--runs", type=int, default=None,
                   help="timed runs, the median is reported (default 30; 10 with --train)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--cuda-graph", action=argparse.BooleanOptionalAction, default=None,
                   help="capture the forward once and time graph replays (default: on CUDA; "
                        "eager vim_tiny at batch 256 is bound by kernel launches on the host, "
                        "so without graphs fewer tokens barely show: BENCHMARKS.md)")
    p.add_argument("--tf32", action="store_true",
                   help="allow TF32 matrix products in fp32 runs (off: true fp32)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the results here")
    p.add_argument("--compile", nargs="?", const="default", default=None,
                   choices=COMPILE_MODES, metavar="MODE",
                   help="run the model through torch.compile(fullgraph=True) (compiles first); "
                        "MODE: default, reduce-overhead (also CUDA-graph replays), "
                        "max-autotune, max-autotune-no-cudagraphs")
    p.add_argument("--train", action="store_true",
                   help="time training steps (forward + backward + AdamW, train mode) instead "
                        "of inference; --dtype bf16/fp16 trains under autocast")
    from vimstm.merge import add_merge_args

    add_merge_args(p)
    p.set_defaults(func=run)


def _operating_point(model: nn.Module) -> dict[str, Any] | None:
    """Mean token reduction, ratio, tokens in the last block and both GMACs, or None if they
    cannot be counted."""
    from vimstm.flops import operating_point

    try:
        return operating_point(model)
    except Exception:  # the FLOP counter must not break a speed measurement
        return None


def _tokens_per_block(model: nn.Module, args: argparse.Namespace, dev: torch.device) -> list[int]:
    img = args.img_size or int(model.patch_embed.img_size[0])  # type: ignore[union-attr, index]
    x = torch.randn(1, int(model.patch_embed.proj.in_channels), img, img, device=dev)
    with torch.no_grad():
        model(x)
    return list(getattr(model, "merge_info", {}).get("tokens_per_block", []))


def _command_line(args: argparse.Namespace) -> str:
    """The bench command that reproduces this run, every option spelled out."""
    parts = ["vimstm", "bench"]
    for key, value in sorted(vars(args).items()):
        if key in ("func", "command") or value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            parts.append(flag)
        elif isinstance(value, (list, tuple)):
            for v in value:
                parts += [flag, shlex.quote(str(v))]
        else:
            parts += [flag, shlex.quote(str(value))]
    return " ".join(parts)


def run(args: argparse.Namespace) -> int:
    from vimstm.engine.model_args import model_from_args
    from vimstm.merge import merge_method

    if args.json:
        from vimstm.engine.paths import check_output_file

        check_output_file(args.json, "--json")
    method = merge_method(args)
    dev = _device(args.device)
    if args.train and args.cuda_graph:
        raise ConfigError("--cuda-graph times inference only; drop it with --train")
    _check_graphs(args.cuda_graph, args.compile)  # before the model is built
    if args.cuda_graph is None:
        args.cuda_graph = (dev.type == "cuda" and not args.train
                           and args.compile != "reduce-overhead")
    if args.warmup is None:
        args.warmup = 3 if args.train else 10
    if args.runs is None:
        args.runs = 10 if args.train else 30
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = bool(args.tf32)
        torch.backends.cudnn.allow_tf32 = bool(args.tf32)
    model = model_from_args(args, weights="optional")
    from vimstm.ops import resolve_backend

    backend = resolve_backend(args.scan_backend, dev.type)
    print("command:", _command_line(args))
    kw = dict(batch_size=args.batch_size, img_size=args.img_size, dtype=args.dtype, device=dev,
              warmup=args.warmup, runs=args.runs, compile=args.compile)
    if not args.train:
        kw["cuda_graph"] = args.cuda_graph
    measure = measure_training if args.train else measure_throughput
    results: dict[str, Any] = {"model": args.model, "scan_backend": backend, "tf32": args.tf32,
                               "train": bool(args.train), "command": _command_line(args)}
    variants = [("dense", model)]
    if method is not None:
        import copy

        from vimstm.merge import patch_from_args

        merged = patch_from_args(copy.deepcopy(model), args)
        variants.append((method, merged))
    rows = []
    for label, m in variants:
        m = m.to(dev)
        r = measure(m, desc=f"{label} {'training' if args.train else 'speed'}",
                    **kw)  # type: ignore[arg-type]
        point = _operating_point(m)
        r["gmacs_literature"] = point["gmacs_literature"] if point else None
        r["gmacs"] = point["gmacs_full"] if point else None
        r["operating_point"] = point
        if label != "dense":
            r["tokens_per_block"] = _tokens_per_block(m, args, dev)
        results[label] = r
        rows.append((label, r))
        m.cpu()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    first = rows[0][1]
    print(f"device: {first['device_name']}  dtype: {args.dtype}  batch: {args.batch_size}  "
          f"scan: {backend}  cuda_graph: {first['cuda_graph']}  tf32: {args.tf32}  "
          f"{'training step (fwd + bwd + AdamW)' if args.train else 'inference'}")
    print(f"{'model':12s} {'mean red.':>9s} {'ratio':>6s} {'last':>5s} {'GMACs lit':>9s} "
          f"{'GMACs full':>10s} {'images/s':>10s} {'ms/batch':>9s} {'spread':>7s} "
          f"{'peak MB':>9s} {'speed-up':>8s}")
    base = rows[0][1]["images_per_s"]
    for label, r in rows:
        gl = f"{r['gmacs_literature']:.3f}" if r.get("gmacs_literature") is not None else "-"
        g = f"{r['gmacs']:.3f}" if r.get("gmacs") is not None else "-"
        peak = "-" if r["peak_mem_mb"] is None else f"{r['peak_mem_mb']:.0f}"
        p = r.get("operating_point")
        red, rat, last = ((f"{p['mean_token_reduction']:.3f}", f"{p['ratio']:.3f}",
                           str(p["tokens_last_block"])) if p else ("-", "-", "-"))
        print(f"{label:12s} {red:>9s} {rat:>6s} {last:>5s} {gl:>9s} {g:>10s} "
              f"{r['images_per_s']:10.1f} {r['ms_per_batch']:9.2f} "
              f"{r['spread']:7.1%} {peak:>9s} {r['images_per_s'] / base:7.2f}x")
        if "tokens_per_block" in r:
            print(f"  tokens per block: {r['tokens_per_block']}")
    if len(rows) > 1:
        results["speedup"] = rows[1][1]["images_per_s"] / base
        worst = max(r["spread"] for _, r in rows)
        if worst > SPREAD_LIMIT:
            print(f"NOTE: run times spread by {worst:.0%} (interquartile range / median) > "
                  f"{SPREAD_LIMIT:.0%}: the speed-up is not supported by this timing (other "
                  "processes on the device or host?); rerun with more --runs on an idle machine")
        d, mg = rows[0][1].get("gmacs_literature"), rows[1][1].get("gmacs_literature")
        if d and mg:
            cut = d / mg
            print(f"GFLOPs {100 * (1 - mg / d):.1f}% fewer ({cut:.2f}x): speed-up "
                  f"{results['speedup']:.2f}x = {results['speedup'] / cut:.0%} of the reduction")
    if args.json:
        from vimstm.models.checkpoint import atomic_write

        atomic_write(args.json, json.dumps(results, indent=2) + "\n")
    return 0
