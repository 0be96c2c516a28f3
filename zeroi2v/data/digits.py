"""Synthetic clips whose class needs both *what* is shown and *when*: which digit comes first.

The motion task (`zeroi2v/data/synthetic.py`) has no appearance: one square's position is its only cue.
The paper's argument for STDHA over channel shifts ("purity": whole heads keep the
pre-trained features intact) is about frozen features that carry appearance, so this task is
built from real handwritten digits: scikit-learn's bundled 8×8 digits
(`sklearn.datasets.load_digits`, 1,797 images shipped inside the package, nothing
downloaded), split by image so that validation clips show digit instances never trained on.

A clip shows one *low* digit (0-4) and one *high* digit (5-9): the first in frames
[0, s), the second in [s, T), with the switch frame s uniform in [2, T − 2], each frame
placing the 16×16 (2× upscaled) digit at a jittered position on a dark noisy 32×32 canvas.
The label is which group comes first: 0 = low first, 1 = high first.

Why neither appearance nor time alone is enough (tests/test_digits_task.py checks both):
* swapping the two segments of a clip (and mirroring s to T − s) gives a clip with the same
  multiset of frames and the other label, and both are equally likely under the generator. So
  any function of the frames that ignores their order — which digits appear, how often, a
  frame-order-blind video model (`temporal_op: none` averages per-frame features) — is right
  on exactly one of the two and is at chance, 50 %;
* every clip contains one low and one high digit, and s is drawn independently of the label,
  so *when* something changes says nothing either: the model has to know what the digit
  before the change was.
"""

from __future__ import annotations

from functools import cache

import numpy as np

GROUPS = ("low_first", "high_first")  # class names; label = index
FRAME_SIZE, DIGIT_SCALE = 32, 2
_TRAIN_IMAGES = 1200  # images [0, 1200) make training clips, the other 597 validation clips


@cache
def _digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8×8 digits as (N, 16, 16) uint8 (0-255, upscaled 2×), labels."""
    from sklearn.datasets import load_digits  # lazy: scikit-learn (dev only)

    data = load_digits()
    images = (data.images * (255 / 16)).round().astype(np.uint8)  # values 0-16 → 0-255
    images = images.repeat(DIGIT_SCALE, axis=1).repeat(DIGIT_SCALE, axis=2)
    return images, data.target.astype(np.int64)


def digit_pool(split: str) -> tuple[np.ndarray, np.ndarray]:
    """The images and labels a split draws from ("train" or "val"; disjoint instances)."""
    images, labels = _digits()
    if split == "train":
        return images[:_TRAIN_IMAGES], labels[:_TRAIN_IMAGES]
    if split == "val":
        return images[_TRAIN_IMAGES:], labels[_TRAIN_IMAGES:]
    raise ValueError(f"split must be 'train' or 'val', not {split!r}")


def render_frame(rng: np.random.Generator, digit: np.ndarray) -> np.ndarray:
    """One (32, 32, 3) uint8 frame: the digit at a random position on a noisy dark canvas."""
    side = digit.shape[0]
    frame = rng.integers(0, 40, size=(FRAME_SIZE, FRAME_SIZE), dtype=np.int64)
    y, x = rng.integers(0, FRAME_SIZE - side + 1, size=2)
    patch = frame[y : y + side, x : x + side]
    frame[y : y + side, x : x + side] = np.maximum(patch, digit)
    return np.repeat(frame.astype(np.uint8)[..., None], 3, axis=-1)


def digit_frames(
    rng: np.random.Generator, n: int, split: str = "train"
) -> tuple[np.ndarray, np.ndarray]:
    """`n` single frames (n, 32, 32, 3) uint8 and their digit (0-9): the image pre-training."""
    images, labels = digit_pool(split)
    pick = rng.integers(0, len(images), size=n)
    return np.stack([render_frame(rng, images[i]) for i in pick]), labels[pick]


def digit_clips(
    rng: np.random.Generator, n: int, split: str = "train", frames: int = 8
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`n` clips (n, T, 32, 32, 3) uint8, labels (0 = low first, 1 = high first), and the
    switch frame s of each clip."""
    if frames < 4:
        raise ValueError(f"frames must be at least 4 (two per digit), got {frames}")
    images, digits = digit_pool(split)
    low, high = np.flatnonzero(digits < 5), np.flatnonzero(digits >= 5)
    clips, labels, switches = [], rng.integers(0, 2, size=n), rng.integers(2, frames - 1, size=n)
    for label, switch in zip(labels, switches, strict=True):
        a, b = images[rng.choice(low)], images[rng.choice(high)]
        first, second = (a, b) if label == 0 else (b, a)
        clips.append([render_frame(rng, first if t < switch else second) for t in range(frames)])
    return np.asarray(clips, dtype=np.uint8), labels, switches
