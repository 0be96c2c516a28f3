"""One AVA keyframe sample (shard from `python -m data_prep shard --source ava`) → a clip + boxes.

A sample holds a short mp4 around the keyframe and a json with the keyframe's index in it, the
annotated person boxes (normalised x1, y1, x2, y2) with their action class indices, and the
person detector's proposals with scores. Following VideoMAE's AVA setting:

* frames: ``model.num_frames`` frames ``data.frame_interval`` apart, centred on the keyframe
  (indices clamped to the clip), the same at training and test;
* training boxes: the ground-truth boxes, plus every proposal scoring at least
  ``data.proposal_min_score`` whose best IoU with a ground-truth box is >= 0.5, which takes that
  box's labels; test boxes: the proposals scoring at least ``data.proposal_min_score``;
* augmentation (`box_geometry`): boxes follow the pixels through torchvision's
  ``tv_tensors.BoundingBoxes``. By default the frame is resized to ``image_size`` ×
  ``image_size`` and, in training, flipped with probability ``data.hflip``. With
  ``data.detection_jitter_scales`` training follows SlowFast's AVA pipeline
  (``ava_dataset.Ava._images_and_boxes_preprocessing_cv2``): short side rescaled to
  ``round(1 / U(1/max, 1/min))``, a random ``image_size`` crop, flip; boxes are clipped to the
  crop and kept even when the crop cuts them to nothing (SlowFast never drops a training box).
  Test frames stay whole, resized to ``image_size``²: SlowFast and VideoMAE test on the whole
  frame at short side 256, which a fixed-size ViT cannot take without interpolating its
  position embedding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pydantic
import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.ops import box_iou
from torchvision.transforms import v2

from zeroi2v.config import Config
from zeroi2v.data.clips import seed_from
from zeroi2v.data.decode import CorruptVideoError, frame_count, open_video, read_frames
from zeroi2v.specs import BACKBONES

MATCH_IOU = 0.5  # a training proposal takes the labels of a ground-truth box it overlaps this much


@dataclass
class KeyframeTargets:
    """What a batch's boxes mean: ``rois`` (K, 5) ``[batch index, x1, y1, x2, y2]`` normalised,
    ``labels`` (K, C) multi-hot, and per clip its key and ground truth (for the mAP)."""

    rois: Tensor
    labels: Tensor
    frames: list[dict[str, Any]]  # {"key": (video, timestamp), "boxes": [...], "labels": [...]}

    def to(self, device: torch.device) -> KeyframeTargets:
        return KeyframeTargets(self.rois.to(device), self.labels.to(device), self.frames)

    def __len__(self) -> int:
        return len(self.frames)


def keyframe_indices(keyframe: int, num_frames: int, interval: int, available: int) -> np.ndarray:
    """``num_frames`` indices ``interval`` apart with the keyframe at position T // 2, clamped."""
    offsets = (np.arange(num_frames) - num_frames // 2) * interval
    return np.clip(keyframe + offsets, 0, available - 1)


def training_boxes(
    gt_boxes: Tensor, gt_labels: Tensor, proposals: Tensor, min_score: float
) -> tuple[Tensor, Tensor]:
    """Ground truth + proposals (x1, y1, x2, y2, score) matched to it → (boxes, multi-hot)."""
    confident = proposals[proposals[:, 4] >= min_score, :4]
    if len(gt_boxes) == 0 or len(confident) == 0:
        return gt_boxes, gt_labels
    best, which = box_iou(confident, gt_boxes).max(dim=1)
    matched = best >= MATCH_IOU
    return (
        torch.cat([gt_boxes, confident[matched]]),
        torch.cat([gt_labels, gt_labels[which[matched]]]),
    )


class ShortSideJitter(v2.Transform):
    """SlowFast's ``random_short_side_scale_jitter``: the short side becomes
    ``round(1 / U(1/high, 1/low))`` (uniform in inverse scale), the long side keeps the aspect
    (floored, as torchvision's and SlowFast's resize)."""

    def __init__(self, low: int, high: int) -> None:
        super().__init__()
        self.low, self.high = low, high

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        inverse = 1 / self.high + float(torch.rand(())) * (1 / self.low - 1 / self.high)
        return {"size": [round(1 / inverse)]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(v2.functional.resize, inpt, params["size"], antialias=True)


def box_geometry(cfg: Config, *, train: bool) -> v2.Transform:
    """The spatial transforms of a keyframe clip and its `BoundingBoxes` (see the docstring)."""
    size, flip = cfg.model.image_size, cfg.data.hflip if train else 0.0
    jitter = cfg.data.detection_jitter_scales
    if train and jitter is not None:
        steps = [ShortSideJitter(*jitter), v2.RandomCrop(size), v2.RandomHorizontalFlip(flip)]
    else:
        steps = [v2.Resize((size, size), antialias=True), v2.RandomHorizontalFlip(flip)]
    return v2.Compose(steps)


class KeyframeMeta(pydantic.BaseModel):
    """A keyframe sample's json as `data_prep shard --source ava` writes it. It comes from a
    shard, so it may hold anything: a field of the wrong type is a `pydantic.ValidationError`
    (a ValueError, which the loaders skip and count), never a TypeError or IndexError deep in
    the decoding that no loader expects."""

    model_config = pydantic.ConfigDict(extra="ignore", strict=True)

    video: str
    timestamp: int
    keyframe: pydantic.NonNegativeInt
    width: pydantic.PositiveInt
    height: pydantic.PositiveInt
    frames: pydantic.PositiveInt | None = None
    boxes: list[tuple[float, float, float, float]]
    labels: list[list[pydantic.NonNegativeInt]]
    proposals: list[tuple[float, float, float, float, float]]

    @classmethod
    def read(cls, sample: dict[str, Any], num_classes: int) -> KeyframeMeta:
        meta = cls.model_validate_json(sample["json"])  # ValidationError (ValueError) on a misfit
        if len(meta.labels) != len(meta.boxes):
            raise CorruptVideoError(
                f"the keyframe json has {len(meta.boxes)} boxes but {len(meta.labels)} label lists"
            )
        if any(label >= num_classes for labels in meta.labels for label in labels):
            raise CorruptVideoError(f"the keyframe json has a label ≥ {num_classes} classes")
        return meta


class KeyframeLoader:
    """Decode a keyframe sample's frames and boxes: late, after shuffling (as `ClipLoader`)."""

    errors = (CorruptVideoError, KeyError, ValueError)

    def __init__(self, cfg: Config, *, train: bool, epoch: int = 0) -> None:
        spec = BACKBONES[cfg.model.backbone]
        self.train, self.epoch, self.seed = train, epoch, cfg.train.seed
        self.num_frames, self.interval = cfg.model.num_frames, cfg.data.frame_interval
        self.num_classes, self.min_score = cfg.model.num_classes, cfg.data.proposal_min_score
        self.decoder = cfg.data.decoder  # on the CPU: the config refuses decode_device cuda here
        self.transform = v2.Compose(
            [
                box_geometry(cfg, train=train),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(spec.mean, spec.std),
            ]
        )

    def _boxes(self, meta: KeyframeMeta) -> tuple[Tensor, Tensor]:
        gt = torch.tensor(meta.boxes, dtype=torch.float32).reshape(-1, 4)
        hot = torch.zeros(len(gt), self.num_classes)
        for row, labels in enumerate(meta.labels):
            hot[row, labels] = 1.0
        proposals = torch.tensor(meta.proposals, dtype=torch.float32).reshape(-1, 5)
        if self.train:
            return training_boxes(gt, hot, proposals, self.min_score)
        kept = proposals[proposals[:, 4] >= self.min_score]
        return kept[:, :4], torch.zeros(len(kept), self.num_classes)

    def __call__(self, sample: dict[str, Any], salt: str = "") -> tuple[Tensor, dict[str, Any]]:
        """((C, T, S, S) clip — (1, C, T, S, S) at test: one view —, target dict)."""
        meta = KeyframeMeta.read(sample, self.num_classes)
        reader = open_video(sample["mp4"], size=(meta.width, meta.height), decoder=self.decoder)
        available = frame_count(reader, meta.frames)
        indices = keyframe_indices(meta.keyframe, self.num_frames, self.interval, available)
        frames = torch.from_numpy(read_frames(reader, indices)).permute(0, 3, 1, 2)
        height, width = frames.shape[-2:]
        boxes, labels = self._boxes(meta)
        pixels = tv_tensors.BoundingBoxes(
            boxes * torch.tensor([width, height, width, height]),
            format="XYXY",
            canvas_size=(height, width),
        )
        with torch.random.fork_rng(devices=[]):
            key = sample["__key__"], sample.get("__position__", 0), salt
            torch.manual_seed(seed_from(self.seed, self.epoch, *key))
            video, pixels = self.transform(tv_tensors.Video(frames), pixels)
        size = video.shape[-1]
        clip = video.as_subclass(Tensor).permute(1, 0, 2, 3).contiguous()  # (C, T, S, S)
        target = {
            "boxes": pixels.as_subclass(Tensor) / size,
            "labels": labels,
            "frame": {
                "key": (meta.video, meta.timestamp),
                "boxes": [list(box) for box in meta.boxes],
                "labels": meta.labels,
            },
        }
        return (clip if self.train else clip[None]), target


def collate_keyframes(
    samples: list[tuple[Tensor, dict[str, Any], str]],
) -> tuple[Tensor, KeyframeTargets, list[str]]:
    """[(clip, target, key)] → (clips (B, ...), `KeyframeTargets`, keys)."""
    clips, targets, keys = zip(*samples, strict=True)
    rois = [
        torch.cat([torch.full((len(t["boxes"]), 1), float(b)), t["boxes"]], dim=1)
        for b, t in enumerate(targets)
    ]
    return (
        torch.stack(clips),
        KeyframeTargets(
            torch.cat(rois).reshape(-1, 5),
            torch.cat([t["labels"] for t in targets]),
            [t["frame"] for t in targets],
        ),
        list(keys),
    )
