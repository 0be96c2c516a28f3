"""Multi-view evaluation with counts that are exact across ranks.

Views (temporal clips × spatial crops) are scored by averaging their softmax, as in the
paper's test protocol. Every rank counts its own samples; the counts (not the ratios) are
summed with all_reduce, so top-1 over N ranks equals top-1 on one process.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import ClassVar, TypeVar

import torch
import torch.distributed as dist

from zeroi2v import logs

T = TypeVar("T")


@dataclass
class EvalResult:
    top1: float
    top5: float
    count: int
    confusion: torch.Tensor  # (K, K) counts, rows = true class, columns = predicted
    counted: ClassVar[str] = "videos"  # what `count` counts, for the log line

    @property
    def score(self) -> float:
        """The number a run is ranked by (mAP for detection)."""
        return self.top1

    def as_metrics(self, prefix: str = "val/") -> dict[str, float]:
        return {f"{prefix}top1": self.top1, f"{prefix}top5": self.top5}


def view_scores(
    forward: Callable[[torch.Tensor], torch.Tensor], videos: torch.Tensor
) -> torch.Tensor:
    """(B, V, C, T, H, W) → (B, K): softmax averaged over the V views."""
    b, v = videos.shape[:2]
    logits = forward(videos.flatten(0, 1))  # (B*V, K)
    return logits.float().softmax(-1).view(b, v, -1).mean(1)  # (B, K)


def _sum_across_ranks(tensor: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor)
    return tensor


def in_lockstep(batches: Iterable[T], device: torch.device) -> Iterator[T | None]:
    """This rank's `batches`, then None until every rank has run out of its own.

    Under ZeRO-3 each forward gathers the partitioned parameters collectively, so a rank whose
    share of the evaluation set is done must keep calling `forward` (on a throwaway input, for
    each None) while any other rank still has a batch. One all-reduce per batch decides. The
    throwaway input is the rank's own last batch, so a rank without any batch cannot take part.
    """
    seen = False
    for batch in itertools.chain(batches, itertools.repeat(None)):
        alive = torch.tensor([float(batch is not None)], device=device)
        dist.all_reduce(alive, op=dist.ReduceOp.MAX)
        if alive.item() == 0:  # a host sync per evaluation batch, not per training step
            return
        if batch is None and not seen:
            raise RuntimeError(
                f"rank {dist.get_rank()} has no evaluation sample to run ZeRO-3's collective "
                "forwards with; give data.val_shards at least one sample per process"
            )
        seen = True
        yield batch


def eval_batches(
    loader: Iterable[T], device: torch.device, *, lockstep: bool, progress: bool
) -> Iterator[T | None]:
    """`loader`'s batches for an evaluation, behind a progress bar when `progress`; with
    `lockstep` (ZeRO-3) followed by None until every rank is done (`in_lockstep`)."""
    # iter(): `logs.progress` would ask the loader for a length it does not have
    batches = in_lockstep(loader, device) if lockstep else iter(loader)
    return logs.progress(batches, desc="eval", disable=not progress, leave=False)


@torch.no_grad()
def evaluate(
    forward: Callable[[torch.Tensor], torch.Tensor],
    loader: Iterable,
    num_classes: int,
    *,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    lockstep: bool = False,
    progress: bool = False,
) -> EvalResult:
    """Top-1/top-5 and confusion matrix of `forward` over `loader` (this rank's share).

    `lockstep=True` (ZeRO-3) keeps every rank calling `forward` until all ranks are done
    (`in_lockstep`); a rank that ran out of samples runs the first clip of its last batch
    again and discards the result.
    """
    k = min(5, num_classes)
    counts = torch.zeros(3, dtype=torch.float64, device=device)  # top1, top5, total
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.float64, device=device)
    last = None
    for batch in eval_batches(loader, device, lockstep=lockstep, progress=progress):
        if batch is None:  # this rank is done, another is not
            view_scores(forward, last.to(device, dtype))
            continue
        videos, labels = batch[0], batch[1].to(device)
        last = videos[:1]
        scores = view_scores(forward, videos.to(device, dtype))  # (B, K)
        top = scores.topk(k, dim=-1).indices  # (B, k)
        hit = top == labels[:, None]
        counts += torch.stack([hit[:, 0].sum(), hit.any(-1).sum(), torch.tensor(len(labels))]).to(
            counts
        )
        confusion += torch.bincount(labels * num_classes + top[:, 0], minlength=confusion.numel())
    _sum_across_ranks(counts)
    _sum_across_ranks(confusion)
    top1, top5, total = counts.tolist()
    if total == 0:
        raise RuntimeError("evaluation saw no samples; check data.val_shards")
    return EvalResult(
        top1=top1 / total,
        top5=top5 / total,
        count=int(total),
        confusion=confusion.view(num_classes, num_classes).long().cpu(),
    )
