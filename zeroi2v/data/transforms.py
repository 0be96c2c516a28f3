"""Clip-consistent augmentation: one crop, flip and RandAugment draw shared by all frames.

torchvision v2 transforms treat a ``tv_tensors.Video`` (T, C, H, W) as one input and sample
their random parameters once per call, so every frame of a clip gets the same crop box, flip,
RandAugment ops/magnitudes and erasing box (paper: "the same RandAugment operation and crop
must be applied to every frame"). Randomness comes from torch's global RNG; the pipeline seeds
it per sample (``torch.random.fork_rng``) to make augmentation reproducible.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2

from zeroi2v.config import ConfigError
from zeroi2v.specs import CLIP_MEAN, CLIP_STD

# open_clip's OPENAI_DATASET_MEAN / OPENAI_DATASET_STD (CLIP's pre-training normalisation).

# timm's RandAugment scale: magnitude m of 10 (``rand-m7-n4``). torchvision spreads its bins
# over [0, max], so 11 bins make torchvision's magnitude m equal timm's m/10 of the max.
RANDAUGMENT_BINS = 11


def _as_video(frames: np.ndarray | Tensor) -> tv_tensors.Video:
    """(T, H, W, 3) uint8 frames → (T, C, H, W) Video."""
    tensor = torch.as_tensor(frames)
    if tensor.ndim != 4 or tensor.shape[-1] != 3:
        raise ValueError(f"expected (T, H, W, 3) frames, got shape {tuple(tensor.shape)}")
    return tv_tensors.Video(tensor.permute(0, 3, 1, 2))  # (T, C, H, W)


def _to_cthw(video: Tensor) -> Tensor:
    return video.as_subclass(Tensor).permute(1, 0, 2, 3).contiguous()  # (C, T, H, W)


def _lookup(table: Tensor, image: Tensor) -> Tensor:
    """``table[image]`` for a uint8 ``image``: one gather instead of several passes of float
    arithmetic (bit-identical: the table holds that arithmetic's result for each of the 256
    values)."""
    index = image.contiguous().int()
    return torch.index_select(table, 0, index.view(-1)).view(image.shape)


class ClipRandAugment(v2.RandAugment):
    """torchvision's RandAugment, faster on the CPU, with the same draws and the same pixels.

    `tests/test_transforms` compares it with ``v2.RandAugment`` clip by clip. Two changes, both
    exact: ops whose output pixel depends only on the input pixel (solarize, brightness) run
    once on the 256 possible values and are then looked up (4× faster than torch's uint8
    ``where``/blend); the other ops run in the memory layout their kernel is fast in — decoded
    frames arrive channels-last (decord's (T, H, W, C)), where torch's uint8 ``amin``/``amax``
    (AutoContrast) are 5× slower than on contiguous frames, while the sharpness blur's conv2d
    is 3× faster channels-last.
    """

    POINTWISE_OPS = frozenset({"Solarize", "Brightness"})
    CHANNELS_LAST_OPS = frozenset({"Sharpness"})

    def _apply_image_or_video_transform(
        self, image: Any, transform_id: str, magnitude: float, **kwargs: Any
    ) -> Any:
        if image.device.type != "cpu" or transform_id == "Identity":
            return super()._apply_image_or_video_transform(image, transform_id, magnitude, **kwargs)
        if transform_id in self.POINTWISE_OPS:
            values = torch.arange(256, dtype=torch.uint8).view(1, 1, 256)  # a 1×256 gray image
            table = super()._apply_image_or_video_transform(
                values, transform_id, magnitude, **kwargs
            )
            return tv_tensors.wrap(_lookup(table.flatten(), image), like=image)
        layout = (
            torch.channels_last
            if transform_id in self.CHANNELS_LAST_OPS
            else torch.contiguous_format
        )
        image = tv_tensors.wrap(image.contiguous(memory_format=layout), like=image)
        return super()._apply_image_or_video_transform(image, transform_id, magnitude, **kwargs)


class TrainTransform:
    """Random resized crop → flip → RandAugment → normalise → random erasing, per clip.

    Two halves, so the second can run where the batch goes (``data.augment_on: device``):
    `crop_clip` (uint8 in, uint8 224² out: the data to ship shrinks first) and `augment` (uint8 →
    normalised float32, on any device). Both draw from torch's global CPU RNG; run back to back
    with one seed they are exactly today's single composition, and `augment` started from the
    RNG state `crop_clip` left behind gives the same clip on the CPU wherever it runs.
    """

    def __init__(
        self,
        image_size: int,
        *,
        randaugment_n: int = 4,
        randaugment_m: int = 7,
        hflip: float = 0.5,
        random_erasing: float = 0.0,
        crop_scale: tuple[float, float] = (0.08, 1.0),
        mean: tuple[float, ...] = CLIP_MEAN,
        std: tuple[float, ...] = CLIP_STD,
    ) -> None:
        if not 0 <= randaugment_m < RANDAUGMENT_BINS:
            raise ConfigError(
                f"data.randaugment_m must be in 0..{RANDAUGMENT_BINS - 1} (timm's scale), "
                f"got {randaugment_m}"
            )
        self.crop = v2.Compose(
            [
                v2.RandomResizedCrop(image_size, scale=crop_scale, antialias=True),
                v2.RandomHorizontalFlip(p=hflip),  # hflip=0 for SSv2 (left/right classes)
            ]
        )
        self.randaugment = (
            ClipRandAugment(
                num_ops=randaugment_n, magnitude=randaugment_m, num_magnitude_bins=RANDAUGMENT_BINS
            )
            if randaugment_n > 0
            else None
        )
        self.normalise = v2.Compose(
            [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
        )
        # value="random": per-pixel N(0, 1) noise (timm's "pixel" mode), one box for the clip.
        self.erasing = (
            v2.RandomErasing(p=random_erasing, value="random") if random_erasing > 0 else None
        )

    def crop_clip(self, frames: np.ndarray | Tensor) -> Tensor:
        """(T, H, W, 3) uint8 → (T, C, image_size, image_size) uint8: crop box and flip."""
        return self.crop(_as_video(frames)).as_subclass(Tensor)

    def augment(self, video: Tensor) -> Tensor:
        """(T, C, S, S) uint8 on any device → (C, T, S, S) float32 view: RandAugment, normalise,
        erasing (its noise is drawn on the CPU, like every parameter)."""
        if self.randaugment is not None:
            video = self.randaugment(tv_tensors.Video(video)).as_subclass(Tensor)
        out = self.normalise(video.contiguous())  # float ops are ~1.4× slower channels-last
        if self.erasing is not None:
            out = self.erasing(tv_tensors.Video(out)).as_subclass(Tensor)
        return out.permute(1, 0, 2, 3)  # (C, T, S, S); batching copies

    def __call__(self, frames: np.ndarray | Tensor) -> Tensor:
        """(T, H, W, 3) uint8 → (C, T, image_size, image_size) float32."""
        return self.augment(self.crop_clip(frames))

    def augment_batch(self, videos: Tensor, rng_states: Tensor) -> Tensor:
        """(B, T, C, S, S) uint8 cropped clips + each one's RNG state after its crop → (B, C, T,
        S, S) float32 on the clips' device. One clip at a time: clips draw different ops."""
        clips = []
        for video, state in zip(videos, rng_states, strict=True):
            with torch.random.fork_rng(devices=[]):
                torch.set_rng_state(state.clone())  # a row view at an offset crashes torch
                clips.append(self.augment(video))
        return torch.stack(clips)


