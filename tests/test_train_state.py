"""The run's state in a checkpoint (`TrainState`, `Position`): typed, round-trips through JSON,
and reads the client state that checkpoints written before the types hold (no training)."""

from __future__ import annotations

import json

import pytest

from zeroi2v.config import ConfigError
from zeroi2v.data.order import Layout
from zeroi2v.engine.position import Position
from zeroi2v.engine.train_state import CLIENT_FILE, TrainState

# A mid-epoch client.json as the dict-based trainer wrote it (ZeRO-3 run, step 2 of 2 per
# epoch; copied from such a run): `best_top1`, and a position without `clips_per_decode`.
OLD_MID_EPOCH = {
    "epoch": 0,
    "step_in_epoch": 2,
    "global_step": 2,
    "best_top1": None,
    "best_step": None,
    "run_id": None,
    "world_size": 1,
    "train_batch_size": 4,
    "position": {
        "segments": [[0, 8]],
        "world_size": 1,
        "num_streams": 1,
        "micro_batch_size": 4,
        "batches": 2,
    },
    "frozen_backbone": {"sha256": "7170df6c", "source": "a random init"},
    "metrics_bytes": 130,
}
# ... and at an epoch's end after an evaluation (the CPU demo, 2 processes)
OLD_AFTER_EVAL = {
    "epoch": 10,
    "step_in_epoch": 0,
    "global_step": 960,
    "best_top1": 1.0,
    "best_step": 672,
    "run_id": "c191d0b2267e422f9241b623bcdda880",
    "world_size": 2,
    "train_batch_size": 16,
    "position": None,
    "frozen_backbone": {"sha256": "1530cecd", "source": "model.pretrained x.pt"},
    "metrics_bytes": 83475,
}


def test_an_old_client_state_loads(tmp_path):
    path = tmp_path / CLIENT_FILE
    path.write_text(json.dumps(OLD_AFTER_EVAL, indent=1))
    state = TrainState.read(path)
    assert (state.best_score, state.best_step, state.global_step) == (1.0, 672, 960)
    assert state.run_id == "c191d0b2267e422f9241b623bcdda880" and state.position is None
    mid = TrainState.from_dict(OLD_MID_EPOCH, "client.json")
    assert mid.position == Position([(0, 8)], Layout(1, 1, 4), batches=2, clips_per_decode=1)
    assert mid.frozen_backbone == OLD_MID_EPOCH["frozen_backbone"]


def test_the_state_round_trips_through_json(tmp_path):
    at = Position.new_epoch(Layout(2, 3, 4), 96, clips_per_decode=2).played(5)
    state = TrainState(2, 16, epoch=1, global_step=11, best_score=0.5, best_step=8, position=at)
    state.write(tmp_path / CLIENT_FILE)
    saved = json.loads((tmp_path / CLIENT_FILE).read_text())
    assert "best_score" in saved and "best_top1" not in saved
    assert saved["position"] == {**OLD_MID_EPOCH["position"], **at.to_dict()}  # same flat form
    assert TrainState.read(tmp_path / CLIENT_FILE) == state
    assert Position.from_dict(json.loads(json.dumps(at.to_dict()))) == at


def test_a_state_of_another_version_is_refused_in_one_sentence():
    with pytest.raises(ConfigError, match=r"ck/client.json has unknown entries \['lr_scale'\]"):
        TrainState.from_dict({**OLD_AFTER_EVAL, "lr_scale": 2}, "ck/client.json")
    lacking = {k: v for k, v in OLD_AFTER_EVAL.items() if k != "train_batch_size"}
    with pytest.raises(ConfigError, match="ck/client.json has no train_batch_size"):
        TrainState.from_dict(lacking, "ck/client.json")
