"""The data tools never hang or crash on what a folder or a tar may hold.

`data_prep shard` skips a FIFO or socket named like a video (with the reason, never opening
it: a FIFO made it wait forever); `data_prep inspect` / `subset` group tar members by
WebDataset's key rule, as the loaders do (a dot in a folder part made them KeyError), and a
shard that breaks the rule is one sentence.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
from pathlib import Path

import webdataset as wds
from engine_helpers import REPO, clean_env

from data_prep.__main__ import main
from data_prep.shard_writer import DeterministicTar, update_manifest


def test_shard_skips_a_fifo_and_a_socket_without_opening_them(synthetic_videos, tmp_path):
    root = tmp_path / "videos"
    good = sorted((synthetic_videos / "val" / "moving_up").glob("*.mp4"))[:2]
    folder = root / "train" / "up"
    folder.mkdir(parents=True)
    for path in good:
        shutil.copy(path, folder / path.name)
    os.mkfifo(folder / "pipe.mp4")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(folder / "sock.mp4"))
        out = tmp_path / "shards"
        command = [sys.executable, "-m", "data_prep", "shard", "--source", "folder"]
        command += ["--root", str(root), "--split", "train", "--out", str(out), "--no-progress"]
        # bounded: before the fix this waited forever on the FIFO
        done = subprocess.run(
            command, env=clean_env(), cwd=REPO, capture_output=True, text=True, timeout=120
        )
    assert "2 samples in 1 shards, 2 skipped" in done.stdout, done.stderr
    reasons = {
        s["source"]: s["reason"] for s in json.loads((out / "manifest.json").read_text())["skipped"]
    }
    assert reasons == {
        "train/up/pipe.mp4": "not a regular file (a named pipe): never opened",
        "train/up/sock.mp4": "not a regular file (a socket): never opened",
    }


def _shard(path: Path, samples: list[tuple[str, dict[str, bytes]]]) -> Path:
    tar = DeterministicTar(path)
    for key, members in samples:
        tar.add(key, members)
    tar.close()
    return path


def _members(video: bytes, label: int) -> dict[str, bytes]:
    meta = {"label": ["down", "left"][label], "frames": 16, "width": 32, "height": 32}
    return {"mp4": video, "cls": str(label).encode(), "json": json.dumps(meta).encode()}


def test_inspect_and_subset_use_webdatasets_keys(synthetic_videos, tmp_path, capsys):
    video = sorted((synthetic_videos / "val").glob("*/*.mp4"))[0].read_bytes()
    keys = ["../../escape", "a.b/c", "plain", "d.e/f"]
    source = tmp_path / "source"
    source.mkdir()
    shard = _shard(
        source / "train-000000.tar", [(k, _members(video, i % 2)) for i, k in enumerate(keys)]
    )
    entry = {"shards": [{"name": shard.name, "count": 4, "sha256": ""}], "count": 4}
    update_manifest(source, ["down", "left"], "train", entry, [])
    loader_keys = [s["__key__"] for s in wds.WebDataset(str(shard), shardshuffle=False)]
    assert loader_keys == keys  # what the training loaders see

    assert main(["inspect", str(shard)]) == 0
    printed = capsys.readouterr()
    assert "total" in printed.out and printed.err == ""
    assert (
        main(["subset", "--shards", str(source), "--out", str(tmp_path / "few")] + ["--shots", "2"])
        == 0
    )
    written = json.loads((tmp_path / "few" / "manifest.json").read_text())["subset"]["keys"]
    assert sorted(written["down"] + written["left"]) == sorted(keys)


def test_a_shard_that_breaks_the_key_rule_is_one_sentence(synthetic_videos, tmp_path, capsys):
    video = sorted((synthetic_videos / "val").glob("*/*.mp4"))[0].read_bytes()
    with_no_ext = _shard(tmp_path / "b.tar", [("good", _members(video, 0))])
    with tarfile.open(with_no_ext, "a") as tar:  # a member whose only dot is in a folder name
        tar.addfile(tarfile.TarInfo("x.y/readme"))
    assert main(["inspect", str(with_no_ext)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "member 'x.y/readme' has no KEY.EXT name by WebDataset's rule" in err

    no_json = _shard(tmp_path / "c.tar", [("k", {"mp4": video, "cls": b"0"})])
    assert main(["inspect", str(no_json)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"{no_json}: sample 'k' has no .json member (it has ['cls', 'mp4'])" in err


def test_subset_names_a_sample_without_a_label(synthetic_videos, tmp_path, capsys):
    video = sorted((synthetic_videos / "val").glob("*/*.mp4"))[0].read_bytes()
    source = tmp_path / "source"
    source.mkdir()
    shard = _shard(source / "train-000000.tar", [("k", {"mp4": video, "json": b"{}"})])
    entry = {"shards": [{"name": shard.name, "count": 1, "sha256": ""}], "count": 1}
    update_manifest(source, ["down"], "train", entry, [])
    assert (
        main(["subset", "--shards", str(source), "--out", str(tmp_path / "x"), "--shots", "1"]) == 1
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sample 'k' has no .cls member" in err
