"""WebDataset loaders: shards of mp4 bytes → (B, C, T, H, W) training batches and test views.

Training stream. An epoch is one global order of sample positions (`zeroi2v.data.order`: shards
shuffled per pass, samples permuted within blocks of about ``data.shuffle_buffer`` samples), and
every rank plays a contiguous share of it: over all ranks each position is played exactly once,
and a resume on another world size hands the positions still to play to the new ranks. Within a
rank, DataLoader worker ``w`` plays stream ``(w + k) % W`` of the rank's micro-batches (torch's
DataLoader takes batches from its workers round-robin), so ``skip_batches=k`` resumes the same
stream without reading or decoding the first ``k`` batches. Each sample's frames and augmentation
come from (seed, epoch, key, position): the same on any rank and any worker.

What a position counts. With ``data.clips_per_decode`` N, positions count clips: position p is
clip p mod N of the video at p // N of the epoch's video order. An epoch of V videos is V·N
clips (`zeroi2v.engine.trainer.steps_per_epoch`, the LR schedule and the saved position count
these), and every video is decoded once, in one worker, for its N clips: a micro-batch holds a
multiple of N clips and every share starts at a micro-batch boundary, so a video's N positions
are never split (the config checks the micro-batch; a resume on another layout keeps whole
micro-batches of the old one).

Corrupt samples. A sample that cannot be decoded (or is missing from an unreadable or truncated
shard) is logged, counted (``loader.skips``) and its slot is filled by the next decodable sample
of its block, augmented with a different RNG, so batch boundaries never move.

Eval stream. Every val sample is seen exactly once over ranks × workers: shards are split over
the R·W (rank, worker) slots when there are at least R·W shards, otherwise every slot reads every
shard and keeps the samples whose global index ≡ slot (mod R·W).
"""

from __future__ import annotations

import functools
import itertools
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import webdataset as wds
from torch import Tensor
from torch.utils.data import default_collate

from zeroi2v.config import Config
from zeroi2v.data.clips import ClipLoader, Cropped, collate_eval, worker_slot
from zeroi2v.data.order import EpochOrder, Layout, Segment
from zeroi2v.data.shards import (
    SkipCounter,
    count_samples,
    expand_shards,
    read_manifest,
    shard_counts,
    stream_url,
)
from zeroi2v.data.transforms import TrainTransform
from zeroi2v.data.ava import KeyframeLoader, collate_keyframes

__all__ = [
    "SkipCounter",
    "VideoLoader",
    "build_eval_loader",
    "build_train_loader",
    "count_samples",
    "read_manifest",
]

log = logging.getLogger(__name__)


@dataclass
class VideoLoader:
    """An iterable of batches with a known length and the shared corrupt-data counters."""

    loader: torch.utils.data.DataLoader
    num_batches: int | None
    skips: SkipCounter
    # data.augment_on: device: finishes each (uint8 clips, labels, keys, RNG states) batch
    finish: Callable[[tuple[Any, ...]], tuple[Tensor, Tensor, list[str]]] | None = None

    def __iter__(self) -> Iterator[Any]:
        if self.finish is None:
            return iter(self.loader)
        return map(self.finish, self.loader)

    def __len__(self) -> int:
        if self.num_batches is None:
            raise TypeError("the eval loader's length depends on the data; iterate it")
        return self.num_batches


# ----------------------------------------------------------------------------- training stages


def _sample_loader(cfg: Config, *, train: bool, epoch: int = 0) -> tuple[Any, Callable]:
    """(sample → (clip, target), collate) of the task: classification clips with a label, or
    AVA keyframes with person boxes (`zeroi2v.data.ava`)."""
    if cfg.model.task == "detection":

        return KeyframeLoader(cfg, train=train, epoch=epoch), collate_keyframes
    if train:
        return ClipLoader.for_training(cfg, epoch=epoch), _collate_train
    return ClipLoader.for_eval(cfg), collate_eval


