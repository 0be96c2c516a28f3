"""Frame samplers: range, order, stride/segments, evenly spaced test clips, short videos."""

from __future__ import annotations

import numpy as np
import pytest

from zeroi2v.data.sampling import dense_indices, uniform_indices


@pytest.mark.parametrize(("frames", "interval"), [(8, 16), (16, 8), (32, 4), (1, 5)])
@pytest.mark.parametrize("length", [128, 129, 300])
def test_dense_training_clips_keep_the_interval(frames: int, interval: int, length: int) -> None:
    rng = np.random.default_rng(0)
    starts = set()
    for _ in range(50):
        idx = dense_indices(length, frames, interval, rng)
        assert idx.dtype == np.int64 and idx.shape == (frames,)
        assert idx.min() >= 0 and idx.max() < length
        assert (np.diff(idx) == interval).all()
        starts.add(int(idx[0]))
    span = (frames - 1) * interval + 1
    assert starts <= set(range(length - span + 1))
    assert len(starts) > 1 or length == span  # the start is random


@pytest.mark.parametrize("num_clips", [1, 3, 5])
def test_dense_test_clips_are_evenly_spaced(num_clips: int) -> None:
    length, frames, interval = 300, 8, 16
    clips = [dense_indices(length, frames, interval, None, k, num_clips) for k in range(num_clips)]
    for idx in clips:
        assert (np.diff(idx) == interval).all() and idx[0] >= 0 and idx[-1] < length
    starts = np.array([c[0] for c in clips])
    max_start = length - ((frames - 1) * interval + 1)
    expected = (np.arange(num_clips) + 0.5) * max_start / num_clips
    assert np.abs(starts - expected).max() < 1  # centred in equal shares of the start range


def test_dense_short_video_shrinks_the_interval_then_repeats_the_last_frame() -> None:
    rng = np.random.default_rng(0)
    # 40 frames cannot hold 8 frames 16 apart (span 113): interval becomes 39 // 7 = 5.
    for generator in (rng, None):
        idx = dense_indices(40, 8, 16, generator)
        assert (np.diff(idx) == 5).all() and idx[0] >= 0 and idx[-1] < 40
    # 5 frames for an 8-frame clip: every frame once, then the last one repeated.
    for generator in (rng, None):
        assert dense_indices(5, 8, 16, generator).tolist() == [0, 1, 2, 3, 4, 4, 4, 4]


@pytest.mark.parametrize(("length", "frames"), [(64, 8), (100, 8), (37, 16), (16, 16)])
def test_uniform_one_frame_per_segment(length: int, frames: int) -> None:
    rng = np.random.default_rng(0)
    edges = np.arange(frames + 1) * length / frames
    seen = set()
    for generator in [rng] * 30 + [None]:
        idx = uniform_indices(length, frames, generator)
        assert idx.dtype == np.int64 and idx.shape == (frames,)
        assert (np.diff(idx) >= 0).all()
        assert ((idx >= np.floor(edges[:-1])) & (idx < edges[1:])).all()  # one per segment
        seen.add(tuple(idx))
    assert len(seen) > 1 or length == frames  # training draws vary
    centres = uniform_indices(length, frames, None)
    assert centres.tolist() == np.floor((edges[:-1] + edges[1:]) / 2).astype(int).tolist()


def test_uniform_test_clips_shift_inside_the_segments() -> None:
    clips = [uniform_indices(80, 8, None, k, 2) for k in range(2)]
    assert clips[0].tolist() == list(range(2, 80, 10))  # quarter of each 10-frame segment
    assert clips[1].tolist() == list(range(7, 80, 10))  # three quarters


def test_uniform_short_video_repeats_frames_in_order() -> None:
    expected = [0, 0, 1, 1, 2, 2, 3, 3]  # 4 frames stretched to 8 (nearest frame)
    assert uniform_indices(4, 8, None).tolist() == expected
    assert uniform_indices(4, 8, np.random.default_rng(0)).tolist() == expected


def test_bad_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="at least one frame"):
        dense_indices(0, 8, 4)
    with pytest.raises(ValueError, match="clip_index"):
        uniform_indices(10, 8, None, clip_index=3, num_clips=3)
