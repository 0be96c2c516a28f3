"""ActionDetector: the adapted ViT + an RoI head, for AVA-style spatio-temporal action detection.

The setting of VideoMAE (which the paper's Table 7 follows): the backbone's last-block patch
tokens of every frame form a ``(B, D, T, h, w)`` feature map, averaged over time; each person
box (normalised x1, y1, x2, y2 on the keyframe) is pooled from it with
`torchvision.ops.roi_align` (7×7, then max over the 7×7 cells), and a linear layer gives one
logit per action class — multi-label, trained with binary cross-entropy.

The RoI head is the only module added to the backbone: adapters and STDHA live inside the
backbone exactly as in `VideoClassifier`, so `merge` folds the adapters and the merged state
dict is the plain image backbone + ``head.*`` (the head's linear layer).
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import roi_align


class RoIHead(nn.Module):
    """(B, D, h, w) feature map + (K, 5) rois ``[batch index, x1, y1, x2, y2]`` (normalised)
    → (K, num_classes) logits."""

    def __init__(
        self, width: int, num_classes: int, roi_size: int = 7, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.roi_size = roi_size
        self.dropout = nn.Dropout(dropout)
        self.proj = nn.Linear(width, num_classes)

    def forward(self, features: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        h, w = features.shape[-2:]
        scale = rois.new_tensor([1.0, w, h, w, h])  # normalised → feature-map cells
        pooled = roi_align(
            features, rois * scale, self.roi_size, spatial_scale=1.0, aligned=True
        )  # (K, D, roi, roi)
        return self.proj(self.dropout(pooled.amax(dim=(2, 3))))  # (K, num_classes)


class ActionDetector(nn.Module):
    """(B, C, T, H, W) clips + (K, 5) rois → (K, num_classes) action logits.

    Without rois (the merge check, params/FLOPs profiling, a registered model's example) each
    clip gets one whole-frame box, so the model still maps a clip to one row of logits.
    """

    def __init__(
        self,
        backbone: nn.Module,
        width: int,
        num_classes: int,
        num_frames: int,
        roi_size: int = 7,
        dropout: float = 0.0,
        strategy: str = "linear_probe",
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = RoIHead(width, num_classes, roi_size, dropout)
        self.num_frames = num_frames
        self.strategy = strategy  # adaptation strategy: decides whether `merge` can fold it

    def feature_map(self, clip: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) → (B, D, h, w): last-block patch tokens, mean over time."""
        if clip.dim() != 5 or clip.shape[2] != self.num_frames:
            raise ValueError(
                f"expected a clip (B, C, {self.num_frames}, H, W), got shape {tuple(clip.shape)}"
            )
        B = clip.shape[0]
        frames = clip.transpose(1, 2).flatten(0, 1)  # (B*T, C, H, W)
        tokens = last_block_map(self.backbone, frames)  # (B*T, D, h, w), after the final norm
        return tokens.unflatten(0, (B, self.num_frames)).mean(dim=1)  # (B, D, h, w)

    def forward(self, clip: torch.Tensor, rois: torch.Tensor | None = None) -> torch.Tensor:
        if rois is None:
            rois = whole_frame_rois(clip.shape[0], clip.device, clip.dtype)
        return self.head(self.feature_map(clip), rois.to(clip.dtype))


def whole_frame_rois(batch: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(B, 5): one box [b, 0, 0, 1, 1] per clip."""
    rois = torch.zeros(batch, 5, device=device, dtype=dtype)
    rois[:, 0] = torch.arange(batch, device=device, dtype=dtype)
    rois[:, 3:] = 1.0
    return rois


def last_block_map(backbone: nn.Module, frames: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) frames → (N, D, h, w) patch tokens of the last block, final norm applied
    (open_clip ``ln_post``, timm ``norm``), through the libraries' public
    ``forward_intermediates``, so STDHA and adapters installed in the blocks run as usual."""
    if hasattr(backbone, "class_embedding"):  # open_clip VisionTransformer
        out = backbone.forward_intermediates(
            frames,
            indices=1,
            output_fmt="NCHW",
            intermediates_only=True,
            normalize_intermediates=True,
        )
        return out["image_intermediates"][-1]
    return backbone.forward_intermediates(
        frames, indices=1, norm=True, output_fmt="NCHW", intermediates_only=True
    )[-1]


def token_width(backbone: nn.Module) -> int:
    """Width D of the patch tokens (not CLIP's projected feature)."""
    transformer = getattr(backbone, "transformer", None)
    return int(transformer.width if transformer is not None else backbone.embed_dim)
