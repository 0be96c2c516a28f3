"""Logs a person can read: progress bars only on a terminal, quiet ranks > 0, no known noise.

`setup` is for entry points (the launch scripts, a Ray trial): the library itself never
configures logging nor filters warnings, so an application that imports zeroi2v keeps its own
settings. `progress` is what library loops use instead of a bare tqdm: in a log file or CI,
a bar's carriage-return redraws are noise (one pre-training bar wrote ~100 kB of them), so
there it becomes one log line every `every` of the total.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

from tqdm import tqdm

ALL_RANKS_ENV = "ZEROI2V_LOG_ALL_RANKS"  # "1": ranks > 0 log at INFO too (default: WARNING)

# Third-party messages that tell a zeroi2v user nothing they can act on.
_WARNINGS = (  # (category, message regex) for `warnings.filterwarnings`
    # DeepSpeed's comm layer still calls it; torch deprecates it in favour of all_gather_single.
    (FutureWarning, r"`torch\.distributed\.all_gather_into_tensor` is deprecated"),
)
_LOG_RECORDS = {  # logger name -> start of a message to drop
    # torch's C++ extension builder, when DeepSpeed builds its CPU ops on a machine without CUDA.
    "torch.utils.cpp_extension": "No CUDA runtime is found",
    # zeroi2v logs models with pickle on purpose (see engine/tracking/model_format.py).
    "mlflow.pytorch": "Saving pytorch model by Pickle or CloudPickle",
}
_QUIET_LOGGERS = ("DeepSpeed",)  # INFO chatter per engine build; warnings still shown


class _DropMessages(logging.Filter):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def rank() -> int:
    """This process's global rank as the launcher (deepspeed, torchrun) sets it; 0 alone."""
    return int(os.environ.get("RANK", "0"))


def setup(level: int = logging.INFO) -> None:
    """Configure logging for an entry point: zeroi2v's loggers at `level` on rank 0 (and on
    every rank when $ZEROI2V_LOG_ALL_RANKS=1), WARNING on the other ranks; other libraries'
    records only from WARNING up (open_clip logs each model build at INFO on the root
    logger); the rank in each line when there are several; known third-party noise filtered.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    loud = rank() == 0 or os.environ.get(ALL_RANKS_ENV) == "1"
    where = f" rank{rank()}" if world > 1 else ""
    logging.basicConfig(
        level=logging.WARNING,
        force=True,
        format=f"%(asctime)s{where} %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("zeroi2v").setLevel(level if loud else logging.WARNING)
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    quiet_third_party()


def quiet_third_party() -> None:
    """Filter the known third-party warnings and log records (idempotent)."""
    for category, message in _WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    for name, prefix in _LOG_RECORDS.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) and f.prefix == prefix for f in logger.filters):
            logger.addFilter(_DropMessages(prefix))


class _LogLines:
    """tqdm's interface as used here, writing a log line each time another `every` of
    `total` is done (nothing without a total)."""

    def __init__(self, iterable, total, initial, desc, every, logger) -> None:
        self.iterable, self.total, self.n, self.desc = iterable, total, initial, desc
        self.every, self.log, self.postfix = every, logger, ""
        self.next_line = self._next(initial)

    def _next(self, n: int) -> float:
        if not self.total:
            return float("inf")
        step = max(1.0, self.every * self.total)
        return (n // step + 1) * step

    def __iter__(self) -> Iterator[Any]:
        for item in self.iterable:
            yield item
            self.update()

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.n >= self.next_line or (self.total and self.n == self.total):
            self.log.info(
                "%s: %d/%d (%.0f %%)%s",
                self.desc,
                self.n,
                self.total,
                100 * self.n / self.total,
                self.postfix,
            )
            self.next_line = self._next(self.n)

    def set_postfix(self, **values: Any) -> None:
        self.postfix = "".join(f", {k}={v}" for k, v in values.items())

    def close(self) -> None:
        pass


def progress(
    iterable: Iterable[Any] | None = None,
    *,
    total: int | None = None,
    initial: int = 0,
    desc: str = "",
    disable: bool = False,
    every: float = 0.1,
    logger: logging.Logger | None = None,
    **bar: Any,
) -> Any:
    """A tqdm bar when stderr is a terminal; otherwise a log line (on `logger`) every `every`
    of `total`. `total` defaults to `len(iterable)` when it has one."""
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)
    if disable or sys.stderr.isatty():
        return tqdm(iterable, total=total, initial=initial, desc=desc, disable=disable, **bar)
    return _LogLines(
        iterable, total, initial, desc, every, logger or logging.getLogger("zeroi2v.progress")
    )
