"""The tests' synthetic motion shards (4 classes, 16 frames of 32², 32 per shard) for benches
that train the tiny config: made once per bench run in a temporary folder."""

from __future__ import annotations

from pathlib import Path

import repo_path  # noqa: F401  (bench/ is sys.path[0]): the checkout's data_prep


def make_shards(out: Path, *, val_per_class: int) -> Path:
    """48 train clips per class (+ `val_per_class`) → `out/shards/{train,val}-NNNNNN.tar`."""
    from data_prep.shard import shard_split
    from data_prep.sources import folder
    from data_prep.synthetic import make_synthetic

    videos = make_synthetic(
        out / "videos", per_class=48, frames=16, size=32, seed=0, val_per_class=val_per_class
    )
    for split in ("train", "val"):
        shard_split(
            folder(videos, split),
            out / "shards",
            split,
            root=videos,
            shard_size=32,
            seed=0,
            progress_bar=False,
        )
    return out / "shards"
