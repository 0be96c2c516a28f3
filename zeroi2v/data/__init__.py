"""Video data: WebDataset shards → decord → frame sampling → clip-consistent augmentation."""

from zeroi2v.data.decode import CorruptVideoError
from zeroi2v.data.pipeline import (
    SkipCounter,
    VideoLoader,
    build_eval_loader,
    build_train_loader,
    count_samples,
    read_manifest,
)
from zeroi2v.data.sampling import dense_indices, uniform_indices
from zeroi2v.data.transforms import CLIP_MEAN, CLIP_STD, EvalTransform, TrainTransform

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "CorruptVideoError",
    "EvalTransform",
    "SkipCounter",
    "TrainTransform",
    "VideoLoader",
    "build_eval_loader",
    "build_train_loader",
    "count_samples",
    "dense_indices",
    "read_manifest",
    "uniform_indices",
]
