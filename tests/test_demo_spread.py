"""The demo's result holds across seeds (and so across machines, whose float reduction order
changes the pre-trained weights the way a seed does): ≥ 93 % top-1 for each of 3 seeds."""

from __future__ import annotations

import json

import pytest
from engine_helpers import run_train, tiny_raw, write_config

SEEDS = (0, 1, 2)
MIN_TOP1 = 0.93


@pytest.mark.slow
def test_demo_reaches_93_percent_on_three_seeds(motion_shards, tmp_path):
    from zeroi2v.config import load
    from zeroi2v.tiny_pretrain import pretrain_tiny_backbone

    top1 = {}
    for seed in SEEDS:
        weights = tmp_path / f"tiny_{seed}.pt"
        pretrain_tiny_backbone(load("configs/tiny_cpu.json"), weights, seed=seed)
        out = tmp_path / f"seed{seed}"
        raw = tiny_raw(
            motion_shards,
            out,
            model={"pretrained": str(weights)},
            train={"seed": seed, "checkpoint_every_steps": 10_000},
        )
        proc = run_train(write_config(tmp_path / f"{seed}.json", raw), processes=2, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
        evals = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        top1[seed] = [e["val/top1"] for e in evals if "val/top1" in e][-1]
    print(f"demo top-1 per seed: {top1}")
    assert min(top1.values()) >= MIN_TOP1, top1
