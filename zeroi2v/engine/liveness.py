"""Naming the rank that died: heartbeats in the launcher's rendezvous store.

Why: when a node dies, the survivors' next collective fails (gloo/NCCL see the closed connection)
or times out after ``train.dist_timeout_s``; either way the error says "connection closed by
peer 10.0.0.7:41234" or "timed out", never *which* rank is gone. Every rank bumps a counter in
the TCPStore that the launcher's MASTER_ADDR:MASTER_PORT already serves; after a failed
collective a survivor watches the counters for a few beats and reports the ranks whose counter
stood still. A store that no longer answers means rank 0's node (it hosts the store) is gone.

Talking to a dead store through `TCPStore` makes PyTorch's C++ side print a C++ stack trace
(``[c10d] recvValue failed ... frame #0: c10::Error::Error ...``) per attempt, before our
one-line error, and no Python setting silences it once torch is loaded. So every store call
here is preceded by a plain TCP connect to the store's port (`_store_answers`): a refused or
timed-out connect means the store is gone, and the store is not touched again.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from datetime import timedelta

import torch.distributed as dist

from zeroi2v.errors import LostRankError

_PREFIX = "zeroi2v/liveness"


def _store_answers(timeout_s: float = 1.0) -> bool:
    """Whether the rendezvous store accepts a TCP connection (the server ignores the probe)."""
    address = (os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]))
    try:
        with socket.create_connection(address, timeout=timeout_s):
            return True
    except OSError:
        return False


def _client(timeout_s: float) -> dist.TCPStore:
    return dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        is_master=False,
        timeout=timedelta(seconds=timeout_s),
    )


class Heartbeat:
    """A daemon thread that bumps ``{prefix}/beat/{rank}`` every `interval_s` seconds."""

    def __init__(self, rank: int, world_size: int, interval_s: float = 1.0) -> None:
        self.rank, self.world_size, self.interval_s = rank, world_size, interval_s
        store = _client(30)
        node = f"node {os.environ.get('CROSS_RANK', '0')}, host {socket.gethostname()}"
        store.set(f"{_PREFIX}/where/{rank}", node)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(store,), daemon=True)
        self._thread.start()

    def _beat(self, store: dist.TCPStore) -> None:
        while not self._stop.wait(self.interval_s):
            if not _store_answers():  # gone with rank 0: nothing left to tell
                return
            try:
                store.add(f"{_PREFIX}/beat/{self.rank}", 1)
            except Exception:  # it died since the probe
                return

    def stop(self) -> None:
        self._stop.set()

    def lost_ranks(self, beats: int = 4) -> dict[int, str]:
        """Ranks whose heartbeat stood still over `beats` intervals → where they ran."""
        gone = {0: f"node 0, the rendezvous store at {os.environ['MASTER_ADDR']}"}
        # A process going down may hold the store's port a moment after its other sockets
        # closed (this rank's collective failed on one of them): look twice, a beat apart.
        for _ in range(2):
            if not _store_answers(5):
                return gone
            time.sleep(self.interval_s)
        try:
            store = _client(5)
            names = [f"{_PREFIX}/beat/{r}" for r in range(self.world_size)]
            before = [store.add(name, 0) for name in names]
            time.sleep(beats * self.interval_s)
            after = [store.add(name, 0) for name in names]
            where = [store.get(f"{_PREFIX}/where/{r}").decode() for r in range(self.world_size)]
        except Exception:  # rank 0's store stopped answering meanwhile: its node is gone
            return gone
        stalled = [r for r in range(self.world_size) if r != self.rank and before[r] == after[r]]
        return {r: where[r] for r in stalled}

    def explain(self, error: BaseException, timeout_s: float) -> LostRankError:
        """The error to raise for a failed collective: who is gone, and what to do."""
        lost = self.lost_ranks()
        if not lost:
            return LostRankError(
                f"a collective failed while every rank is still alive ({error}); "
                f"a rank may be stuck (train.dist_timeout_s is {timeout_s:g} s)"
            )
        names = ", ".join(f"rank {r} ({where})" for r, where in sorted(lost.items()))
        return LostRankError(
            f"lost {names}: it stopped answering, so this rank stops too; relaunch every "
            f"node with --resume to continue from the last checkpoint"
        )


@contextlib.contextmanager
def watched(rank: int, world_size: int, timeout_s: float) -> Iterator[None]:
    """Heartbeats while the block runs; a failed collective becomes a `LostRankError`."""
    if world_size == 1:
        yield
        return
    beat = Heartbeat(rank, world_size)
    try:
        yield
    except RuntimeError as error:
        if not _is_transport_failure(error):
            raise
        raise beat.explain(error, timeout_s) from error
    finally:
        beat.stop()


def _is_transport_failure(error: RuntimeError) -> bool:
    """torch raises `DistError`s for some backends, a plain RuntimeError for gloo's
    "Connection closed by peer" and timeouts."""
    text = str(error).lower()
    markers = ("gloo", "nccl", "connection closed", "connection reset", "timed out", "timeout")
    return isinstance(error, dist.DistError) or any(m in text for m in markers)
