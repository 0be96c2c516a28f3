"""An epoch's global sample order, and how it is cut into shares for ranks and loader workers.

Why a global order: a run that resumes on another number of processes (a node lost for good, a
bigger allocation) must neither repeat nor skip a sample of the interrupted epoch. So an epoch is
one sequence of positions 0, 1, 2, … defined for all ranks together, and a *layout* (world size ×
loader streams × micro-batch) only cuts the positions still to play into contiguous shares. What
a layout has consumed after k micro-batches per rank is arithmetic on ``(start, stop)`` segments:
nothing is read or decoded to know it, and `Layout.remaining` hands the rest to the next layout.

The sequence: position p is sample p mod N of pass p // N over the N training samples. In each
pass the shards are shuffled by (seed, epoch, pass) and grouped into blocks of consecutive shards
holding at least ``block_samples`` samples (``data.shuffle_buffer``); a block's samples are
permuted by (seed, epoch, pass, block). A loader worker plays increasing positions, so it reads
each block once and holds one block at a time: a shuffle buffer of that size.
"""

from __future__ import annotations

import bisect
import functools
import itertools
from dataclasses import dataclass

import numpy as np

from zeroi2v.data.clips import seed_from

Segment = tuple[int, int]  # [start, stop) positions of the epoch's global order


def total(segments: list[Segment]) -> int:
    return sum(stop - start for start, stop in segments)


def take(segments: list[Segment], start: int, count: int) -> list[Segment]:
    """Positions [start, start + count) of the concatenation of `segments`."""
    out: list[Segment] = []
    for low, high in segments:
        if count == 0:
            break
        if start >= high - low:
            start -= high - low
            continue
        first = low + start
        stop = min(high, first + count)
        out.append((first, stop))
        count -= stop - first
        start = 0
    if count:
        raise ValueError(f"segments hold {total(segments)} positions, fewer than asked")
    return out


def _merged(segments: list[Segment]) -> list[Segment]:
    out: list[Segment] = []
    for start, stop in segments:
        if out and out[-1][1] == start:
            out[-1] = (out[-1][0], stop)
        elif stop > start:
            out.append((start, stop))
    return out


@dataclass(frozen=True)
class Layout:
    """How positions are shared: ranks get equal contiguous shares of the segments; each rank's
    share is cut into micro-batches, and stream s of ``num_streams`` loader workers plays a
    contiguous block of them, the ones the DataLoader asks for as batches s, s + W, s + 2W, …"""

    world_size: int
    num_streams: int  # max(data.num_workers, 1)
    micro_batch_size: int

    def batches(self, segments: list[Segment]) -> int:
        """Micro-batches per rank; the segments must fill whole micro-batches on every rank."""
        per_batch = self.world_size * self.micro_batch_size
        if total(segments) % per_batch:
            raise ValueError(
                f"{total(segments)} positions do not split into micro-batches of "
                f"{self.micro_batch_size} on {self.world_size} ranks"
            )
        return total(segments) // per_batch

    def stream_share(
        self, segments: list[Segment], rank: int, stream: int, skip_batches: int = 0
    ) -> list[Segment]:
        """Positions stream `stream` of rank `rank` still plays after `skip_batches` batches."""
        per_rank = self.batches(segments) * self.micro_batch_size
        share = take(segments, rank * per_rank, per_rank)
        num_batches = per_rank // self.micro_batch_size
        counts = [len(range(s, num_batches, self.num_streams)) for s in range(self.num_streams)]
        done = len(range(stream, skip_batches, self.num_streams))
        first, size = sum(counts[:stream]) + done, counts[stream] - done
        return take(share, first * self.micro_batch_size, size * self.micro_batch_size)

    def remaining(self, segments: list[Segment], batches_done: int) -> list[Segment]:
        """What is left of `segments` once every rank has played `batches_done` micro-batches."""
        return _merged(
            [
                segment
                for rank, stream in itertools.product(
                    range(self.world_size), range(self.num_streams)
                )
                for segment in self.stream_share(segments, rank, stream, batches_done)
            ]
        )


@dataclass(frozen=True)
class Block:
    """Consecutive shards of one pass whose samples are played in a permuted order."""

    ident: tuple[int, int]  # (pass, block)
    shards: tuple[int, ...]  # indices into the shard list
    starts: tuple[int, ...]  # cumulative sample counts of those shards, starting at 0
    permutation: np.ndarray

    def locate(self, offset: int) -> tuple[int, int]:
        """(shard index, sample index in that shard) of the block's `offset`-th position."""
        flat = int(self.permutation[offset])
        k = bisect.bisect_right(self.starts, flat) - 1
        return self.shards[k], flat - self.starts[k]


class EpochOrder:
    """Position → (block, offset in block), a pure function of (shards, counts, seed, epoch)."""

    def __init__(self, counts: list[int], seed: int, epoch: int, block_samples: int) -> None:
        self.counts, self.seed, self.epoch = counts, seed, epoch
        self.block_samples = block_samples
        self.size = sum(counts)
        if self.size == 0:
            raise ValueError("the training shards hold no samples")

    @functools.lru_cache(maxsize=4)  # noqa: B019 (a handful of passes per epoch, per worker)
    def blocks(self, pass_index: int) -> tuple[list[int], list[Block]]:
        """(first position of each block in the pass, the blocks) of pass `pass_index`."""
        order = np.random.default_rng(seed_from(self.seed, self.epoch, "shards", pass_index))
        shards = order.permutation(len(self.counts)).tolist()
        firsts, blocks, group, start = [], [], [], 0
        for position, shard in enumerate(shards):
            group.append(shard)
            size = sum(self.counts[s] for s in group)
            if size >= self.block_samples or position == len(shards) - 1:
                ident = (pass_index, len(blocks))
                rng = np.random.default_rng(seed_from(self.seed, self.epoch, "block", *ident))
                permute = self.block_samples > 1
                perm = rng.permutation(size) if permute else np.arange(size)
                starts = tuple(itertools.accumulate([0] + [self.counts[s] for s in group[:-1]]))
                blocks.append(Block(ident, tuple(group), starts, perm))
                firsts.append(start)
                start, group = start + size, []
        return firsts, blocks

    def locate(self, position: int) -> tuple[Block, int]:
        pass_index, inside = divmod(position, self.size)
        firsts, blocks = self.blocks(pass_index)
        index = bisect.bisect_right(firsts, inside) - 1
        return blocks[index], inside - firsts[index]
