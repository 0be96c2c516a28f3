"""Frame-level mAP at IoU 0.5, computed the way the official AVA evaluation computes it.

The official script (`ava_evaluation/ava_eval.py` of the AVA ActivityNet challenge, built on
the TF Object Detection API's `PascalDetectionEvaluator`) does, and so does this module:

* an *image* is a keyframe ``(video_id, timestamp)``; a ground-truth person box with n action
  labels is n ground-truth boxes, one per class; keyframes in the excluded-timestamps list are
  dropped from ground truth and detections alike;
* per keyframe only the 50 highest-scoring detections (over all classes together) are kept;
* per keyframe and class, detections are visited by decreasing score; each is matched to the
  ground-truth box of that class it overlaps most (IoU, boxes without the "+1" pixel): a true
  positive when that IoU >= 0.5 and that box is not taken yet, otherwise a false positive —
  also when a *second-best* free box would have matched (PASCAL VOC's greedy rule);
  detections on a keyframe without any ground truth are false positives;
* per class, all detections are ranked by score, precision/recall computed with the number
  of ground-truth boxes of the class as the recall denominator, and AP is the area under the
  precision envelope (precision made non-increasing from the right; VOC 2010+, not 11-point);
* classes without ground truth get AP NaN and are left out of the mean (``nanmean``).

How it differs from library metrics (none is reused for AP, so the rules above are ours):
``sklearn.metrics.average_precision_score`` uses no precision envelope and divides recall by
the positives among the *scored* items, so ground truth no detection reached does not lower
it; ``torchmetrics``' MeanAveragePrecision uses COCO's 101-point recall grid and per-image
detection limits per class. The only library call is `torchvision.ops.box_iou`, whose IoU
(no +1 pixel) is the official one. Tied scores: ranked in input order (a stable sort); the
official code uses numpy's unstable argsort, so AP can differ between the two on exact ties.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torchvision.ops import box_iou

IOU_THRESHOLD = 0.5
DETECTIONS_PER_FRAME = 50  # the official read_csv(..., capacity=50) for detections

Key = tuple[str, int]  # (video_id, timestamp in seconds)


@dataclass(frozen=True)
class Detection:
    """One scored (box, class) on a keyframe; boxes are (x1, y1, x2, y2), normalised."""

    key: Key
    box: tuple[float, float, float, float]
    label: int
    score: float


@dataclass(frozen=True)
class GroundTruth:
    key: Key
    box: tuple[float, float, float, float]
    label: int


@dataclass
class MapResult:
    mean_ap: float
    per_class: dict[int, float]  # class id → AP (NaN: no ground truth of that class)
    count: int = 0  # keyframes evaluated
    counted: ClassVar[str] = "keyframes"  # what `count` counts, for the log line

    @property
    def score(self) -> float:
        """The number a run is ranked by (top-1 for classification)."""
        return self.mean_ap

    def as_metrics(self, prefix: str = "val/") -> dict[str, float]:
        return {f"{prefix}mAP": self.mean_ap}


def average_precision(scores: np.ndarray, is_tp: np.ndarray, num_gt: int) -> float:
    """VOC 2010+ AP of one class: area under the non-increasing precision envelope."""
    if num_gt == 0:
        return math.nan
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(is_tp[order].astype(np.float64))
    fp = np.cumsum(~is_tp[order])
    precision = tp / np.maximum(tp + fp, 1)
    recall = tp / num_gt
    precision = np.concatenate([[0.0], precision, [0.0]])
    recall = np.concatenate([[0.0], recall, [1.0]])
    for i in range(len(precision) - 2, -1, -1):  # envelope: max of the precisions to the right
        precision[i] = max(precision[i], precision[i + 1])
    steps = np.flatnonzero(recall[1:] != recall[:-1]) + 1
    return float(np.sum((recall[steps] - recall[steps - 1]) * precision[steps]))


def _top_per_frame(detections: Iterable[Detection], capacity: int) -> list[Detection]:
    per_key: dict[Key, list[Detection]] = {}
    for det in detections:
        per_key.setdefault(det.key, []).append(det)
    return [d for dets in per_key.values() for d in heapq.nlargest(capacity, dets, key=_score)]


def _score(det: Detection) -> float:
    return det.score


def _match_frame(
    dets: list[Detection], gt_boxes: list[tuple[float, float, float, float]]
) -> list[bool]:
    """TP flags of one keyframe's detections of one class (greedy VOC matching)."""
    if not gt_boxes:
        return [False] * len(dets)
    order = sorted(range(len(dets)), key=lambda i: -dets[i].score)
    iou = box_iou(
        torch.tensor([dets[i].box for i in order], dtype=torch.float64),
        torch.tensor(gt_boxes, dtype=torch.float64),
    )  # (D, G)
    best = iou.argmax(dim=1)  # the first of equal overlaps, as numpy's argmax
    taken = [False] * len(gt_boxes)
    flags = [False] * len(dets)
    for rank, i in enumerate(order):
        g = int(best[rank])
        if iou[rank, g] >= IOU_THRESHOLD and not taken[g]:
            taken[g] = flags[i] = True
    return flags