def _played_samples(
    positions: Iterable[int],
    order: EpochOrder,
    urls: list[str],
    skips: SkipCounter,
    clips_per_decode: int = 1,
) -> Iterator[tuple[int, list[dict[str, Any] | None], int]]:
    """(position, samples of its block, index in that list) for increasing clip `positions`;
    position p plays the video at p // clips_per_decode of the epoch's order.

    A block is read once, when its first position comes up; a sample missing from a truncated or
    unreadable shard is ``None`` (the unreadable tar was counted by the handler).
    """
    current, flat, starts = None, [], []
    for position in positions:
        block, offset = order.locate(position // clips_per_decode)
        if block.ident != current:
            current, flat, starts = block.ident, [], []
            for shard, expected in zip(
                block.shards, [order.counts[s] for s in block.shards], strict=True
            ):
                got = list(wds.tarfile_samples([{"url": urls[shard]}], handler=skips.shard))
                starts.append(len(flat))
                flat += (got + [None] * expected)[:expected]
        shard, index = block.locate(offset)
        yield position, flat, starts[block.shards.index(shard)] + index


def _decoded_batches(
    src: Iterable[tuple[int, list[dict[str, Any] | None], int]],
    load: Any,
    skips: SkipCounter,
    batch_size: int,
    collate: Callable[[list[Any]], tuple[Any, ...]],
    clips_per_decode: int = 1,
) -> Iterator[tuple[Any, Any, list[str]]]:
    """Decode late, in micro-batches, once per video for its consecutive clip positions; a
    corrupt or missing video is replaced by the next decodable one of its block (cyclically),
    decoded with a different RNG, for all of those positions."""
    bad: set[tuple[str, int]] = set()  # (key, first position) found corrupt

    def try_load(sample: dict[str, Any] | None, positions: list[int], salt: str) -> Any:
        if sample is None or (sample["__key__"], positions[0]) in bad:
            return None
        try:
            if len(positions) == 1:  # any task's loader: one clip
                clips = [load({**sample, "__position__": positions[0]}, salt)]
            else:  # `ClipLoader.clips`: one decode
                clips = load.clips(sample, positions, salt)
        except load.errors as exc:
            bad.add((sample["__key__"], positions[0]))
            skips.sample(sample.get("__key__", "?"), sample.get("__url__", "?"), exc)
            return None
        return [(*clip, sample["__key__"]) for clip in clips]

    src = iter(src)
    while group := list(itertools.islice(src, batch_size)):
        loaded = []
        for slot, run in _same_video(group, clips_per_decode):
            positions = [position for position, _, _ in run]
            _, block, index = run[0]
            items = try_load(block[index], positions, "clip")
            for step in range(1, len(block)):
                if items is not None:
                    break
                items = try_load(block[(index + step) % len(block)], positions, f"replaces {slot}")
            if items is None:
                raise RuntimeError(f"no decodable sample in the block of position {positions[0]}")
            loaded += items
        yield collate(loaded)


def _same_video(group: list[Any], clips_per_decode: int) -> Iterator[tuple[int, list[Any]]]:
    """(slot of its first clip, consecutive slots) of each video of a micro-batch."""
    slot = 0
    for _, run in itertools.groupby(group, key=lambda item: item[0] // clips_per_decode):
        run = list(run)
        yield slot, run
        slot += len(run)


def _collate_train(loaded: list[tuple[Any, int, str]]) -> tuple[Any, ...]:
    """(B, C, T, H, W) float32 clips, labels, keys; augmenting on the device: (B, T, C, S, S)
    uint8 cropped clips (a quarter of the bytes to pass on), labels, keys, (B, n) RNG states.

    torch's ``default_collate`` stacks straight into shared memory inside a worker, which
    saves the copy that passing an ordinary tensor to the main process would make.
    """
    clips, labels, keys = zip(*loaded, strict=True)
    label_tensor = torch.tensor(labels, dtype=torch.int64)
    if isinstance(clips[0], Cropped):
        videos = default_collate([clip.video for clip in clips])
        states = torch.stack([clip.rng_state for clip in clips])
        return videos, label_tensor, list(keys), states
    return default_collate(list(clips)), label_tensor, list(keys)


def _augment_on_device(
    transform: TrainTransform, device: torch.device, batch: tuple[Any, ...]
) -> tuple[Tensor, Tensor, list[str]]:
    """Copy a batch of uint8 cropped clips to ``device`` and augment it there."""
    videos, labels, keys, states = batch
    videos = videos.to(device, non_blocking=True)  # from pinned memory when device is CUDA
    return transform.augment_batch(videos, states), labels, keys


def _stream_positions(layout: Layout, segments: list[Segment], rank: int, skip: int) -> list[int]:
    """This DataLoader worker's positions: stream (worker + skip) % W of the layout."""
    stream, _ = worker_slot(skip)
    share = layout.stream_share(segments, rank, stream, skip)
    return [p for start, stop in share for p in range(start, stop)]


def build_train_loader(
    cfg: Config,
    *,
    rank: int,
    world_size: int,
    epoch: int,
    micro_batch_size: int,
    num_batches: int,
    skip_batches: int = 0,
    segments: list[Segment] | None = None,
    device: torch.device | str = "cpu",
) -> VideoLoader:
    """Exactly ``num_batches - skip_batches`` batches: clips (B, C, T, H, W) float32, labels (B,)
    int64 and the samples' keys.

    With ``data.augment_on: device`` the workers stop after the crop and flip, and the clips
    come out augmented on ``device`` (RandAugment, normalise, erasing run there after a uint8
    copy, from pinned memory on CUDA); with ``cpu`` (the default) they come out on the CPU.

    The batches play this rank's share of ``segments`` (default: the first ``num_batches`` ×
    ``micro_batch_size`` × ``world_size`` positions of the epoch's order, see
    `zeroi2v.data.order`); ``skip_batches=k`` starts at batch k without reading or decoding the
    first k.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    if not 0 <= skip_batches <= num_batches:
        raise ValueError(f"skip_batches must be in [0, {num_batches}], got {skip_batches}")
    urls = [stream_url(u) for u in expand_shards(cfg.data.train_shards, field="data.train_shards")]
    if segments is None:
        segments = [(0, num_batches * micro_batch_size * world_size)]
    layout = Layout(world_size, max(cfg.data.num_workers, 1), micro_batch_size)
    if layout.batches(segments) != num_batches:
        raise ValueError(f"segments hold {layout.batches(segments)} batches, not {num_batches}")
    clips_per_decode = cfg.data.clips_per_decode
    if micro_batch_size % clips_per_decode:
        raise ValueError(
            f"micro_batch_size ({micro_batch_size}) must be a multiple of data.clips_per_decode "
            f"({clips_per_decode}), so that a video's clips share a micro-batch"
        )
    order = EpochOrder(
        shard_counts(cfg.data.train_shards), cfg.train.seed, epoch, cfg.data.shuffle_buffer
    )
    skips = SkipCounter()
    load, collate = _sample_loader(cfg, train=True, epoch=epoch)
    pipeline = wds.DataPipeline(
        [
            # 1. positions of the epoch's global order this worker plays (pure arithmetic)
            functools.partial(_stream_positions, layout, segments, rank, skip_batches),
            # 2. their videos: blocks of shards read once each (tar → {__key__, mp4, cls, json})
            functools.partial(
                _played_samples,
                order=order,
                urls=urls,
                skips=skips,
                clips_per_decode=clips_per_decode,
            ),
            # 3. micro-batches; decode late, once per video: sample each clip's frames, decode
            #    them together (data.decoder), crop + augment each clip (or not yet)
            functools.partial(
                _decoded_batches,
                load=load,
                skips=skips,
                batch_size=micro_batch_size,
                collate=collate,
                clips_per_decode=clips_per_decode,
            ),
        ]
    )
    device = torch.device(device)
    on_device = cfg.data.augment_on == "device"
    loader = wds.WebLoader(
        pipeline,
        batch_size=None,
        num_workers=cfg.data.num_workers,
        pin_memory=on_device and device.type == "cuda",
    )
    finish = functools.partial(_augment_on_device, load.transform, device) if on_device else None
    return VideoLoader(loader, num_batches - skip_batches, skips, finish)


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
    src: Iterable[dict[str, Any]], load: Any, skips: SkipCounter
) -> Iterator[tuple[Tensor, Any, str]]:
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
    urls = [stream_url(u) for u in expand_shards(cfg.data.val_shards, field="data.val_shards")]
    skips = SkipCounter()
    load, collate = _sample_loader(cfg, train=False)
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
            wds.batched(batch_size, collation_fn=collate, partial=True),
        ]
    )
    loader = wds.WebLoader(pipeline, batch_size=None, num_workers=cfg.data.num_workers)
    return VideoLoader(loader, None, skips)
