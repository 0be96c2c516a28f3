"""The training losses, kept on the device until a human reads them; the non-finite guard.

Reading a loss on the host (``.item()``) makes the host wait for the device to finish every
forward before it can queue the next work; doing that every micro-step (to stop on a NaN
before backward) serialises a GPU run. Here no micro-step reads anything back:

- each optimizer step, the step's micro-step losses of every rank are summed by one small
  all-reduce, a device collective (under NCCL the host does not wait for it), and the
  optimizer's skip flag (torch's ``found_inf`` of fused AdamW, the protocol GradScaler uses)
  becomes 1 from the first non-finite one on: `engine.step()` then leaves the weights and
  Adam's state as they are, decided on the device, on every rank alike;
- `flush`, every ``train.log_every_steps``, before each checkpoint and at the end of an epoch,
  reads all steps since the last flush in one host read; it returns their records, and names
  the first step whose loss was not finite, on every rank alike (the values are the
  all-reduced ones), so that every rank stops at the same point and nothing after that step
  is written (no checkpoint, no metrics line, no MLflow metric).

A non-finite loss is thus found up to ``train.log_every_steps`` steps late, but it is reported
at the step where it happened, and the weights have not moved since.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist


class StepLosses:
    """One epoch's losses, from the loop's micro-steps to its metrics records."""

    def __init__(self, skip: torch.Tensor, world_size: int) -> None:
        """`skip`: the optimizer's flag (`parallel.step_guard`); set, no step moves weights."""
        self.skip, self.world_size = skip, world_size
        self._micro: list[torch.Tensor] = []
        self._steps: list[tuple[dict[str, Any], torch.Tensor]] = []
        self._reduced: torch.Tensor | None = None

    def add(self, loss: torch.Tensor) -> None:
        """A micro-step's loss (this rank's), before its backward."""
        self._micro.append(loss.detach().float())

    def end_step(self) -> None:
        """At the accumulation boundary, before `engine.step()`: every rank's losses of this
        step summed on the device, and the skip flag raised if any is not finite."""
        reduced = torch.stack(self._micro)  # (accumulation steps,)
        dist.all_reduce(reduced)  # device collective: no host wait
        bad = (~torch.isfinite(reduced)).any()
        self.skip.copy_(torch.maximum(self.skip, bad.to(self.skip.dtype)))
        self._reduced, self._micro = reduced, []

    def record(self, record: dict[str, Any]) -> None:
        """The step just ended (`end_step`): its record, which gets its loss at `flush`."""
        self._steps.append((record, self._reduced))

    def flush(self) -> tuple[list[dict[str, Any]], str | None]:
        """The records since the last flush with their losses (mean over ranks and micro-steps)
        up to the first non-finite one, and that one as a phrase (None: all finite).

        The one host read: all pending losses in one tensor (nothing pending: none).
        """
        if not self._steps:
            return [], None
        values = torch.stack([reduced for _, reduced in self._steps]).tolist()  # syncs
        records = []
        for (record, _), micro in zip(self._steps, values, strict=True):
            per_rank = [v / self.world_size for v in micro]
            bad = next((v for v in per_rank if not math.isfinite(v)), None)
            if bad is not None:
                self._steps = []
                return records, f"loss is {bad} at step {record['step']} (epoch {record['epoch']})"
            records.append({**record, "loss": sum(per_rank) / len(per_rank)})
        self._steps = []
        return records, None
