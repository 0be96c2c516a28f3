"""Training loss and evaluation of the AVA action detector (`zeroi2v.models.detection`).

The loss is binary cross-entropy over every (box, class) of a micro-batch, as VideoMAE's AVA
head; a micro-batch without any box (keyframes whose proposals all scored too low) gives a
zero loss with zero gradients rather than the NaN of an empty mean. Evaluation scores every
test proposal, gathers detections and ground truth from all ranks and computes the official
frame-level mAP@0.5 (`zeroi2v.engine.evaluation.ava_map`) once, on the whole validation set.
Under ZeRO-3 it keeps the ranks in lockstep as classification does (`metrics.in_lockstep`).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from zeroi2v.engine.evaluation.ava_map import (
    DETECTIONS_PER_FRAME,
    Detection,
    GroundTruth,
    Key,
    MapResult,
    frame_map,
    ground_truth_of,
    scored_detections,
)
from zeroi2v.engine.evaluation.metrics import eval_batches


class MultiLabelLoss(nn.Module):
    """Mean binary cross-entropy over the (K, C) logits of K boxes; 0 when K = 0."""

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        total = F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), reduction="sum")
        return total / max(labels.numel(), 1)


@torch.no_grad()
def collect_detections(
    forward: Callable[..., torch.Tensor], batches: Iterable, num_classes: int
) -> tuple[list[Key], list[GroundTruth], list[Detection]]:
    """(keyframes seen, their ground truth, scored detections of `forward(clips, rois)`) over
    `batches`, gathered from every rank (each rank reads its own share of the keyframes).
    `forward` receives the loader's CPU tensors: moving them is its business.

    Every batch runs `forward`, even one whose keyframes have no proposal left (K = 0), and a
    None batch (`metrics.in_lockstep`: this rank is done, another is not) runs its last
    batch's first clip without boxes: under ZeRO-3 every forward is a collective.
    """
    keys: list[Key] = []
    truth: list[GroundTruth] = []
    found: list[Detection] = []
    classes = list(range(num_classes))
    last = None
    for batch in batches:
        if batch is None:
            forward(*last)  # every module runs (on 0 boxes the head's too); result discarded
            continue
        clips, targets, _ = batch
        rois = targets.rois  # (K, 5)
        last = clips[:1, 0], rois[:0]
        scores = forward(clips[:, 0], rois).float().sigmoid().cpu()  # (K, C)
        for b, frame in enumerate(targets.frames):
            mine = rois[:, 0] == b
            scored = scored_detections(frame["key"], rois[mine, 1:], scores[mine], classes)
            found += heapq.nlargest(DETECTIONS_PER_FRAME, scored, key=lambda d: d.score)
            truth += ground_truth_of(frame["key"], frame["boxes"], frame["labels"])
            keys.append(frame["key"])
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        everything: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(everything, (keys, truth, found))
        keys, truth, found = ([x for part in everything for x in part[i]] for i in range(3))
    return keys, truth, found


def evaluate_detection(
    forward: Callable[..., torch.Tensor],
    loader: Iterable,
    num_classes: int,
    *,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    lockstep: bool = False,
    progress: bool = False,
) -> MapResult:
    """Frame-level mAP@0.5 of `forward(clips, rois)` over the keyframes of `loader`.

    The signature of `metrics.evaluate`, so that `tasks.Task.evaluate` runs either;
    `lockstep=True` (ZeRO-3) keeps every rank calling `forward` until all ranks are done.
    """

    def on_device(clips: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        return forward(clips.to(device, dtype), rois.to(device, dtype))

    batches = eval_batches(loader, device, lockstep=lockstep, progress=progress)
    keys, truth, found = collect_detections(on_device, batches, num_classes)
    if not keys:
        raise RuntimeError("evaluation saw no keyframes; check data.val_shards")
    result = frame_map(truth, found, range(num_classes))
    result.count = len(keys)
    return result
