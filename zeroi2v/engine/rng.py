"""Random-number state: saved per rank with each checkpoint, and kept apart from data loading.

Exact resume restores every rank's torch / numpy / python RNG (dropout, stochastic depth draw
from them) and fetches batches outside the training RNG, so loading never shifts it.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch


def file_name(rank: int) -> str:
    return f"rng_rank{rank}.pt"


def save(path: Path) -> None:
    """torch, numpy, python (and CUDA) RNG states as tensors and plain numbers, so `load` needs
    no pickled code (weights_only=True); numpy's uint32 key array travels as int64."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
        "python": random.getstate(),  # (version, tuple of 625 ints, gauss or None)
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    torch.save(state, path)


def load(path: Path) -> None:
    state = torch.load(path, weights_only=True)
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
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
