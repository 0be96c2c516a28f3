"""What differs between the two tasks the trainer runs, chosen once from ``model.task``.

Clip classification and AVA action detection share the whole train / eval loop; they differ
in five things only: the loss, how a loader batch becomes the model's inputs and targets,
how a model is scored, what an evaluation logs beside its metrics, and which `TrainResult`
fields its score fills. Each task is one small class holding exactly those, so the loop in
`zeroi2v.engine.trainer` reads the same for both and a third task is one more class here.
(The loaders are chosen per task in one place too: `zeroi2v.data.pipeline._sample_loader`.)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from zeroi2v.config import Config
from zeroi2v.engine.evaluation import metrics
from zeroi2v.engine.evaluation.detection import MultiLabelLoss, evaluate_detection

Batch = tuple[Any, Any, list[str]]  # (clips, targets, sample keys), as the loaders yield them


class Task(ABC):
    """The loop's view of a task. `evaluate` is written once, here: it runs the subclass's
    `scorer` (`metrics.evaluate` or `detection.evaluate_detection`, one signature) with the
    task's class count."""

    criterion: nn.Module
    scorer: Callable[..., Any]

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes

    @abstractmethod
    def unpack(
        self, batch: Batch, device: torch.device, dtype: torch.dtype
    ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """A training batch → (the model's forward arguments, the loss's targets), on `device`."""

    def evaluate(
        self,
        forward: Callable[..., torch.Tensor],
        loader: Iterable,
        *,
        device: torch.device,
        dtype: torch.dtype = torch.float32,
        lockstep: bool = False,
        progress: bool = False,
    ) -> Any:
        """The task's evaluation of `forward` over `loader`: an object with `score`,
        `count` and `as_metrics()` (`metrics.EvalResult` or `ava_map.MapResult`)."""
        return self.scorer(
            forward,
            loader,
            self.num_classes,
            device=device,
            dtype=dtype,
            lockstep=lockstep,
            progress=progress,
        )

    @abstractmethod
    def log_extras(self, tracker: Any, result: Any, classes: list[str], step: int) -> None:
        """What an evaluation logs to MLflow beside its metrics."""

    @abstractmethod
    def result_fields(self, result: Any) -> dict[str, float | None]:
        """The `TrainResult` score fields (`val_top1`, `val_top5`, `val_map`) of `result`."""


class Classification(Task):
    """One label per clip: cross-entropy, multi-view top-1/top-5 and a confusion matrix."""

    scorer = staticmethod(metrics.evaluate)

    def __init__(self, num_classes: int, label_smoothing: float = 0.0) -> None:
        super().__init__(num_classes)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)

    def unpack(
        self, batch: Batch, device: torch.device, dtype: torch.dtype
    ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        clips, labels, _ = batch  # (B, C, T, H, W), (B,)
        return (clips.to(device, dtype),), labels.to(device)

    def log_extras(
        self, tracker: Any, result: metrics.EvalResult, classes: list[str], step: int
    ) -> None:
        tracker.log_confusion(result.confusion, classes, step)

    def result_fields(self, result: metrics.EvalResult) -> dict[str, float | None]:
        return {"val_top1": result.top1, "val_top5": result.top5, "val_map": None}


class Detection(Task):
    """Person boxes with multi-hot actions: binary cross-entropy per (box, class) and the
    frame-level mAP@0.5."""

    scorer = staticmethod(evaluate_detection)

    def __init__(self, num_classes: int) -> None:
        super().__init__(num_classes)
        self.criterion = MultiLabelLoss()

    def unpack(
        self, batch: Batch, device: torch.device, dtype: torch.dtype
    ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        clips, targets, _ = batch  # targets: `data.ava.KeyframeTargets` of the micro-batch
        rois = targets.rois.to(device, dtype)  # (K, 5): batch index, x1, y1, x2, y2
        return (clips.to(device, dtype), rois), targets.labels.to(device)  # labels (K, C)

    def log_extras(self, tracker: Any, result: Any, classes: list[str], step: int) -> None:
        pass  # the metrics are the whole report

    def result_fields(self, result: Any) -> dict[str, float | None]:
        return {"val_top1": None, "val_top5": None, "val_map": result.mean_ap}


def task_for(cfg: Config) -> Task:
    """The task object of ``model.task``."""
    if cfg.model.task == "detection":
        return Detection(cfg.model.num_classes)
    return Classification(cfg.model.num_classes, cfg.optim.label_smoothing)
