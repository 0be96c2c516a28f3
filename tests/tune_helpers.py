"""Interrupting a search the way a user's crash does: SIGKILL `launch/tune.py` at a chosen
point, so the tests of `--resume` start from a real half-done experiment."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from zeroi2v import config as config_lib

ROOT = Path(__file__).resolve().parents[1]


def tiny_search(shards: Path, tmp: Path, **overrides: Any) -> dict:
    """configs/tune_tiny_cpu.json on `shards`, random weights, every output under `tmp`;
    `overrides` are dotted keys (``**{"tune.workers_per_trial": 2}``)."""
    raw = json.loads((ROOT / "configs" / "tune_tiny_cpu.json").read_text())
    paths = {
        "model.pretrained": None,
        "data.train_shards": str(shards / "train-*.tar"),
        "data.val_shards": str(shards / "val-*.tar"),
        "train.output_dir": str(tmp / "runs"),
        "tracking.tracking_uri": f"sqlite:///{tmp / 'mlflow.db'}",
        "tracking.artifact_location": str(tmp / "mlartifacts"),
        "tune.storage_path": str(tmp / "ray_results"),
    }
    return config_lib.apply_overrides(raw, {**paths, **overrides})


def trial_state(experiment: Path) -> dict[str, str]:
    """Trial id → status, from Ray's experiment state file (what `Tuner.restore` reads)."""
    states = sorted(experiment.glob("experiment_state-*.json"))
    if not states:
        return {}
    try:
        data = json.loads(states[-1].read_text())
    except json.JSONDecodeError:  # being written
        return {}
    out = {}
    for trial_json, _ in data.get("trial_data", []):
        trial = json.loads(trial_json)
        out[trial["trial_id"]] = trial["status"]
    return out


def kill_when(
    command: list[str],
    ready: Callable[[], bool],
    *,
    cwd: Path,
    env: dict,
    timeout: float,
    log: Path,
) -> None:
    """Run the search until `ready()`, then SIGKILL it (its whole process group: the driver
    and any Ray it started)."""
    with log.open("w") as out:
        proc = subprocess.Popen(
            command, cwd=cwd, env=env, start_new_session=True, stdout=out, stderr=out
        )
    deadline = time.time() + timeout
    try:
        while not ready():
            assert proc.poll() is None, "the search ended before it could be killed"
            assert time.time() < deadline, "the search did not reach the point to kill it"
            time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
