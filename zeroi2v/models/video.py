"""VideoClassifier: an image backbone run on every frame, features averaged over time.

The backbone sees frames in the batch ``(B*T, C, H, W)``; temporal modelling happens only
inside its attention (STDHA), so the classifier itself adds one linear layer and nothing
else: the temporal mean makes a model without a temporal operator blind to frame order.
"""

from __future__ import annotations

import torch
from torch import nn

from zeroi2v.config import ConfigError
from zeroi2v.models.adapters import attach_adapters, mark_trainable
from zeroi2v.models.backbones import build_backbone, token_layout


class VideoClassifier(nn.Module):
    """(B, C, T, H, W) clip → (B, num_classes) logits."""

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        num_classes: int,
        num_frames: int,
        dropout: float = 0.0,
        strategy: str = "linear_probe",
        takes_clips: bool = False,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(feature_dim, num_classes)
        self.num_frames = num_frames
        self.strategy = strategy  # adaptation strategy: decides whether `merge` can fold it
        # Swin with a temporal patch size > 1 embeds whole clips (Conv3d); others take frames.
        self.takes_clips = takes_clips

    def features(self, clip: torch.Tensor) -> torch.Tensor:
        """Clip-level feature (B, D): mean of the per-frame backbone features."""
        if clip.dim() != 5 or clip.shape[2] != self.num_frames:
            raise ValueError(
                f"expected a clip (B, C, {self.num_frames}, H, W), got shape {tuple(clip.shape)}"
            )
        B = clip.shape[0]
        if self.takes_clips:
            feats = self.backbone(clip)  # (B*T', D)
        else:
            frames = clip.transpose(1, 2).flatten(0, 1)  # (B*T, C, H, W)
            feats = self.backbone(frames)  # (B*T, D)
        return feats.view(B, -1, feats.shape[-1]).mean(dim=1)  # (B, D)

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(clip)))


def build_model(cfg) -> nn.Module:
    """Backbone + temporal operator + adaptation strategy + trainable flags, from a `Config`:
    a `VideoClassifier`, or an `ActionDetector` for ``model.task`` "detection"."""

    model_cfg, adapt = cfg.model, cfg.adapt
    if adapt.strategy == "temporal_heads_only" and model_cfg.temporal_op != "stdha":
        raise ConfigError(
            "adapt.strategy 'temporal_heads_only' needs model.temporal_op 'stdha' "
            f"(got '{model_cfg.temporal_op}')"
        )
    built = build_backbone(model_cfg)
    backbone = built.module
    layout = token_layout(backbone)
    if adapt.strategy == "st_adapter" and layout is None:
        raise ConfigError(
            f"adapt.strategy 'st_adapter' is supported on ViT backbones only, not "
            f"'{model_cfg.backbone}'"
        )
    grid, prefix = layout if layout is not None else (None, 0)
    attach_adapters(
        backbone,
        adapt.strategy,
        num_adapters=adapt.num_adapters,
        bottleneck_ratio=adapt.bottleneck_ratio,
        bottleneck_width=adapt.bottleneck_width,
        lora_rank=adapt.lora_rank,
        num_frames=built.num_frames,
        token_grid=grid,
        num_prefix_tokens=prefix,
        adapter_scale=adapt.adapter_scale,
        adapter_dropout=adapt.adapter_dropout,
    )
    if model_cfg.task == "detection":
        # lazy: torchvision, for detection heads only
        from zeroi2v.models.detection import ActionDetector, token_width

        model: nn.Module = ActionDetector(
            backbone,
            token_width(backbone),
            model_cfg.num_classes,
            model_cfg.num_frames,
            roi_size=model_cfg.roi_size,
            dropout=model_cfg.dropout,
            strategy=adapt.strategy,
        )
    else:
        model = VideoClassifier(
            backbone,
            built.feature_dim,
            model_cfg.num_classes,
            model_cfg.num_frames,
            dropout=model_cfg.dropout,
            strategy=adapt.strategy,
            takes_clips=built.temporal_patch_size > 1,
        )
    trainable = ["head"]
    if hasattr(backbone, "temporal_embedding"):
        trainable.append("backbone.temporal_embedding")
    if adapt.train_final_norm:
        trainable.append(_final_norm(backbone))
    mark_trainable(model, adapt.strategy, trainable)
    return model


def _final_norm(backbone: nn.Module) -> str:
    """Name of the backbone's last LayerNorm: open_clip ``ln_post``, timm ``norm``."""
    for name in ("ln_post", "norm"):
        if isinstance(getattr(backbone, name, None), nn.LayerNorm):
            return f"backbone.{name}"
    raise ValueError(f"adapt.train_final_norm: {type(backbone).__name__} has no final LayerNorm")
