"""Video data: WebDataset shards → decord → frame sampling → clip-consistent augmentation.

Attributes are imported lazily, as in `zeroi2v.models`: `zeroi2v.data.synthetic` (numpy) and
`zeroi2v.data.quiet` (the decoders' logging) are used by `data_prep` without torch or
webdataset, and a core install (no `[data]` extra) can still import `zeroi2v.data.sampling`.
"""

from __future__ import annotations

from zeroi2v.lazy import attribute_loader

_EXPORTS = {
    "CLIP_MEAN": "zeroi2v.data.transforms",
    "CLIP_STD": "zeroi2v.data.transforms",
    "CorruptVideoError": "zeroi2v.errors",
    "EvalTransform": "zeroi2v.data.transforms",
    "SkipCounter": "zeroi2v.data.shards",
    "TrainTransform": "zeroi2v.data.transforms",
    "VideoLoader": "zeroi2v.data.pipeline",
    "build_eval_loader": "zeroi2v.data.pipeline",
    "build_train_loader": "zeroi2v.data.pipeline",
    "count_samples": "zeroi2v.data.shards",
    "dense_indices": "zeroi2v.data.sampling",
    "read_manifest": "zeroi2v.data.shards",
    "uniform_indices": "zeroi2v.data.sampling",
}

__all__ = sorted(_EXPORTS)

__getattr__ = attribute_loader(__name__, _EXPORTS)
