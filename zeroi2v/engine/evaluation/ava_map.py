"""Frame-level mAP at IoU 0.5, computed exactly as the official AVA evaluation computes it.

The official script (`Evaluation/get_ava_performance.py` of activitynet/ActivityNet, built on
the TF Object Detection API's `PascalDetectionEvaluator` in `Evaluation/ava/`) does, and so
does this module, step for step, in the same order (orders decide exact ties):

* an *image* is a keyframe ``(video_id, timestamp)``; a ground-truth person box with n action
  labels is n ground-truth boxes, one per class; keyframes in the excluded-timestamps list are
  dropped from ground truth and detections alike; classes outside the label map are dropped
  before anything else;
* per keyframe at most 50 detections (over all classes together) are kept, by `read_csv`'s
  heap: the first 50 in input order, then a later one replaces the lowest only if it scores
  strictly higher; the kept ones are visited by decreasing score (a stable sort of the heap);
* detections on a keyframe that is not in the ground truth are ignored (the script logs
  "... not part of the ground truth. They will be ignored."); a keyframe is in the ground
  truth when any annotation row names it, even one of a class outside the label map;
* detection boxes with no area (x2 <= x1 or y2 <= y1) are dropped
  (`per_image_evaluation._remove_invalid_boxes`), after the cap of 50;
* per keyframe and class, each detection is matched to the ground-truth box of that class it
  overlaps most (IoU, boxes without the "+1" pixel; the first of equal overlaps): a true
  positive when that IoU >= 0.5 and that box is not taken yet, otherwise a false positive —
  also when a *second-best* free box would have matched (PASCAL VOC's greedy rule);
* per class, the detections of all keyframes (keyframes in order of first appearance) are
  ranked by ``np.argsort(scores)[::-1]`` (`metrics.compute_precision_recall`): numpy's
  argsort reversed, so exactly tied scores are *not* ranked in input order; precision/recall
  use the number of ground-truth boxes of the class as the recall denominator, and AP is the
  area under the precision envelope (precision made non-increasing from the right; VOC
  2010+, not 11-point);
* classes without ground truth get AP NaN and are left out of the mean (``nanmean``).

``conventions="mmaction2"`` differs in one rule only: detections on a keyframe absent from
the ground truth are false positives (mmaction2's AVA metric hands every detected keyframe to
the evaluator, so an unannotated keyframe has no ground truth to match). Published AVA
numbers come from the official script, hence the default.

How it differs from library metrics (none is reused for AP, so the rules above are ours):
``sklearn.metrics.average_precision_score`` uses no precision envelope and divides recall by
the positives among the *scored* items, so ground truth no detection reached does not lower
it; ``torchmetrics``' MeanAveragePrecision uses COCO's 101-point recall grid and per-image
detection limits per class. The only library call is `torchvision.ops.box_iou`, whose IoU
(no +1 pixel) is the official one.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import ClassVar, Literal

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
    """VOC 2010+ AP of one class: area under the non-increasing precision envelope.

    Ranked as the official `compute_precision_recall`: ``np.argsort(scores)[::-1]``, which
    puts exactly tied scores in the reverse of numpy's (ascending) order, not in input order.
    """
    if num_gt == 0:
        return math.nan
    order = np.argsort(scores)[::-1]
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


# One row of the official read_csv's per-keyframe heap: (score, class, y1, x1, y2, x2). The
# heap's tuple order decides which of equal scores survive the cap and come first.
_Entry = tuple[float, int, float, float, float, float]


def _entry(score: float, label: int, box: tuple[float, float, float, float]) -> _Entry:
    x1, y1, x2, y2 = box
    return (score, label, y1, x1, y2, x2)


def _read_rows(rows: Iterable[tuple[Key, _Entry]], capacity: int) -> dict[Key, list[_Entry]]:
    """Keyframe → its rows by decreasing score, kept as the official `read_csv` keeps them
    (`capacity` < 1: all of them)."""
    heaps: dict[Key, list[_Entry]] = {}
    for key, entry in rows:
        heap = heaps.setdefault(key, [])
        if capacity < 1 or len(heap) < capacity:
            heapq.heappush(heap, entry)
        elif entry[0] > heap[0][0]:
            heapq.heapreplace(heap, entry)
    return {key: sorted(heap, key=_neg_score) for key, heap in heaps.items()}


def _neg_score(entry: _Entry) -> float:
    return -entry[0]


def _box(entry: _Entry) -> tuple[float, float, float, float]:
    _, _, y1, x1, y2, x2 = entry
    return (x1, y1, x2, y2)


def _match_frame(
    dets: list[tuple[float, float, float, float]], gt_boxes: list[tuple[float, float, float, float]]
) -> list[bool]:
    """TP flags of one keyframe's detections of one class, given by decreasing score
    (greedy VOC matching)."""
    if not gt_boxes:
        return [False] * len(dets)
    iou = box_iou(
        torch.tensor(dets, dtype=torch.float64), torch.tensor(gt_boxes, dtype=torch.float64)
    )  # (D, G)
    best = iou.argmax(dim=1)  # the first of equal overlaps, as numpy's argmax
    taken = [False] * len(gt_boxes)
    flags = [False] * len(dets)
    for i in range(len(dets)):
        g = int(best[i])
        if iou[i, g] >= IOU_THRESHOLD and not taken[g]:
            taken[g] = flags[i] = True
    return flags


Conventions = Literal["official", "mmaction2"]


def frame_map(
    ground_truth: Iterable[GroundTruth],
    detections: Iterable[Detection],
    class_ids: Iterable[int],
    excluded: Iterable[Key] = (),
    capacity: int = DETECTIONS_PER_FRAME,
    conventions: Conventions = "official",
) -> MapResult:
    """Frame-level mAP@0.5 over `class_ids` (the label map's evaluated classes).

    `conventions`: "official" (ActivityNet's script) or "mmaction2" (detections on keyframes
    without ground truth are false positives instead of ignored); see the module docstring.
    """
    if conventions not in ("official", "mmaction2"):
        raise ValueError(f"conventions must be 'official' or 'mmaction2', not {conventions!r}")
    classes = list(class_ids)
    wanted, skip = set(classes), set(excluded)
    ground_truth = list(ground_truth)
    annotated = {item.key for item in ground_truth} - skip
    truth = _read_rows(
        ((g.key, _entry(1.0, g.label, g.box)) for g in ground_truth if g.label in wanted),
        capacity=0,
    )
    found = _read_rows(
        ((d.key, _entry(d.score, d.label, d.box)) for d in detections if d.label in wanted),
        capacity,
    )
    scores: dict[int, list[float]] = {c: [] for c in classes}
    flags: dict[int, list[bool]] = {c: [] for c in classes}
    for key, rows in found.items():
        if key in skip or (conventions == "official" and key not in annotated):
            continue
        valid = [r for r in rows if r[2] < r[4] and r[3] < r[5]]  # y1 < y2 and x1 < x2
        gt_rows = truth.get(key, [])
        for c in dict.fromkeys(r[1] for r in valid):
            mine = [r for r in valid if r[1] == c]
            scores[c] += [r[0] for r in mine]
            flags[c] += _match_frame(
                [_box(r) for r in mine], [_box(g) for g in gt_rows if g[1] == c]
            )
    num_gt = {c: 0 for c in classes}
    for key, rows in truth.items():
        if key not in skip:
            for row in rows:
                num_gt[row[1]] += 1
    per_class = {
        c: average_precision(np.array(scores[c]), np.array(flags[c], dtype=bool), num_gt[c])
        for c in classes
    }
    valid_ap = [ap for ap in per_class.values() if not math.isnan(ap)]
    return MapResult(float(np.mean(valid_ap)) if valid_ap else math.nan, per_class)


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
