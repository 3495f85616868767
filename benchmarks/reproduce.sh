#!/usr/bin/env bash
# Regenerate the measurements behind BENCHMARKS.md and RESULTS.md on one CUDA GPU (the published
# numbers: one H100 80GB). Run from the repository root; every command it runs is printed first,
# and each benchmark prints its device, dtype and batch size.
#
#   bash benchmarks/reproduce.sh                   # scan, speed, train, merge (no data needed)
#   CIFAR10=/path/to/cifar10 bash benchmarks/reproduce.sh cifar-train cifar-tables cifar-finetune
#   VIM_REPO=/path/to/hustvl/Vim bash benchmarks/reproduce.sh official
#
# Parts (in BENCHMARKS.md / RESULTS.md order):
#   scan            the selective scan alone: Triton against the PyTorch reference, forward and
#                   backward, and over sizes                  -> $GPU_OUT/scan_*.json
#   speed           `vimstm bench`, dense: vim_tiny/small/base in fp32 and fp16, bf16, CUDA graph,
#                   the reference scan                        -> $GPU_OUT/bench_MODEL_DTYPE*.json
#   train           the training step (`vimstm bench --train`, eager and compiled), its profile
#                   by kernel group, and a 2-epoch CIFAR-10 probe with NGPU processes when
#                   CIFAR10 is set                  -> $GPU_OUT/train_step_*.json,
#                                                      $GPU_OUT/profile_train_vim_tiny.json
#   merge           the merging speed target (STM at 60% of the GFLOPs, 3 models), then the
#                   schedule sweeps of merge_overhead.py      -> $GPU_OUT/bench_MODEL_stm.json,
#                                                                $GPU_OUT/merge_speed_*.json
#   cifar-train     train vim_tiny_cifar10 from scratch (scripts/train_cifar10.sh) and export its
#                   EMA weights                               -> $CIFAR_OUT/train_log.jsonl
#   cifar-tables    the training-free tables, default and per-block schedules, and the plot
#                                                             -> $CIFAR_OUT/cifar_results*.{json,csv}
#   cifar-finetune  1-epoch distillation fine-tunes at 60% of the GFLOPs, one per method
#                                                             -> $CIFAR_OUT/finetune_1epoch.json
#   cifar-calibrate `vimstm calibrate`'s schedule (256 training images) against the default
#                   at 60% and 80% of the GFLOPs, STM, the whole test split
#                                                             -> $CIFAR_OUT/calibrated_schedule.json
#   official        equivalence with the official hustvl/Vim model code (CPU is enough)
#
# Environment: CIFAR10 (a folder with train.tar.xz and test.tar.xz, or train/ and test/ class
# folders), VIM_REPO (a hustvl/Vim checkout), RESULTS (default results), GPU_OUT (default
# $RESULTS/h100), CIFAR_OUT (default $RESULTS/cifar10), PYTHON (default python3), WEIGHTS (the
# CIFAR-10 weights the tables and fine-tunes use; default: the bundled ones, or the ones
# cifar-train wrote). scripts/train_cifar10.sh documents its own variables (EPOCHS, ...).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
RESULTS=${RESULTS:-results}
GPU_OUT=${GPU_OUT:-$RESULTS/h100}
CIFAR_OUT=${CIFAR_OUT:-$RESULTS/cifar10}
RUN=${RUN:-runs/vim_tiny_cifar10}
BENCH=(--batch-size 256 --warmup 5 --runs 20)

run() { echo "+ $*" >&2; "$@"; }
need() { [ -n "${!1:-}" ] || { echo "reproduce.sh: $2: set $1" >&2; exit 2; }; }
weights() {  # the CIFAR-10 weights: $WEIGHTS, else cifar-train's export, else the bundled ones
  if [ -n "${WEIGHTS:-}" ]; then echo "--checkpoint $WEIGHTS"
  elif [ -f "$RUN/vim_tiny_cifar10.safetensors" ]; then echo "--checkpoint $RUN/vim_tiny_cifar10.safetensors"
  fi
}

part_scan() {
  run $PY benchmarks/scan.py --backward --reference --sizes 128,384,197,16 \
    --json "$GPU_OUT/scan_vs_reference.json"
  run $PY benchmarks/scan.py --json "$GPU_OUT/scan_sizes.json" --sizes 256,384,197,16 \
    128,768,197,16 128,1536,197,16 128,384,99,16 128,384,50,16 64,384,785,16
}

