"""A Ray Train trial's overhead: the same 2-rank training via Ray Tune + Ray Train vs DeepSpeed.

    python bench/ray_overhead.py [--steps 8] [--epochs 2] [--out bench/RESULTS.md]

One run, side by side, on this machine: the tiny config (synthetic motion clips made here,
random backbone, world size 2, batch 16 per rank, `--epochs` × `--steps` steps, eval after
every epoch, MLflow on a local SQLite file) trained

  A. by `deepspeed --num_gpus 2 launch/train.py --config C` (DeepSpeed's launcher), and
  B. as the single trial of `python launch/tune.py --config C'` with tune.workers_per_trial 2
     (a local Ray started by launch/tune.py; the trial is a Ray Train TorchTrainer job).

Printed: wall time of each command, B ÷ A, and the trial's own time as Ray Tune measured it
(`time_total_s`: from the trial's start to its last report, without Ray's start-up and the
search's outputs) ÷ A.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tiny_shards import make_shards  # bench/ is sys.path[0] when a bench runs

ROOT = Path(__file__).resolve().parents[1]


def configs(work: Path, shards: Path, steps: int, epochs: int) -> tuple[Path, Path]:
    from zeroi2v import config as config_lib

    raw = json.loads((ROOT / "configs" / "tune_tiny_cpu.json").read_text())
    common = {
        "model.pretrained": None,
        "data.train_shards": str(shards / "train-*.tar"),
        "data.val_shards": str(shards / "val-*.tar"),
        "train.epochs": epochs,
        "train.steps_per_epoch": steps,
        "deepspeed.train_batch_size": 32,  # 16 per rank × 2 ranks
        "tracking.tracking_uri": f"sqlite:///{work / 'mlflow.db'}",
        "tracking.artifact_location": str(work / "mlartifacts"),
    }
    tune = {
        **common,
        "train.output_dir": str(work / "runs_tune"),
        "tune.search_space": {},
        "tune.head_allocation": None,
        "tune.num_samples": 1,
        "tune.scheduler": {"name": "fifo"},
        "tune.resources_per_trial": {"cpu": 2, "gpu": 0},
        "tune.workers_per_trial": 2,
        "tune.storage_path": str(work / "ray_results"),
        "tune.name": "overhead",
    }
    tune_raw = config_lib.apply_overrides(raw, tune)
    train_raw = config_lib.apply_overrides(raw, {**common, "train.output_dir": str(work / "runs")})
    train_raw.pop("tune")
    paths = work / "train.json", work / "tune.json"
    for path, data in zip(paths, (train_raw, tune_raw), strict=True):
        path.write_text(json.dumps(data))
    return paths


def timed(command: list[str], env: dict[str, str], log: Path) -> float:
    start = time.perf_counter()
    with log.open("w") as out:
        subprocess.run(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, check=True)
    return time.perf_counter() - start


def trial_seconds(experiment: Path) -> float:
    (result,) = experiment.glob("*/result.json")
    return json.loads(result.read_text().strip().splitlines()[-1])["time_total_s"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=8, help="steps per epoch")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--out", type=Path, help="append the result to this markdown file")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="ray_overhead"))
    train_cfg, tune_cfg = configs(
        work, make_shards(work, val_per_class=16), args.steps, args.epochs
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "DS_ACCELERATOR": "cpu",
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # the local Ray stays on 127.0.0.1
    }
    env.pop("RAY_ADDRESS", None)
    deepspeed = Path(sys.executable).with_name("deepspeed")
    a = timed(
        [str(deepspeed), "--num_gpus", "2", "launch/train.py", "--config", str(train_cfg)],
        env,
        work / "deepspeed.log",
    )
    b = timed([sys.executable, "launch/tune.py", "--config", str(tune_cfg)], env, work / "tune.log")
    trial = trial_seconds(work / "ray_results" / "overhead")
    steps = args.steps * args.epochs
    lines = [
        f"tiny config, world size 2, {steps} steps + {args.epochs} evals, logs in {work}",
        f"A deepspeed launch/train.py: {a:.1f} s",
        f"B launch/tune.py, 1 Ray Train trial of 2 workers: {b:.1f} s (trial {trial:.1f} s)",
        f"B / A = {b / a:.2f}; trial time / A = {trial / a:.2f}",
    ]
    print("\n".join(lines))
    if args.out:
        with args.out.open("a") as handle:
            handle.write("\n".join(f"    {line}" for line in lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
