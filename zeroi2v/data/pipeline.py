"""WebDataset loaders: shards of mp4 bytes → (B, C, T, H, W) training batches and test views.

Training stream. Every worker of every rank reads its own slice of an endless, per-pass
reshuffled shard stream, shuffles the *encoded* samples, and cuts them into micro-batches of
``micro_batch_size`` encoded samples. The stream is a pure function of (seed, epoch, rank,
world_size, num_workers): which samples, which frames and which augmentation (each sample's RNG
comes from (seed, epoch, key, how often this worker has seen the key)). Batch ``j`` of the rank
comes from stream ``j % W`` (W = max(num_workers, 1); torch's DataLoader takes batches from its
workers round-robin), so resuming at ``skip_batches=k`` lets worker ``w`` play stream
``(w + k) % W`` and drop, undecoded, the batches of that stream that come before ``k``.

Corrupt samples. A sample that cannot be decoded is logged, counted (``loader.skips``) and its
slot is filled by the next decodable sample of the stream, augmented with a different RNG. Only
looking *forward* keeps batch boundaries on encoded samples, which is what lets ``skip_batches``
skip without decoding. Unreadable tars are logged, counted and skipped.

Eval stream. Every val sample is seen exactly once over ranks × workers: shards are split over
the R·W (rank, worker) slots when there are at least R·W shards, otherwise every slot reads every
shard and keeps the samples whose global index ≡ slot (mod R·W).
"""

from __future__ import annotations

import functools
import itertools
import logging
import random
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import webdataset as wds
from torch import Tensor

from zeroi2v.config import Config
from zeroi2v.data.clips import ClipLoader, collate_eval, seed_from, worker_slot
from zeroi2v.data.shards import SkipCounter, count_samples, expand_shards, read_manifest

__all__ = [
    "SkipCounter",
    "VideoLoader",
    "build_eval_loader",
    "build_train_loader",
    "count_samples",
    "read_manifest",
]

log = logging.getLogger(__name__)

# A worker gives up after this many corrupt samples in a row: the data is broken, not noisy.
MAX_CONSECUTIVE_CORRUPT = 1000


@dataclass
class VideoLoader:
    """An iterable of batches with a known length and the shared corrupt-data counters."""

    loader: torch.utils.data.DataLoader
    num_batches: int | None
    skips: SkipCounter

    def __iter__(self) -> Iterator[Any]:
        return iter(self.loader)

    def __len__(self) -> int:
        if self.num_batches is None:
            raise TypeError("the eval loader's length depends on the data; iterate it")
        return self.num_batches


# ----------------------------------------------------------------------------- training stages


def _endless_shards(urls: list[str], seed: int, epoch: int) -> Iterator[dict[str, str]]:
    """All shards, reshuffled for every pass, forever (the training stream may wrap around)."""
    for pass_index in itertools.count():
        order = list(urls)
        np.random.default_rng(seed_from(seed, epoch, "shards", pass_index)).shuffle(order)
        yield from ({"url": url} for url in order)


def _every_nth(src: Iterable[Any], start: int, step: int) -> Iterator[Any]:
    return itertools.islice(src, start, None, step)


def _split_by_stream(src: Iterable[Any], rotation: int) -> Iterator[Any]:
    """This DataLoader worker's share: the shards of stream (worker + rotation) % W."""
    stream, num_streams = worker_slot(rotation)
    return itertools.islice(src, stream, None, num_streams)


def _tar_samples(
    src: Iterable[dict[str, str]], handler: Callable[[Exception], bool], num_shards: int
) -> Iterator[dict[str, Any]]:
    """``wds.tarfile_samples`` shard by shard, failing loudly once a whole pass is unreadable."""
    empty_in_a_row = 0
    for shard in src:
        count = 0
        for sample in wds.tarfile_samples([shard], handler=handler):
            count += 1
            yield sample
        empty_in_a_row = 0 if count else empty_in_a_row + 1
        if empty_in_a_row > num_shards:
            raise RuntimeError(f"no readable samples in {num_shards} shards in a row; see warnings")


