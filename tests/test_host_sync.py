"""No host synchronisation in the training step: the host reads the device once per log line.

Counted on CPU over 10 optimizer steps of the real loop (`trainer._train_epoch`): every aten op
that hands a device value to the host (``_local_scalar_dense``: ``.item()``, ``bool(t)``,
``float(t)``; ``equal``; data-dependent shapes) under a `TorchDispatchMode`, every
``Tensor.tolist``, and every ``torch.distributed`` call, each put down to the innermost
zeroi2v or DeepSpeed frame that made it. DeepSpeed's own are counted apart (its ZeRO 1/2 step
reads the gradient norm on the host), as is data loading (host tensors, no device to wait for).
"""

from __future__ import annotations

import collections
import json
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from engine_helpers import become_rank, end_rank, free_port, tiny_raw
from torch.utils._python_dispatch import TorchDispatchMode

STEPS, LOG_EVERY = 10, 5
_SYNC_OPS = {
    torch.ops.aten._local_scalar_dense.default,
    torch.ops.aten.equal.default,
    torch.ops.aten.nonzero.default,
    torch.ops.aten.masked_select.default,
}
_COLLECTIVES = (
    "all_reduce",
    "all_gather",
    "all_gather_into_tensor",
    "reduce_scatter_tensor",
    "broadcast",
    "barrier",
    "all_gather_object",
    "broadcast_object_list",
)


def _owner() -> str:
    """The innermost zeroi2v module (``zeroi2v/engine/trainer.py``) or DeepSpeed function
    (``deepspeed/runtime/utils.py:is_invalid_grad_norm``) calling."""
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_code.co_filename
        if "/deepspeed/" in name:
            return f"deepspeed/{name.rsplit('/deepspeed/', 1)[1]}:{frame.f_code.co_name}"
        if "/zeroi2v/" in name:
            return "zeroi2v/" + name.rsplit("/zeroi2v/", 1)[1]
        frame = frame.f_back
    return "other"


class _Count(TorchDispatchMode):
    def __init__(self, counts: collections.Counter) -> None:
        super().__init__()
        self.counts = counts

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in _SYNC_OPS:
            self.counts[f"sync {_owner()}"] += 1
        return func(*args, **(kwargs or {}))


def _counting_worker(rank: int, port: int, raw: dict, result_file: str) -> None:
    become_rank(rank, 1, port)
    import torch.distributed as dist

    from zeroi2v import config
    from zeroi2v.engine import trainer

    counts: collections.Counter = collections.Counter()
    counting = [False]

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            if counting[0]:
                counts[f"{name} {_owner()}"] += 1
            return fn(*args, **kwargs)

        return wrapper

    for name in _COLLECTIVES:
        setattr(dist, name, counted(name, getattr(dist, name)))
    torch.Tensor.tolist = counted("sync", torch.Tensor.tolist)

    epoch = trainer._train_epoch

    def counted_epoch(*args, **kwargs):
        counting[0] = True
        try:
            with _Count(counts):
                epoch(*args, **kwargs)
        finally:
            counting[0] = False

    trainer._train_epoch = counted_epoch
    trainer.train(config.from_dict(raw))
    Path(result_file).write_text(json.dumps(counts))
    end_rank()


def _counts(shards: Path, tmp_path: Path, deepspeed: dict) -> dict[str, int]:
    raw = tiny_raw(
        shards,
        tmp_path / "run",
        deepspeed=deepspeed,
        train={
            "epochs": 1,
            "steps_per_epoch": STEPS,
            "log_every_steps": LOG_EVERY,
            "checkpoint_every_steps": 1000,  # none inside the counted epoch
        },
    )
    result = tmp_path / "counts.json"
    mp.spawn(_counting_worker, args=(free_port(), raw, str(result)), nprocs=1)
    return json.loads(result.read_text())


# Data loading reads host tensors only: the transforms' random draws, and the DataLoader's base
# seed drawn from the CPU generator when its iterator starts (under `rng.outside_training_rng`).
_LOADING = (" zeroi2v/data/", " zeroi2v/engine/rng.py")


def _ours(counts: dict[str, int], kind: str) -> int:
    """Our code's count of `kind` ("sync" or a collective), data loading aside."""
    return sum(
        n
        for key, n in counts.items()
        if key.startswith(f"{kind} zeroi2v/") and not any(part in key for part in _LOADING)
    )


@pytest.mark.parametrize(("stage", "clipping"), [(1, 1.0), (3, 1.0), (1, 0.0)])
def test_the_training_step_reads_the_device_once_per_log_line(
    synthetic_shards, tmp_path, stage, clipping
):
    """10 steps, log every 5: two host reads by our code (the loss records), one small
    all-reduce per step (the losses, a device collective), nothing else. DeepSpeed's own are
    printed; without clipping, ZeRO-1 makes none (`zero_comm.fit`: compute_grad_norm off)."""
    ds = {
        "train_micro_batch_size_per_gpu": 4,
        "gradient_clipping": clipping,
        "zero_optimization": {"stage": stage},
    }
    counts = _counts(synthetic_shards, tmp_path, ds)
    print(f"ZeRO {stage}, clipping {clipping}:", json.dumps(counts, indent=1, sort_keys=True))
    assert _ours(counts, "sync") <= STEPS // LOG_EVERY, counts
    assert _ours(counts, "all_reduce") == STEPS, counts  # the per-step losses, on the device
    for blocking in ("barrier", "all_gather_object", "broadcast_object_list"):
        assert _ours(counts, blocking) == 0, counts
    if not clipping:
        assert not any(key.startswith("sync deepspeed/") for key in counts), counts
