#!/usr/bin/env bash
# Regenerate the measurements behind BENCHMARKS.md and RESULTS.md on one CUDA GPU (the published
# numbers: one H100 80GB). Run from the repository root; every command it runs is printed first,
# and each benchmark prints its device, dtype and batch size.
#
#   bash benchmarks/reproduce.sh                   # scan, speed, train, merge (no data needed)
#   CIFAR10=/path/to/cifar10 bash benchmarks/reproduce.sh cifar-train cifar-evidence cifar-finetune
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
#   cifar-train     train vim_tiny_cifar10 as bundled, its three stages (scripts/train_cifar10.sh),
#                   and export its EMA weights  -> $CIFAR_OUT/train_log.jsonl, train_log_stage{2,3}.jsonl
#   cifar-evidence  training-free, the whole test split (benchmarks/cifar_evidence.py): dense and
#                   every method at mean token reduction 0.17/0.27/0.36/0.46, ratio 0.2/0.4 and
#                   flops 0.8/0.6; STM ablations and the calibrated schedule (256 training
#                   images) at ratio 0.4, flops 0.6 and mean token reduction 0.36 / 0.4 (the
#                   papers' schedule); paired statistics against dense and STM;
#                   the plot and RESULTS.md-ready tables; with NGPU > 1 one shard per GPU,
#                   then merged      -> $CIFAR_OUT/evidence{.json,.csv,.png,.md,_correct.npz}
#   cifar-finetune  distillation fine-tunes (`vimstm finetune`) of every method at mean token
#                   reduction 0.2 and 0.4 and the dense control (`--method dense`), then their evaluation with the
#                   same statistics (FT_* variables below; the plan and its time are printed;
#                   with NGPU > 1 the runs are dealt over the GPUs)
#                                  -> $FT_RUNS/*/, $CIFAR_OUT/evidence_finetune{.json,.csv,.png,
#                                     .md,_correct.npz}
#   official        equivalence with the official hustvl/Vim model code (CPU is enough)
#
# Environment: CIFAR10 (a folder with train.tar.xz and test.tar.xz, or train/ and test/ class
# folders), VIM_REPO (a hustvl/Vim checkout), RESULTS (default results), GPU_OUT (default
# $RESULTS/h100), CIFAR_OUT (default $RESULTS/cifar10), PYTHON (default python3), WEIGHTS (the
# CIFAR-10 weights the tables and fine-tunes use; default: the bundled ones, or the ones
# cifar-train wrote). cifar-train: S1_NGPU / S2_NGPU (default 4 / 2) and S1_EPOCHS / S2_EPOCHS
# (136 / 55) per stage; scripts/train_cifar10.sh documents the rest (ARCH_ARGS, TRAIN_ARGS, ...).
# cifar-finetune: FT_EPOCHS (default 1, as RESULTS.md's fine-tuned tables were run), FT_LIMIT
# (training images per run, default empty: all 50,000), FT_METHODS (default: every method),
# FT_POINTS (default "reduction=0.2 reduction=0.4"; KEY=VALUE becomes --KEY VALUE), FT_SCHEDULE
# (the merged runs' schedule options, default "--merge-opt every=2 --merge-opt shape=even": the
# evidence tables' reduction points), FT_RUNS (default runs/finetune; finished runs are kept,
# --resume auto), FT_ARGS (recipe flags added to `vimstm finetune`'s defaults, default
# "--lr 5e-5"), FT_MERGED_ARGS (flags for the merged runs only, e.g. "--merge-opt
# similarity=delta"), FT_IMG_S (fine-tuning images/s the printed estimate assumes, default
# 1450: one H200, 1-epoch runs of the 88.58% model).
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
  # the bundled model (src/vimstm/weights/MODEL_CARD.md), three stages: 136 epochs from scratch
  # on 4 GPUs with progressive resizing from 16 px (4 x H200: ~22 min); 55 epochs of
  # distillation from two ResNet-18 teachers (trained first, one per GPU) on 2 GPUs, from stage
  # 1's weights (2 x H200: ~18 min); 90 epochs of distillation from four ResNet-18 teachers
  # trained with cutout 16 on 4 GPUs, from stage 2's weights (4 x H200: ~20 min).
  # S1_NGPU / S2_NGPU / S3_NGPU change the GPUs (and so the total batch and the learning rate)
  # of each stage, S1_EPOCHS / S2_EPOCHS / S3_EPOCHS its length.
  run env NGPU="${S1_NGPU:-4}" EPOCHS="${S1_EPOCHS:-136}" BLR=7.5e-4 WARMUP=5 MIN_RES=16 \
    RES_RAMP="0.2 0.5" \
    WEIGHTS="$RUN-stage1/vim_tiny_cifar10.safetensors" \
    bash scripts/train_cifar10.sh "$CIFAR10" "$RUN-stage1"
  run env NGPU="${S2_NGPU:-2}" EPOCHS="${S2_EPOCHS:-55}" BLR=5e-4 WARMUP=2 EVAL_EVERY=5 \
    INIT="$RUN-stage1/vim_tiny_cifar10.safetensors" \
    TEACHER="$RUN-teachers/t0.safetensors $RUN-teachers/t1.safetensors" \
    WEIGHTS="$RUN-stage2/vim_tiny_cifar10.safetensors" \
    bash scripts/train_cifar10.sh "$CIFAR10" "$RUN-stage2"
  local c="$RUN-teachers/cutout"
  run env NGPU="${S3_NGPU:-4}" EPOCHS="${S3_EPOCHS:-90}" BLR=5e-4 WARMUP=2 EVAL_EVERY=5 \
    INIT="$RUN-stage2/vim_tiny_cifar10.safetensors" TEACHER_ARGS="--cutout 16" \
    TEACHER="$c-0.safetensors $c-1.safetensors $c-2.safetensors $c-3.safetensors" \
    WEIGHTS="$RUN/vim_tiny_cifar10.safetensors" bash scripts/train_cifar10.sh "$CIFAR10" "$RUN"
  mkdir -p "$CIFAR_OUT"
  run cp "$RUN-stage1/log.jsonl" "$CIFAR_OUT/train_log.jsonl"
  run cp "$RUN-stage2/log.jsonl" "$CIFAR_OUT/train_log_stage2.jsonl"
  run cp "$RUN/log.jsonl" "$CIFAR_OUT/train_log_stage3.jsonl"
}

