#!/usr/bin/env bash
# Every speed benchmark of issue 12 in one command, made for one H100 inside a 15-minute device
# window (machine start included): sections in order of priority, each under its own time
# limit (`timeout`, its processes killed with it), all under one budget of run time. Each
# section's result is appended to the results file as soon as it ends, so a failure, a
# timeout or a kill loses only the section that was running.
#
#   bash bench/gpu.sh          # CUDA: ViT-B/16 8f shapes, bf16, memory of ViT-L/14 32f, Swin-B 32f
#   bash bench/gpu.sh --cpu    # the same scripts with small shapes on CPU (CI smoke run, minutes)
#
# Sections, most wanted first (limit on CUDA in s; H100 estimate from the 2026-11-25 figures):
#   versions      device and library versions; without CUDA the run stops here    60 (~15)
#   stdha         STDHA / plain attention fwd+bwd, merged / plain latency      120 (~40)
#                 (bench/stdha.py)
#   eager         Table 9 eager: latency of one video, throughput at the largest  150 (~60)
#                 batch ≤ 64 (launch/profile_model.py --latency)
#   at-size       the paper configs at full size, one GPU, bf16, the config's   300 (~200)
#                 micro-batch, ZeRO 1: steps, kill + resume, merge, register,
#                 GPU peak memory (bench/at_size.py; CUDA only: on CPU run it alone)
#   compiled      Table 9 compiled (CUDA graphs), batch 1, plain and merged       240 (~150)
#   step-bf16     train step plain vs DeepSpeed (ZeRO 1 as configured and with    180 (~100)
#                 DeepSpeed's own bucket/overlap/overflow defaults), bf16, batch
#                 16/32/64: phases, clips/s, MFU, SDPA kernel (bench/train_step.py)
#   memory-l14    peak memory of one DeepSpeed step, configs/k400_l14_32f.json    120 (~50)
#   memory-swinb  the same, configs/ssv2_swinb_32f.json                          120 (~50)
#   loader        data loader clips/s, 8 and 16 workers (bench/loader.py)        150 (~100)
#   decode-gpu    torchcodec decoding on NVDEC (data.decode_device: cuda), K400   120 (never run)
#                 length, clips_per_decode 1/2: clips/s, CPU per clip, cores per
#                 H100 (bench/loader.py --feed --decode-device cuda); --cpu: the
#                 same table decoded by torchcodec on the CPU
#   compiled-b64  Table 9 compiled, throughput at batch 64                       180 (~120)
#   step-fp32     train step breakdown, fp32, batch 16/32                        150 (~100)
# K400 hours with data loading = 240k × 40 clips ÷ min(train clips/s, loader clips/s).
#
# Environment:
#   OUT=FILE                  append to FILE (default bench/RESULTS.md). A directory (the device
#                             machine's $OUT): append to OUT/RESULTS.md and keep every section's
#                             stdout/stderr in OUT/gpu_sh_logs/
#   GPU_BENCH_BUDGET=S        run time of all sections together (default 540; --cpu: 1800)
#   GPU_BENCH_SECTIONS=a,b    only these sections (and versions), e.g. to redo the failed ones
#   GPU_BENCH_LIMITS=a=S,b=S  other time limits for these sections
#   GPU_BENCH_FAIL=a,b        these sections run a command that raises instead (checks the
#                             failure path: tests/test_bench.py)
#   PYTHON=...                the interpreter (default python, else python3)
# A section that fails, runs out of time or finds the budget spent is recorded in the results
# ("section X: timed out after N s", its error's last line, "skipped") and the next one runs.
# The run ends with a summary line naming what did not complete, and exits 1 if anything did
# not (128 + signal number when interrupted).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1  # a killed run keeps its lines
PY=${PYTHON:-$(command -v python || echo python3)}
MODE=${1:-}
OUT=${OUT:-bench/RESULTS.md}
if [[ -d "$OUT" ]]; then
  LOG="$OUT/gpu_sh_logs"
  OUT="$OUT/RESULTS.md"
  mkdir -p "$LOG"
else
  LOG=$(mktemp -d)
  trap 'rm -rf "$LOG"' EXIT
fi
MIN_SECTION=20  # s: less budget than this left, a section is skipped rather than started

if [[ "$MODE" == "--cpu" ]]; then
  export DS_ACCELERATOR=cpu
  BUDGET=${GPU_BENCH_BUDGET:-1800}
  DEVICE=cpu
  TABLE9=(launch/profile_model.py --config configs/tiny_cpu.json --latency --reps 2 --device cpu)
  BATCH_MAX=2 BATCHES_BF16=2 BATCHES_FP32=2
  STEP=(bench/train_step.py --device cpu --small --steps 1)
  STDHA_ARGS=(--small --quick)
  LOADER=(--clips 8 --rounds 1 --workers 1 --size 96x64 --frames 24 --interval 2)
  DECODE_GPU=(--clips 8 --rounds 1 --size 96x64 --frames 40 --decoders torchcodec
              --clips-per-decode 1 2 --encodings data_prep)
  LONG=600  # every section's limit on CPU (a loaded 2-core machine), within the budget
