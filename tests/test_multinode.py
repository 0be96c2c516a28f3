"""A real 2-node DeepSpeed job on one machine: two `deepspeed --no_ssh --node_rank 0|1` launchers
on 127.0.0.1, one CPU process each (gloo).

What multi-node breaks when it is wrong: global ranks and world size, every training sample of
the epoch played by exactly one rank, every val sample evaluated once, one checkpoint folder
and one registered model; a resume on another number of nodes (2 → 1 → 2) that neither repeats
nor skips a sample and follows the same loss curve; a node killed mid-epoch that stops the
survivor within two minutes, with the lost rank named, and a `--resume` that continues exactly.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest
import webdataset as wds
from engine_helpers import (
    REPO,
    assert_continues,
    clean_env,
    free_port,
    losses,
    run_nodes,
    start_nodes,
    stop_nodes,
    tiny_raw,
    train_cmd,
    write_config,
)

pytestmark = pytest.mark.slow

STEPS = 8  # 64 training samples (2 shards) / global batch 8: one epoch, checkpoints 3, 6, 8


def _config(
    shards: Path, folder: Path, accumulation: int = 1, workers: int = 0, tracking: bool = False
) -> Path:
    """Global batch 8 = 4 per process × `accumulation` × processes (2 nodes: 1, 1 node: 2)."""
    folder.mkdir(parents=True, exist_ok=True)
    raw = tiny_raw(
        shards,
        folder / "run",
        train={
            "epochs": 1,
            "checkpoint_every_steps": 3,
            "log_sample_keys": True,
            "dist_timeout_s": 60,
        },
        deepspeed={
            "train_micro_batch_size_per_gpu": 4,
            "gradient_accumulation_steps": accumulation,
            "zero_optimization": {"stage": 1},
        },
        tracking={"enabled": tracking},
    )
    raw["data"].update(train_shards=str(shards / "train-{000000..000001}.tar"), num_workers=workers)
    return write_config(folder / "config.json", raw)


def _records(run: Path) -> dict[int, list[dict]]:
    """rank → the lines of its sample_keys/rank{R}.jsonl."""
    return {
        int(path.stem.removeprefix("rank")): [json.loads(x) for x in path.read_text().splitlines()]
        for path in sorted((run / "sample_keys").glob("rank*.jsonl"))
    }


def _train_keys(run: Path, first: int = 1, last: int = STEPS) -> list[str]:
    return [
        key
        for lines in _records(run).values()
        for line in lines
        if "step" in line and first <= line["step"] <= last
        for key in line["keys"]
    ]


def _keys(shards: list[Path]) -> Counter:
    return Counter(
        s["__key__"] for s in wds.WebDataset([str(p) for p in shards], shardshuffle=False)
    )


def _log(folder: Path) -> str:
    return "\n".join(p.read_text()[-3000:] for p in sorted(folder.glob("node*.log")))


def _copy_checkpoint(source: Path, tag: str, target: Path) -> None:
    """The state a run stopped right after checkpoint `tag` leaves behind."""
    shutil.copytree(source / "run" / "checkpoints" / tag, target / "run" / "checkpoints" / tag)
    (target / "run" / "checkpoints" / "latest").write_text(tag)


@pytest.fixture(scope="module")
def two_nodes(synthetic_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted 2-node run, MLflow tracking and registry on (SQLite in tmp)."""
    folder = tmp_path_factory.mktemp("two_nodes")
    codes = run_nodes(_config(synthetic_shards, folder, tracking=True))
    assert codes == [0, 0], _log(folder)
    return folder


def test_two_node_job(two_nodes: Path, synthetic_shards: Path) -> None:
    run = two_nodes / "run"
    records = _records(run)
    for rank in (0, 1):
        launch = records[rank][0]["launch"]
        assert (launch["rank"], launch["node_rank"], launch["local_rank"]) == (rank, rank, 0)
        assert (launch["world_size"], launch["nodes"]) == (2, 2)
    # every training sample of the epoch: once, on one rank; each rank half of them
    assert Counter(_train_keys(run)) == _keys(
        [synthetic_shards / f"train-00000{i}.tar" for i in (0, 1)]
    )
    per_rank = [sum(len(x["keys"]) for x in records[r] if "step" in x) for r in (0, 1)]
    assert per_rank == [32, 32]
    evaluated = [
        k for lines in records.values() for x in lines if "eval_at_step" in x for k in x["keys"]
    ]
    assert Counter(evaluated) == _keys(sorted(synthetic_shards.glob("val-*.tar")))
    # one checkpoint folder: model states once, one optimizer partition and RNG file per rank
    checkpoints = run / "checkpoints"
    assert (checkpoints / "latest").read_text() == f"step{STEPS}"
    for tag in ("step3", "step6", f"step{STEPS}"):
        assert sorted(p.name for p in (checkpoints / tag).iterdir()) == [
            "client.json",
            "manifest.json",
            "mp_rank_00_model_states.pt",
            "rng_rank0.pt",
            "rng_rank1.pt",
            "zero_pp_rank_0_mp_rank_00_optim_states.pt",
            "zero_pp_rank_1_mp_rank_00_optim_states.pt",
        ]
    assert list(losses(run)) == list(range(1, STEPS + 1))  # rank 0 alone logs each step once
    from mlflow import MlflowClient

    raw = json.loads((two_nodes / "config.json").read_text())["tracking"]
    versions = MlflowClient(raw["tracking_uri"]).search_model_versions(
        f"name='{raw['model_name']}'"
    )
    assert len(versions) == 1  # registered once, by rank 0, not once per node


