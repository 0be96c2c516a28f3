"""Which frames of a video make a clip: dense (fixed interval) and TSN-uniform sampling.

Both samplers return sorted int64 frame indices inside ``[0, num_video_frames)``. With an
``rng`` they sample a random training clip; with ``rng=None`` they return the deterministic
test clip ``clip_index`` of ``num_clips`` evenly spaced ones (the paper's test views).
"""

from __future__ import annotations

import numpy as np


def _check(num_video_frames: int, num_frames: int, clip_index: int, num_clips: int) -> None:
    if num_video_frames < 1:
        raise ValueError(f"a video needs at least one frame, got {num_video_frames}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if not 0 <= clip_index < num_clips:
        raise ValueError(f"clip_index must be in [0, {num_clips}), got {clip_index}")


def dense_indices(
    num_video_frames: int,
    num_frames: int,
    interval: int,
    rng: np.random.Generator | None = None,
    clip_index: int = 0,
    num_clips: int = 1,
) -> np.ndarray:
    """``num_frames`` frames ``interval`` apart (K400: 8×16, 16×8, 32×4 cover ~128 frames).

    Training (``rng`` given): the clip starts at a uniformly random frame. Test (``rng=None``):
    clip ``clip_index`` of ``num_clips`` starts at the centre of its share of the possible
    start positions, so the clips are evenly spaced and ``num_clips=1`` is the centre clip.

    Short videos (fewer than ``(num_frames - 1) * interval + 1`` frames): the interval shrinks
    to the largest one whose clip fits in the video, so the clip still spans the video at an
    even stride; if the video has fewer than ``num_frames`` frames, every frame is taken once
    and the last frame is repeated to fill the clip. (mmaction loops back to frame 0 instead;
    repeating keeps time monotonic, which STDHA's neighbouring-frame heads rely on.)
    """
    _check(num_video_frames, num_frames, clip_index, num_clips)
    if interval < 1:
        raise ValueError(f"interval must be >= 1, got {interval}")
    if num_video_frames < num_frames:  # too short even for interval 1: repeat the last frame
        return np.minimum(np.arange(num_frames), num_video_frames - 1).astype(np.int64)
    if num_frames > 1:
        interval = min(interval, (num_video_frames - 1) // (num_frames - 1))
    span = (num_frames - 1) * interval + 1
    max_start = num_video_frames - span
    if rng is not None:
        start = int(rng.integers(0, max_start + 1))
    else:
        start = int((clip_index + 0.5) * max_start / num_clips)
    return (start + interval * np.arange(num_frames)).astype(np.int64)


def uniform_indices(
    num_video_frames: int,
    num_frames: int,
    rng: np.random.Generator | None = None,
    clip_index: int = 0,
    num_clips: int = 1,
) -> np.ndarray:
    """TSN sampling: split the video into ``num_frames`` equal segments, one frame from each.

    Training (``rng`` given): a uniformly random frame inside each segment. Test
    (``rng=None``): the frame at relative position ``(clip_index + 0.5) / num_clips`` inside
    each segment, i.e. the segment centre for a single clip (the SSv2 protocol).

    Short videos (fewer frames than segments): segment ``i`` is the single frame
    ``floor(i * num_video_frames / num_frames)``, so frames repeat in order (nearest-frame
    time stretching) and training and test clips coincide.
    """
    _check(num_video_frames, num_frames, clip_index, num_clips)
    edges = np.arange(num_frames + 1) * num_video_frames / num_frames
    starts = np.floor(edges[:-1]).astype(np.int64)
    # Segments are at least one frame long, so short videos repeat frames.
    stops = np.maximum(np.floor(edges[1:]).astype(np.int64), starts + 1)
    if rng is not None:
        return rng.integers(starts, stops).astype(np.int64)
    offsets = (clip_index + 0.5) / num_clips * (edges[1:] - edges[:-1])
    return np.minimum(np.floor(edges[:-1] + offsets).astype(np.int64), stops - 1)
