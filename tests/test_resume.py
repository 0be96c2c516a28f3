"""A run killed with SIGKILL and resumed with --resume equals the uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import torch
from engine_helpers import clean_env, losses, run_train, tiny_raw, train_cmd, write_config

from zeroi2v.engine.parallel import read_checkpoint_weights


def test_sigkill_and_resume_matches_uninterrupted_run(synthetic_shards, tmp_path):
    # 2 epochs × 5 steps, checkpoints every 3 steps: the kill lands mid-epoch 0 or in
    # epoch 1, so resuming must restore the data position, the schedule and the RNG.
    # dropout > 0 makes the RNG state matter.
    sections = dict(
        model={"dropout": 0.3},
        optim={"lr": 3e-3, "warmup_epochs": 0.5},
        train={
            "epochs": 2,
            "steps_per_epoch": 5,
            "checkpoint_every_steps": 3,
            "eval_every_epochs": 2,
        },
    )
    full_dir, killed_dir = tmp_path / "full", tmp_path / "killed"
    full_cfg = write_config(
        tmp_path / "full.json", tiny_raw(synthetic_shards, full_dir, **sections)
    )
    killed_cfg = write_config(
        tmp_path / "killed.json", tiny_raw(synthetic_shards, killed_dir, **sections)
    )

    proc = subprocess.Popen(
        train_cmd(killed_cfg),
        env=clean_env(),
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    latest = killed_dir / "checkpoints" / "latest"
    deadline = time.monotonic() + 300
    while not latest.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = latest.read_text().strip()
    assert killed_at == "step3", "the kill should land after the first checkpoint"
    assert not (killed_dir / "merged.pt").exists()  # it really died mid-way

    resumed = run_train(killed_cfg, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    full = run_train(full_cfg)
    assert full.returncode == 0, full.stderr[-3000:]

    reference, got = losses(full_dir), losses(killed_dir)
    assert sorted(reference) == list(range(1, 11))
    remaining = [s for s in reference if s > 3]
    assert [got[s] for s in remaining] == [reference[s] for s in remaining]

    a = read_checkpoint_weights(full_dir / "checkpoints")
    b = read_checkpoint_weights(killed_dir / "checkpoints")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