def test_resume_on_one_node_then_on_two(
    two_nodes: Path, synthetic_shards: Path, tmp_path: Path
) -> None:
    """2 nodes play steps 1-3, 1 node (2 accumulation steps) 4-6, 2 nodes again 7-8 (through
    launch/slurm/train.sbatch): each sample of the epoch once. With 2 loader workers on the
    one node (2 ranks × 1 worker → 1 rank × 2 workers) every step also gets the uninterrupted
    run's samples, so the first resumed step's loss must match it too (weights from the
    universal ZeRO checkpoint, data position) and the schedule must continue."""
    one, two = tmp_path / "one_node", tmp_path / "two_again"
    _copy_checkpoint(two_nodes, "step3", one)
    config = _config(synthetic_shards, one, accumulation=2, workers=2)
    proc = subprocess.run(
        train_cmd(config, "--resume"), env=clean_env(), cwd=one, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (one / "run" / "checkpoints" / "universal" / "step3").is_dir()  # DeepSpeed's format

    _copy_checkpoint(one, "step6", two)
    job = _slurm_job(_config(synthetic_shards, two), "--resume")
    assert job.returncode == 0, job.stdout[-3000:]

    played = (
        _train_keys(two_nodes / "run", 1, 3)
        + _train_keys(one / "run", 4, 6)
        + _train_keys(two / "run", 7, 8)
    )
    assert Counter(played) == _keys([synthetic_shards / f"train-00000{i}.tar" for i in (0, 1)])
    assert_continues(two_nodes / "run", one / "run", range(4, 7))
    assert_continues(two_nodes / "run", two / "run", range(7, 9))


FAKE_SRUN = """#!/bin/bash
# stand-in for srun on one machine: one task per node, the node's rank in SLURM_NODEID
while [[ $1 == --* ]]; do shift; done
pids=()
for i in $(seq 0 $((SLURM_NNODES - 1))); do SLURM_NODEID=$i "$@" & pids+=($!); done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
"""
FAKE_SCONTROL = """#!/bin/bash
# stand-in for `scontrol show hostnames`
for i in $(seq 0 $((SLURM_NNODES - 1))); do echo "node$i"; done
"""


def _slurm_job(config: Path, *args: str, nodes: int = 2) -> subprocess.CompletedProcess:
    """launch/slurm/train.sbatch as Slurm would run it on `nodes` nodes (srun and scontrol
    replaced by stand-ins; the rendezvous on 127.0.0.1)."""
    fake = config.parent / "fake_slurm"
    fake.mkdir()
    for name, text in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        (fake / name).write_text(text)
        (fake / name).chmod(0o755)
    env = clean_env(
        SLURM_JOB_ID="1",
        SLURM_JOB_NODELIST=f"node[0-{nodes - 1}]",
        SLURM_NNODES=str(nodes),
        GPUS_PER_NODE="1",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(free_port()),
        HOSTFILE=str(config.parent / "hostfile"),
    )
    env["PATH"] = f"{fake}:{env['PATH']}"
    script = REPO / "launch" / "slurm" / "train.sbatch"
    return subprocess.run(
        ["bash", str(script), "--config", str(config), *args],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=600,
    )


def _orphans(marker: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if any(marker in part for part in proc.info["cmdline"] or []):
            found.append(proc)
    return found


def test_dead_node_stops_the_job_and_resume_continues(
    two_nodes: Path, synthetic_shards: Path, tmp_path: Path
) -> None:
    config = _config(synthetic_shards, tmp_path)
    latest = tmp_path / "run" / "checkpoints" / "latest"
    procs = start_nodes(config)
    try:
        deadline = time.monotonic() + 600
        while not latest.exists() and time.monotonic() < deadline:
            assert all(p.poll() is None for p in procs), _log(tmp_path)
            time.sleep(0.2)
        stop_nodes([procs[1]])  # SIGKILL node 1: launcher, DeepSpeed's launch and rank 1
        killed = time.monotonic()
        code = procs[0].wait(timeout=180)
        waited = time.monotonic() - killed
    finally:
        stop_nodes(procs)
    log = (tmp_path / "node0.log").read_text()
    assert code != 0 and waited < 120, (code, waited, log[-3000:])
    assert "error: lost rank 1 (node 1" in log, log[-3000:]
    assert _orphans(str(config)) == []
    resumed_from = int(latest.read_text().removeprefix("step"))
    assert resumed_from < STEPS, "the run finished before the kill"

    assert run_nodes(config, "--resume") == [0, 0], _log(tmp_path)
    reference, got = losses(two_nodes / "run"), losses(tmp_path / "run")
    later = range(resumed_from + 1, STEPS + 1)
    assert [got[s] for s in later] == [reference[s] for s in later]
    assert _orphans(str(config)) == []
