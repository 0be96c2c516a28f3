"""Shards streamed from a real local HTTP server: as http:// URLs and as `pipe:curl` commands;
exactly-once evaluation over ranks; a download that dies mid-shard is counted, never a hang."""

from __future__ import annotations

import tarfile
import time
from pathlib import Path

import pytest
from servers import http_file_server

from zeroi2v.config import Config, from_dict
from zeroi2v.data import build_eval_loader, build_train_loader, count_samples, read_manifest, shards
from zeroi2v.data.shards import shard_name

VAL = "val-{000000..000001}.tar"
TRAIN = "train-{000000..000005}.tar"


def _cfg(train: str, val: str, shuffle_buffer: int = 8) -> Config:
    return from_dict(
        {
            "model": {"num_frames": 8, "image_size": 32, "num_classes": 4},
            "data": {
                "train_shards": train,
                "val_shards": val,
                "frame_interval": 2,
                "short_side": 32,
                "shuffle_buffer": shuffle_buffer,
                "num_workers": 1,
            },
        }
    )


def _keys(folder: Path, prefix: str) -> list[str]:
    keys = []
    for shard in sorted(folder.glob(f"{prefix}-*.tar")):
        with tarfile.open(shard) as tar:
            keys += sorted({m.name.split(".", 1)[0] for m in tar.getmembers()})
    return keys


def _eval_keys(cfg: Config, world_size: int) -> list[str]:
    keys = []
    for rank in range(world_size):
        for _, _, batch_keys in build_eval_loader(
            cfg, rank=rank, world_size=world_size, batch_size=8
        ):
            keys += batch_keys
    return keys


@pytest.mark.parametrize("form", ["http", "pipe"])
def test_eval_over_http_sees_every_val_sample_once_over_ranks(synthetic_shards, form):
    expected = _keys(synthetic_shards, "val")
    with http_file_server(synthetic_shards) as base:
        prefix = f"{base}/" if form == "http" else f"pipe:curl -s -f {base}/"
        cfg = _cfg(prefix + TRAIN, prefix + VAL)
        assert (
            read_manifest(cfg.data.val_shards)["classes"]
            == read_manifest(str(synthetic_shards / "val-*.tar"))["classes"]
        )
        assert count_samples(cfg.data.val_shards) == len(expected)
        assert count_samples(cfg.data.train_shards) == len(_keys(synthetic_shards, "train"))
        keys = _eval_keys(cfg, world_size=2)
    assert sorted(keys) == sorted(expected)  # every key once: no duplicate, none missing


def test_shard_names_in_urls_and_pipe_commands():
    assert shard_name("/data/train-000003.tar") == "train-000003.tar"
    assert shard_name("http://h:8000/s/train-000003.tar") == "train-000003.tar"
    assert shard_name("pipe:aws s3 cp s3://bucket/k400/train-000003.tar -") == "train-000003.tar"


@pytest.mark.parametrize("stall_s", [0.0, 30.0], ids=["cut", "stall"])
def test_download_dying_mid_shard_is_counted_and_training_goes_on(
    synthetic_shards, monkeypatch, stall_s
):
    """train-000001.tar dies after 4 KiB on every read (at once, or after hanging 30 s; the
    stall limit is 2 s here): each time it is counted as an unreadable shard and the stream
    moves on; two ranks still get every batch they asked for."""
    monkeypatch.setattr(shards, "STALL_SECONDS", 2)
    cut = ("train-000001.tar",)
    with http_file_server(synthetic_shards, cut=cut, stall_s=stall_s) as base:
        # blocks of 2 shards (64 samples): the cut shard's clips are replaced from its block
        # (a block with no readable sample at all stops the run with an error instead)
        cfg = _cfg(f"{base}/{TRAIN}", f"{base}/{VAL}", shuffle_buffer=64)
        start, skipped = time.monotonic(), 0
        for rank in (0, 1):
            loader = build_train_loader(
                cfg, rank=rank, world_size=2, epoch=0, micro_batch_size=4, num_batches=30
            )
            batches = list(loader)  # 120 clips: more than a pass over this rank's 3 shards
            assert len(batches) == 30
            assert all(b[0].shape == (4, 3, 8, 32, 32) for b in batches)
            skipped += loader.skips.shards
        assert skipped >= 1  # every shuffled pass hands the cut shard to one of the ranks
        assert time.monotonic() - start < 120  # bounded: nothing waited for the hung transfer