split() {  # the train and test splits under $CIFAR10: archives or folders
  train="$CIFAR10/train.tar.xz" test="$CIFAR10/test.tar.xz"
  [ -e "$train" ] || train="$CIFAR10/train"
  [ -e "$test" ] || test="$CIFAR10/test"
}

part_cifar_evidence() {
  need CIFAR10 "cifar-evidence needs the CIFAR-10 data"
  local train test; split
  # shellcheck disable=SC2046
  local ev=(benchmarks/cifar_evidence.py $(weights) --data "$test" --calib-data "$train"
            --calib-images 256 --workers 8 --out "$CIFAR_OUT")
  local n=${NGPU:-1} k pids=() failed=0
  if [ "$n" -le 1 ]; then
    run $PY "${ev[@]}" --markdown "$CIFAR_OUT/evidence.md"
    return
  fi
  for ((k = 0; k < n; k++)); do  # one shard per GPU, each with its own dense row
    echo "+ CUDA_VISIBLE_DEVICES=$k $PY ${ev[*]} --shard $k/$n" >&2
    (CUDA_VISIBLE_DEVICES=$k $PY "${ev[@]}" --shard "$k/$n" 2>&1 | sed -u "s/^/[gpu $k] /") &
    pids+=($!)
  done
  for k in "${pids[@]}"; do wait "$k" || failed=1; done
  [ $failed = 0 ] || echo "reproduce.sh: a shard failed (its lines above); merging the rest" >&2
  run $PY benchmarks/cifar_evidence.py --out "$CIFAR_OUT" --merge-shards "$n" \
    --markdown "$CIFAR_OUT/evidence.md"
}

