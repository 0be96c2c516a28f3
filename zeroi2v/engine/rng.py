"""Random-number state: saved per rank with each checkpoint, and kept apart from data loading.

Exact resume restores every rank's torch / numpy / python RNG (dropout, stochastic depth draw
from them) and fetches batches outside the training RNG, so loading never shifts it.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch


def state() -> dict[str, Any]:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def outside_training_rng(loader: Iterable[Any]) -> Iterator[Any]:
    """Batches of `loader`, each fetched under `fork_rng`, so loading never moves the training RNG.

    Exact resume needs this: the DataLoader draws its base seed from the global torch RNG when
    its iterator starts, and `wds.WebLoader.__iter__` is a generator, so that start (and the
    draw) happens at the first `next()`, not at `iter()`. Unforked, the draw landed at the start
    of every epoch in a full run but at the resume point in a resumed one, shifting every later
    dropout mask. The data itself is seeded by (seed, epoch, rank, sample), not by this RNG.
    """
    batches = iter(loader)
    while True:
        with torch.random.fork_rng(devices=[]):
            batch = next(batches, None)
        if batch is None:
            return
        yield batch
