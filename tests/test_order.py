"""The epoch's global order and its layouts: every position exactly once, also when a resume
changes the number of ranks or loader workers mid-epoch (pure arithmetic, no data read)."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest

from zeroi2v.config import ConfigError
from zeroi2v.data.order import EpochOrder, Layout, total
from zeroi2v.engine import position
from zeroi2v.engine.position import Position


def _played(layout: Layout, segments, rank: int, batches: int | None = None, skip: int = 0):
    """Positions rank `rank` plays, in the DataLoader's order (batch j from stream j % W),
    for batches [skip, batches) — what `build_train_loader` does, from the layout alone."""
    streams = [
        [p for a, b in layout.stream_share(segments, rank, s) for p in range(a, b)]
        for s in range(layout.num_streams)
    ]
    micro, count = layout.micro_batch_size, layout.batches(segments)
    out = []
    for j in range(skip, count if batches is None else batches):
        stream, index = j % layout.num_streams, j // layout.num_streams
        out += streams[stream][index * micro : (index + 1) * micro]
    return out


LAYOUTS = [Layout(1, 1, 4), Layout(2, 1, 4), Layout(2, 2, 2), Layout(4, 3, 1), Layout(1, 2, 8)]


@pytest.mark.parametrize(("before", "after"), itertools.permutations(LAYOUTS, 2))
def test_resume_on_another_layout_plays_every_position_once(before: Layout, after: Layout):
    """Global batch 8 samples per step; 6 steps = 48 positions; the first layout plays 2 steps."""
    steps, global_batch, done_steps = 6, 8, 2
    epoch = Position.new_epoch(before, steps * global_batch)
    batches_per_step = global_batch // (before.world_size * before.micro_batch_size)
    done = done_steps * batches_per_step
    first = [p for r in range(before.world_size) for p in _played(before, epoch.segments, r, done)]
    resumed = epoch.played(done).resume(after)
    assert resumed.batches == 0 and total(resumed.segments) == 48 - len(first)
    rest = [p for r in range(after.world_size) for p in _played(after, resumed.segments, r)]
    assert Counter(first + rest) == Counter(range(48))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_resume_on_the_same_layout_continues_batch_for_batch(layout: Layout):
    epoch = Position.new_epoch(layout, 48)
    count = layout.batches(epoch.segments)
    for rank in range(layout.world_size):
        full = _played(layout, epoch.segments, rank)
        at = epoch.played(3).resume(layout)
        assert at.segments == epoch.segments and at.batches == 3
        # what the loader of a resumed run plays: stream (w + 3) % W for worker w
        assert (
            _played(layout, at.segments, rank, count, skip=3) == full[3 * layout.micro_batch_size :]
        )


def _samples(order: EpochOrder, pass_index: int) -> list[tuple[int, int]]:
    """(shard, index in shard) of every position of pass `pass_index`."""
    out = []
    for p in range(pass_index * order.size, (pass_index + 1) * order.size):
        block, offset = order.locate(p)
        out.append(block.locate(offset))
    return out


def test_epoch_order_is_a_permutation_of_each_pass():
    counts = [5, 7, 3, 8, 0, 4]
    order = EpochOrder(counts, seed=3, epoch=1, block_samples=6)
    passes = [_samples(order, k) for k in range(2)]
    expected = {(s, i) for s, c in enumerate(counts) for i in range(c)}
    assert all(set(p) == expected and len(p) == sum(counts) for p in passes)
    assert passes[0] != passes[1]  # every pass is reshuffled
    assert _samples(EpochOrder(counts, seed=3, epoch=1, block_samples=6), 0) == passes[0]
    assert _samples(EpochOrder(counts, seed=3, epoch=2, block_samples=6), 0) != passes[0]


def test_another_global_batch_is_refused_with_the_fix():
    one = {
        "train_batch_size": 8,
        "train_micro_batch_size_per_gpu": 8,
        "gradient_accumulation_steps": 1,
    }
    with pytest.raises(ConfigError, match="gradient_accumulation_steps=2"):
        position.check_global_batch("step3", 16, 2, one)
    three = {
        "train_batch_size": 24,
        "train_micro_batch_size_per_gpu": 8,
        "gradient_accumulation_steps": 1,
    }
    with pytest.raises(ConfigError, match="number of processes that divides 16"):
        position.check_global_batch("step3", 16, 2, three)
    position.check_global_batch("step3", 16, 2, {**one, "train_batch_size": 16})
