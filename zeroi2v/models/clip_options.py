"""Options of the released ZeroI2V code for open_clip ViTs, so its checkpoints run unchanged.

- ``model.temporal_embedding``: a trainable ``(1, T, width)`` embedding added to every token of
  frame t after the positional embedding (before ``ln_pre``), zero-initialised. It is the one
  parameter a merged model keeps beyond the image model (T × width: 6144 for ViT-B, 8 frames).
- ``model.clip_projection=false``: CLIP's ``proj`` is dropped and the classifier reads the
  width-d ``ln_post`` feature (the official I3D head on 768-d for ViT-B).
- ``model.quick_gelu``: CLIP's QuickGELU, when no pretrained tag says so (converted or
  transferred weights are built with ``pretrained: null``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class TemporalEmbedding(nn.Module):
    """Forward pre-hook of ``ln_pre`` adding a per-frame embedding to ``(B*T, N, width)`` tokens.

    A module (not a lambda): its parameter is saved as ``temporal_embedding.weight`` and the
    hook pickles and deep-copies with the model.
    """

    def __init__(self, num_frames: int, width: int) -> None:
        super().__init__()
        self.num_frames = num_frames
        self.weight = nn.Parameter(torch.zeros(1, num_frames, width))

    def forward(self, module: nn.Module, args: tuple) -> tuple:
        x = args[0].unflatten(0, (-1, self.num_frames))  # (B, T, N, width)
        x = x + self.weight[:, :, None].to(x.dtype)
        return (x.flatten(0, 1), *args[1:])


def apply_clip_options(backbone: nn.Module, model_cfg: Any) -> nn.Module:
    """Apply the options above to an open_clip `VisionTransformer` (in place)."""
    if not model_cfg.clip_projection:
        backbone.proj = None
        backbone.output_dim = backbone.transformer.width
    if model_cfg.temporal_embedding:
        backbone.temporal_embedding = TemporalEmbedding(
            model_cfg.num_frames, backbone.transformer.width
        )
        backbone.ln_pre.register_forward_pre_hook(backbone.temporal_embedding)
    return backbone