else
  export DS_ACCELERATOR=cuda  # also where a shell exported cpu for CPU-only work
  BUDGET=${GPU_BENCH_BUDGET:-540}
  DEVICE=cuda
  TABLE9=(launch/profile_model.py --config configs/k400_b16_8f.json --latency --reps 50
          --device cuda)
  BATCH_MAX=64 BATCHES_BF16=16,32,64 BATCHES_FP32=16,32
  STEP=(bench/train_step.py --device cuda)
  STDHA_ARGS=()
  LOADER=(--clips 48 --rounds 2 --workers 8 16)
  DECODE_GPU=(--k400 --clips 32 --rounds 2 --clips-per-decode 1 2 --decode-device cuda)
  LONG=""
fi

START=$SECONDS
DONE=0
PROBLEMS=()  # "name (why)" of every section that did not complete
RUNNING="" CHILD="" BEGAN=0

# The limit of section $1: GPU_BENCH_LIMITS's, else $2 (CUDA) or LONG (CPU).
limit_of() {
  local pair limits=${GPU_BENCH_LIMITS:-}
  for pair in ${limits//,/ }; do
    if [[ "${pair%%=*}" == "$1" && "${pair#*=}" =~ ^[0-9]+$ ]]; then
      echo "${pair#*=}"
      return
    fi
  done
  echo "${LONG:-$2}"
}

listed() { [[ ",$2," == *",$1,"* ]]; }

# Results go to OUT and to the terminal.
emit() { tee -a "$OUT"; }

problem() {
  PROBLEMS+=("$1 ($2)")
  echo "section $1: $2" | emit
  echo | emit
}

# The line that says why a section failed: its error's last line, else stderr's last line.
error_line() {
  local lines
  lines=$(tr '\r' '\n' <"$1" | grep -v '^[[:space:]]*$')
  { grep -E '^([A-Za-z_][A-Za-z0-9_.]*(Error|Exception|Exit)\b|error:)' <<<"$lines" ||
    echo "$lines"; } | tail -n 1 | cut -c 1-300
}

# Append section $1's results (format $2) after it ended with status $3.
finish() {
  local name=$1 format=$2 rc=$3 limit=$4 took=$((SECONDS - BEGAN))
  local out="$LOG/$name.out" err="$LOG/$name.err"
  if [[ "$format" == line ]]; then
    grep -v '^{' "$out" | emit
    echo | emit
  elif (( rc == 0 )); then
    echo "### $name ($took s)" | emit
    echo | emit
    if [[ "$format" == md ]]; then
      sed -En '/^(Train step breakdown|Peak memory)/,$p' "$out" | emit
    else
      { echo '```'; grep -v '^{' "$out"; echo '```'; } | emit
    fi
    echo | emit
  elif [[ -s "$out" ]]; then  # what it measured before it stopped (JSON rows included)
    { echo "### $name (partial output)"; echo; echo '```'; tail -n 60 "$out"; echo '```'; echo; } | emit
  fi
  if (( rc == 0 )); then
    DONE=$((DONE + 1))
    return
  fi
  echo "[gpu.sh] $name: status $rc; the end of its stderr:" >&2
  tr '\r' '\n' <"$err" | grep -v '^[[:space:]]*$' | tail -n 25 >&2
  if (( rc == 124 || (rc == 137 && took >= limit) )); then
    problem "$name" "timed out after $limit s"
  elif (( rc > 128 )) && [[ -n "${SIGNAL:-}" ]]; then
    problem "$name" "interrupted by SIG$SIGNAL after $took s"
  else
    problem "$name" "exit status $rc: $(error_line "$err")"
  fi
}

# Keep the end of a section's logs only (progress bars can write megabytes).
trim() {
  local file
  for file in "$LOG/$1.out" "$LOG/$1.err"; do
    tail -c 200000 "$file" >"$file.tail" && mv "$file.tail" "$file"
  done
}

# section NAME CUDA_LIMIT FORMAT COMMAND...: run COMMAND as section NAME. FORMAT: text
# (fenced, JSON lines left out), md (Markdown from the script's table on), line (as is).
section() {
  local name=$1 limit format=$3 rc
  shift 3
  if [[ "$name" != versions && -n "${GPU_BENCH_SECTIONS:-}" ]] &&
    ! listed "$name" "$GPU_BENCH_SECTIONS"; then
    return 0
  fi
  limit=$(limit_of "$name" "$2")
  local left=$((BUDGET - (SECONDS - START)))
  if (( left < MIN_SECTION )); then
    problem "$name" "skipped: only $left s of the $BUDGET s budget left"
    return 0
  fi
  (( limit > left )) && limit=$left
  if listed "$name" "${GPU_BENCH_FAIL:-}"; then
    set -- "$PY" -c "raise RuntimeError('forced failure of section $name (GPU_BENCH_FAIL)')"
  fi
  echo "[gpu.sh] $name: started, limit $limit s: $(tr '\n' ' ' <<<"$*" | cut -c 1-160)" >&2
  RUNNING=$name BEGAN=$SECONDS
  # in the background, so that a signal to this script is handled at once (trap below)
  timeout -k 15 "$limit" "$@" >"$LOG/$name.out" 2>"$LOG/$name.err" &
  CHILD=$!
  wait "$CHILD"
  rc=$?
  CHILD=""
  finish "$name" "$format" "$rc" "$limit"
  trim "$name"
  RUNNING=""
  return "$rc"
}

summary() {
  local total=$((DONE + ${#PROBLEMS[@]})) line
  line="gpu.sh: $DONE of $total sections done in $((SECONDS - START)) s"
  if (( ${#PROBLEMS[@]} )); then
    line+="; not done: $(printf '%s; ' "${PROBLEMS[@]}")"
    line=${line%; }
  fi
  { echo "$line"; echo; } | emit
}

on_signal() {  # $1: name, $2: number
  trap '' INT TERM HUP
  SIGNAL=$1
  if [[ -n "$CHILD" ]]; then
    kill -TERM "$CHILD" 2>/dev/null  # timeout passes it on to the section's processes
    wait "$CHILD"
    finish "$RUNNING" text $((128 + $2)) 0
  fi
  summary
  exit $((128 + $2))
}
trap 'on_signal INT 2' INT
trap 'on_signal TERM 15' TERM
trap 'on_signal HUP 1' HUP

{ echo "## $(date -u '+%F %H:%M') UTC bench/gpu.sh $MODE (budget $BUDGET s)"; echo; } | emit
VERSIONS='
import platform, sys
import deepspeed, open_clip, timm, torch
if sys.argv[1] == "cuda" and not torch.cuda.is_available():
    sys.exit("error: torch sees no CUDA device; `bash bench/gpu.sh --cpu` runs on the CPU")
device = torch.cuda.get_device_name(0) if sys.argv[1] == "cuda" else platform.processor() or "CPU"
print(f"{device}; torch {torch.__version__}, CUDA {torch.version.cuda}, DeepSpeed "
      f"{deepspeed.__version__}, timm {timm.__version__}, open_clip {open_clip.__version__}")
'
section versions 60 line "$PY" -c "$VERSIONS" "$DEVICE"
if (( $? != 0 )) && [[ "$DEVICE" == cuda ]]; then
  summary
  exit 1
fi
section stdha 120 text "$PY" bench/stdha.py --device "$DEVICE" "${STDHA_ARGS[@]}"
section eager 150 text "$PY" "${TABLE9[@]}" --max-batch "$BATCH_MAX"
if [[ "$DEVICE" == cuda ]]; then  # ViT-B/16 first; the rows of the configs that finish
  section at-size 300 text "$PY" bench/at_size.py --procs 1 --bf16 --micro-batch 8 --zero 1 \
    --no-serve --configs k400_b16_8f,k400_l14_32f,ssv2_swinb_32f,ava_b16_8f
fi
section compiled 240 text "$PY" "${TABLE9[@]}" --compile --no-unmerged --max-batch 1
section step-bf16 180 md "$PY" "${STEP[@]}" --precisions bf16 --batches "$BATCHES_BF16"
section memory-l14 120 md "$PY" "${STEP[@]}" --memory-only \
  --memory-configs configs/k400_l14_32f.json
section memory-swinb 120 md "$PY" "${STEP[@]}" --memory-only \
  --memory-configs configs/ssv2_swinb_32f.json
section loader 150 text "$PY" bench/loader.py "${LOADER[@]}"
section decode-gpu 120 text "$PY" bench/loader.py --feed "${DECODE_GPU[@]}"
section compiled-b64 180 text "$PY" "${TABLE9[@]}" --compile --no-unmerged \
  --max-batch "$BATCH_MAX"
section step-fp32 150 md "$PY" "${STEP[@]}" --precisions fp32 --batches "$BATCHES_FP32"
summary
echo "appended to $OUT" >&2
(( ${#PROBLEMS[@]} == 0 ))
