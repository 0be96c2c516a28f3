"""Ending a process that used a gloo process group, without the interpreter's teardown.

Why: gloo's worker threads outlive `destroy_process_group` while anything still holds a group
(DeepSpeed's `_WORLD_GROUP`, ZeRO-3 engines and their parameters' `ds_process_group` do). A
worker thread that drops a finished collective's reference to a Python tensor takes the GIL; if
the interpreter began finalizing meanwhile, Python 3.11 ends that thread with pthread_exit,
whose unwinding meets a noexcept destructor: SIGABRT, "terminate called without an active
exception", after a run that succeeded (core: ProcessGroupGloo::runLoop → ~AsyncAllreduceWork
→ TensorImpl::decref_pyobject → gil_scoped_acquire → take_gil → PyThread_exit_thread →
std::terminate; pytorch/pytorch#117762, changed by Python 3.14's python/cpython#105805).
multiprocessing ends its fork children with os._exit for the same kind of reason.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import NoReturn


def exit_without_teardown(status: int | str | None = 0) -> NoReturn:
    """Exit as `sys.exit(status)` would, but with os._exit: only the streams are flushed.

    Call it only when the process's own state is safe (checkpoints committed, the MLflow run
    ended): no `atexit` handler or finalizer runs after it.
    """
    if isinstance(status, str):  # a one-sentence error, as sys.exit prints it
        print(status, file=sys.stderr)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1 if isinstance(status, str) else status or 0)
