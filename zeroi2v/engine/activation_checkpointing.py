"""Activation checkpointing applied from outside the model (torchtitan style).

Each transformer block's forward is recomputed in backward instead of keeping its
activations. Why `torch.utils.checkpoint` and not DeepSpeed's `checkpointing` module: it
works the same with and without the DeepSpeed engine (tests, CPU demo, merge checks), and
the non-reentrant variant supports inputs that need no gradient (frozen backbone: the first
block's input has requires_grad=False) and keyword arguments (``attn_mask=``).

The block's own forward is wrapped on the instance, so parameter names and the state dict
do not change (a wrapper module would prefix every key and break strict loading and merge).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from zeroi2v.models.adapters import transformer_blocks


class _CheckpointedForward:
    """Runs a block's original forward under non-reentrant checkpointing when grads are on."""

    def __init__(self, forward: Callable[..., Any]) -> None:
        self.forward = forward

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not torch.is_grad_enabled():  # eval / no_grad: nothing to save, run plainly
            return self.forward(*args, **kwargs)
        return checkpoint(self.forward, *args, use_reentrant=False, **kwargs)


def apply_activation_checkpointing(model: nn.Module, every: int = 1) -> int:
    """Checkpoint every `every`-th transformer block (blocks 0, k, 2k, ... of ViT, Swin,
    open_clip); returns how many. Idempotent.

    Selective checkpointing trades memory for speed: k = 1 keeps only block inputs (one extra
    forward in backward); k = 2 keeps half of the blocks' activations and recomputes half.
    """
    if every < 1:
        raise ValueError(f"activation checkpointing every {every} blocks: must be >= 1")
    blocks = transformer_blocks(model)
    if not blocks:
        raise ValueError(f"found no transformer blocks to checkpoint in {type(model).__name__}")
    blocks = blocks[::every]
    for block in blocks:
        if not isinstance(block.forward, _CheckpointedForward):
            block.forward = _CheckpointedForward(block.forward)
    return len(blocks)
