"""A search that cannot work stops before Ray starts, in one sentence naming the field and fix.

Each case ran for minutes before (every trial failing with a traceback in its log, or Ray's
AssertionError); now `launch/tune.py` raises `ConfigError` before `_init_ray` is called.
"""

from __future__ import annotations

import json
import os

import pytest
from tune_helpers import tiny_search

from zeroi2v.config import ConfigError


@pytest.fixture
def search(tmp_path, synthetic_shards, monkeypatch):
    """`launch/tune.py --config <tiny search> overrides...` with Ray forbidden to start."""
    from launch import tune as tune_cli
    from zeroi2v.tune import search as search_lib

    def no_ray(dashboard: bool) -> bool:
        raise AssertionError("Ray was started for a search that cannot work")

    monkeypatch.setattr(search_lib, "_init_ray", no_ray)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    raw = tiny_search(
        synthetic_shards,
        tmp_path,
        **{
            "train.epochs": 4,
            "tune.scheduler": {"name": "asha", "grace_period": 2, "reduction_factor": 2},
        },
    )
    path = tmp_path / "search.json"
    path.write_text(json.dumps(raw))

    def run(*overrides: str) -> str:
        with pytest.raises(ConfigError) as error:
            tune_cli.main(["--config", str(path), *overrides])
        message = str(error.value)
        assert "\n" not in message
        return message

    return run


def test_a_global_batch_two_ranks_cannot_keep_stops_before_ray(search):
    # train_batch_size 16 = 16 per rank × 1 step on one rank; two ranks would make it 32
    message = search("tune.workers_per_trial=2", 'tune.resources_per_trial={"cpu": 2}')
    assert message.startswith("a trial with {")
    assert "on tune.workers_per_trial=2 rank(s) would fail before training: " in message
    assert "deepspeed.train_batch_size (16) != train_micro_batch_size_per_gpu (16)" in message
    assert message.endswith(
        "× world size (2); to keep the global batch, override "
        "deepspeed.train_micro_batch_size_per_gpu=8"
    )


def test_a_grace_period_past_the_last_epoch_stops_before_ray(search):
    message = search("tune.scheduler.grace_period=5")
    assert message == (
        "tune.scheduler.grace_period (5) is more than train.epochs (4): ASHA would stop no "
        "trial before its end; set grace_period <= 4 or raise train.epochs"
    )


def test_a_searched_value_that_only_some_trials_draw_is_caught(search):
    """One choice of three breaks the batch identity: checking one sampled value misses it."""
    space = {"deepspeed.gradient_accumulation_steps": {"choice": [1, 2, 1]}}
    message = search("tune.head_allocation=null", f"tune.search_space={json.dumps(space)}")
    assert message == (
        'a trial with {"deepspeed.gradient_accumulation_steps": 2} on tune.workers_per_trial=1 '
        "rank(s) would fail before training: deepspeed.train_batch_size (16) must be a multiple "
        "of train_micro_batch_size_per_gpu × gradient_accumulation_steps (16 × 2)"
    )


def test_a_trial_bigger_than_this_machine_stops_before_a_local_ray(search):
    cpus = os.cpu_count() or 1
    message = search(f'tune.resources_per_trial={{"cpu": {cpus + 1}}}')
    assert message.startswith(f"tune.resources_per_trial: a trial's 1 worker(s) need {cpus + 1}")
