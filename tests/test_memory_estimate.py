"""The projected step memory counts what an accelerator holds, exactly where it can be worked out
by hand, and moves the way activation checkpointing and the batch size must move it."""

from __future__ import annotations

import torch
from torch import nn

from zeroi2v import build_model
from zeroi2v.config import from_dict
from zeroi2v.engine.memory_estimate import GIB, LiveBytes, training_step_memory


def test_live_bytes_counts_each_storage_once_while_it_lives():
    counter = LiveBytes()
    with counter:
        a = torch.ones(1000)  # 4000 bytes
        view = a[10:20].view(2, 5)  # a view: no new storage
        b = a * 2  # 4000 more
        assert counter.now == 8000
        del b
        assert counter.now == 4000
        del a, view
    assert counter.now == 0
    assert counter.peak == 8000


def test_a_linear_step_is_weights_plus_moments_plus_what_backward_keeps():
    """fp32 Linear(256→512) + bias, batch 4, one frozen extra layer: every byte accounted."""
    from zeroi2v.engine import memory_estimate

    class Toy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.frozen = nn.Linear(256, 256).requires_grad_(False)
            self.head = nn.Linear(256, 512)

        def forward(self, x):  # (B, C, T, H, W) → (B, 512)
            return self.head(self.frozen(x.flatten(1)[:, :256]))

    cfg = from_dict({"model": {"backbone": "tiny_vit", "num_frames": 2, "image_size": 16}})
    step = memory_estimate.training_step_memory(Toy(), cfg, micro_batch=4, bf16=False)
    params = (256 * 256 + 256) + (256 * 512 + 512)
    assert step.weights * GIB == params * 4
    assert step.optimizer * GIB == (256 * 512 + 512) * 4 * 2  # AdamW: exp_avg, exp_avg_sq
    assert step.peak > step.weights + step.optimizer  # + gradients, activations


def test_checkpointing_and_batch_move_the_peak_of_the_tiny_model():
    raw = {"model": {"backbone": "tiny_vit", "num_frames": 8}, "train": {}}
    plain = from_dict(raw)
    checkpointed = from_dict({**raw, "train": {"activation_checkpointing": True}})
    one = training_step_memory(build_model(plain), plain, micro_batch=1, bf16=False)
    four = training_step_memory(build_model(plain), plain, micro_batch=4, bf16=False)
    saved = training_step_memory(build_model(checkpointed), checkpointed, 4, bf16=False)
    trainable = sum(p.numel() for p in build_model(plain).parameters() if p.requires_grad)
    assert one.optimizer * GIB == trainable * 8
    assert one.weights == four.weights == saved.weights
    assert four.activations > 3 * one.activations  # activations grow with the batch
    assert saved.activations < four.activations  # checkpointing keeps fewer of them
