"""Labelled synthetic videos whose class depends on motion only.

A random-textured square slides over a random-textured static background, wrapping around the
frame edges. The class is the direction (left/right/up/down). Every clip draws its textures,
start position and speed from the same distributions whatever its class, so no single frame
says anything about the label, and a time-reversed "left" clip is exactly a "right" clip
(wrap-around makes the reversed start position uniform too). A model must use time to beat
chance.

Only rendering lives here (numpy, no video codec): the tiny backbone's image pre-training
(`zeroi2v.models.tiny_pretrain`) draws frames from it, and `python -m data_prep synthetic`
encodes its clips to mp4 files (`data_prep/synthetic.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DIRECTIONS = {  # (dx, dy) per frame step, in units of the clip's speed
    "moving_down": (0, 1),
    "moving_left": (-1, 0),
    "moving_right": (1, 0),
    "moving_up": (0, -1),
}
CLASSES = sorted(DIRECTIONS)
OPPOSITE = {
    "moving_left": "moving_right",
    "moving_right": "moving_left",
    "moving_up": "moving_down",
    "moving_down": "moving_up",
}
# Pixels per frame, drawn uniformly from this range. The tiny demo reads every 2nd frame
# through 8-pixel patches: at 2-3 px/frame the sprite moves 4-6 px, half a patch or more,
# between the frames the model sees. At 1-2 px/frame (2-4 px, within a patch) the tiny model
# learnt the direction along one axis only on some seeds (left/right at chance, up/down
# perfect, or the reverse): val top-1 stuck at 0.77 instead of 0.99, whatever the data size.
SPEEDS = (2, 3)


@dataclass(frozen=True)
class ClipParams:
    background: np.ndarray  # (H, W, 3) uint8
    sprite: np.ndarray  # (s, s, 3) uint8
    x: int  # start column of the sprite's top-left corner
    y: int  # start row
    speed: int  # pixels per frame


def _blocky_texture(
    rng: np.random.Generator, size: int, block: int, low: int, high: int
) -> np.ndarray:
    """Random colours in [low, high) in block×block squares: easy to see, survives chroma."""
    cells = -(-size // block)
    noise = rng.integers(low, high, (cells, cells, 3), dtype=np.uint8)
    return np.kron(noise, np.ones((block, block, 1), dtype=np.uint8))[:size, :size]


def sample_params(rng: np.random.Generator, size: int) -> ClipParams:
    """Draws that do not depend on the class (same distribution for every label)."""
    side = max(2, size // 4)
    return ClipParams(
        background=_blocky_texture(rng, size, max(1, size // 8), 0, 128),  # dim
        sprite=_blocky_texture(rng, side, max(1, side // 2), 128, 256),  # bright: easy to track
        x=int(rng.integers(0, size)),
        y=int(rng.integers(0, size)),
        speed=int(rng.integers(SPEEDS[0], SPEEDS[1] + 1)),
    )


def render(params: ClipParams, label: str, frames: int) -> np.ndarray:
    """(T, H, W, 3) uint8 frames of the sprite moving in `label`'s direction, wrapping."""
    dx, dy = DIRECTIONS[label]
    size = params.background.shape[0]
    side = params.sprite.shape[0]
    clip = np.repeat(params.background[None], frames, axis=0)
    for t in range(frames):
        rows = (params.y + dy * params.speed * t + np.arange(side)) % size
        cols = (params.x + dx * params.speed * t + np.arange(side)) % size
        clip[t][np.ix_(rows, cols)] = params.sprite
    return clip


def reversed_params(params: ClipParams, label: str, frames: int) -> ClipParams:
    """Params whose `OPPOSITE[label]` clip is the time reverse of `label`'s clip."""
    dx, dy = DIRECTIONS[label]
    size = params.background.shape[0]
    shift = params.speed * (frames - 1)
    return ClipParams(
        params.background,
        params.sprite,
        (params.x + dx * shift) % size,
        (params.y + dy * shift) % size,
        params.speed,
    )
