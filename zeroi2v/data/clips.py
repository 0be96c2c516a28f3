"""One encoded sample → a training clip or its test views, with a per-sample seeded RNG."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from zeroi2v.config import Config
from zeroi2v.data.decode import (
    CorruptVideoError,
    check_decoder,
    frame_count,
    open_video,
    read_frames,
)
from zeroi2v.data.sampling import dense_indices, uniform_indices
from zeroi2v.data.transforms import EvalTransform, TrainTransform
from zeroi2v.specs import BACKBONES


def seed_from(*parts: Any) -> int:
    """A stable 63-bit seed from ``parts`` (Python's ``hash`` of str differs per process)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def worker_slot(rotation: int = 0) -> tuple[int, int]:
    """(stream, number of streams) of this DataLoader worker; stream = (worker + rotation) % W."""
    info = torch.utils.data.get_worker_info()
    worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
    return (worker + rotation) % workers, workers


def stored_meta(sample: dict[str, Any]) -> tuple[tuple[Any, Any] | None, int | None]:
    """(width, height) and decodable frame count from a sample's json, None where it has none.

    The json comes from a shard, so it may hold anything: what is not a JSON object, or a
    frame count that is not a positive integer, is a `CorruptVideoError` (the size itself is
    checked where it is used, `open_video`), never a TypeError that no loader expects.
    """
    if "json" not in sample:
        return None, None
    meta = json.loads(sample["json"])  # ValueError (UnicodeDecodeError, JSONDecodeError)
    if not isinstance(meta, dict):
        raise CorruptVideoError(f"the sample's json is a {type(meta).__name__}, not an object")
    size = (meta["width"], meta["height"]) if "width" in meta and "height" in meta else None
    frames = meta.get("frames")
    if frames is not None and (isinstance(frames, bool) or not isinstance(frames, int)):
        raise CorruptVideoError(f"the sample's json has frames={frames!r}, not an integer")
    if frames is not None and frames < 1:
        raise CorruptVideoError(f"the sample's json has frames={frames}: nothing decodes")
    return size, frames


class ClipLoader:
    """Decode a sample's frames (``data.decoder``), sample them and augment: late, after
    shuffling. Training can draw several clips from one decode (`clips`)."""

    # What a broken sample raises (bad bytes, missing field, bad label, a json that lies): every
    # hostile input maps to one of these (tests/test_hostile_samples.py); others are bugs.
    errors = (CorruptVideoError, KeyError, ValueError)

    def __init__(
        self,
        *,
        sampling: str,
        num_frames: int,
        frame_interval: int,
        short_side: int,
        transform: TrainTransform | EvalTransform,
        seed: int | None = None,
        epoch: int = 0,
        num_clips: int = 1,
        augment_on: str = "cpu",
        decoder: str = "decord",
        decode_device: str = "cpu",
    ) -> None:
        if sampling not in ("dense", "uniform"):
            raise ValueError(f"data.sampling must be 'dense' or 'uniform', got {sampling!r}")
        self.sampling = sampling
        self.num_frames = num_frames
        self.frame_interval = frame_interval
        self.short_side = short_side
        self.transform = transform
        self.seed = seed  # None: test views (deterministic indices, no augmentation)
        self.epoch = epoch
        self.num_clips = num_clips
        self.augment_on = augment_on  # "device": stop after the crop, see `Cropped`
        check_decoder(decoder, decode_device)  # here, not per sample: it is no corrupt video
        self.decoder, self.decode_device = decoder, decode_device

    @classmethod
    def for_training(cls, cfg: Config, *, epoch: int) -> ClipLoader:
        data, backbone = cfg.data, BACKBONES[cfg.model.backbone]
        transform = TrainTransform(
            cfg.model.image_size,
            randaugment_n=data.randaugment_n,
            randaugment_m=data.randaugment_m,
            hflip=data.hflip,
            random_erasing=data.random_erasing,
            crop_scale=data.crop_scale,
            mean=backbone.mean,
            std=backbone.std,
        )
        return cls(
            sampling=data.sampling,
            num_frames=cfg.model.num_frames,
            frame_interval=data.frame_interval,
            short_side=data.short_side,
            transform=transform,
            seed=cfg.train.seed,
            epoch=epoch,
            augment_on=data.augment_on,
            decoder=data.decoder,
            decode_device=data.decode_device,
        )

    @classmethod
    def for_eval(cls, cfg: Config) -> ClipLoader:
        """Test views: decode with the short side at the crop size (mmaction's test pipeline)."""
        data, backbone = cfg.data, BACKBONES[cfg.model.backbone]
        return cls(
            sampling=data.sampling,
            num_frames=cfg.model.num_frames,
            frame_interval=data.frame_interval,
            short_side=cfg.model.image_size,
            transform=EvalTransform(
                cfg.model.image_size, data.num_crops, mean=backbone.mean, std=backbone.std
            ),
            num_clips=data.num_clips,
            decoder=data.decoder,
            decode_device=data.decode_device,
        )

    def indices(
        self, num_video_frames: int, rng: np.random.Generator | None, clip_index: int = 0
    ) -> np.ndarray:
        if self.sampling == "dense":
            return dense_indices(
                num_video_frames,
                self.num_frames,
                self.frame_interval,
                rng,
                clip_index,
                self.num_clips,
            )
        return uniform_indices(num_video_frames, self.num_frames, rng, clip_index, self.num_clips)

    def __call__(self, sample: dict[str, Any], salt: str = "") -> tuple[Any, int]:
        """Training: ((C, T, H, W) float32, label), or (`Cropped`, label) when augmenting on the
        device: the clip at ``sample["__position__"]``. Test: ((num_clips × num_crops, C, T, H,
        W), label).
        """
        if self.seed is None:
            reader, frames, label = self._open(sample)
            return self._views(reader, frames), label
        return self.clips(sample, [sample.get("__position__", 0)], salt)[0]

    def clips(
        self, sample: dict[str, Any], positions: list[int], salt: str = ""
    ) -> list[tuple[Any, int]]:
        """Training clips of ``sample`` at ``positions`` of the epoch's order, from one decode
        of the frames they need together (``data.clips_per_decode``: repeated augmentation).

        Clip k's RNG is seeded by (seed, epoch, key, positions[k], salt), so its frames and
        augmentation do not depend on which rank or worker decodes it, nor on its neighbours.
        """
        reader, frames, label = self._open(sample)
        seeds = [seed_from(self.seed, self.epoch, sample["__key__"], p, salt) for p in positions]
        wanted = [self.indices(frames, np.random.default_rng(seed)) for seed in seeds]
        union = np.unique(np.concatenate(wanted))
        decoded = read_frames(reader, union)  # (F, H, W, 3): every frame once
        return [
            (self._train_clip(decoded[np.searchsorted(union, indices)], seed), label)
            for indices, seed in zip(wanted, seeds, strict=True)
        ]

    def _open(self, sample: dict[str, Any]) -> tuple[Any, int, int]:
        """(reader, frames it may ask for, label) of an encoded sample."""
        label = int(sample["cls"])
        size, stored_frames = stored_meta(sample)
        reader = open_video(
            sample["mp4"],
            short_side=self.short_side,
            size=size,
            decoder=self.decoder,
            device=self.decode_device,
        )
        return reader, frame_count(reader, stored_frames), label  # never past the stored

    def _train_clip(self, clip: Any, seed: int) -> Any:
        """(T, H, W, 3) uint8 frames → the augmented clip, or `Cropped` (augment_on device)."""
        with torch.random.fork_rng(devices=[]):
            # Only the CPU generator: the transforms draw nothing else, and torch.manual_seed
            # would also seed every accelerator backend (milliseconds per clip).
            torch.default_generator.manual_seed(seed)
            video = self.transform.crop_clip(clip)  # (T, C, S, S) uint8
            if self.augment_on == "device":
                return Cropped(video, torch.get_rng_state())
            return self.transform.augment(video)  # (C, T, H, W)

    def _views(self, reader: Any, num_frames: int) -> Tensor:
        clips = [self.indices(num_frames, None, k) for k in range(self.num_clips)]
        wanted = np.unique(np.concatenate(clips))  # decode each frame once
        frames = read_frames(reader, wanted)  # (F, H, W, 3)
        views = [self.transform(frames[np.searchsorted(wanted, clip)]) for clip in clips]
        return torch.cat(views)  # (num_clips * num_crops, C, T, H, W), clip-major


@dataclass
class Cropped:
    """A training clip cropped and flipped in the worker, with the RNG state to augment it on.

    ``TrainTransform.augment`` started from ``rng_state`` draws what it would have drawn right
    after the crop in the worker, so augmenting on the training device picks the same ops,
    magnitudes and erasing box as augmenting in the worker.
    """

    video: Tensor  # (T, C, S, S) uint8
    rng_state: Tensor  # torch.get_rng_state() after the crop


def collate_eval(
    samples: list[tuple[Tensor, int, str]],
) -> tuple[Tensor, Tensor, list[str]]:
    """[(views, label, key)] → ((B, V, C, T, H, W), (B,) int64, keys)."""
    views, labels, keys = zip(*samples, strict=True)
    return torch.stack(views), torch.tensor(labels, dtype=torch.int64), list(keys)
