"""WebDataset loaders: exact batch counts, determinism, resume without decoding, corrupt data,
exactly-once evaluation over ranks × workers, manifest helpers."""

from __future__ import annotations

import json
import tarfile
from collections import Counter
from pathlib import Path

import pytest
import torch
import webdataset as wds

from zeroi2v.config import Config, from_dict
from zeroi2v.data import build_eval_loader, build_train_loader, count_samples, read_manifest
from zeroi2v.data.clips import ClipLoader


def _cfg(shards: Path, train: str = "train-*.tar", val: str = "val-*.tar", **data) -> Config:
    return from_dict(
        {
            "model": {"num_frames": 8, "image_size": 32, "num_classes": 4},
            "data": {
                "train_shards": str(shards / train),
                "val_shards": str(shards / val),
                "frame_interval": 2,
                "short_side": 32,
                "shuffle_buffer": 16,
                "num_workers": 2,
                "random_erasing": 0.25,
                **data,
            },
            "train": {"seed": 7},
        }
    )


def _keys(shards: list[Path]) -> list[str]:
    keys = []
    for shard in shards:
        with tarfile.open(shard) as tar:
            keys += sorted({m.name.split(".", 1)[0] for m in tar.getmembers()})
    return keys


def _train(cfg: Config, **kw) -> list[tuple[torch.Tensor, torch.Tensor, list[str]]]:
    args = {"rank": 0, "world_size": 1, "epoch": 0, "micro_batch_size": 4, "num_batches": 7}
    return list(build_train_loader(cfg, **{**args, **kw}))


def _same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(
        torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) and x[2] == y[2]
        for x, y in zip(a, b, strict=True)
    )


def test_train_stream_is_exact_and_deterministic(synthetic_shards: Path) -> None:
    cfg = _cfg(synthetic_shards, train="train-000000.tar")  # 32 samples
    first = _train(cfg, num_batches=10)  # 40 clips: the stream wraps around
    assert len(first) == 10
    videos, labels, keys = first[0]
    assert videos.shape == (4, 3, 8, 32, 32) and videos.dtype == torch.float32
    assert labels.dtype == torch.int64 and labels.shape == (4,) and len(keys) == 4
    played = Counter(k for batch in first for k in batch[2])  # a pass and 8 of the next
    assert set(played) == set(_keys([synthetic_shards / "train-000000.tar"]))
    assert sorted(Counter(played.values()).items()) == [(1, 24), (2, 8)]
    assert set(torch.cat([b[1] for b in first]).tolist()) <= {0, 1, 2, 3}
    assert _same(first, _train(cfg, num_batches=10))
    assert not _same(first[:4], _train(cfg, num_batches=4, epoch=1))  # a new epoch reshuffles
    ranks = [_train(cfg, rank=r, world_size=2, num_batches=4) for r in (0, 1)]
    assert not _same(ranks[0], ranks[1])


def test_augmenting_on_the_device_gives_the_same_batches(synthetic_shards: Path) -> None:
    """data.augment_on: device ships uint8 crops and each clip's RNG state from the workers and
    augments after the copy: on the CPU as the device, the very batches of augment_on: cpu
    (RandAugment m7 n4, flip and random erasing 0.25 all drawn)."""
    cfg = _cfg(synthetic_shards, train="train-000000.tar")
    on_workers = _train(cfg, num_batches=4)
    on_device = _train(_cfg(synthetic_shards, train="train-000000.tar", augment_on="device"),
                       num_batches=4, device="cpu")  # fmt: skip
    assert on_device[0][0].shape == (4, 3, 8, 32, 32) and on_device[0][0].dtype == torch.float32
    assert _same(on_workers, on_device)


@pytest.mark.parametrize(("workers", "skip"), [(2, 3), (2, 4), (0, 2)])
def test_skip_batches_resumes_the_same_stream(
    synthetic_shards: Path, workers: int, skip: int
) -> None:
    cfg = _cfg(synthetic_shards, num_workers=workers)
    num_batches = 9 if workers else 4
    full = _train(cfg, num_batches=num_batches)
    resumed = _train(cfg, num_batches=num_batches, skip_batches=skip)
    assert len(resumed) == num_batches - skip
    assert _same(full[skip:], resumed)