part_cifar_finetune() {
  need CIFAR10 "cifar-finetune needs the CIFAR-10 data"
  local train test; split
  local ck; ck=$(weights)
  local epochs=${FT_EPOCHS:-1} limit=${FT_LIMIT-} runs=${FT_RUNS:-runs/finetune}
  local methods=${FT_METHODS:-"stm mtr tome rmeeto prune-top prune-norm random"}
  local points=${FT_POINTS:-"reduction=0.2 reduction=0.4"} speed=${FT_IMG_S:-1450}
  local recipe=${FT_ARGS:-"--lr 5e-5"} merged=${FT_MERGED_ARGS-}
  local sched=${FT_SCHEDULE-"--merge-opt every=2 --merge-opt shape=even"}
  local n_runs=$(( $(wc -w <<<"$methods") * $(wc -w <<<"$points") + 1 ))
  local per=$(( epochs * ${limit:-50000} ))
  echo "fine-tune plan: $n_runs runs (methods: $methods; points: $points; and the dense" \
       "control), $epochs epoch(s) of ${limit:-50000} training images each; at about" \
       "$speed images/s and 10 s of start-up per run: about" \
       "$(( n_runs * (per / speed + 10) / 60 / ${NGPU:-1} )) min, then the evaluation (under 1 min)" >&2
  local lim=(); [ -n "$limit" ] && lim=(--limit-train "$limit")
  local ft=(-m vimstm.cli finetune --model vim_tiny_cifar10 --data "$train" --resume auto
            --epochs "$epochs" "${lim[@]}" --batch-size 256 --workers 12 --amp bf16
            --no-progress)
  local jobs=("dense") p m
  for p in $points; do for m in $methods; do jobs+=("$m:$p"); done; done
  local n=${NGPU:-1} k i pids=() failed=0
  ft_job() {  # one fine-tune: "dense" or "METHOD:KEY=VALUE" (--KEY VALUE)
    local name=$1 m=${1%%:*} p=${1#*:}
    local key=${p%%=*} val=${p#*=}
    if [ "$name" = dense ]; then
      # shellcheck disable=SC2086
      run $PY "${ft[@]}" ${ck} $recipe --output "$runs/dense" --method dense
    else
      # shellcheck disable=SC2086
      run $PY "${ft[@]}" ${ck} $recipe $merged --output "$runs/${m}_$key$val" --method "$m" \
        "--$key" "$val" $sched
    fi
  }
  if [ "$n" -le 1 ]; then
    for i in "${jobs[@]}"; do ft_job "$i"; done
  else  # the runs dealt round-robin over the GPUs, each GPU's share one after another
    for ((k = 0; k < n; k++)); do
      (export CUDA_VISIBLE_DEVICES=$k
       for ((i = k; i < ${#jobs[@]}; i += n)); do ft_job "${jobs[i]}"; done 2>&1 \
         | sed -u "s/^/[gpu $k] /") &
      pids+=($!)
    done
    for k in "${pids[@]}"; do wait "$k" || failed=1; done
    [ $failed = 0 ] || { echo "reproduce.sh: a fine-tune failed (its lines above)" >&2; exit 1; }
  fi
  # shellcheck disable=SC2046
  run $PY benchmarks/cifar_evidence.py $(weights) --data "$test" --finetuned "$runs" \
    --workers 8 --out "$CIFAR_OUT" --markdown "$CIFAR_OUT/evidence_finetune.md"
}

part_official() {
  need VIM_REPO "official needs a hustvl/Vim checkout"
  run $PY benchmarks/check_official.py --vim-repo "$VIM_REPO"
}

parts=("$@")
[ ${#parts[@]} -gt 0 ] || parts=(scan speed train merge)
for p in "${parts[@]}"; do
  case $p in
    scan|speed|train|merge|cifar-train|cifar-evidence|cifar-finetune|official) ;;
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
