#!/usr/bin/env bash
# The main job on a fresh CPU machine (a few minutes): synthetic motion videos → WebDataset
# shards → image pre-training of the tiny backbone (ZeroI2V adapts a *pre-trained* image
# model) → DeepSpeed training on 2 CPU processes (merge + MLflow registration at the end) →
# evaluation and a prediction with the registered model pulled back as models:/<name>@latest.
#   CONFIG=configs/tiny_cpu.json PROCS=2 SEED=0 bash scripts/demo.sh
# SEED is train.seed (adapter/head init, sample order, augmentation); `make demo-seeds` runs
# seeds 0, 1, 2 (scripts/demo_seeds.sh) and prints each one's top-1. PRETRAIN_SEED (default 0)
# is the tiny image pre-training's seed, as another machine's float rounding would change its
# weights; a non-zero one writes its own weights file (tiny_vit_image.seed1.pt for 1), used
# for this run only (model.pretrained=...), so it is never taken for the default weights.
# Re-runs reuse the videos, shards and pre-trained weights in data/ (delete data/ to remake them).
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=${CONFIG:-configs/tiny_cpu.json}
PROCS=${PROCS:-2}
SEED=${SEED:-0}
PRETRAIN_SEED=${PRETRAIN_SEED:-0}
if ! command -v nvidia-smi >/dev/null 2>&1; then
  export DS_ACCELERATOR=cpu  # no GPU: DeepSpeed's CPU accelerator, gloo between processes
  # one share of the cores per process: more threads than cores makes each step 10x slower
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( $(nproc) / PROCS > 0 ? $(nproc) / PROCS : 1 ))}
fi
start=$(date +%s)
field() { python -c "import json,sys; c=json.load(open('$CONFIG')); print(c$1)"; }
OUT=$(field "['train']['output_dir']")
NAME=$(field "['tracking']['model_name']")
PRETRAINED=$(field "['model']['pretrained']")
if [ "$PRETRAIN_SEED" != 0 ]; then PRETRAINED=${PRETRAINED%.pt}.seed$PRETRAIN_SEED.pt; fi
VIDEOS=data/synthetic_videos
SHARDS=data/synthetic_shards

echo "== 1/6 synthetic motion videos (4 classes: the direction of a moving square)"
if [ -f "$VIDEOS/.complete" ]; then
  echo "reusing $VIDEOS"
else
  python -m data_prep synthetic --out "$VIDEOS" --per-class 384 --val-per-class 32
  touch "$VIDEOS/.complete"
fi
echo "== 2/6 shards (resumes: finished shards are kept)"
for split in train val; do
  if ! python -m data_prep shard --source folder --root "$VIDEOS" --out "$SHARDS" \
    --split "$split" --shard-size 128 --workers 2 --no-progress; then
    echo "demo: sharding failed. If the error above says the shards come from different inputs" \
      "or options, $SHARDS was made by an older version: rm -rf $SHARDS and run again." >&2
    exit 1
  fi
done
echo "== 3/6 image pre-training of the tiny backbone (seed $PRETRAIN_SEED) -> $PRETRAINED"
if [ -f "$PRETRAINED" ]; then
  echo "reusing $PRETRAINED"
else
  python launch/pretrain_tiny.py --config "$CONFIG" --out "$PRETRAINED" --seed "$PRETRAIN_SEED"
fi
echo "== 4/6 train with DeepSpeed ($PROCS processes, seed $SEED), merge, register in MLflow"
rm -rf "$OUT"
deepspeed --num_gpus "$PROCS" --master_port "${MASTER_PORT:-29517}" launch/train.py --config "$CONFIG" \
  train.seed="$SEED" model.pretrained="$PRETRAINED"
echo "== 5/6 evaluate models:/$NAME@latest (seed $SEED)"
python launch/evaluate.py --model "models:/$NAME@latest" --config "$CONFIG" --out "$OUT/eval.json"
echo "== 6/6 predict one held-out video with models:/$NAME@latest"
VIDEO=$(find "$VIDEOS/val" -name '*.mp4' | sort | sed -n 1p)  # sed reads all: no SIGPIPE under pipefail
# predict.py prints the video's path above its classes: not echoed here too
python launch/predict.py --model "models:/$NAME@latest" "$VIDEO" --top-k 2
echo "demo (seed $SEED, pre-training seed $PRETRAIN_SEED) finished in $(( $(date +%s) - start )) s"
echo "MLflow UI: mlflow ui --backend-store-uri sqlite:///$PWD/mlflow.db   (then open http://127.0.0.1:5000)"