part_speed() {
  for m in vim_tiny vim_small vim_base; do
    for dt in fp32 fp16; do
      run $PY -m vimstm.cli bench --model $m --dtype $dt "${BENCH[@]}" \
        --json "$GPU_OUT/bench_${m}_${dt}.json"
    done
  done
  run $PY -m vimstm.cli bench --model vim_tiny --dtype bf16 "${BENCH[@]}" \
    --json "$GPU_OUT/bench_vim_tiny_bf16.json"
  run $PY -m vimstm.cli bench --model vim_tiny --dtype fp16 --cuda-graph "${BENCH[@]}" \
    --json "$GPU_OUT/bench_vim_tiny_fp16_graph.json"
  run $PY -m vimstm.cli bench --model vim_tiny --dtype fp32 --scan-backend reference \
    --batch-size 256 --warmup 1 --runs 3 --json "$GPU_OUT/bench_vim_tiny_fp32_reference.json"
}

part_train() {
  for mb in vim_tiny:256 vim_small:128 vim_base:64 vim_tiny_cifar10:256; do
    m=${mb%:*} b=${mb#*:}
    run $PY -m vimstm.cli bench --train --model "$m" --batch-size "$b" --dtype bf16 \
      --json "$GPU_OUT/train_step_$m.json"
    run $PY -m vimstm.cli bench --train --model "$m" --batch-size "$b" --dtype bf16 --compile \
      --json "$GPU_OUT/train_step_compiled_$m.json"
  done
  run $PY benchmarks/profile_train.py --model vim_tiny --batch-size 256 \
    --json "$GPU_OUT/profile_train_vim_tiny.json"
  if [ -n "${CIFAR10:-}" ]; then  # speed of the real loop, NGPU processes, 2 epochs
    EPOCHS=2 WEIGHTS=$RUN/probe.safetensors run bash scripts/train_cifar10.sh "$CIFAR10" \
      "$RUN-probe${NGPU:-1}"
  fi
}

part_merge() {
  for m in vim_tiny vim_small vim_base; do
    run $PY -m vimstm.cli bench --model $m --dtype fp16 "${BENCH[@]}" --method stm --flops 0.6 \
      --json "$GPU_OUT/bench_${m}_stm.json"
  done
  local sweep=(benchmarks/merge_overhead.py --batch-size 256 --dtype fp16 --runs 20 --no-counts
               --ratios)
  run $PY "${sweep[@]}" --model vim_tiny --flops 0.6 --every 4 6 8 --shapes even geometric \
    --methods stm prune-top tome --cuda-graph --json "$GPU_OUT/merge_speed_vim_tiny_graph.json"
  run $PY "${sweep[@]}" --model vim_tiny --flops 0.6 --every 6 --shapes geometric \
    --methods stm tome --json "$GPU_OUT/merge_speed_vim_tiny_eager.json"
  run $PY "${sweep[@]}" --model vim_small --flops 0.6 --every 4 6 --shapes even geometric \
    --methods stm tome prune-top --cuda-graph --json "$GPU_OUT/merge_speed_vim_small_graph.json"
  run $PY benchmarks/merge_overhead.py --batch-size 256 --dtype fp16 --runs 20 --no-counts \
    --model vim_tiny --ratios 0.2 0.4 --every 4 --cuda-graph \
    --json "$GPU_OUT/merge_speed_vim_tiny_graph_ratios_every4.json"
}

part_cifar_train() {
  need CIFAR10 "cifar-train needs the CIFAR-10 data"
  # the published run (src/vimstm/weights/MODEL_CARD.md): 2 GPUs, 68 epochs, progressive
  # resizing from 16 px (2 x H200: 17.4 min)
  run env NGPU="${NGPU:-2}" EPOCHS="${EPOCHS:-68}" MIN_RES="${MIN_RES:-16}" \
    RES_RAMP="${RES_RAMP:-0.2 0.5}" WEIGHTS="$RUN/vim_tiny_cifar10.safetensors" \
    bash scripts/train_cifar10.sh "$CIFAR10" "$RUN"
  mkdir -p "$CIFAR_OUT"
  run cp "$RUN/log.jsonl" "$CIFAR_OUT/train_log.jsonl"
}

part_cifar_tables() {
  need CIFAR10 "cifar-tables needs the CIFAR-10 test split"
  local test="$CIFAR10/test.tar.xz"; [ -e "$test" ] || test="$CIFAR10/test"
  # shellcheck disable=SC2046
  run $PY benchmarks/cifar_results.py $(weights) --data "$test" --out "$CIFAR_OUT"
  # shellcheck disable=SC2046
  run $PY benchmarks/cifar_results.py $(weights) --data "$test" --out "$CIFAR_OUT" \
    --schedule per-block
  run $PY benchmarks/plot_cifar_results.py "$CIFAR_OUT"
}

part_cifar_finetune() {
  need CIFAR10 "cifar-finetune needs the CIFAR-10 data"
  local train="$CIFAR10/train.tar.xz" test="$CIFAR10/test.tar.xz"
  [ -e "$train" ] || { train="$CIFAR10/train"; test="$CIFAR10/test"; }
  local ck; ck=$(weights)
  for m in dense stm tome rmeeto prune-top prune-norm random; do
    local merge=(--method "$m" --flops 0.6); [ "$m" = dense ] && merge=()
    # shellcheck disable=SC2086
    run $PY -m vimstm.cli finetune --model vim_tiny_cifar10 ${ck} --data "$train" \
      --val-data "$test" --output "runs/finetune_$m" --epochs 1 --batch-size 256 --workers 12 \
      --aa rand-m6-n2-mstd0.5-inc1 --mixup 0.1 --reprob 0 --amp bf16 --no-progress "${merge[@]}"
  done
  run $PY - "$CIFAR_OUT/finetune_1epoch.json" <<'PY'
import json, sys
from pathlib import Path
import torch
runs = {}
for m in ("dense", "stm", "tome", "rmeeto", "prune-top", "prune-norm", "random"):
    log = Path(f"runs/finetune_{m}/log.jsonl")
    runs[m] = json.loads(log.read_text().splitlines()[-1]) if log.exists() else None
meta = {"command": "vimstm finetune --model vim_tiny_cifar10 --epochs 1 --batch-size 256 --aa "
        "rand-m6-n2-mstd0.5-inc1 --mixup 0.1 --reprob 0 --amp bf16 --method M --flops 0.6",
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}
Path(sys.argv[1]).write_text(json.dumps({"meta": meta, "runs": runs}, indent=1) + "\n")
print(f"wrote {sys.argv[1]}")
PY
}

part_cifar_calibrate() {
  need CIFAR10 "cifar-calibrate needs the CIFAR-10 data"
  local train="$CIFAR10/train.tar.xz" test="$CIFAR10/test.tar.xz"
  [ -e "$train" ] || { train="$CIFAR10/train"; test="$CIFAR10/test"; }
  # shellcheck disable=SC2046
  run $PY benchmarks/calibrated_schedule.py $(weights) --train "$train" --test "$test" \
    --device cuda --calib-images 256 --flops 0.6,0.8 --batch-size 256 --workers 8 --amp bf16 \
    --out "$CIFAR_OUT/calibrated_schedule.json"
}

part_official() {
  need VIM_REPO "official needs a hustvl/Vim checkout"
  run $PY benchmarks/check_official.py --vim-repo "$VIM_REPO"
}

parts=("$@")
[ ${#parts[@]} -gt 0 ] || parts=(scan speed train merge)
for p in "${parts[@]}"; do
  case $p in
    scan|speed|train|merge|cifar-train|cifar-tables|cifar-finetune|cifar-calibrate|official) ;;
    *) echo "reproduce.sh: unknown part '$p' (see the header of $0)" >&2; exit 2 ;;
  esac
done
mkdir -p "$GPU_OUT"
if [ "${parts[*]}" != official ]; then
  if ! $PY -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    echo "reproduce.sh: no CUDA device visible; these parts measure on a GPU" \
         "(only 'official' runs on the CPU)" >&2
    exit 2
  fi
  $PY -c "import torch; print('device:', torch.cuda.get_device_name(), '| torch', torch.__version__)"
fi
for p in "${parts[@]}"; do
  echo "== $p" >&2
  "part_${p//-/_}"
done
