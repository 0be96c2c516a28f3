"""data.clips_per_decode (repeated augmentation): an epoch decodes every video once and plays it
as N clips with their own frames and augmentation, over any number of ranks and workers, and a
resume (same or another layout, or the trainer's own) plays what the uninterrupted run plays."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from engine_helpers import become_rank, end_rank, free_port, tiny_raw
from test_order import _played
from test_pipeline import _cfg, _keys, _same, _train

from zeroi2v import config
from zeroi2v.config import ConfigError
from zeroi2v.data import clips as clips_module
from zeroi2v.data import count_samples
from zeroi2v.data.order import Layout
from zeroi2v.engine import position, trainer
from zeroi2v.engine.position import Position

SHARD = "train-000000.tar"  # 32 videos: an epoch of 64 clips at N = 2


def _epoch(shards: Path, world_size: int, **data) -> list[list[tuple]]:
    """Every rank's batches of one epoch of `SHARD` at clips_per_decode 2, micro-batch 4."""
    cfg = _cfg(shards, train=SHARD, clips_per_decode=2, **data)
    batches = 2 * count_samples(cfg.data.train_shards) // (4 * world_size)
    return [
        _train(cfg, rank=rank, world_size=world_size, num_batches=batches)
        for rank in range(world_size)
    ]


def test_every_video_is_decoded_once_and_played_as_two_clips(synthetic_shards, monkeypatch):
    """Two ranks, no workers (so the decodes are counted here): 32 decodes for 64 clips."""
    opened: list[bytes] = []
    open_video = clips_module.open_video
    monkeypatch.setattr(
        clips_module, "open_video", lambda data, **kw: opened.append(data) or open_video(data, **kw)
    )
    ranks = _epoch(synthetic_shards, world_size=2, num_workers=0)
    keys = Counter(k for batches in ranks for batch in batches for k in batch[2])
    assert set(keys) == set(_keys([synthetic_shards / SHARD])) and set(keys.values()) == {2}
    assert len(opened) == len(keys) == len(set(opened))  # one decode per video
    for batches in ranks:  # a video's two clips: side by side, different frames and crops
        for videos, _, batch_keys in batches:
            assert batch_keys[0::2] == batch_keys[1::2]
            assert not any(torch.equal(videos[i], videos[i + 1]) for i in (0, 2))


def test_workers_and_ranks_play_each_video_twice(synthetic_shards):
    ranks = _epoch(synthetic_shards, world_size=2, num_workers=2, augment_on="device")
    keys = Counter(k for batches in ranks for batch in batches for k in batch[2])
    assert len(keys) == 32 and set(keys.values()) == {2}


def test_one_clip_per_decode_is_the_stream_of_before(synthetic_shards):
    """The default N = 1 plays the very batches of the loader without the key."""
    before = _train(_cfg(synthetic_shards, train=SHARD), num_batches=3)
    assert _same(
        before, _train(_cfg(synthetic_shards, train=SHARD, clips_per_decode=1), num_batches=3)
    )


def test_skip_batches_resumes_the_same_clips(synthetic_shards):
    cfg = _cfg(synthetic_shards, clips_per_decode=2)
    full = _train(cfg, num_batches=9)
    assert _same(full[4:], _train(cfg, num_batches=9, skip_batches=4))


