"""Shared fixtures: a small synthetic motion dataset, as videos and as shards.

`synthetic_shards` is the dataset other tests (pipelines, training) read: 4 motion classes
(moving_down/left/right/up, class indices in that order), 16 frames of 32×32 at 8 fps,
48 train + 16 val clips per class, 32 samples per shard → train-000000..000005.tar and
val-000000..000001.tar plus manifest.json. Made once per test session (~2 s).

The accuracy tests (slow) need more: `motion_shards` is the same task with 384 train + 32 val
clips per class (48 clips overfit a frozen backbone's adapters), and `tiny_pretrained` is a
tiny_vit backbone pre-trained on single frames (`zeroi2v.models.tiny_pretrain`), the starting point
the demo uses; a random frozen backbone cannot learn the task. Each is made on first use.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SYNTHETIC_TRAIN_PER_CLASS = 48
SYNTHETIC_VAL_PER_CLASS = 16
SYNTHETIC_SHARD_SIZE = 32
MOTION_TRAIN_PER_CLASS = 384
MOTION_VAL_PER_CLASS = 32
MOTION_SHARD_SIZE = 128

# Every Ray a test starts (local, ray.cluster_utils.Cluster, or launch/tune.py in a subprocess)
# stays on 127.0.0.1. Ray reads this once, when it is first imported, so it is set here, before
# any test module imports Ray; set later, a Cluster binds this machine's network address.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

# `make test` runs the suite in N pytest-xdist workers on the machine's cores: each worker's
# torch gets its share of them. With every worker on all cores, OpenMP threads of one spin
# while the other's hold the cores: a ~11 s tiny pre-training took 20 min (2 workers × 2
# threads on 2 cores, on a loaded machine). Subprocess ranks get OMP_NUM_THREADS=1 anyway.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    import torch

    workers = int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


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
    return _shard(
        synthetic_videos, tmp_path_factory.mktemp("synthetic_shards"), SYNTHETIC_SHARD_SIZE
    )


def _shard(videos: Path, out: Path, shard_size: int) -> Path:
    from data_prep.shard import shard_split
    from data_prep.sources import folder

    for split in ("train", "val"):
        shard_split(
            folder(videos, split),
            out,
            split,
            root=videos,
            shard_size=shard_size,
            seed=0,
            progress_bar=False,
        )
    return out


@pytest.fixture(scope="session")
def motion_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Shards of 384 train + 32 val clips per class (1536 + 128; ~15 s): enough to learn."""
    from data_prep.synthetic import make_synthetic

    videos = make_synthetic(
        tmp_path_factory.mktemp("motion_videos"),
        per_class=MOTION_TRAIN_PER_CLASS,
        frames=16,
        size=32,
        seed=0,
        val_per_class=MOTION_VAL_PER_CLASS,
    )
    return _shard(videos, tmp_path_factory.mktemp("motion_shards"), MOTION_SHARD_SIZE)


def _pretrain(tmp_path_factory: pytest.TempPathFactory, seed: int) -> Path:
    from zeroi2v.config import load
    from zeroi2v.models.tiny_pretrain import pretrain_tiny_backbone

    out = tmp_path_factory.mktemp("tiny_pretrained") / f"tiny_vit_image.seed{seed}.pt"
    cfg = load(Path(__file__).resolve().parents[1] / "configs" / "tiny_cpu.json")
    accuracy = pretrain_tiny_backbone(cfg, out, seed=seed)
    assert accuracy >= 0.9, f"image pre-training did not learn the location task ({accuracy})"
    return out


@pytest.fixture(scope="session")
def tiny_pretrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny_vit backbone weights pre-trained on the single-frame location task (~11 s)."""
    return _pretrain(tmp_path_factory, seed=0)


@pytest.fixture(scope="session")
def tiny_pretrained_seed1(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same pre-training with seed 1: other weights, as another machine's rounding gives."""
    return _pretrain(tmp_path_factory, seed=1)
