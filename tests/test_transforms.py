"""Clip-consistent augmentation (one draw per clip) and the test-view crops."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from zeroi2v.config import ConfigError
from zeroi2v.data.transforms import (
    CLIP_MEAN,
    CLIP_STD,
    RANDAUGMENT_BINS,
    EvalTransform,
    TrainTransform,
)


def _frames(t: int = 6, h: int = 40, w: int = 56, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (t, h, w, 3), dtype=np.uint8)


def _normalise(frames: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 255  # (C, T, H, W)
    return (x - torch.tensor(CLIP_MEAN)[:, None, None, None]) / torch.tensor(CLIP_STD)[
        :, None, None, None
    ]


def test_every_frame_gets_the_same_crop_flip_randaugment_and_erasing() -> None:
    """Identical input frames stay identical: one parameter draw per clip, not per frame."""
    frames = np.repeat(_frames(1), 8, axis=0)
    transform = TrainTransform(32, randaugment_n=4, randaugment_m=9, hflip=0.5, random_erasing=1.0)
    outputs = []
    for seed in range(40):
        torch.manual_seed(seed)
        out = transform(frames)
        assert out.shape == (3, 8, 32, 32) and out.dtype == torch.float32
        assert torch.equal(out, out[:, :1].expand_as(out)), f"frames differ for seed {seed}"
        outputs.append(out[:, 0])
    # ... and the draws are random across clips (else the check above would be vacuous).
    distinct = {tuple(o.flatten().tolist()) for o in outputs}
    assert len(distinct) == len(outputs)


def test_same_seed_same_clip() -> None:
    transform = TrainTransform(32, randaugment_n=2, randaugment_m=7, random_erasing=0.5)
    frames = _frames()
    torch.manual_seed(3)
    first = transform(frames)
    torch.manual_seed(3)
    assert torch.equal(first, transform(frames))


def test_hflip_switch() -> None:
    """p=1 mirrors exactly what p=0 produces with the same crop; p=0 never flips."""
    frames = _frames()
    never = TrainTransform(32, randaugment_n=0, hflip=0.0)
    always = TrainTransform(32, randaugment_n=0, hflip=1.0)
    for seed in range(5):
        torch.manual_seed(seed)
        plain = never(frames)
        torch.manual_seed(seed)
        flipped = always(frames)
        assert torch.equal(flipped, plain.flip(-1))
        assert not torch.equal(flipped, plain)


def test_randaugment_magnitude_uses_timms_scale() -> None:
    with pytest.raises(ConfigError, match="randaugment_m"):
        TrainTransform(32, randaugment_m=11)
    ra = TrainTransform(32, randaugment_m=7).randaugment
    assert ra.num_magnitude_bins == 11 and ra.magnitude == 7  # m7 → 0.7 of the max, like timm


def _torchvision_composition(size: int, n: int, m: int, erasing: float) -> v2.Compose:
    """The training transform as it was before the crop/augment split: torchvision's own
    transforms in one Compose (the reference the faster path must reproduce pixel for pixel)."""
    return v2.Compose(
        [
            v2.RandomResizedCrop(size, antialias=True),
            v2.RandomHorizontalFlip(p=0.5),
            v2.RandAugment(num_ops=n, magnitude=m, num_magnitude_bins=RANDAUGMENT_BINS),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(CLIP_MEAN, CLIP_STD),
            v2.RandomErasing(p=erasing, value="random"),
        ]
    )


@pytest.mark.parametrize(
    ("shape", "size", "seeds"), [((8, 72, 96), 48, 80), ((8, 256, 341), 224, 6)]
)
def test_training_transform_equals_the_torchvision_composition(
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
    shape: tuple[int, int, int],
    size: int,
    seeds: int,
) -> None:
    """Same seed, same clip, bit for bit: the split transform with its layout-tuned RandAugment
    is today's composition, so it is equal in distribution (it is the same function). Frames
    come in decord's (T, H, W, C) layout, which the reference sees as channels-last."""
    drawn: Counter[str] = Counter()
    apply = v2.RandAugment._apply_image_or_video_transform

    def recording(self, image, transform_id, magnitude, **kwargs):  # noqa: ANN001, ANN202
        drawn[transform_id] += 1
        return apply(self, image, transform_id, magnitude, **kwargs)

    monkeypatch.setattr(v2.RandAugment, "_apply_image_or_video_transform", recording)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small ops: intra-op threads only wait on each other under load
    request.addfinalizer(lambda: torch.set_num_threads(threads))
    reference = _torchvision_composition(size, 4, 9, 0.5)
    transform = TrainTransform(size, randaugment_n=4, randaugment_m=9, random_erasing=0.5)
    frames = _frames(*shape)
    for seed in range(seeds):
        torch.manual_seed(seed)
        expected = reference(tv_tensors.Video(torch.from_numpy(frames).permute(0, 3, 1, 2)))
        torch.manual_seed(seed)
        assert torch.equal(transform(frames), expected.permute(1, 0, 2, 3)), f"seed {seed}"
    if seeds >= 80:  # the many-seed run drew every RandAugment op
        assert set(drawn) == set(v2.RandAugment._AUGMENTATION_SPACE)


def test_augmenting_later_from_the_saved_rng_state_gives_the_same_clips() -> None:
    """data.augment_on: device — crop in the worker, keep the RNG state, augment the batch
    elsewhere: the same clips as cropping and augmenting in one go."""
    transform = TrainTransform(32, randaugment_n=4, randaugment_m=9, random_erasing=0.5)
    frames = _frames()
    crops, states, expected = [], [], []
    for seed in range(6):
        torch.manual_seed(seed)
        expected.append(transform(frames))
        torch.manual_seed(seed)
        crops.append(transform.crop_clip(frames))
        states.append(torch.get_rng_state())
        torch.manual_seed(1000 + seed)  # the RNG moves on before the batch is augmented
    assert crops[0].dtype == torch.uint8 and crops[0].shape == (6, 3, 32, 32)
    batch = transform.augment_batch(torch.stack(crops), torch.stack(states))
    assert torch.equal(batch, torch.stack(expected))


def test_three_crops_cover_left_centre_right() -> None:
    frames = _frames(t=4, h=32, w=64)  # short side already 32: no resize
    views = EvalTransform(32, 3)(frames)
    assert views.shape == (3, 3, 4, 32, 32)
    full = _normalise(frames)
    for view, left in zip(views, (0, 16, 32), strict=True):
        torch.testing.assert_close(view, full[..., left : left + 32])
    portrait = EvalTransform(32, 3)(_frames(t=2, h=64, w=32))
    torch.testing.assert_close(portrait[2], _normalise(_frames(t=2, h=64, w=32))[..., 32:, :])


def test_centre_crop_after_short_side_resize() -> None:
    frames = _frames(t=2, h=64, w=96)
    view = EvalTransform(32, 1)(frames)
    assert view.shape == (1, 3, 2, 32, 32)
    reference = torch.nn.functional.interpolate(
        torch.from_numpy(frames).permute(0, 3, 1, 2).float(),
        size=(32, 48),
        mode="bilinear",
        antialias=True,
    )  # (T, C, 32, 48)
    expected = _normalise(reference.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy())
    torch.testing.assert_close(view[0], expected[..., 8:40], atol=0.05, rtol=0)
