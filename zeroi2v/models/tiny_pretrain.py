"""Image pre-training of the tiny backbones, so the CPU demo starts where the paper starts.

ZeroI2V adapts a *pre-trained* image model: its frozen layers already say what is where, and
the adapters plus STDHA only add time. A randomly initialised tiny backbone has no such
features and a frozen one cannot learn the motion task through adapters alone (measured:
chance level). No tiny pre-trained weights can be downloaded here, so this module makes them
in seconds: the tiny backbone learns, on single synthetic frames, which cell of a coarse grid
holds the bright sprite — a purely spatial image task with no motion in it (``task=
"location"``, for the motion demo) — or which handwritten digit a frame shows (``task="digits"``,
scikit-learn's bundled digits, for the what-and-when task of `zeroi2v/data/digits.py`). The video
training then loads the result through the ordinary `model.pretrained` local-file path.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from zeroi2v import logs
from zeroi2v.config import Config, ConfigError, from_dict, to_dict
from zeroi2v.data.digits import FRAME_SIZE, digit_frames
from zeroi2v.data.synthetic import CLASSES, render, sample_params
from zeroi2v.models.video import build_model
from zeroi2v.specs import BACKBONES

log = logging.getLogger(__name__)

_CELL = 8  # pixels per side of one grid cell of the location task
PRETRAIN_THREADS = 2


PRETRAIN_TASKS = ("location", "digits")


def _image_config(cfg: Config, num_classes: int) -> Config:
    """The video config turned into a single-frame, fully trained image classifier."""
    overrides = {
        "model.pretrained": None,
        "model.num_frames": 1,
        "model.temporal_patch_size": 1,
        "model.temporal_op": "none",
        "model.num_classes": num_classes,
        "adapt.strategy": "full_finetune",
    }
    return from_dict(to_dict(cfg), overrides)


def _location_batch(
    rng: np.random.Generator, size: int, batch: int, mean: torch.Tensor, std: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames (B, C, 1, H, W), normalised like the video pipeline, and the sprite's cell."""
    frames, cells = [], []
    for _ in range(batch):
        params = sample_params(rng, size)
        frames.append(render(params, CLASSES[0], 1)[0])
        cells.append((params.y // _CELL) * (size // _CELL) + params.x // _CELL)
    x = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 255  # (B, C, H, W)
    x = (x - mean) / std
    return x[:, :, None], torch.tensor(cells)  # (B, C, 1, H, W)


def _digit_batch(
    rng: np.random.Generator, size: int, batch: int, mean: torch.Tensor, std: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames (B, C, 1, H, W) of training-split digits, normalised, and their digit."""

    if size != FRAME_SIZE:
        raise ConfigError(f"model.image_size must be {FRAME_SIZE} for the digits, got {size}")
    frames, digits = digit_frames(rng, batch, "train")
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255  # (B, C, H, W)
    return ((x - mean) / std)[:, :, None], torch.from_numpy(digits)


def pretrain_tiny_backbone(
    cfg: Config,
    out: str | Path,
    *,
    steps: int = 1000,
    batch: int = 64,
    seed: int = 0,
    task: str = "location",
) -> float:
    """Train `cfg.model.backbone` (a tiny one) on the image `task`; save its state dict.

    Returns the final training accuracy, so callers can check the features are usable.
    """
    if not cfg.model.backbone.startswith("tiny"):
        raise ConfigError(
            f"model.backbone: image pre-training is only for tiny backbones, got "
            f"'{cfg.model.backbone}' (real backbones load library weights)"
        )
    # A fixed thread count fixes the floating-point reduction order: the same weights whatever
    # OMP_NUM_THREADS says, hence the same demo result (which is sensitive to these weights).
    if task not in PRETRAIN_TASKS:
        raise ValueError(f"task must be one of {PRETRAIN_TASKS}, not {task!r}")
    threads = torch.get_num_threads()
    torch.set_num_threads(PRETRAIN_THREADS)
    try:
        return _pretrain(cfg, out, steps, batch, seed, task)
    finally:
        torch.set_num_threads(threads)


def _pretrain(cfg: Config, out: str | Path, steps: int, batch: int, seed: int, task: str) -> float:

    spec = BACKBONES[cfg.model.backbone]
    mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(spec.std).view(1, 3, 1, 1)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    num_classes = (cfg.model.image_size // _CELL) ** 2 if task == "location" else 10
    make_batch = _location_batch if task == "location" else _digit_batch
    model = build_model(_image_config(cfg, num_classes))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    correct = 0.0
    for _ in logs.progress(range(steps), desc="tiny image pre-training", unit="step", logger=log):
        frames, cells = make_batch(rng, cfg.model.image_size, batch, mean, std)
        logits = model(frames)
        loss = torch.nn.functional.cross_entropy(logits, cells)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        correct = (logits.argmax(1) == cells).float().mean().item()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.backbone.state_dict(), out)
    return correct