@pytest.mark.parametrize(
    ("before", "after"), [(Layout(2, 2, 4), Layout(1, 1, 2)), (Layout(1, 3, 2), Layout(4, 1, 2))]
)
def test_a_resume_on_another_layout_never_splits_a_video(before: Layout, after: Layout):
    """Positions 2v and 2v + 1 (video v's clips) stay in one micro-batch of one rank."""
    epoch = Position.new_epoch(before, 96, clips_per_decode=2)
    done = 4  # micro-batches per rank before the resume: 32 and 8 of the 96 positions
    first = [_played(before, epoch.segments, r, done) for r in range(before.world_size)]
    resumed = epoch.played(done).resume(after)
    assert resumed.clips_per_decode == 2
    rest = [_played(after, resumed.segments, r) for r in range(after.world_size)]
    played = [p for share in first + rest for p in share]
    assert Counter(played) == Counter(range(96))
    for share in first + rest:
        assert all(share[i] // 2 == share[i + 1] // 2 for i in range(0, len(share), 2))


def test_steps_schedule_and_position_count_clips(synthetic_shards, tmp_path):
    raw = tiny_raw(synthetic_shards, tmp_path / "run")
    one = config.from_dict(raw)
    two = config.from_dict({**raw, "data": {**raw["data"], "clips_per_decode": 2}})
    assert trainer.steps_per_epoch(two, 8) == 2 * trainer.steps_per_epoch(one, 8)
    saved = Position.new_epoch(Layout(1, 1, 2), 40, clips_per_decode=2).played(3)
    with pytest.raises(ConfigError, match="resume with data.clips_per_decode=2"):
        position.start(saved, 3, Layout(1, 1, 2), 40, clips_per_decode=1)
    with pytest.raises(ConfigError, match=r"multiple of data.clips_per_decode \(3\)"):
        config.from_dict({**raw, "data": {**raw["data"], "clips_per_decode": 3}})
    with pytest.raises(ConfigError, match="needs data.decoder 'torchcodec'"):
        config.from_dict({**raw, "data": {**raw["data"], "decode_device": "cuda"}})


# 2 epochs × 4 steps of 4 clips (2 videos), a checkpoint every 3 steps: the resume lands mid-epoch
SECTIONS = dict(
    model={"dropout": 0.3},
    optim={"lr": 3e-3, "warmup_epochs": 0.5},
    train={"epochs": 2, "steps_per_epoch": 4, "checkpoint_every_steps": 3, "eval_every_epochs": 2,
           "log_sample_keys": True},
)  # fmt: skip
DS = {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 2,
      "zero_optimization": {"stage": 1}}  # fmt: skip


def _full_then_resumed(rank: int, port: int, raw_full: dict, raw_resumed: dict) -> None:
    become_rank(rank, 1, port)
    from zeroi2v.engine import parallel

    with parallel.process_group():
        trainer.train(config.from_dict(raw_full))
        full = Path(raw_full["train"]["output_dir"]) / "checkpoints"
        resumed = Path(raw_resumed["train"]["output_dir"]) / "checkpoints"
        shutil.copytree(full / "step3", resumed / "step3")  # as a run killed after step 3
        (resumed / "latest").write_text("step3")
        trainer.train(config.from_dict(raw_resumed), resume=True)
    end_rank()


def test_a_resumed_run_equals_the_uninterrupted_one(synthetic_shards, tmp_path):
    from engine_helpers import losses

    from zeroi2v.engine.parallel import read_checkpoint_weights

    raws = []
    for name in ("full", "resumed"):
        raw = tiny_raw(synthetic_shards, tmp_path / name, deepspeed=DS, **SECTIONS)
        raw["data"]["clips_per_decode"] = 2
        raws.append(raw)
    mp.spawn(_full_then_resumed, args=(free_port(), *raws), nprocs=1)
    want, got = losses(tmp_path / "full"), losses(tmp_path / "resumed")
    assert sorted(want) == list(range(1, 9)) and [got[s] for s in range(4, 9)] == [
        want[s] for s in range(4, 9)
    ]
    a = read_checkpoint_weights(tmp_path / "full" / "checkpoints")
    b = read_checkpoint_weights(tmp_path / "resumed" / "checkpoints")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    lines = (tmp_path / "full" / "sample_keys" / "rank0.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    keys = [r["keys"] for r in records if "keys" in r and "eval_at_step" not in r]
    assert len(keys) == 16 and all(k[0] == k[1] for k in keys)  # a micro-batch: one video
