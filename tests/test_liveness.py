"""Naming the lost rank: heartbeats in a real TCPStore (the launcher's rendezvous store)."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import timedelta

import pytest
import torch.distributed as dist
from engine_helpers import clean_env, free_port

from zeroi2v.engine import liveness


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch):
    port = free_port()
    server = dist.TCPStore("127.0.0.1", port, is_master=True, timeout=timedelta(seconds=10))
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))
    return server


def test_a_rank_whose_heartbeat_stops_is_named(store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CROSS_RANK", "1")
    node1 = liveness.Heartbeat(rank=1, world_size=3, interval_s=0.1)
    monkeypatch.setenv("CROSS_RANK", "0")
    beats = [liveness.Heartbeat(rank=r, world_size=3, interval_s=0.1) for r in (0, 2)]
    node1.stop()  # as if its process had been killed
    lost = beats[0].lost_ranks()
    assert list(lost) == [1] and lost[1].startswith("node 1, host ")
    error = RuntimeError("[gloo/transport/tcp/pair.cc:561] Connection closed by peer")
    message = str(beats[0].explain(error, timeout_s=60))
    assert message.startswith("lost rank 1 (node 1, host ") and "--resume" in message
    for beat in beats:
        beat.stop()


def test_store_gone_means_rank_0s_node_is_gone(monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    server = dist.TCPStore("127.0.0.1", port, is_master=True, timeout=timedelta(seconds=10))
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))
    beats = [liveness.Heartbeat(rank=r, world_size=2, interval_s=0.1) for r in (0, 1)]
    beats[0].stop()
    del server  # the store's server lives in rank 0's process
    lost = beats[1].lost_ranks()
    assert list(lost) == [0] and "rendezvous store" in lost[0]
    beats[1].stop()


def test_a_dead_store_gives_our_line_without_a_cpp_stack_trace(monkeypatch, capfd) -> None:
    """The survivor of rank 0's node prints one line, not c10d's C++ traces (one per store
    call: the heartbeat's add and two connection attempts, ~10 s)."""
    port = free_port()
    server = dist.TCPStore("127.0.0.1", port, is_master=True, timeout=timedelta(seconds=10))
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))
    beat = liveness.Heartbeat(rank=1, world_size=2, interval_s=0.1)
    time.sleep(0.3)
    del server  # rank 0's node dies; the heartbeat keeps beating for a few intervals
    time.sleep(0.5)
    error = beat.explain(RuntimeError("Connection closed by peer"), timeout_s=60)
    beat.stop()
    assert str(error).startswith("lost rank 0 (node 0, the rendezvous store at 127.0.0.1)")
    printed = capfd.readouterr()
    assert "frame #" not in printed.err and "Exception raised from" not in printed.err
    assert "[c10d]" not in printed.err, printed.err[:2000]


def test_only_transport_failures_are_translated(store) -> None:
    with pytest.raises(ValueError, match="a bug"):
        with liveness.watched(rank=0, world_size=2, timeout_s=60):
            raise ValueError("a bug")
    with pytest.raises(RuntimeError, match="not a network problem"):
        with liveness.watched(rank=0, world_size=2, timeout_s=60):
            raise RuntimeError("not a network problem")


SURVIVOR = """
import os, sys, time
from datetime import timedelta
import torch, torch.distributed as dist
from zeroi2v.engine import liveness
from zeroi2v.engine.process_exit import exit_without_teardown
rank = int(os.environ["RANK"])
dist.init_process_group("gloo", timeout=timedelta(seconds=30))
try:
    with liveness.watched(rank, 2, 30):
        for step in range(600):
            dist.all_reduce(torch.ones(4))
            time.sleep(0.05)
            if rank == 0 and step == 20:
                os._exit(9)  # rank 0's node dies, the store it hosts with it
except liveness.LostRankError as error:
    exit_without_teardown(f"error: {error}")  # as launch/train.py ends: sys.exit may SIGABRT
"""


def test_the_survivor_of_the_store_node_prints_one_line(tmp_path) -> None:
    """Two gloo ranks; rank 0 (host of the rendezvous store) exits mid-training: rank 1's
    stderr is our one line, not c10d's C++ traces (41 `frame #` lines before)."""
    env = clean_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), WORLD_SIZE="2")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", SURVIVOR],
            env={**env, "RANK": str(rank)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    try:
        errs = [proc.communicate(timeout=120)[1] for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
    assert procs[1].returncode == 1, errs[1][-3000:]
    assert errs[1].splitlines() == [
        "error: lost rank 0 (node 0, the rendezvous store at 127.0.0.1): it stopped answering, "
        "so this rank stops too; relaunch every node with --resume to continue from the last "
        "checkpoint"
    ], errs[1][-3000:]
