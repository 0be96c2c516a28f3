#!/usr/bin/env bash
# Every speed benchmark of issue 12 in one command, ~15 min on one H100; appends a dated
# section (device, library versions, every table) to bench/RESULTS.md.
#
#   bash bench/gpu.sh          # CUDA: ViT-B/16 8f shapes, bf16, memory of ViT-L/14 32f, Swin-B 32f
#   bash bench/gpu.sh --cpu    # the same scripts with small shapes on CPU (CI smoke run, minutes)
#
# 1. STDHA / plain attention forward+backward and merged / plain latency (bench/stdha.py)
# 2. Table 9 latency / throughput, eager and compiled (CUDA graphs): launch/profile_model.py
# 3. Train step breakdown plain vs DeepSpeed (ZeRO 1 as configured, and with DeepSpeed's own
#    bucket/overlap/overflow defaults), fp32 / bf16, batch 16/32/64, MFU, SDPA kernel,
#    peak memory of the big configs, projected K400 hours (bench/train_step.py)
# 4. Data loader clips/s (bench/loader.py; GPU run only): K400 hours with data loading =
#    240k × 40 clips ÷ min(train clips/s, loader clips/s).
# OUT=path appends elsewhere (the CPU smoke run in tests writes to a temp file).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python}
OUT=${OUT:-bench/RESULTS.md}
LOG=$(mktemp -d)
trap 'rm -rf "$LOG"' EXIT

if [[ "${1:-}" == "--cpu" ]]; then
  export DS_ACCELERATOR=cpu
  STDHA=(--device cpu --small --quick)
  TABLE9=(--config configs/tiny_cpu.json --latency --reps 2 --max-batch 2 --device cpu)
  STEP=(--device cpu --small --steps 1 --memory-configs configs/k400_l14_32f.json)
else
  STDHA=(--device cuda)
  TABLE9=(--config configs/k400_b16_8f.json --latency --reps 50 --max-batch 64 --device cuda)
  STEP=(--device cuda --batches 16,32,64
        --memory-configs configs/k400_l14_32f.json,configs/ssv2_swinb_32f.json)
fi

$PY bench/stdha.py "${STDHA[@]}" | grep -v '^{' > "$LOG/stdha.txt"
$PY launch/profile_model.py "${TABLE9[@]}" | grep -v '^{' > "$LOG/eager.txt"
$PY launch/profile_model.py "${TABLE9[@]}" --compile | grep -v '^{' > "$LOG/compiled.txt"
$PY bench/train_step.py "${STEP[@]}" | sed -n '/^Train step breakdown/,$p' > "$LOG/step.txt"
if [[ "${1:-}" != "--cpu" ]]; then
  $PY bench/loader.py --clips 64 --workers 8 16 > "$LOG/loader.txt"
fi

{
  echo "## $(date -u +%F) bench/gpu.sh ${1:-}"
  echo
  $PY - <<'PY'
import platform, torch, deepspeed, timm, open_clip
device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "CPU"
print(f"{device}; torch {torch.__version__}, CUDA {torch.version.cuda}, DeepSpeed "
      f"{deepspeed.__version__}, timm {timm.__version__}, open_clip {open_clip.__version__}")
PY
  echo
  echo '```'
  cat "$LOG/stdha.txt"
  echo
  echo "Table 9, eager:"
  cat "$LOG/eager.txt"
  echo
  echo "Table 9, compiled:"
  cat "$LOG/compiled.txt"
  [[ -f "$LOG/loader.txt" ]] && { echo; cat "$LOG/loader.txt"; }
  echo '```'
  echo
  cat "$LOG/step.txt"
  echo
} >> "$OUT"
echo "appended to $OUT"
