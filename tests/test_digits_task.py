"""The digits task (`zeroi2v/data/digits.py`) needs what and when: order-blind models are at
chance by construction, and what changes when carries no label either."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from zeroi2v import build_model
from zeroi2v.config import from_dict
from zeroi2v.data.digits import digit_clips, digit_frames, digit_pool

T = 8


def _swap(clip: np.ndarray, switch: int) -> np.ndarray:
    """The same frames with the two digit segments in the other order."""
    return np.concatenate([clip[switch:], clip[:switch]])


def test_every_clip_has_a_twin_with_the_same_frames_and_the_other_label():
    clips, labels, switches = digit_clips(np.random.default_rng(0), 64, "train", T)
    assert clips.shape == (64, T, 32, 32, 3) and clips.dtype == np.uint8
    assert set(labels.tolist()) == {0, 1} and set(switches.tolist()) <= set(range(2, T - 1))
    for clip, s in zip(clips, switches, strict=True):
        frames = sorted(map(bytes, clip))
        twin = _swap(clip, s)  # a clip the generator makes with label 1 − label, switch T − s
        assert sorted(map(bytes, twin)) == frames  # the same multiset: order is the only cue


def test_switch_frame_and_label_are_independent():
    _, labels, switches = digit_clips(np.random.default_rng(1), 4000, "train", T)
    for label in (0, 1):
        freq = np.bincount(switches[labels == label], minlength=T - 1)[2:] / (labels == label).sum()
        assert np.abs(freq - 1 / 5).max() < 0.04  # s uniform over 2..6 for either label


def test_splits_use_different_digit_images():
    train, val = digit_pool("train")[0], digit_pool("val")[0]
    assert len(train) + len(val) == 1797
    frames, digits = digit_frames(np.random.default_rng(2), 8, "val")
    assert frames.shape == (8, 32, 32, 3) and digits.min() >= 0 and digits.max() <= 9
    with pytest.raises(ValueError, match="split must be 'train' or 'val'"):
        digit_pool("test")


def test_a_frame_order_blind_model_is_at_chance():
    """temporal_op none gives the same logits on a clip and on its twin, whose label is the
    other one: on the pair it is right exactly once, 50 %, whatever its weights."""
    cfg = from_dict(
        {
            "model": {
                "backbone": "tiny_vit12",
                "num_frames": T,
                "image_size": 32,
                "num_classes": 2,
                "temporal_op": "none",
            }
        }
    )
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    clips, labels, switches = digit_clips(np.random.default_rng(3), 8, "val", T)
    twins = np.stack([_swap(c, s) for c, s in zip(clips, switches, strict=True)])
    x = torch.from_numpy(np.concatenate([clips, twins])).permute(0, 4, 1, 2, 3).float() / 255
    with torch.no_grad():
        logits = model(x)
    assert torch.allclose(logits[:8], logits[8:], atol=1e-5)
    predicted = logits.argmax(1).numpy()
    truth = np.concatenate([labels, 1 - labels])
    assert (predicted == truth).mean() == 0.5
