"""data_prep: sources, sharding (round trip, bad inputs, crash + resume), synthetic, inspect."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import video_variants as variants

from data_prep import sources
from data_prep.__main__ import EXIT_SKIPPED, main
from data_prep.inspect import LABEL_HEIGHT, contact_sheet, count, iter_samples
from data_prep.shard import shard_split
from data_prep.shard_writer import KILL_HOOK
from data_prep.synthetic import (
    CLASSES,
    DIRECTIONS,
    OPPOSITE,
    SPEEDS,
    render,
    reversed_params,
    sample_params,
)
from data_prep.video_io import MP4_FORMAT, container_format, decode_all, encode_rgb, probe

REPO = Path(__file__).resolve().parents[1]


def _all_samples(shards_dir: Path, split: str) -> list[dict]:
    return [s for tar in sorted(shards_dir.glob(f"{split}-*.tar")) for s in iter_samples(tar)]


def _tree_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.tar"))}


def _motion(video: np.ndarray) -> tuple[int, int]:
    """(dx, dy) per frame of the bright sprite: the roll that maps each mask onto the next."""
    mask = video.min(axis=-1) >= 128  # sprite pixels are >= 128, background < 128
    found = set()
    for t in range(len(mask) - 1):
        hits = [
            (dx, dy)
            for dx in range(-SPEEDS[1], SPEEDS[1] + 1)
            for dy in range(-SPEEDS[1], SPEEDS[1] + 1)
            if (dx == 0) != (dy == 0)
            and np.array_equal(np.roll(mask[t], (dy, dx), (0, 1)), mask[t + 1])
        ]
        assert len(hits) == 1, hits
        found.add(hits[0])
    assert len(found) == 1
    return found.pop()


def _direction(video: np.ndarray) -> str:
    dx, dy = _motion(video)
    return next(name for name, d in DIRECTIONS.items() if d == (np.sign(dx), np.sign(dy)))


# --- round trip ------------------------------------------------------------------------------


def test_round_trip_every_video_once_with_label_and_bytes(synthetic_shards, synthetic_videos):
    manifest = json.loads((synthetic_shards / "manifest.json").read_text())
    assert manifest["classes"] == CLASSES and manifest["skipped"] == []
    for split in ("train", "val"):
        sources_on_disk = {
            p.relative_to(synthetic_videos).as_posix(): p
            for p in (synthetic_videos / split).rglob("*.mp4")
        }
        samples = _all_samples(synthetic_shards, split)
        metas = [json.loads(s["json"]) for s in samples]
        assert sorted(m["source"] for m in metas) == sorted(sources_on_disk)  # each exactly once
        for sample, meta in zip(samples, metas, strict=True):
            label = meta["source"].split("/")[1]
            assert meta["label"] == label
            assert int(sample["cls"]) == CLASSES.index(label)
            assert sample["mp4"] == sources_on_disk[meta["source"]].read_bytes()  # copied
            assert (meta["frames"], meta["width"], meta["height"], meta["fps"]) == (16, 32, 32, 8)
        video = decode_all(samples[0]["mp4"])
        assert np.array_equal(video, decode_all(sources_on_disk[metas[0]["source"]].read_bytes()))
        # manifest counts and hashes are what the tars hold
        entry = manifest["splits"][split]
        assert entry["count"] == len(samples) == len(sources_on_disk)
        for shard in entry["shards"]:
            path = synthetic_shards / shard["name"]
            assert shard["count"] == len(list(iter_samples(path)))
            assert shard["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert [s["count"] for s in manifest["splits"]["train"]["shards"]] == [32] * 6


def test_worker_pool_gives_same_bytes_and_rerun_is_noop(
    synthetic_videos, synthetic_shards, tmp_path
):
    source = sources.folder(synthetic_videos, "val")
    result = shard_split(
        source,
        tmp_path,
        "val",
        root=synthetic_videos,
        shard_size=32,
        workers=2,
        seed=0,
        progress_bar=False,
    )
    expected = {n: b for n, b in _tree_bytes(synthetic_shards).items() if n.startswith("val")}
    assert _tree_bytes(tmp_path) == expected
    again = shard_split(
        source, tmp_path, "val", root=synthetic_videos, shard_size=32, seed=0, progress_bar=False
    )
    assert again == result and _tree_bytes(tmp_path) == expected
    other_seed = shard_split(
        source,
        tmp_path / "s1",
        "val",
        root=synthetic_videos,
        shard_size=32,
        seed=1,
        progress_bar=False,
    )
    assert other_seed["count"] == result["count"]
    assert _tree_bytes(tmp_path / "s1") != expected  # the seed does decide the order


def test_reencode_webm_resize_and_fps(tmp_path):
    rng = np.random.default_rng(0)
    clip = render(sample_params(rng, 64), "moving_right", 16)[:, :48]  # (16, 48, 64, 3)
    root = tmp_path / "videos"
    (root / "train" / "a").mkdir(parents=True)
    (root / "train" / "a" / "big.mp4").write_bytes(encode_rgb(clip, 8.0, lossless=True))
    import av

    with av.open(str(root / "train" / "a" / "clip.webm"), "w") as out:
        stream = out.add_stream("libvpx-vp9", rate=8)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.options = {"lossless": "1"}
        for frame in clip:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode())
    shard_split(
        sources.folder(root, "train"),
        tmp_path / "out",
        "train",
        root=root,
        short_side=24,
        fps=4.0,
        progress_bar=False,
    )
    samples = {s["__key__"]: s for s in _all_samples(tmp_path / "out", "train")}
    assert sorted(samples) == ["a__big", "a__clip"]
    for sample in samples.values():
        assert container_format(sample["mp4"]) == MP4_FORMAT
        meta = json.loads(sample["json"])
        assert (meta["width"], meta["height"], meta["frames"], meta["fps"]) == (32, 24, 8, 4.0)
        video = decode_all(sample["mp4"]).astype(float)
        small = clip[::2, ::2, ::2].astype(float)  # every 2nd frame, half size
        assert np.abs(video - small).mean() < 12  # lossy h264 + resize, same content
    # webm alone (no resize/fps asked) is re-encoded to mp4 but keeps size and frame count
    shard_split(
        sources.folder(root, "train"), tmp_path / "keep", "train", root=root, progress_bar=False
    )
    kept = {s["__key__"]: s for s in _all_samples(tmp_path / "keep", "train")}
    assert kept["a__big"]["mp4"] == (root / "train" / "a" / "big.mp4").read_bytes()
    assert container_format(kept["a__clip"]["mp4"]) == MP4_FORMAT
    assert probe(kept["a__clip"]["mp4"]).frames == 16


# --- bad inputs ------------------------------------------------------------------------------


def test_every_file_is_sharded_or_skipped_in_plain_words(synthetic_videos, tmp_path, capfd):
    """A real collection: any container or case, side files, hostile files, non-ASCII names."""
    root = tmp_path / "videos"
    good = sorted((synthetic_videos / "val" / "moving_up").glob("*.mp4"))[:3]
    for cls in ("a", "b"):
        (root / "train" / cls).mkdir(parents=True)
        for path in good:
            shutil.copy(path, root / "train" / cls / path.name)
    a, b = root / "train" / "a", root / "train" / "b"
    (a / "zero.mp4").write_bytes(b"")
    data = good[0].read_bytes()
    (a / "truncated.mp4").write_bytes(data[: len(data) // 2])  # index (moov) at the end: lost
    fast = variants.write(
        tmp_path / "fast.mp4",
        variants.Variant("mp4", "libx264", frames=48, container_options={"movflags": "faststart"}),
    ).read_bytes()
    (a / "cut.mp4").write_bytes(fast[: len(fast) * 2 // 3])  # index first, data cut
    (a / "text.mp4").write_text("SECRET-BYTES of a text file\n" * 20)
    (a / "dangling.mp4").symlink_to(tmp_path / "does-not-exist.mp4")
    variants.audio_only(a / "song.m4a")
    clip = variants.write(tmp_path / "clip.mp4", variants.Variant("mp4", "libx264", frames=48))
    (a / "garbled.mp4").write_bytes(variants.corrupt_middle(clip.read_bytes()))
    (a / "lying.mp4").write_bytes(variants.lying_header(clip.read_bytes(), keep=12))
    variants.write(a / "clip.MPG", variants.VARIANTS["program_stream.MPG"])
    variants.write(a / "movie.flv", variants.VARIANTS["flash.flv"])
    for name in ("notes.txt", "meta.json", "labels.csv", ".DS_Store"):
        (a / name).write_text("side file")
    for name in ("épée.mp4", "èpée.mp4", "a b.mp4", "a_b.mp4"):
        shutil.copy(good[0], b / name)
    shutil.copy(good[0], root / "train" / "loose.mp4")
    (root / "train" / "unlisted").mkdir()
    shutil.copy(good[0], root / "train" / "unlisted" / "x.mp4")
    (tmp_path / "classes.txt").write_text("a\nb\n")

    out = tmp_path / "shards"
    args = ["shard", "--source", "folder", "--root", str(root), "--split", "train"]
    rc = main(
        [*args, "--classes", str(tmp_path / "classes.txt"), "--out", str(out), "--no-progress"]
    )
    assert rc == EXIT_SKIPPED
    printed = capfd.readouterr()
    assert "SECRET" not in printed.out + printed.err  # no decoder log, no bytes of a bad file
    assert "13 samples in 1 shards, 9 skipped" in printed.out
    assert "4 side files (.txt/.json/.csv/hidden) ignored" in printed.out
    manifest = json.loads((out / "manifest.json").read_text())
    reasons = {s["source"]: s["reason"] for s in manifest["skipped"]}
    assert reasons == {
        "train/a/zero.mp4": "empty file (0 bytes)",
        "train/a/truncated.mp4": "truncated or unfinished mp4: its index (moov) is missing "
        "(Invalid data found when processing input)",
        "train/a/cut.mp4": reasons["train/a/cut.mp4"],
        "train/a/text.mp4": "not a video file: no known container format "
        "(Invalid data found when processing input)",
        "train/a/dangling.mp4": "cannot read the file: No such file or directory",
        "train/a/song.m4a": "no video stream (audio only)",
        "train/a/garbled.mp4": reasons["train/a/garbled.mp4"],
        "train/loose.mp4": "not inside a class folder (want train/CLASS/loose.mp4)",
        "train/unlisted/x.mp4": "label 'unlisted' not in class list",
    }
    assert re.fullmatch(r"truncated: ends at 1\.\d s of 2\.0 s \(.+\)", reasons["train/a/cut.mp4"])
    assert re.fullmatch(
        r"corrupt frames at \d\.\d(–\d\.\d)? s \(\d+ packets fail: .+\)",
        reasons["train/a/garbled.mp4"],
    )
    samples = {json.loads(s["json"])["source"]: s for s in _all_samples(out, "train")}
    assert sorted(samples) == sorted(
        [f"train/{c}/{p.name}" for c in "ab" for p in good]
        + [f"train/a/{n}" for n in ("lying.mp4", "clip.MPG", "movie.flv")]
        + [f"train/b/{n}" for n in ("épée.mp4", "èpée.mp4", "a b.mp4", "a_b.mp4")]
    )
    keys = [s["__key__"] for s in samples.values()]
    assert len(set(keys)) == len(keys) and all(re.fullmatch(r"[A-Za-z0-9_-]+", k) for k in keys)
    assert sum(k.startswith("b__epee-") for k in keys) == 2  # readable and apart
    # the lying header claims 48 frames; the shard stores (and decord counts) the 12 that decode
    lying = samples["train/a/lying.mp4"]
    assert json.loads(lying["json"])["frames"] == 12 == len(decode_all(lying["mp4"]))
    assert container_format(samples["train/a/clip.MPG"]["mp4"]) == MP4_FORMAT


# --- crash safety ----------------------------------------------------------------------------


def _cli(args: list[str], env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "data_prep", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_kill_and_resume_is_byte_identical(synthetic_videos, tmp_path):
    args = [
        "shard",
        "--source",
        "folder",
        "--root",
        str(synthetic_videos),
        "--split",
        "val",
        "--shard-size",
        "24",
        "--seed",
        "7",
        "--no-progress",
        "--out",
    ]
    reference = _cli([*args, str(tmp_path / "ref")])
    assert reference.returncode == 0, reference.stderr
    killed = _cli([*args, str(tmp_path / "run")], {KILL_HOOK: "30"})  # shard 0 final, 1 partial
    assert killed.returncode == -signal.SIGKILL
    assert [p.name for p in sorted((tmp_path / "run").glob("val-*"))] == [
        "val-000000.tar",
        "val-000001.tar.tmp",
    ]
    first = (tmp_path / "run" / "val-000000.tar").stat()
    resumed = _cli([*args, str(tmp_path / "run")])
    assert resumed.returncode == 0, resumed.stderr
    kept = (tmp_path / "run" / "val-000000.tar").stat()  # finished shard kept, not rewritten
    assert (kept.st_ino, kept.st_mtime_ns) == (first.st_ino, first.st_mtime_ns)
    assert _tree_bytes(tmp_path / "run") == _tree_bytes(tmp_path / "ref")
    assert not list((tmp_path / "run").glob("*.tmp"))
    ref_manifest = json.loads((tmp_path / "ref" / "manifest.json").read_text())
    assert json.loads((tmp_path / "run" / "manifest.json").read_text()) == ref_manifest
    assert [s["count"] for s in ref_manifest["splits"]["val"]["shards"]] == [24, 24, 16]

    # a damaged finished shard fails its sha256 check and is rebuilt (with those after it)
    (tmp_path / "run" / "val-000001.tar").write_bytes(b"garbage")
    assert _cli([*args, str(tmp_path / "run")]).returncode == 0
    assert _tree_bytes(tmp_path / "run") == _tree_bytes(tmp_path / "ref")
    # other options on the same folder are refused rather than mixed in
    changed = _cli([*args, str(tmp_path / "run"), "--shard-size", "10"])
    assert changed.returncode == 1 and "--overwrite" in changed.stderr


# --- synthetic -------------------------------------------------------------------------------


def test_synthetic_time_reverse_flips_class():
    for label in CLASSES:
        params = sample_params(np.random.default_rng(3), 32)
        clip = render(params, label, 16)
        backwards = clip[::-1]
        assert np.array_equal(
            backwards, render(reversed_params(params, label, 16), OPPOSITE[label], 16)
        )
        assert _direction(clip) == label and _direction(backwards) == OPPOSITE[label]
        assert OPPOSITE[label] != label


def test_synthetic_files_are_lossless_and_moving_their_way(synthetic_videos):
    for label in CLASSES:
        for path in sorted((synthetic_videos / "train" / label).glob("*.mp4"))[:4]:
            video = decode_all(path.read_bytes())
            assert video.shape == (16, 32, 32, 3)
            assert _direction(video) == label
            assert _direction(video[::-1]) == OPPOSITE[label]


def test_synthetic_frame_statistics_do_not_depend_on_class(synthetic_videos):
    stats = {}
    for label in CLASSES:
        videos = np.stack(
            [
                decode_all(p.read_bytes())
                for p in sorted((synthetic_videos / "train" / label).glob("*.mp4"))
            ]
        )
        stats[label] = (videos.mean(), videos.std())
    means, stds = np.array(list(stats.values())).T
    assert means.max() - means.min() < 2.0, stats  # one clip's mean varies by ~3
    assert stds.max() - stds.min() < 2.0, stats


# --- sources ---------------------------------------------------------------------------------


def test_k400_csv_and_cli(synthetic_videos, tmp_path):
    clip = next((synthetic_videos / "val" / "moving_up").glob("*.mp4")).read_bytes()
    root = tmp_path / "k400"
    (root / "abseiling").mkdir(parents=True)
    (root / "abseiling" / "abc-_12_000004_000014.mp4").write_bytes(clip)
    (root / "zzz_000000_000010.mp4").write_bytes(clip)
    csv_file = tmp_path / "train.csv"
    csv_file.write_text(
        "label,youtube_id,time_start,time_end,split\n"
        "abseiling,abc-_12,4,14,train\n"
        "air drumming,zzz,0,10,train\n"
        "air drumming,vvv,0,10,val\n"
    )
    parsed = sources.k400(root, [csv_file], "train")
    assert parsed.classes == ["abseiling", "air drumming"]
    assert [(i.key, i.path.relative_to(root).as_posix(), i.label) for i in parsed.items] == [
        ("abc-_12_000004_000014", "abseiling/abc-_12_000004_000014.mp4", "abseiling"),
        ("zzz_000000_000010", "zzz_000000_000010.mp4", "air drumming"),
    ]
    assert (
        main(
            [
                "shard",
                "--source",
                "k400",
                "--root",
                str(root),
                "--annotations",
                str(csv_file),
                "--split",
                "train",
                "--out",
                str(tmp_path / "s"),
                "--no-progress",
            ]
        )
        == 0
    )
    cls = sorted(
        (json.loads(s["json"])["label"], int(s["cls"]))
        for s in _all_samples(tmp_path / "s", "train")
    )
    assert cls == [("abseiling", 0), ("air drumming", 1)]


def test_ssv2_json(tmp_path):
    labels = tmp_path / "labels.json"
    labels.write_text(
        json.dumps(
            {
                "Pushing something from right to left": "1",
                "Holding something next to something": "0",
            }
        )
    )
    train = tmp_path / "train.json"
    train.write_text(
        json.dumps(
            [
                {
                    "id": "78687",
                    "label": "holding potato next to bottle",
                    "template": "Holding [something] next to [something]",
                    "placeholders": ["a", "b"],
                },
                {
                    "id": "42",
                    "label": "x",
                    "template": "Pushing [something] from right to left",
                    "placeholders": ["x"],
                },
                {
                    "id": "7",
                    "label": "y",
                    "template": "Dancing with [something]",
                    "placeholders": [],
                },
            ]
        )
    )
    parsed = sources.ssv2(tmp_path, [train, labels])
    assert parsed.classes == [
        "Holding something next to something",
        "Pushing something from right to left",
    ]
    assert [(i.key, i.path.name, i.label) for i in parsed.items] == [
        ("78687", "78687.webm", "Holding something next to something"),
        ("42", "42.webm", "Pushing something from right to left"),
        ("7", "7.webm", "Dancing with something"),
    ]  # not a class: skipped by the sharder


def test_ucf101_split_files(tmp_path):
    (tmp_path / "classInd.txt").write_text("2 Archery\n1 ApplyEyeMakeup\n")
    (tmp_path / "trainlist01.txt").write_text(
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\nArchery/v_Archery_g01_c02.avi 2\n"
    )
    (tmp_path / "testlist01.txt").write_text("Archery/v_Archery_g09_c01.avi\n")
    train = sources.ucf101(
        tmp_path / "v", [tmp_path / "classInd.txt", tmp_path / "trainlist01.txt"]
    )
    assert train.classes == ["ApplyEyeMakeup", "Archery"]
    assert [(i.key, i.path, i.label) for i in train.items] == [
        (
            "v_ApplyEyeMakeup_g08_c01",
            tmp_path / "v/ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi",
            "ApplyEyeMakeup",
        ),
        ("v_Archery_g01_c02", tmp_path / "v/Archery/v_Archery_g01_c02.avi", "Archery"),
    ]
    test = sources.ucf101(tmp_path / "v", [tmp_path / "testlist01.txt", tmp_path / "classInd.txt"])
    assert [(i.key, i.label) for i in test.items] == [("v_Archery_g09_c01", "Archery")]


def test_hmdb51_split_files(tmp_path):
    (tmp_path / "wave_test_split1.txt").write_text("w1.avi 1\nw2.avi 2\nw3.avi 0\n")
    (tmp_path / "brush_hair_test_split1.txt").write_text("April_09_brush_hair_u_nm_np1.avi 1 \n")
    files = sorted(tmp_path.glob("*.txt"))
    train = sources.hmdb51(tmp_path / "v", files, "train")
    assert train.classes == ["brush_hair", "wave"]
    assert [(i.key, i.path.relative_to(tmp_path).as_posix(), i.label) for i in train.items] == [
        (
            "April_09_brush_hair_u_nm_np1",
            "v/brush_hair/April_09_brush_hair_u_nm_np1.avi",
            "brush_hair",
        ),
        ("w1", "v/wave/w1.avi", "wave"),
    ]
    assert [i.key for i in sources.hmdb51(tmp_path / "v", files, "test").items] == ["w2"]
    with pytest.raises(ValueError, match="--split"):
        sources.hmdb51(tmp_path / "v", files, "unused")


def test_diving48_json(tmp_path):
    (tmp_path / "Diving48_vocab.json").write_text(
        json.dumps([["Back", "15som", "05Twis", "FREE"], ["Inward", "25som", "NoTwis", "PIKE"]])
    )
    (tmp_path / "Diving48_V2_train.json").write_text(
        json.dumps(
            [
                {"vid_name": "-mmq0PT-u8k_00155", "label": 1, "start_frame": 0, "end_frame": 52},
                {"vid_name": "abc_00001", "label": 0},
                {"vid_name": "bad_1", "label": 48},
            ]
        )
    )
    parsed = sources.diving48(
        tmp_path, [tmp_path / "Diving48_V2_train.json", tmp_path / "Diving48_vocab.json"]
    )
    assert parsed.classes == ["Back 15som 05Twis FREE", "Inward 25som NoTwis PIKE"]
    assert [(i.key, i.path.name, i.label) for i in parsed.items] == [
        ("-mmq0PT-u8k_00155", "-mmq0PT-u8k_00155.mp4", "Inward 25som NoTwis PIKE"),
        ("abc_00001", "abc_00001.mp4", "Back 15som 05Twis FREE"),
        ("bad_1", "bad_1.mp4", "#48"),
    ]


def test_keys_are_webdataset_safe(tmp_path):
    assert sources.make_key("Class A/v.x (1)") == "Class_A__v_x_1"
    item = sources.Item("same", Path("x.mp4"), "a")
    with pytest.raises(ValueError, match="duplicate sample keys"):
        shard_split(sources.SourceList(["a"], [item, item]), tmp_path, "train")
    assert not list(tmp_path.iterdir())  # refused before writing anything
    with pytest.raises(ValueError, match="--classes"):
        sources.load_source("ssv2", Path("."), [Path("x")], "train", Path("c.txt"))


# --- inspect ---------------------------------------------------------------------------------


def test_inspect_counts_and_contact_sheet(synthetic_shards, tmp_path, capsys):
    shards = sorted(synthetic_shards.glob("val-*.tar"))
    manifest = json.loads((synthetic_shards / "manifest.json").read_text())
    counts = count(shards)
    assert {n: sum(c.values()) for n, c in counts.items()} == {
        s["name"]: s["count"] for s in manifest["splits"]["val"]["shards"]
    }
    assert sum((c for c in counts.values()), start=type(next(iter(counts.values())))()) == {
        label: 16 for label in CLASSES
    }
    sheet_path = tmp_path / "sheet.png"
    assert main(["inspect", *map(str, shards), "--out", str(sheet_path), "--clips", "3"]) == 0
    printed = capsys.readouterr().out
    assert "total" in printed and " 64" in printed
    from PIL import Image

    sheet = np.asarray(Image.open(sheet_path).convert("RGB"))
    assert sheet.shape == (3 * (64 + LABEL_HEIGHT), 8 * 64, 3)
    first = next(iter_samples(shards[0]))
    frames = decode_all(first["mp4"])
    last_tile = sheet[LABEL_HEIGHT : LABEL_HEIGHT + 64, 7 * 64 : 8 * 64]
    assert np.array_equal(last_tile, frames[-1].repeat(2, axis=0).repeat(2, axis=1))
    assert contact_sheet(shards, clips=1, columns=4).size == (4 * 64, 64 + LABEL_HEIGHT)
