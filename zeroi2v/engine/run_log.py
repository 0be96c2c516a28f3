"""The run's own JSONL records: rank 0's metrics.jsonl and, with ``train.log_sample_keys``,
which samples each rank played (``sample_keys/rank{R}.jsonl``).

Every line is flushed as it is written, so a crash loses at most the line in progress. The two
files differ on resume, for their readers' sake: metrics.jsonl is cut back to the size the
checkpoint recorded (``metrics_bytes``), so that the steps between that checkpoint and the
crash are not recorded twice, and a fresh run sets aside the lines of an earlier attempt that
crashed before its first checkpoint (``metrics.attemptN.jsonl``), so that metrics.jsonl is one
run's from step 0 and nothing is lost; the sample-key files are appended across launches,
each launch first writing who this rank is, because they are read to prove which samples were
seen, replays included.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import psutil
import torch

from zeroi2v.config import Config
from zeroi2v.engine import parallel

METRICS_FILE = "metrics.jsonl"

log = logging.getLogger(__name__)


def metrics_path(cfg: Config) -> Path:
    return Path(cfg.train.output_dir) / METRICS_FILE


class RunLog:
    """This rank's open record files; writing to one this rank does not keep does nothing."""

    def __init__(self, cfg: Config, info: parallel.DistInfo, committed_bytes: int | None) -> None:
        """`committed_bytes`: metrics.jsonl's size when the resumed checkpoint was saved;
        None for a fresh run."""
        self._metrics = (
            _open_metrics(metrics_path(cfg), committed_bytes) if info.rank == 0 else None
        )
        self._keys = _open_sample_keys(cfg, info) if cfg.train.log_sample_keys else None

    def metric(self, record: dict[str, Any]) -> None:
        if self._metrics is not None:
            _write(self._metrics, record)

    def sample_keys(self, record: dict[str, Any]) -> None:
        if self._keys is not None:
            _write(self._keys, record)

    def logging_keys(self, loader: Iterable[Any], record: dict[str, Any]) -> Iterable[Any]:
        """`loader`, recording each batch's sample keys (its third item) with `record`."""
        return loader if self._keys is None else _logging_keys(loader, self._keys, record)

    def close(self) -> None:
        for handle in (self._metrics, self._keys):
            if handle is not None:
                handle.close()


class Throughput:
    """Clips per second since the last measure, and memory: what a record gets every
    ``train.log_every_steps`` (the device's peak on CUDA, the process's resident set on CPU)."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.clips, self.tick = device, 0, time.perf_counter()

    def add(self, clips: int) -> None:
        self.clips += clips

    def measure(self) -> dict[str, float]:
        elapsed = time.perf_counter() - self.tick
        if self.device.type == "cuda":
            memory = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            memory = psutil.Process().memory_info().rss / 2**20
        rates = {"clips_per_s": self.clips / elapsed, "memory_mb": memory}
        self.clips, self.tick = 0, time.perf_counter()
        return rates


def _open_metrics(path: Path, committed_bytes: int | None) -> IO[str]:
    if committed_bytes is None and path.is_file():  # only an attempt without a checkpoint
        kept = _set_aside(path)
        log.warning(
            "%s holds an earlier attempt's records (it saved no checkpoint); kept as %s, "
            "this run starts a new %s",
            *(path, kept.name, path.name),
        )
    elif committed_bytes is not None and path.is_file() and path.stat().st_size > committed_bytes:
        os.truncate(path, committed_bytes)
    return path.open("a")


def _set_aside(path: Path) -> Path:
    """Rename `path` (``metrics.jsonl``) to the first free ``metrics.attemptN.jsonl``."""
    attempt = 1
    while (kept := path.with_name(f"{path.stem}.attempt{attempt}{path.suffix}")).exists():
        attempt += 1
    path.rename(kept)
    return kept


def _open_sample_keys(cfg: Config, info: parallel.DistInfo) -> IO[str]:
    """One file per rank; the node's rank and host are in the header line."""
    folder = Path(cfg.train.output_dir) / "sample_keys"
    folder.mkdir(parents=True, exist_ok=True)
    handle = (folder / f"rank{info.rank}.jsonl").open("a")
    _write(handle, {"launch": parallel.describe_rank(info)})
    return handle


def _logging_keys(loader: Iterable[Any], handle: IO[str], record: dict[str, Any]) -> Iterator[Any]:
    for batch in loader:
        _write(handle, {**record, "keys": list(batch[2])})
        yield batch


def _write(handle: IO[str], record: dict[str, Any]) -> None:
    handle.write(json.dumps(record) + "\n")
    handle.flush()
