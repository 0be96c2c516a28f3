#!/usr/bin/env bash
# The main job on a fresh CPU machine (a few minutes): synthetic motion videos → WebDataset
# shards → DeepSpeed training on 2 CPU processes (merge + MLflow registration at the end) →
# evaluation of the registered model pulled back as models:/<name>@latest.
#   CONFIG=configs/tiny_cpu.json PROCS=2 bash scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=${CONFIG:-configs/tiny_cpu.json}
PROCS=${PROCS:-2}
if ! command -v nvidia-smi >/dev/null 2>&1; then
  export DS_ACCELERATOR=cpu  # no GPU: DeepSpeed's CPU accelerator, gloo between processes
fi
start=$(date +%s)
field() { python -c "import json,sys; c=json.load(open('$CONFIG')); print(c$1)"; }
OUT=$(field "['train']['output_dir']")
NAME=$(field "['tracking']['model_name']")

echo "== 1/4 synthetic motion videos (4 classes: the direction of a moving square)"
python -m data_prep synthetic --out data/synthetic_videos --per-class 48 --val-per-class 16
echo "== 2/4 shards"
for split in train val; do
  python -m data_prep shard --source folder --root data/synthetic_videos --out data/synthetic_shards \
    --split "$split" --shard-size 32 --overwrite --no-progress
done
echo "== 3/4 train with DeepSpeed ($PROCS processes), merge, register in MLflow"
rm -rf "$OUT"
deepspeed --num_gpus "$PROCS" --master_port "${MASTER_PORT:-29517}" launch/train.py --config "$CONFIG"
echo "== 4/4 evaluate models:/$NAME@latest"
python launch/evaluate.py --model "models:/$NAME@latest" --config "$CONFIG" --out "$OUT/eval.json"
echo "demo finished in $(( $(date +%s) - start )) s"
echo "MLflow UI: mlflow ui --backend-store-uri sqlite:///$PWD/mlflow.db   (then open http://127.0.0.1:5000)"