def _seeded_shuffle(
    src: Iterable[dict[str, Any]], bufsize: int, seed: int, epoch: int, rank: int, rotation: int
) -> Iterator[dict[str, Any]]:
    """Shuffle encoded samples in a buffer seeded by (seed, epoch, rank, stream)."""
    if bufsize <= 1:
        return iter(src)
    stream, _ = worker_slot(rotation)
    rng = random.Random(seed_from(seed, epoch, "samples", rank, stream))
    return wds.shuffle(bufsize, initial=bufsize, rng=rng)(iter(src))


def _count_occurrences(src: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Tag each sample with how often this stream has seen its key (wrap-around repeats)."""
    seen: Counter[str] = Counter()
    for sample in src:
        sample["__occurrence__"] = seen[sample["__key__"]]
        seen[sample["__key__"]] += 1
        yield sample


def _local_batches(num_batches: int, skip_batches: int, rotation: int) -> tuple[int, int]:
    """[first, stop) local batch indices of stream ``(worker + rotation) % W`` still to play."""
    stream, num_streams = worker_slot(rotation)
    stop = len(range(stream, num_batches, num_streams))
    first = len(range(stream, skip_batches, num_streams))
    return first, stop


def _decoded_batches(
    src: Iterable[dict[str, Any]],
    load: ClipLoader,
    skips: SkipCounter,
    batch_size: int,
    num_batches: int,
    skip_batches: int,
    rotation: int,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Cut encoded samples into batches; decode only the batches this worker still plays."""
    first, stop = _local_batches(num_batches, skip_batches, rotation)
    src = iter(src)
    ahead: deque[dict[str, Any]] = deque()  # samples read ahead to replace corrupt ones

    def take() -> dict[str, Any]:
        return ahead.popleft() if ahead else next(src)

    def ahead_of(group: list[dict[str, Any]], slot: int) -> Iterator[dict[str, Any]]:
        yield from group[slot + 1 :]
        for index in itertools.count():
            if index == len(ahead):
                ahead.append(next(src))
            yield ahead[index]

    bad: set[tuple[str, int]] = set()  # (key, occurrence) already found corrupt

    def try_load(sample: dict[str, Any], salt: str) -> tuple[Tensor, int] | None:
        ident = (sample["__key__"], sample["__occurrence__"])
        if ident in bad:
            return None
        try:
            return load(sample, salt)
        except load.errors as exc:
            bad.add(ident)
            skips.sample(sample.get("__key__", "?"), sample.get("__url__", "?"), exc)
            return None

    for local in range(stop):
        group = [take() for _ in range(batch_size)]
        if local < first:
            continue  # before skip_batches: dropped without decoding
        clips, labels = [], []
        for slot, sample in enumerate(group):
            loaded = try_load(sample, "clip")
            candidates = ahead_of(group, slot)
            for tries in itertools.count(1):
                if loaded is not None:
                    break
                if tries > MAX_CONSECUTIVE_CORRUPT:
                    raise RuntimeError(f"{tries - 1} corrupt samples in a row; see warnings")
                loaded = try_load(next(candidates), f"replaces slot {slot}")
            clips.append(loaded[0])
            labels.append(loaded[1])
        yield torch.stack(clips), torch.tensor(labels, dtype=torch.int64)  # (B, C, T, H, W), (B,)


def build_train_loader(
    cfg: Config,
    *,
    rank: int,
    world_size: int,
    epoch: int,
    micro_batch_size: int,
    num_batches: int,
    skip_batches: int = 0,
) -> VideoLoader:
    """Exactly ``num_batches - skip_batches`` batches ((B, C, T, H, W) float32, (B,) int64).

    ``skip_batches=k`` yields batches k.. of the same (rank, epoch) stream without decoding the
    first k; see the module docstring for how.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    if not 0 <= skip_batches <= num_batches:
        raise ValueError(f"skip_batches must be in [0, {num_batches}], got {skip_batches}")
    urls = expand_shards(cfg.data.train_shards, field="data.train_shards")
    seed, workers = cfg.train.seed, cfg.data.num_workers
    rotation = skip_batches  # worker w plays stream (w + skip_batches) % W
    skips = SkipCounter()
    load = ClipLoader.for_training(cfg, epoch=epoch)
    pipeline = wds.DataPipeline(
        [
            # 1. every shard, reshuffled by (seed, epoch, pass), endlessly
            functools.partial(_endless_shards, urls, seed, epoch),
            # 2. this rank's shards: explicit rank/world_size, torch.distributed not needed
            functools.partial(_every_nth, start=rank, step=world_size),
            # 3. this DataLoader worker's shards (stream (worker + skip_batches) % W)
            functools.partial(_split_by_stream, rotation=rotation),
            # 4. tar → encoded samples {__key__, mp4, cls, json}; bad tars counted and logged
            functools.partial(_tar_samples, handler=skips.shard, num_shards=len(urls)),
            # 5. shuffle encoded bytes (cheap to buffer), seeded by (seed, epoch, rank, stream)
            functools.partial(
                _seeded_shuffle,
                bufsize=cfg.data.shuffle_buffer,
                seed=seed,
                epoch=epoch,
                rank=rank,
                rotation=rotation,
            ),
            # 6. occurrence of each key in this stream, part of the sample's RNG seed
            _count_occurrences,
            # 7. micro-batches; decode late: sample frames (decord) + augment, skip undecoded
            functools.partial(
                _decoded_batches,
                load=load,
                skips=skips,
                batch_size=micro_batch_size,
                num_batches=num_batches,
                skip_batches=skip_batches,
                rotation=rotation,
            ),
        ]
    )
    loader = wds.WebLoader(pipeline, batch_size=None, num_workers=workers)
    return VideoLoader(loader, num_batches - skip_batches, skips)


# ----------------------------------------------------------------------------- eval stages


def _split_eval_shards(
    src: Iterable[dict[str, str]], rank: int, world_size: int, num_shards: int
) -> Iterator[dict[str, str]]:
    """Shard-level split over the R·W slots when every slot gets a shard; else all shards."""
    worker, workers = worker_slot(0)
    slots = world_size * workers
    if num_shards >= slots:
        return itertools.islice(src, rank * workers + worker, None, slots)
    return iter(src)


def _split_eval_samples(
    src: Iterable[dict[str, Any]], rank: int, world_size: int, num_shards: int
) -> Iterator[dict[str, Any]]:
    """Sample-level split (global index mod R·W) when there are fewer shards than slots."""
    worker, workers = worker_slot(0)
    slots = world_size * workers
    if num_shards >= slots:
        return iter(src)
    return itertools.islice(src, rank * workers + worker, None, slots)


def _decoded_views(
    src: Iterable[dict[str, Any]], load: ClipLoader, skips: SkipCounter
) -> Iterator[tuple[Tensor, int, str]]:
    for sample in src:
        try:
            views, label = load(sample, "eval")
        except load.errors as exc:
            skips.sample(sample.get("__key__", "?"), sample.get("__url__", "?"), exc)
            continue
        yield views, label, sample["__key__"]


def build_eval_loader(cfg: Config, *, rank: int, world_size: int, batch_size: int) -> VideoLoader:
    """Batches (videos (B, V, C, T, H, W), labels (B,), keys) with V = num_clips × num_crops.

    Over all ranks and workers, every readable val sample appears exactly once (no padding,
    no drops); the last batch of each worker may be smaller than ``batch_size``.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    urls = expand_shards(cfg.data.val_shards, field="data.val_shards")
    skips = SkipCounter()
    load = ClipLoader.for_eval(cfg)
    split = {"rank": rank, "world_size": world_size, "num_shards": len(urls)}
    pipeline = wds.DataPipeline(
        [
            # 1. val shards in a fixed order (evaluation is a fixed set, no shuffling)
            wds.SimpleShardList(urls),
            # 2. shards over (rank, worker) slots when there are enough shards
            functools.partial(_split_eval_shards, **split),
            # 3. tar → encoded samples; bad tars counted and logged
            wds.tarfile_to_samples(handler=skips.shard),
            # 4. ... otherwise samples over slots by their global index
            functools.partial(_split_eval_samples, **split),
            # 5. decode test views: num_clips clips × num_crops crops per video
            functools.partial(_decoded_views, load=load, skips=skips),
            # 6. batches; the last one per worker may be partial
            wds.batched(batch_size, collation_fn=collate_eval, partial=True),
        ]
    )
    loader = wds.WebLoader(pipeline, batch_size=None, num_workers=cfg.data.num_workers)
    return VideoLoader(loader, None, skips)
