"""The key-frame interval `data_prep shard` writes: what the training reader's decode cost
depends on (decord decodes from the key frame before each frame it is asked for)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import av
import decord
import numpy as np

from data_prep import sources
from data_prep.__main__ import main
from data_prep.inspect import iter_samples
from data_prep.shard import shard_split
from data_prep.synthetic import render, sample_params
from data_prep.video_io import BFRAMES, KEYFRAME_INTERVAL, Encoding, decode_all, encode_rgb

FRAMES = 60  # several key-frame intervals, one x264 default GOP


def _source(root: Path) -> Path:
    """One lossless 96×64 clip of smooth motion (no scene cut for x264 to key on)."""
    clip = render(sample_params(np.random.default_rng(0), 96), "moving_right", FRAMES)[:, :64]
    (root / "train" / "a").mkdir(parents=True)
    (root / "train" / "a" / "clip.mp4").write_bytes(encode_rgb(clip, 25.0, lossless=True))
    return root


def _only_sample(out: Path) -> tuple[bytes, dict, dict]:
    [sample] = list(iter_samples(out / "train-000000.tar"))
    manifest = json.loads((out / "manifest.json").read_text())
    return sample["mp4"], json.loads(sample["json"]), manifest["splits"]["train"]


def _downscaled(path: Path, width: int, height: int) -> np.ndarray:
    """The source's frames scaled as `data_prep.video_io.reencode` scales them (yuv420p)."""
    with av.open(str(path)) as container:
        return np.stack([
            frame.reformat(width=width, height=height, format="yuv420p").to_ndarray(format="rgb24")
            for frame in container.decode(video=0)
        ])  # fmt: skip


def _psnr(frames: np.ndarray, reference: np.ndarray) -> float:
    assert frames.shape == reference.shape, (frames.shape, reference.shape)
    error = np.mean((frames.astype(np.float64) - reference) ** 2)
    return float(10 * np.log10(255**2 / error))


def _key_frames(data: bytes) -> list[int]:
    return [int(k) for k in decord.VideoReader(io.BytesIO(data)).get_key_indices()]


def test_reencoded_videos_have_the_configured_key_frames_and_the_same_frames(tmp_path, capsys):
    """Re-encoded (here: resized) videos get a key frame every `--keyframe-interval` frames,
    `--bframes` B-frames and x264's fastdecode tune; the frame count stays, and the pixels are
    close to the source. Copied bytes keep the source's interval, and the json, the manifest and
    the summary line say so; `--reencode` re-encodes them too."""
    root = _source(tmp_path / "videos")
    folder = sources.folder(root, "train")
    common = {"root": root, "short_side": 48, "progress_bar": False}
    shard_split(folder, tmp_path / "default", "train", **common)
    before = Encoding(keyframe_interval=250, fast_decode=False, bframes=None)  # x264's defaults
    shard_split(folder, tmp_path / "x264", "train", encoding=before, **common)
    args = ["shard", "--source", "folder", "--root", str(root), "--split", "train"]
    assert main([*args, "--out", str(tmp_path / "five"), "--short-side", "48",
                 "--keyframe-interval", "5", "--bframes", "2", "--no-fast-decode",
                 "--no-progress"]) == 0  # fmt: skip
    assert main([*args, "--out", str(tmp_path / "copied"), "--no-progress"]) == 0
    assert main([*args, "--out", str(tmp_path / "forced"), "--reencode", "--no-progress"]) == 0

    new, new_meta, new_split = _only_sample(tmp_path / "default")
    assert _key_frames(new) == list(range(0, FRAMES, KEYFRAME_INTERVAL))
    assert new_meta["keyframe_interval"] == new_split["longest_keyframe_interval"] == 4
    assert b"keyint=4 " in new and b"cabac=0" in new  # x264's option string: fastdecode
    assert BFRAMES == 0 and b" bframes=0 " in new  # (this clip gets none with x264's 3 either)
    five, five_meta, _ = _only_sample(tmp_path / "five")
    assert _key_frames(five) == list(range(0, FRAMES, 5)) and five_meta["keyframe_interval"] == 5
    assert b"cabac=1" in five and b" bframes=2 " in five
    old, old_meta, _ = _only_sample(tmp_path / "x264")
    assert _key_frames(old) == [0] and old_meta["keyframe_interval"] == FRAMES
    assert b" bframes=3 " in old  # x264's preset

    reference = _downscaled(root / "train" / "a" / "clip.mp4", 74, 48)  # 72 px: decord cannot
    assert new_meta["frames"] == five_meta["frames"] == old_meta["frames"] == FRAMES
    quality = {name: _psnr(decode_all(data), reference) for name, data in
               [("new", new), ("5", five), ("old", old)]}  # fmt: skip
    # crf 18 on a sharp blocky texture at 74×48: each within codec tolerance of the source, and
    # the default within 3 dB of x264's defaults (here 2.8: x264 spends fewer bits per frame on
    # this texture with short GOPs; on real footage, bikes.mp4 at 454×256, both give 40.1 dB)
    assert min(quality.values()) >= 30 and abs(quality["new"] - quality["old"]) < 3, quality

    copied, copied_meta, copied_split = _only_sample(tmp_path / "copied")
    assert copied == (root / "train" / "a" / "clip.mp4").read_bytes()
    assert copied_meta["keyframe_interval"] == copied_split["longest_keyframe_interval"] == FRAMES
    summary = capsys.readouterr().out
    assert f"longest key-frame interval {FRAMES} frames (copied videos keep the source's" in summary
    forced, forced_meta, _ = _only_sample(tmp_path / "forced")  # --reencode: no longer copied
    assert _key_frames(forced) == list(range(0, FRAMES, 4)) and forced_meta["frames"] == FRAMES
    assert forced_meta["width"] == 96 and forced_meta["keyframe_interval"] == 4


def test_a_keyframe_interval_or_bframes_out_of_range_is_one_clear_error(tmp_path, capsys):
    args = ["shard", "--source", "folder", "--root", str(_source(tmp_path / "v")), "--split"]
    assert main([*args, "train", "--out", str(tmp_path / "o"), "--keyframe-interval", "0"]) == 1
    assert "--keyframe-interval must be >= 1, got 0" in capsys.readouterr().err
    assert main([*args, "train", "--out", str(tmp_path / "o"), "--bframes", "17"]) == 1
    assert "--bframes must be within 0..16 (x264's range), got 17" in capsys.readouterr().err
