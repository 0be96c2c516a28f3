"""Every sample a hostile shard can hold is skipped and counted, never a crash of the loader.

The loaders catch `ClipLoader.errors` (a broken sample) and let anything else through as a
bug; so each hostile sample must raise one of those, for training clips and test views alike,
and a shard holding all of them must be read to the end with each one counted.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.serving_load import hostile_videos
from data_prep.shard_writer import DeterministicTar
from zeroi2v.config import from_dict
from zeroi2v.data import build_eval_loader
from zeroi2v.data.clips import ClipLoader


def _meta(**fields) -> bytes:
    return json.dumps({"label": "x", "frames": 16, "width": 32, "height": 32, **fields}).encode()


def hostile_samples(good: bytes) -> dict[str, dict[str, bytes]]:
    """name → tar members of a sample that must be skipped (mp4 / cls / json)."""
    samples = {name: {"mp4": data, "cls": b"0"} for name, data in hostile_videos(good).items()}
    plain = {"mp4": good, "cls": b"0"}
    samples.update(
        {
            "png signature, stored size": {**samples["png signature"], "json": _meta()},
            "json not utf-8": {**plain, "json": b"\xff\xfe{"},
            "json not json": {**plain, "json": b"{width: 32"},
            "json a number": {**plain, "json": b"5"},
            "json a list": {**plain, "json": b"[1, 2]"},
            "width 0": {**plain, "json": _meta(width=0)},
            "width text": {**plain, "json": _meta(width="32")},
            "height negative": {**plain, "json": _meta(height=-32)},
            "frames text": {**plain, "json": _meta(frames="16")},
            "frames 0": {**plain, "json": _meta(frames=0)},
            "label text": {**plain, "cls": b"left"},
            "label not utf-8": {**plain, "cls": b"\xff"},
            "no label": {"mp4": good},
            "no video": {"cls": b"0", "json": _meta()},
            "empty video": {"mp4": b"", "cls": b"0"},
        }
    )
    return samples


def _cfg(shards: str):
    return from_dict(
        {
            "model": {"num_frames": 8, "image_size": 32, "num_classes": 4},
            "data": {
                "train_shards": shards,
                "val_shards": shards,
                "frame_interval": 2,
                "short_side": 32,
                "num_workers": 0,
            },
            "train": {"seed": 3},
        }
    )


@pytest.fixture(scope="module")
def good(synthetic_videos: Path) -> bytes:
    return sorted((synthetic_videos / "val").glob("*/*.mp4"))[0].read_bytes()


@pytest.mark.parametrize("name", list(hostile_samples(b"\0" * 64)))
def test_every_hostile_sample_raises_what_the_loaders_skip(good, name):
    cfg = _cfg("unused.tar")
    members = hostile_samples(good)[name]
    for load in (ClipLoader.for_training(cfg, epoch=0), ClipLoader.for_eval(cfg)):
        assert load({"__key__": "good", "mp4": good, "cls": b"1", "json": _meta()})[1] == 1
        with pytest.raises(load.errors):  # a ZeroDivisionError or TypeError fails here
            load({"__key__": name, **members})


def test_a_shard_of_hostile_samples_is_read_to_the_end(tmp_path, good):
    samples = hostile_samples(good)
    tar = DeterministicTar(tmp_path / "val-000000.tar")
    tar.add("good0", {"mp4": good, "cls": b"1", "json": _meta()})
    for index, members in enumerate(samples.values()):
        tar.add(f"bad{index:02d}", members)
    tar.add("good1", {"mp4": good, "cls": b"2", "json": _meta()})
    tar.close()
    loader = build_eval_loader(
        _cfg(str(tmp_path / "val-000000.tar")), rank=0, world_size=1, batch_size=4
    )
    keys = [key for _, _, batch_keys in loader for key in batch_keys]
    assert keys == ["good0", "good1"]
    assert loader.skips.samples == len(samples)


def _keyframe_meta(**fields) -> bytes:
    meta = {
        "video": "m", "timestamp": 902, "keyframe": 8, "frames": 16, "width": 32, "height": 32,
        "boxes": [[0.1, 0.1, 0.5, 0.9]], "labels": [[0, 2]],
        "proposals": [[0.1, 0.1, 0.5, 0.9, 0.95]],
    }  # fmt: skip
    return json.dumps({**meta, **fields}).encode()


HOSTILE_KEYFRAME_JSON = {
    "a list": b"[1, 2]",
    "keyframe text": _keyframe_meta(keyframe="8"),
    "keyframe negative": _keyframe_meta(keyframe=-1),
    "width 0": _keyframe_meta(width=0),
    "a box of 3 numbers": _keyframe_meta(boxes=[[0.1, 0.1, 0.5]]),
    "a box of text": _keyframe_meta(boxes=["abcd"]),
    "labels not lists": _keyframe_meta(labels=[1]),
    "a label beyond the classes": _keyframe_meta(labels=[[3]]),
    "fewer label lists than boxes": _keyframe_meta(labels=[]),
    "no proposals": json.dumps({"video": "m", "timestamp": 902}).encode(),
}


@pytest.mark.parametrize("name", list(HOSTILE_KEYFRAME_JSON))
def test_every_hostile_keyframe_json_raises_what_the_loaders_skip(good, name):
    """The AVA keyframe loader (3 classes) reads the same bytes a good json makes it read."""
    from zeroi2v.data.ava import KeyframeLoader

    cfg = from_dict(
        {
            "model": {"backbone": "tiny_vit", "image_size": 32, "num_frames": 4,
                      "num_classes": 3, "task": "detection"},
            "data": {"frame_interval": 2, "num_workers": 0},
        }
    )  # fmt: skip
    for train in (True, False):
        load = KeyframeLoader(cfg, train=train)
        clip, target = load({"__key__": "good", "mp4": good, "json": _keyframe_meta()})
        assert target["frame"]["labels"] == [[0, 2]]
        with pytest.raises(load.errors):  # a TypeError or IndexError fails here
            load({"__key__": name, "mp4": good, "json": HOSTILE_KEYFRAME_JSON[name]})
