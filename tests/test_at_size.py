"""The cheapest paper config at full size, end to end (slow: ~10 min on 2 cores).

ViT-B/16, 8 frames of 224², ZeRO 1, 2 DeepSpeed processes, random weights, through
`bench/at_size.py` as a user runs it: 3 steps, SIGKILL, ``--resume`` (its step 3 equals the
killed run's bit for bit), a checkpoint of the trainable state only, evaluation, merge with
the trainer's check, MLflow registration, the registered model loaded back through
``models:/NAME@champion`` and one video predicted over the config's 3 test views.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from engine_helpers import REPO, clean_env

from data_prep.synthetic import CLASSES

pytestmark = pytest.mark.slow


def test_vit_b16_8f_trains_resumes_merges_registers_and_predicts_at_full_size(tmp_path):
    rows = tmp_path / "rows.json"
    done = subprocess.run(
        [
            sys.executable, "bench/at_size.py", "--configs", "k400_b16_8f", "--zero", "1",
            "--no-serve", "--work", str(tmp_path / "work"), "--json", str(rows),
        ],
        cwd=REPO, env=clean_env(PYTHONPATH=str(REPO)), capture_output=True, text=True,
        timeout=2400,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (row,) = json.loads(rows.read_text())
    assert row["resume_exact"], row
    # 4 adapters of 768 → 192 → 768 in each of 12 blocks + a 4-class head on the 512-d embedding
    assert row["trainable_params"] == 12 * 4 * (768 * 192 + 192 + 192 * 768 + 768) + 512 * 4 + 4
    assert row["frozen_params"] > 85_000_000
    # the checkpoint holds what trains: no frozen weight, ≤ 1.1 × 16 B per trainable element
    assert row["checkpoint"]["frozen"] == 0 and row["checkpoint_vs_16B"] <= 1.1
    assert row["merge_error"]["fp32"] < 1e-4  # the trainer's own merge tolerance
    assert row["merge_error"]["bf16"] < 0.1  # bf16 rounds both sides; the order of magnitude
    registered = row["registered"]
    assert registered["views"] == 3 and registered["label"] in CLASSES
    assert registered["model_bytes"] > 4 * 85_000_000  # the merged fp32 backbone
    memory = row["memory"]
    assert memory["micro_batch"] == 8 and memory["weights_gib"] < memory["peak_gib"] < 16
