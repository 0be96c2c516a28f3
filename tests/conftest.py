"""Shared fixtures: a small synthetic motion dataset, as videos and as shards.

`synthetic_shards` is the dataset other tests (pipelines, training) read: 4 motion classes
(moving_down/left/right/up, class indices in that order), 16 frames of 32×32 at 8 fps,
48 train + 16 val clips per class, 32 samples per shard → train-000000..000005.tar and
val-000000..000001.tar plus manifest.json. Made once per test session (~2 s).
"""

from __future__ import annotations

from pathlib import Path

import pytest

SYNTHETIC_TRAIN_PER_CLASS = 48
SYNTHETIC_VAL_PER_CLASS = 16
SYNTHETIC_SHARD_SIZE = 32


@pytest.fixture(scope="session")
def synthetic_videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`root/{train,val}/{class}/{i:05d}.mp4`, lossless h264 (libx264rgb)."""
    from data_prep.synthetic import make_synthetic

    return make_synthetic(
        tmp_path_factory.mktemp("synthetic_videos"),
        per_class=SYNTHETIC_TRAIN_PER_CLASS,
        frames=16,
        size=32,
        seed=0,
        val_per_class=SYNTHETIC_VAL_PER_CLASS,
    )


@pytest.fixture(scope="session")
def synthetic_shards(tmp_path_factory: pytest.TempPathFactory, synthetic_videos: Path) -> Path:
    """Folder with manifest.json, train-*.tar and val-*.tar of `synthetic_videos`."""
    from data_prep.shard import shard_split
    from data_prep.sources import folder

    out = tmp_path_factory.mktemp("synthetic_shards")
    for split in ("train", "val"):
        shard_split(
            folder(synthetic_videos, split),
            out,
            split,
            root=synthetic_videos,
            shard_size=SYNTHETIC_SHARD_SIZE,
            seed=0,
            progress_bar=False,
        )
    return out
