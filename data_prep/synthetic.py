"""`python -m data_prep synthetic`: the motion-only clips of `zeroi2v.data.synthetic`, as mp4 files.

The renderer (classes, textures, motion) lives in the library because the tiny backbone's image
pre-training draws frames from it too; this module only encodes and writes the clips, losslessly
(libx264rgb, qp 0) so that decoded frames equal the rendered ones. The renderer's names stay
importable from here (`data_prep.synthetic.CLASSES`, `render`, ...).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from data_prep.video_io import encode_rgb
from zeroi2v.data.synthetic import (
    CLASSES,
    DIRECTIONS,
    OPPOSITE,
    SPEEDS,
    ClipParams,
    render,
    reversed_params,
    sample_params,
)

__all__ = [
    "CLASSES",
    "DIRECTIONS",
    "FPS",
    "OPPOSITE",
    "SPEEDS",
    "SPLITS",
    "ClipParams",
    "make_synthetic",
    "render",
    "reversed_params",
    "sample_params",
]

FPS = 8.0
SPLITS = ("train", "val")


def make_synthetic(
    out: str | Path,
    per_class: int = 32,
    frames: int = 16,
    size: int = 32,
    seed: int = 0,
    val_per_class: int = 8,
) -> Path:
    """Write `out/{train,val}/{class}/{i:05d}.mp4`, the layout `shard --source folder` reads.

    Each clip has its own RNG stream keyed by (seed, split, class, index): reproducible, and
    adding clips never changes existing ones.
    """
    out = Path(out)
    if frames < 2 or size < 8:
        raise ValueError(f"synthetic clips need frames >= 2 and size >= 8, got {frames}, {size}")
    for split_id, (split, count) in enumerate(zip(SPLITS, (per_class, val_per_class), strict=True)):
        for class_id, label in enumerate(CLASSES):
            folder = out / split / label
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                rng = np.random.default_rng([seed, split_id, class_id, i])
                clip = render(sample_params(rng, size), label, frames)
                (folder / f"{i:05d}.mp4").write_bytes(encode_rgb(clip, FPS, lossless=True))
    return out
