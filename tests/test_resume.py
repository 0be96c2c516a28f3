"""A run killed with SIGKILL and resumed with --resume equals the uninterrupted run."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from engine_helpers import (
    ZERO3_GATHER_EVERY_FORWARD,
    assert_continues,
    become_rank,
    clean_env,
    end_rank,
    free_port,
    losses,
    run_train,
    tiny_raw,
    train_cmd,
    write_config,
)

from zeroi2v import config
from zeroi2v.engine.parallel import read_checkpoint_weights

# 2 epochs × 5 steps, checkpoints every 3 steps: a resume lands mid-epoch 0 or in epoch 1, so
# it must restore the data position, the schedule, the optimizer and the RNG. Dropout > 0 makes
# the RNG state matter.
SECTIONS = dict(
    model={"dropout": 0.3},
    optim={"lr": 3e-3, "warmup_epochs": 0.5},
    train={
        "epochs": 2,
        "steps_per_epoch": 5,
        "checkpoint_every_steps": 3,
        "eval_every_epochs": 2,
        "keep_checkpoints": None,  # the worker resumes a copy of the full run's step3
    },
)
# 1 process, ZeRO-1, 2 micro-batches per optimizer step (the resume point is a step boundary)
ONE_PROCESS_DS = {
    "train_micro_batch_size_per_gpu": 2,
    "gradient_accumulation_steps": 2,
    "gradient_clipping": 1.0,
    "zero_optimization": {"stage": 1},
}


def _assert_resumed_equals_full(full_dir: Path, resumed_dir: Path, resumed_from: int) -> None:
    reference, got = losses(full_dir), losses(resumed_dir)
    assert sorted(reference) == list(range(1, 11))
    remaining = [s for s in reference if s > resumed_from]
    assert [got[s] for s in remaining] == [reference[s] for s in remaining]
    a = read_checkpoint_weights(full_dir / "checkpoints")
    b = read_checkpoint_weights(resumed_dir / "checkpoints")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


def test_sigkill_and_resume_matches_uninterrupted_run(synthetic_shards, tmp_path):
    """1 process, ZeRO-1: kill -9 after the first checkpoint, --resume, compare bit for bit.

    The killed run starts in a folder that holds no committed checkpoint (a config.json, an
    older attempt's unfinished save): it starts. Launched again without --resume, it refuses
    in one sentence, opens no MLflow run and leaves every file as it was; --resume then
    continues as if never interrupted."""
    full_dir, killed_dir = tmp_path / "full", tmp_path / "killed"
    (killed_dir / "checkpoints" / "step9").mkdir(parents=True)
    (killed_dir / "checkpoints" / "step9" / "client.json").write_text("{}")  # no manifest
    (killed_dir / "config.json").write_text("{}")
    full_cfg = write_config(
        tmp_path / "full.json",
        tiny_raw(synthetic_shards, full_dir, deepspeed=ONE_PROCESS_DS, **SECTIONS),
    )
    killed_cfg = write_config(
        tmp_path / "killed.json",
        tiny_raw(synthetic_shards, killed_dir, deepspeed=ONE_PROCESS_DS, **SECTIONS),
    )

    proc = subprocess.Popen(
        train_cmd(killed_cfg),
        env=clean_env(),
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    latest = killed_dir / "checkpoints" / "latest"
    deadline = time.monotonic() + 300
    while not latest.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = latest.read_text().strip()
    # usually step3; on a busy machine the run may get a checkpoint further before the kill
    assert killed_at in {"step3", "step6", "step9"}, killed_at
    assert not (killed_dir / "merged.pt").exists()  # it really died mid-way

    before = _files(killed_dir)
    again = run_train(killed_cfg, "tracking.enabled=true")  # no --resume
    assert again.returncode == 1
    assert not (tmp_path / "mlflow.db").exists()  # no MLflow run either
    said = again.stderr.strip().splitlines()[-1]
    assert said == (
        f"error: train.output_dir {killed_dir} already holds a run (its last committed "
        f"checkpoint is {killed_at} in {killed_dir / 'checkpoints'}); not touching it: pass "
        f"--resume to continue that run, or set another train.output_dir=... (or remove "
        f"{killed_dir}) to start a new one"
    ), again.stderr[-3000:]
    assert _files(killed_dir) == before  # metrics.jsonl, checkpoints, config.json: as they were

    resumed = run_train(killed_cfg, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    full = run_train(full_cfg)
    assert full.returncode == 0, full.stderr[-3000:]
    _assert_resumed_equals_full(full_dir, killed_dir, int(killed_at.removeprefix("step")))


def _two_process_worker(rank: int, port: int, raw_full: dict, raw_resumed: dict) -> None:
    become_rank(rank, 2, port)
    import torch.distributed as dist

    from zeroi2v.engine import parallel, trainer

    with parallel.process_group():  # shared by both runs: `train` leaves only a group it made
        trainer.train(config.from_dict(raw_full))
        full = Path(raw_full["train"]["output_dir"]) / "checkpoints"
        resumed = Path(raw_resumed["train"]["output_dir"]) / "checkpoints"
        if rank == 0:  # the state a run killed between step 3 and step 6 leaves behind
            shutil.copytree(full / "step3", resumed / "step3")
            (resumed / "latest").write_text("step3")
        dist.barrier()
        trainer.train(config.from_dict(raw_resumed), resume=True)
    end_rank()


def test_two_process_zero3_resume_matches_uninterrupted_run(synthetic_shards, tmp_path):
    """2 gloo processes, ZeRO-3 (partitioned weights and optimizer, one RNG file per rank):
    resuming from the step-3 checkpoint of a full run reproduces the rest of it exactly."""
    ds = {
        "train_micro_batch_size_per_gpu": 4,
        "gradient_accumulation_steps": 1,
        "train_batch_size": 8,
        "zero_optimization": {"stage": 3, **ZERO3_GATHER_EVERY_FORWARD},
    }
    raws = [
        tiny_raw(synthetic_shards, tmp_path / name, deepspeed=ds, **SECTIONS)
        for name in ("full", "resumed")
    ]
    mp.spawn(_two_process_worker, args=(free_port(), *raws), nprocs=2)
    _assert_resumed_equals_full(tmp_path / "full", tmp_path / "resumed", 3)


def test_fetching_batches_leaves_the_training_rng_alone(synthetic_shards, tmp_path):
    """The resume bug's cause: the DataLoader seeds itself from the global torch RNG at the
    first `next()` (wds.WebLoader's `__iter__` is a generator), i.e. at every epoch start of
    a full run but at the resume point of a resumed one. The trainer fetches under fork_rng."""
    from zeroi2v.data.pipeline import build_train_loader
    from zeroi2v.engine.rng import outside_training_rng

    cfg = config.from_dict(tiny_raw(synthetic_shards, tmp_path / "run"))

    def loader():
        return build_train_loader(
            cfg, rank=0, world_size=1, epoch=0, micro_batch_size=2, num_batches=2
        )

    torch.manual_seed(0)
    before = torch.get_rng_state()
    fetched = list(outside_training_rng(loader()))
    assert torch.equal(torch.get_rng_state(), before)
    plain = list(loader())  # the same batches, in the same order
    assert len(fetched) == len(plain) == 2
    for (clips, labels, _), (ref_clips, ref_labels, _) in zip(fetched, plain, strict=True):
        assert torch.equal(clips, ref_clips) and torch.equal(labels, ref_labels)


def _train_all(rank: int, port: int, raws: list[dict]) -> None:
    become_rank(rank, 2, port)
    from zeroi2v.engine import parallel, trainer

    with parallel.process_group():  # shared by the runs: `train` leaves only a group it made
        for raw in raws:
            trainer.train(config.from_dict(raw))
    end_rank()


@pytest.mark.slow
def test_two_process_checkpoints_resume_on_one_process_for_zero_0_and_3(synthetic_shards, tmp_path):
    """ZeRO-0 keeps the whole optimizer state in one file (it loads as is); ZeRO-3 partitions
    weights and optimizer per rank (converted to DeepSpeed's universal checkpoint). Either way
    one process with 2 accumulation steps (and 2 loader workers, so that each step gets the
    same samples) continues the 2-process run's loss curve and schedule."""
    raws = {}
    for stage in (0, 3):
        ds = {
            "train_micro_batch_size_per_gpu": 4,
            "gradient_accumulation_steps": 1,
            "zero_optimization": {"stage": stage, **ZERO3_GATHER_EVERY_FORWARD},
        }
        raws[stage] = tiny_raw(
            synthetic_shards,
            tmp_path / f"two{stage}",
            deepspeed=ds,
            train={"epochs": 1, "checkpoint_every_steps": 3},
        )
        raws[stage]["data"]["train_shards"] = str(synthetic_shards / "train-00000[01].tar")
    mp.spawn(_train_all, args=(free_port(), list(raws.values())), nprocs=2)
    for stage, raw in raws.items():
        two, one = tmp_path / f"two{stage}", tmp_path / f"one{stage}"
        shutil.copytree(two / "checkpoints" / "step3", one / "checkpoints" / "step3")
        (one / "checkpoints" / "latest").write_text("step3")
        raw = json.loads(json.dumps(raw))
        raw["train"]["output_dir"] = str(one)
        raw["deepspeed"]["gradient_accumulation_steps"] = 2
        raw["data"]["num_workers"] = 2  # 2 ranks × 1 worker → 1 × 2: each step's samples kept
        proc = run_train(write_config(tmp_path / f"one{stage}.json", raw), "--resume")
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert (one / "checkpoints" / "universal").exists() == (stage > 0)
        assert_continues(two, one, range(4, 9))


def test_metrics_jsonl_holds_one_run_and_an_attempt_without_checkpoint_is_kept(tmp_path, caplog):
    """A fresh run sets aside the lines of an earlier attempt (one that crashed before its
    first checkpoint, the only kind a fresh run may start over) as metrics.attemptN.jsonl,
    saying so; a resume cuts the file back to the size its checkpoint recorded."""
    from zeroi2v.engine import parallel, run_log

    cfg = config.from_dict({"train": {"output_dir": str(tmp_path)}})
    rank0 = parallel.DistInfo(rank=0, world_size=1, local_rank=0)
    path = tmp_path / "metrics.jsonl"

    def write(committed_bytes: int | None, record: dict) -> None:
        with contextlib.closing(run_log.RunLog(cfg, rank0, committed_bytes)) as records:
            records.metric(record)

    for attempt in (1, 2):
        path.write_text(json.dumps({"attempt": attempt}) + "\n")
        with caplog.at_level("WARNING", logger="zeroi2v.engine.run_log"):
            write(None, {"step": 0})
        assert path.read_text() == '{"step": 0}\n'
        kept = tmp_path / f"metrics.attempt{attempt}.jsonl"
        assert kept.read_text() == json.dumps({"attempt": attempt}) + "\n"
        assert f"kept as {kept.name}" in caplog.text
    committed = path.stat().st_size  # a checkpoint here, then a step logged before a crash
    write(committed, {"step": 1})
    write(committed, {"step": 1, "again": True})  # the resume
    assert path.read_text() == '{"step": 0}\n{"step": 1, "again": true}\n'