def frame_map(
    ground_truth: Iterable[GroundTruth],
    detections: Iterable[Detection],
    class_ids: Iterable[int],
    excluded: Iterable[Key] = (),
    capacity: int = DETECTIONS_PER_FRAME,
) -> MapResult:
    """Frame-level mAP@0.5 over `class_ids` (the label map's evaluated classes)."""
    classes = list(class_ids)
    wanted, skip = set(classes), set(excluded)
    gt: dict[tuple[Key, int], list[tuple[float, float, float, float]]] = {}
    for item in ground_truth:
        if item.label in wanted and item.key not in skip:
            gt.setdefault((item.key, item.label), []).append(item.box)
    kept = [d for d in detections if d.label in wanted and d.key not in skip]
    grouped: dict[tuple[Key, int], list[Detection]] = {}
    for det in _top_per_frame(kept, capacity):
        grouped.setdefault((det.key, det.label), []).append(det)
    scores: dict[int, list[float]] = {c: [] for c in classes}
    flags: dict[int, list[bool]] = {c: [] for c in classes}
    for (key, label), dets in grouped.items():
        scores[label] += [d.score for d in dets]
        flags[label] += _match_frame(dets, gt.get((key, label), []))
    num_gt = {c: 0 for c in classes}
    for (_, label), boxes in gt.items():
        num_gt[label] += len(boxes)
    per_class = {
        c: average_precision(np.array(scores[c]), np.array(flags[c], dtype=bool), num_gt[c])
        for c in classes
    }
    valid = [ap for ap in per_class.values() if not math.isnan(ap)]
    return MapResult(float(np.mean(valid)) if valid else math.nan, per_class)


def scored_detections(
    key: Key, boxes: torch.Tensor, scores: torch.Tensor, class_ids: list[int]
) -> list[Detection]:
    """A model's (K, 4) boxes and (K, C) sigmoid scores → one `Detection` per (box, class)."""
    return [
        Detection(key, tuple(box), class_ids[c], float(score))
        for box, row in zip(boxes.tolist(), scores, strict=True)
        for c, score in enumerate(row.tolist())
    ]


def ground_truth_of(key: Key, boxes: list, labels: list[list[int]]) -> list[GroundTruth]:
    """A keyframe's person boxes and their label lists → one `GroundTruth` per (box, label)."""
    return [
        GroundTruth(key, tuple(box), label)
        for box, names in zip(boxes, labels, strict=True)
        for label in names
    ]


def per_class_names(result: MapResult, names: Mapping[int, str]) -> dict[str, float]:
    """AP per class name (for the run's report)."""
    return {names.get(c, str(c)): ap for c, ap in result.per_class.items()}