class EvalTransform:
    """Resize the short side to ``image_size``, then ``num_crops`` square crops.

    One crop is the centre crop; several are evenly spaced along the long side (3 = left,
    centre, right for landscape video, top/centre/bottom for portrait: mmaction's ThreeCrop).
    """

    def __init__(
        self,
        image_size: int,
        num_crops: int = 1,
        *,
        mean: tuple[float, ...] = CLIP_MEAN,
        std: tuple[float, ...] = CLIP_STD,
    ) -> None:
        if num_crops < 1:
            raise ConfigError(f"data.num_crops must be >= 1, got {num_crops}")
        self.image_size = image_size
        self.num_crops = num_crops
        self.prepare = v2.Compose(
            [
                v2.Resize(image_size, antialias=True),  # short side → image_size
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(mean, std),
            ]
        )

    def crop_boxes(self, height: int, width: int) -> list[tuple[int, int]]:
        """(top, left) of each crop in a frame whose short side is ``image_size``."""
        size, n = self.image_size, self.num_crops
        spare = max(height, width) - size
        offsets = [spare // 2] if n == 1 else [round(i * spare / (n - 1)) for i in range(n)]
        if width >= height:
            return [((height - size) // 2, off) for off in offsets]
        return [(off, (width - size) // 2) for off in offsets]

    def __call__(self, frames: np.ndarray | Tensor) -> Tensor:
        """(T, H, W, 3) uint8 → (num_crops, C, T, image_size, image_size) float32."""
        video = self.prepare(_as_video(frames))  # (T, C, H', W'), short side = image_size
        height, width = video.shape[-2:]
        size = self.image_size
        crops = [
            _to_cthw(v2.functional.crop(video, top, left, size, size))
            for top, left in self.crop_boxes(height, width)
        ]
        return torch.stack(crops)  # (num_crops, C, T, size, size)
