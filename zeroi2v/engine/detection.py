"""Training loss and evaluation of the AVA action detector (`zeroi2v.models.detection`).

The loss is binary cross-entropy over every (box, class) of a micro-batch, as VideoMAE's AVA
head; a micro-batch without any box (keyframes whose proposals all scored too low) gives a
zero loss with zero gradients rather than the NaN of an empty mean. Evaluation scores every
test proposal, gathers detections and ground truth from all ranks and computes the official
frame-level mAP@0.5 (`zeroi2v.engine.ava_map`) once, on the whole validation set.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from zeroi2v import logs
from zeroi2v.engine.ava_map import MapResult, frame_map, ground_truth_of, scored_detections


class MultiLabelLoss(nn.Module):
    """Mean binary cross-entropy over the (K, C) logits of K boxes; 0 when K = 0."""

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        total = F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), reduction="sum")
        return total / max(labels.numel(), 1)


@torch.no_grad()
def evaluate_detection(
    forward: Callable[..., torch.Tensor],
    loader: Iterable,
    num_classes: int,
    *,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
) -> MapResult:
    """Frame-level mAP@0.5 of `forward(clips, rois)` over `loader` (this rank's share)."""
    truth: list[Any] = []
    found: list[Any] = []
    classes = list(range(num_classes))
    for clips, targets, _ in logs.progress(loader, desc="eval", disable=not progress, leave=False):
        rois = targets.rois
        scores = torch.zeros(0, num_classes)
        if len(rois):
            logits = forward(clips[:, 0].to(device, dtype), rois.to(device, dtype))  # (K, C)
            scores = logits.float().sigmoid().cpu()
        for b, frame in enumerate(targets.frames):
            mine = rois[:, 0] == b
            found += scored_detections(frame["key"], rois[mine, 1:], scores[mine], classes)
            truth.append(frame)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        everything: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(everything, (truth, found))
        truth = [f for part in everything for f in part[0]]
        found = [d for part in everything for d in part[1]]
    if not truth:
        raise RuntimeError("evaluation saw no keyframes; check data.val_shards")
    ground_truth = [
        box for f in truth for box in ground_truth_of(tuple(f["key"]), f["boxes"], f["labels"])
    ]
    result = frame_map(ground_truth, found, classes)
    result.count = len(truth)
    return result