def test_skipped_batches_are_not_decoded(
    synthetic_shards: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    decode = ClipLoader.__call__
    monkeypatch.setattr(ClipLoader, "__call__", lambda s, *a: calls.append(1) or decode(s, *a))
    _train(_cfg(synthetic_shards, num_workers=0), num_batches=6, skip_batches=4)
    assert len(calls) == (6 - 4) * 4


@pytest.fixture(scope="module")
def corrupt_shards(synthetic_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two 8-sample shards, one with garbage mp4 bytes, and a tar that is not a tar."""
    out = tmp_path_factory.mktemp("corrupt")
    samples = list(wds.WebDataset(str(synthetic_shards / "train-000000.tar"), shardshuffle=False))
    samples = [{k: v for k, v in s.items() if not k.startswith("__url")} for s in samples[:16]]
    samples[5]["mp4"] = b"\x00\x00\x00\x18ftypmp42 definitely not a video" * 10
    for index in range(2):
        with wds.TarWriter(str(out / f"train-{index:06d}.tar")) as sink:
            for sample in samples[8 * index : 8 * index + 8]:
                sink.write(sample)
    (out / "broken-000000.tar").write_bytes(b"not a tar file" * 100)
    names = ["train-000000.tar", "train-000001.tar", "broken-000000.tar"]
    shards = [{"name": name, "count": 8, "sha256": ""} for name in names]
    manifest = {"classes": [], "splits": {"train": {"shards": shards, "count": 24}}}
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def test_corrupt_sample_is_skipped_counted_and_replaced(corrupt_shards: Path) -> None:
    cfg = _cfg(corrupt_shards, shuffle_buffer=4, num_workers=2)
    # 2 workers × 4 batches × 2 = one pass over both shards: the garbage sample comes up once.
    loader = build_train_loader(
        cfg, rank=0, world_size=1, epoch=0, micro_batch_size=2, num_batches=8
    )
    batches = list(loader)
    assert len(batches) == 8 and all(b[0].shape == (2, 3, 8, 32, 32) for b in batches)
    assert loader.skips.samples == 1 and loader.skips.shards == 0


def test_unreadable_tar_is_skipped_and_counted(corrupt_shards: Path) -> None:
    cfg = _cfg(corrupt_shards, train="{broken-000000,train-000001}.tar", num_workers=0)
    loader = build_train_loader(
        cfg, rank=0, world_size=1, epoch=0, micro_batch_size=2, num_batches=6
    )
    assert len(list(loader)) == 6
    assert loader.skips.shards >= 1 and loader.skips.samples == 0


@pytest.mark.parametrize(
    ("pattern", "num_clips", "num_crops"),
    [
        ("val-*.tar", 2, 1),  # 2 shards < 4 slots: sample-level split
        ("train-{000000..000004}.tar", 1, 3),  # 5 shards ≥ 4 slots, 5 % 4 ≠ 0: shard-level
    ],
)
def test_eval_sees_every_sample_exactly_once(
    synthetic_shards: Path, pattern: str, num_clips: int, num_crops: int
) -> None:
    cfg = _cfg(synthetic_shards, val=pattern, num_clips=num_clips, num_crops=num_crops)
    keys = []
    for rank in (0, 1):
        for videos, labels, batch_keys in build_eval_loader(
            cfg, rank=rank, world_size=2, batch_size=5
        ):
            assert videos.shape[1:] == (num_clips * num_crops, 3, 8, 32, 32)
            assert len(labels) == len(batch_keys) == videos.shape[0] <= 5
            keys += batch_keys
    expected = _keys(sorted(synthetic_shards.glob(pattern.replace("{000000..000004}", "*"))))
    if "train" in pattern:
        expected = _keys([synthetic_shards / f"train-{i:06d}.tar" for i in range(5)])
    assert sorted(keys) == sorted(expected)
    assert len(keys) == count_samples(str(synthetic_shards / pattern))


def test_eval_views_are_deterministic(synthetic_shards: Path) -> None:
    cfg = _cfg(synthetic_shards, num_clips=3, num_workers=0, frame_interval=1)
    runs = [next(iter(build_eval_loader(cfg, rank=0, world_size=1, batch_size=4))) for _ in "ab"]
    assert torch.equal(runs[0][0], runs[1][0]) and runs[0][2] == runs[1][2]
    assert not torch.equal(runs[0][0][:, 0], runs[0][0][:, 1])  # distinct temporal clips


def test_manifest_helpers_and_errors(synthetic_shards: Path, tmp_path: Path) -> None:
    assert read_manifest(str(synthetic_shards / "train-*.tar"))["splits"]["train"]["count"] == 192
    assert count_samples(str(synthetic_shards / "train-{000000..000001}.tar")) == 64
    (tmp_path / "train-000000.tar").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="no manifest.json next to .*data_prep shard"):
        count_samples(str(tmp_path / "train-000000.tar"))
    missing = str(synthetic_shards / "train-{000000..000009}.tar")
    with pytest.raises(FileNotFoundError, match=r"4 of 10 missing"):
        build_train_loader(
            _cfg(synthetic_shards, train=Path(missing).name),
            rank=0,
            world_size=1,
            epoch=0,
            micro_batch_size=2,
            num_batches=1,
        )


def test_labels_match_the_shards(synthetic_shards: Path) -> None:
    """Eval labels are the `cls` field of the sample with that key."""
    cfg = _cfg(synthetic_shards, num_workers=0)
    truth = {
        s["__key__"]: int(s["cls"])
        for s in wds.WebDataset(str(synthetic_shards / "val-000000.tar"), shardshuffle=False)
    }
    for _, labels, keys in build_eval_loader(cfg, rank=0, world_size=1, batch_size=8):
        for key, label in zip(keys, labels.tolist(), strict=True):
            if key in truth:
                assert truth[key] == label
