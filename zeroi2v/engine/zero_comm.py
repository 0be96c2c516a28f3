"""DeepSpeed's per-step settings sized for what trains (adapters), not for the whole model.

DeepSpeed 0.19's defaults suit billion-parameter models that train every weight. ZeroI2V
trains ~14 M adapter parameters beside a frozen ~86 M backbone (ViT-B/16), and there they cost:

- ``zero_optimization.reduce_bucket_size`` = 5e8 elements: every trainable gradient lands in
  one bucket, reduced only when backward has finished (nothing overlaps), and ZeRO 1/2 allocate
  that bucket afresh at the start of every micro-step (`setup_buckets` in stage_1_and_2.py):
  1 GB in bf16 (2 GB in fp32) for 14 M gradients, twice that with ``overlap_comm``'s second
  buffer.
- ``overlap_comm`` is off for ZeRO 1/2: the reduction of early buckets cannot run while
  backward computes the rest.
- ``bf16.check_grad_overflow`` is on: before each step every gradient tensor gets its own
  isfinite test and the result a host sync. bf16 has fp32's range (no loss scaling to tune),
  and the trainer already keeps a non-finite loss's gradients off the weights, on the device
  (`step_losses`); a non-finite gradient from a finite loss then shows as a non-finite
  loss one step later, and training stops there with the last good checkpoint named.
- ``zero_optimization.compute_grad_norm`` is on: ZeRO 1/2 compute the global gradient norm
  every step and read it on the host three times (`is_invalid_grad_norm`: 30 host syncs in 10
  fp32 ZeRO-1 steps, tests/test_host_sync.py), to clip and to skip a step with a non-finite
  gradient. With ``gradient_clipping: 0`` nothing uses it (the trainer's guard skips bad
  steps on the device), so `fit` turns it off there; DeepSpeed refuses that for its bf16 ZeRO-1
  optimizer and for optimizer offload, which keep it.

`fit` fills in what the config leaves unset: buckets of a quarter of the trainable elements
(so three of four reductions overlap backward), at least 2^20 elements (smaller messages are
launch-bound) or all of them when fewer; overlap when there is more than one rank; no bf16
gradient overflow test. Keys the config sets are kept as they are. Frozen weights never
reach DeepSpeed's optimizer (`parallel.param_groups` passes only trainable parameters), so
they get no fp32 master copy, no gradient buffer and no optimizer state.
"""

from __future__ import annotations

import copy
import math
from typing import Any

# What DeepSpeed 0.19.8 uses where these keys are absent (ZeRO 1/2): the settings `fit` replaces
# (bench/train_step.py measures both side by side).
DEEPSPEED_DEFAULTS = {
    "deepspeed.zero_optimization.reduce_bucket_size": 500_000_000,
    "deepspeed.zero_optimization.allgather_bucket_size": 500_000_000,
    "deepspeed.zero_optimization.overlap_comm": False,
    "deepspeed.bf16.check_grad_overflow": True,
}
BUCKETS_PER_BACKWARD = 4
MIN_BUCKET = 2**20  # elements
_ALIGNMENT = 2  # ZeRO's nccl_start_alignment_factor: bucket sizes must be a multiple of it


def bucket_size(trainable: int) -> int:
    """Elements per gradient bucket for `trainable` trainable elements (see the module doc)."""
    size = min(max(math.ceil(trainable / BUCKETS_PER_BACKWARD), MIN_BUCKET), trainable)
    return max(_ALIGNMENT, math.ceil(size / _ALIGNMENT) * _ALIGNMENT)


def fit(ds_config: dict[str, Any], trainable: int) -> dict[str, Any]:
    """A copy of the engine config with the unset settings above sized for `trainable`."""
    ds = copy.deepcopy(ds_config)
    zero = ds.get("zero_optimization", {})
    if zero.get("stage", 0) in (1, 2):
        size = bucket_size(trainable)
        zero.setdefault("reduce_bucket_size", size)
        zero.setdefault("allgather_bucket_size", size)
        world = ds["train_batch_size"] // (
            ds["train_micro_batch_size_per_gpu"] * ds["gradient_accumulation_steps"]
        )
        zero.setdefault("overlap_comm", world > 1)
        if _norm_unused(ds, zero):
            zero.setdefault("compute_grad_norm", False)
    if ds.get("bf16", {}).get("enabled"):
        ds["bf16"].setdefault("check_grad_overflow", False)
    return ds


def _norm_unused(ds: dict[str, Any], zero: dict[str, Any]) -> bool:
    """True where ZeRO 1/2's gradient norm serves nothing: ``gradient_clipping: 0`` (DeepSpeed
    clips at 1.0 where the key is absent), and not DeepSpeed's bf16 ZeRO-1 optimizer or
    optimizer offload, which refuse ``compute_grad_norm: false`` (engine.py
    `_do_optimizer_sanity_check`, zero/config.py, DeepSpeed 0.19.8)."""
    bf16_zero1 = ds.get("bf16", {}).get("enabled") and zero.get("stage") == 1
    offload = zero.get("offload_optimizer") is not None
    return ds.get("gradient_clipping", 1.0) == 0 and not bf16_zero1 and not offload
