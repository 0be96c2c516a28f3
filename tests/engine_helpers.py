"""Shared by the engine tests: a tiny training config and a clean subprocess launcher."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, NoReturn

import pytest

from zeroi2v import config
from zeroi2v.engine.process_exit import exit_without_teardown

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "launch" / "train.py"
# Variables a launcher sets; a parent test process must not leak them into a fresh run.
_LAUNCHER_VARS = (
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "LOCAL_WORLD_SIZE",
    "CROSS_RANK",
    "CROSS_SIZE",
)


# The tiny model as an in-process engine test builds it: 32² × 4 frames, 5 classes, constant LR.
TINY_ENGINE_OVERRIDES: dict[str, Any] = {
    "model.backbone": "tiny_vit",
    "model.image_size": 32,
    "model.num_frames": 4,
    "model.num_classes": 5,
    "model.pretrained": None,
    "optim.warmup_epochs": 0.0,
    "optim.lr": 3e-3,
    "deepspeed.train_micro_batch_size_per_gpu": 2,
}


# ZeRO-3 as a full-size model runs it: every forward gathers every parameter. By default
# DeepSpeed keeps parameters under 1e5 elements whole (all of the tiny model's) and keeps the
# gathered ones that a step reuses, so that a tiny model's forwards need no collective at all.
ZERO3_GATHER_EVERY_FORWARD = {
    "stage3_param_persistence_threshold": 0,
    "stage3_max_reuse_distance": 0,
    "stage3_max_live_parameters": 0,
}


def tiny_raw(shards: Path, out: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    """configs/tiny_cpu.json pointed at `shards` and `out`, with per-section updates."""
    raw = json.loads((REPO / "configs" / "tiny_cpu.json").read_text())
    # The demo's image-pre-trained weights live in the repo's data/; a test that needs them
    # passes conftest's `tiny_pretrained` as model={"pretrained": ...}.
    raw["model"]["pretrained"] = None
    raw["data"].update(
        train_shards=str(shards / "train-*.tar"),
        val_shards=str(shards / "val-*.tar"),
        num_workers=0,
    )
    raw["train"].update(output_dir=str(out))
    raw["tracking"].update(
        enabled=False,
        tracking_uri=f"sqlite:///{out.parent / 'mlflow.db'}",
        artifact_location=str(out.parent / "mlartifacts"),
    )
    for name, values in sections.items():
        if name == "deepspeed":
            raw[name] = values
        else:
            raw[name].update(values)
    return raw


def step_losses(engine: Any, criterion: Any, batches: Any) -> list[float]:
    """`trainer.train_step` over `batches` of (inputs tuple, targets): each optimizer step's
    loss, averaged over ranks, read from the device once at the end (as the trainer does)."""
    import torch.distributed as dist

    from zeroi2v.engine import parallel, trainer
    from zeroi2v.engine.step_losses import StepLosses

    losses = StepLosses(parallel.step_guard(engine), dist.get_world_size())
    for inputs, targets in batches:
        before = engine.global_steps
        trainer.train_step(engine, criterion, inputs, targets, losses)
        if engine.global_steps != before:
            losses.record({"step": engine.global_steps, "epoch": 0})
    records, bad = losses.flush()
    assert bad is None, bad
    return [record["loss"] for record in records]


def write_config(path: Path, raw: dict[str, Any]) -> Path:
    config.from_dict(raw)  # fail here, not in a subprocess, if the test's config is wrong
    path.write_text(json.dumps(raw, indent=2))
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of a fresh run; also what the in-process (mp.spawn) ranks update with.

    The venv's bin folder goes first on PATH: DeepSpeed JIT-builds its CPU comm op with the
    first `ninja` found, and two ninja versions (venv, system) invalidate each other's build,
    turning a cached load into a 40-120 s recompile. The repo goes first on PYTHONPATH: the
    launch scripts import `zeroi2v` as installed, and the run must test this checkout's code.
    """
    env = {k: v for k, v in os.environ.items() if k not in _LAUNCHER_VARS}
    env.update(DS_ACCELERATOR="cpu", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", **extra)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def become_rank(rank: int, world: int, port: int) -> None:
    """An mp.spawn child becomes rank `rank` of `world`, as a launcher would set it up."""
    import torch

    os.environ.update(
        clean_env(
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE=str(world),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
        )
    )
    torch.set_num_threads(1)


def end_rank() -> NoReturn:
    """An mp.spawn rank's last call: wait for every rank, then exit without Python's teardown
    (`zeroi2v.engine.process_exit` says why: a rare SIGABRT at exit otherwise)."""
    import torch.distributed as dist

    if dist.is_initialized():  # `parallel.process_group()` has had its barrier already
        dist.barrier()
    exit_without_teardown(0)


def train_cmd(config_path: Path, *args: str, processes: int = 1) -> list[str]:
    if processes == 1:
        return [sys.executable, str(TRAIN), "--config", str(config_path), *args]
    launcher = Path(sys.executable).parent / "deepspeed"
    return [
        str(launcher),
        "--num_gpus",
        str(processes),
        "--master_port",
        str(free_port()),
        str(TRAIN),
        "--config",
        str(config_path),
        *args,
    ]


def run_train(
    config_path: Path, *args: str, processes: int = 1, timeout: int = 300, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        train_cmd(config_path, *args, processes=processes),
        env=clean_env(),
        cwd=cwd or config_path.parent,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def lrs(output_dir: Path) -> dict[int, float]:
    """step → learning rate from metrics.jsonl (the schedule as the run applied it)."""
    records = [json.loads(x) for x in (output_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["lr"] for r in records if "lr" in r}


def assert_continues(reference: Path, resumed: Path, steps: range) -> None:
    """A run resumed on another world size, steps `steps`, against the uninterrupted run:
    the first step's loss to float precision (same weights, same samples), the schedule
    exactly; later losses loosely, since a different reduction order (all-reduce vs
    accumulation) changes the last bits of the gradients and Adam amplifies them where
    gradients are near zero."""
    want, got = losses(reference), losses(resumed)
    assert sorted(s for s in got if s in steps) == list(steps)
    assert got[steps[0]] == pytest.approx(want[steps[0]], rel=1e-6, abs=1e-7)
    assert [got[s] for s in steps] == pytest.approx([want[s] for s in steps], rel=1e-2)
    assert [lrs(resumed)[s] for s in steps] == [lrs(reference)[s] for s in steps]


def losses(output_dir: Path) -> dict[int, float]:
    """step → loss from metrics.jsonl; a step logged twice (killed + resumed) keeps the last."""
    found = {}
    for line in (output_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "loss" in record:
            found[record["step"]] = record["loss"]
    return found


def hostfile(path: Path, nodes: int, slots: int = 1) -> Path:
    """A DeepSpeed hostfile; with --no_ssh its names are labels, never contacted."""
    path.write_text("".join(f"node{i} slots={slots}\n" for i in range(nodes)))
    return path


def node_cmd(
    config_path: Path, *args: str, node_rank: int, nodes: int, port: int, hosts: Path
) -> list[str]:
    """One node's launcher of a multi-node job without ssh (what docs/scaling-out.md shows)."""
    launcher = Path(sys.executable).parent / "deepspeed"
    return [
        str(launcher),
        "--no_ssh",
        "--hostfile",
        str(hosts),
        "--num_nodes",
        str(nodes),
        "--node_rank",
        str(node_rank),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(port),
        str(TRAIN),
        "--config",
        str(config_path),
        *args,
    ]


def start_nodes(config_path: Path, *args: str, nodes: int = 2) -> list[subprocess.Popen]:
    """Every node's launcher, each in its own process group (a "node" to kill as a whole);
    output is appended to node{i}.log next to the config."""
    hosts = hostfile(config_path.parent / "hostfile", nodes)
    port = free_port()
    procs = []
    for rank in range(nodes):
        log = (config_path.parent / f"node{rank}.log").open("a")
        cmd = node_cmd(config_path, *args, node_rank=rank, nodes=nodes, port=port, hosts=hosts)
        procs.append(
            subprocess.Popen(
                cmd,
                env=clean_env(),
                cwd=config_path.parent,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
    return procs


def stop_nodes(procs: list[subprocess.Popen]) -> None:
    """SIGKILL what is left of every node (test clean-up, also after a failure)."""
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def run_nodes(config_path: Path, *args: str, nodes: int = 2, timeout: int = 600) -> list[int]:
    """Run a multi-node job to the end; every node's exit status."""
    procs = start_nodes(config_path, *args, nodes=nodes)
    try:
        return [proc.wait(timeout=timeout) for proc in procs]
    finally:
        stop_nodes(procs)
