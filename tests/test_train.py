"""Training engine: ZeRO / activation-checkpointing parity, accuracy on the motion task, and
runs that must fail fast with one clear sentence."""

from __future__ import annotations

import json
import os
import re
import time

import pytest
import torch
import torch.multiprocessing as mp
from engine_helpers import (
    ZERO3_GATHER_EVERY_FORWARD,
    become_rank,
    end_rank,
    free_port,
    losses,
    run_train,
    step_losses,
    tiny_raw,
    write_config,
)

from zeroi2v import config
from zeroi2v.config import ConfigError

PARITY_RUNS = [(0, False), (1, False), (2, False), (3, False), (0, True), (3, True)]
PARITY_STEPS = 3
GATHER = ZERO3_GATHER_EVERY_FORWARD  # ignored by stages 0-2


def _parity_worker(rank: int, world: int, port: int, raw: dict, result_file: str) -> None:
    become_rank(rank, world, port)
    from torch import nn

    from zeroi2v.data.pipeline import build_train_loader
    from zeroi2v.engine import parallel, trainer

    info = parallel.init_distributed()
    results = {}
    for stage, checkpointing in PARITY_RUNS:
        cfg = config.from_dict(
            raw,
            {
                "deepspeed.zero_optimization.stage": stage,
                "train.activation_checkpointing": checkpointing,
                **{f"deepspeed.zero_optimization.{k}": v for k, v in GATHER.items()},
            },
        )
        ds = parallel.deepspeed_config(cfg, world)
        torch.manual_seed(cfg.train.seed)
        engine = parallel.build_engine(trainer._build_model(cfg), cfg, ds, 100, 10)
        loader = build_train_loader(
            cfg,
            rank=info.rank,
            world_size=world,
            epoch=0,
            micro_batch_size=ds["train_micro_batch_size_per_gpu"],
            num_batches=PARITY_STEPS,
        )
        criterion = nn.CrossEntropyLoss()
        batches = [((clips,), labels) for clips, labels, _ in loader]
        results[f"{stage},{checkpointing}"] = step_losses(engine, criterion, batches)
        engine.destroy()
    if rank == 0:
        with open(result_file, "w") as handle:
            json.dump(results, handle)
    end_rank()


def test_zero_stages_and_activation_checkpointing_give_the_same_losses(synthetic_shards, tmp_path):
    """2 gloo processes: ZeRO 0/1/2/3 × checkpointing on/off follow the same loss curve."""
    raw = tiny_raw(
        synthetic_shards,
        tmp_path / "run",
        optim={"lr": 3e-3, "warmup_epochs": 0.0},
        deepspeed={
            "train_micro_batch_size_per_gpu": 4,
            "gradient_accumulation_steps": 1,
            "train_batch_size": 8,
            "zero_optimization": {"stage": 0},
        },
    )
    result_file = tmp_path / "losses.json"
    mp.spawn(_parity_worker, args=(2, free_port(), raw, str(result_file)), nprocs=2)
    curves = json.loads(result_file.read_text())
    reference = curves["0,False"]
    assert len(reference) == PARITY_STEPS
    assert reference[0] != reference[-1]  # the weights moved: later losses test the optimizer
    for name, curve in curves.items():
        assert curve == pytest.approx(reference, rel=1e-5, abs=1e-6), name


class _HookFailed(Exception):
    pass


def _failing_hook(epoch: int, metrics: dict, checkpoint) -> None:
    raise _HookFailed(epoch)


def _denied(directory) -> None:
    raise PermissionError(f"denied: {directory}")


def _group_worker(rank: int, ports: tuple[int, int], raws: list[dict]) -> None:
    become_rank(rank, 2, ports[0])
    import torch.distributed as dist

    from zeroi2v.engine import ckpt_integrity, parallel, trainer

    made, failing, kept = (config.from_dict(raw) for raw in raws)
    trainer.train(made)
    assert not dist.is_initialized(), "a successful run leaves the group it made"
    # A fresh rendezvous: the old store may live on in rank 0 until its own destroy returns.
    os.environ["MASTER_PORT"] = str(ports[1])
    with parallel.process_group():
        # `made` holds a finished run: without resume, every rank refuses it before writing
        with pytest.raises(ConfigError, match=r"already holds a run \(its last committed ch"):
            trainer.train(made)
        real = ckpt_integrity.last_committed
        if rank == 0:  # rank 0 cannot look: it fails, and tells the others, who fail too
            ckpt_integrity.last_committed = _denied
        with pytest.raises(OSError, match="denied"):
            trainer.train(made)
        ckpt_integrity.last_committed = real
        with pytest.raises(_HookFailed):
            trainer.train(failing, on_epoch=_failing_hook)
        assert dist.is_initialized(), "an error leaves the group alone"
        trainer.train(kept)
        assert dist.is_initialized(), "a group the caller made is the caller's to leave"
    assert not dist.is_initialized()


def test_train_leaves_only_the_process_group_it_made_and_only_after_success(
    synthetic_shards, tmp_path
):
    """2 gloo processes: `train` destroys the group it made once every rank is past the final
    barrier; it keeps the group after an error (another rank may still be in a collective)
    and never destroys a group its caller made. Each run is 1 epoch of 2 steps. A fresh run
    into the finished run's folder stops both ranks (also when only rank 0's look fails),
    and the group goes on working: no rank is left in a collective."""
    raws = [
        tiny_raw(synthetic_shards, tmp_path / name, train={"epochs": 1, "steps_per_epoch": 2})
        for name in ("made", "failing", "kept")
    ]
    mp.spawn(_group_worker, args=((free_port(), free_port()), raws), nprocs=2)
    # `failing` raised in its only epoch's hook, which runs after the merge (Tune ends a trial
    # at its last report): its merged model was written all the same
    for name in ("made", "failing", "kept"):
        assert (tmp_path / name / "merged.pt").is_file()


MOTION_SEEDS = (0, 1, 2)
DEMO_RUNS = [f"stdha{s}" for s in MOTION_SEEDS] + ["stdha_pretrain1"]


@pytest.fixture(scope="module")
def motion_top1(
    motion_shards, tiny_pretrained, tiny_pretrained_seed1, tmp_path_factory
) -> dict[str, float]:
    """Final val top-1 of the demo recipe (mp4 shards, 2 DeepSpeed processes, configs/tiny_cpu.json,
    the demo's data and image pre-training): STDHA with train.seed 0, 1, 2 (what `make
    demo-seeds` runs), STDHA on weights pre-trained with seed 1 (`PRETRAIN_SEED=1 make demo`),
    and the same model without a temporal operator (blind to frame order)."""
    root = tmp_path_factory.mktemp("motion")
    runs = [(f"stdha{seed}", "stdha", seed, tiny_pretrained) for seed in MOTION_SEEDS]
    runs += [("stdha_pretrain1", "stdha", 0, tiny_pretrained_seed1)]
    runs += [("none", "none", 0, tiny_pretrained)]
    top1 = {}
    for name, op, seed, pretrained in runs:
        out = root / name
        raw = tiny_raw(
            motion_shards,
            out,
            model={"temporal_op": op, "pretrained": str(pretrained)},
            train={"seed": seed, "checkpoint_every_steps": 10_000},  # only the final one
        )
        proc = run_train(write_config(root / f"{name}.json", raw), processes=2, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
        evals = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        top1[name] = [e["val/top1"] for e in evals if "val/top1" in e][-1]
    return top1


@pytest.mark.slow
def test_motion_task_needs_time_stdha_learns_it_none_does_not(motion_top1):
    """4 classes that differ only in the direction of motion (chance 25 %): without a temporal
    operator the model stays ≤ 60 % on held-out clips, with STDHA it is far above."""
    assert motion_top1["none"] <= 0.60, motion_top1
    assert min(motion_top1[f"stdha{s}"] for s in MOTION_SEEDS) >= motion_top1["none"] + 0.3


@pytest.mark.slow
def test_demo_recipe_holds_across_seeds(motion_top1):
    """What `make demo` promises whatever the machine: ≥ 93 % top-1 on every seed, and seeds
    agree within 5 points (128 val clips: one clip is 0.8 point). A seed changes the adapter and
    head initialisation, the sample order and the augmentation draws, as another machine's float
    reduction order changes a run; the pre-training seed changes the backbone's weights, as
    another machine's rounding in the image pre-training does. The recipe this replaced gave
    0.95 or 0.77 depending on the sample order: on some runs it learnt the direction along one
    axis only (left/right at chance)."""
    scores = [motion_top1[name] for name in DEMO_RUNS]
    assert min(scores) >= 0.93, motion_top1
    assert max(scores) - min(scores) <= 0.05, motion_top1


@pytest.mark.slow
def test_augmenting_on_the_device_trains_the_same_as_in_the_workers(synthetic_shards, tmp_path):
    """launch/train.py with data.augment_on: device (the CPU is the device here, 2 loader
    workers, RandAugment m7 n4, random erasing) logs the very losses of augment_on: cpu."""
    curves = {}
    for on in ("cpu", "device"):
        raw = tiny_raw(
            synthetic_shards,
            tmp_path / on,
            data={"augment_on": on, "num_workers": 2, "randaugment_n": 4, "random_erasing": 0.25},
            train={"epochs": 1, "steps_per_epoch": 4, "log_every_steps": 1},
            model={"num_classes": 4},
        )
        proc = run_train(write_config(tmp_path / f"{on}.json", raw), timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        curves[on] = losses(tmp_path / on)
    assert len(curves["cpu"]) == 4 and curves["device"] == curves["cpu"]


# ----------------------------------------------------------------------------- fail fast


def _main(argv: list[str]):
    from launch.train import main

    return main(argv)


def test_config_errors_name_the_field(synthetic_shards, tmp_path):
    path = write_config(tmp_path / "c.json", tiny_raw(synthetic_shards, tmp_path / "run"))
    with pytest.raises(ConfigError, match="optim.lrr"):
        _main(["--config", str(path), "--optim.lrr=1e-3"])
    with pytest.raises(ConfigError, match="deepspeed.optimizer"):
        _main(["--config", str(path), 'deepspeed.optimizer={"type": "Adam"}'])


def test_broken_batch_identity_names_the_fields(synthetic_shards, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")  # as the launcher would announce it
    raw = tiny_raw(synthetic_shards, tmp_path / "run")
    # a multiple of micro-batch × accumulation, but not for 2 processes: 4 × 1 × 2 = 8 ≠ 12
    raw["deepspeed"].update(
        train_micro_batch_size_per_gpu=4, gradient_accumulation_steps=1, train_batch_size=12
    )
    path = write_config(tmp_path / "c.json", raw)
    with pytest.raises(ConfigError, match=r"train_batch_size \(12\) != .*world size \(2\)"):
        _main(["--config", str(path)])


def test_a_head_that_does_not_fit_the_classes_fails_before_training(synthetic_shards, tmp_path):
    """4 classes in the shards: 3 logits can't score them; 5 can, but the registered model
    would name 5 classes (the registration failed at the end of the run, after training)."""
    path = write_config(tmp_path / "c.json", tiny_raw(synthetic_shards, tmp_path / "run"))
    register = ["tracking.enabled=true", "tracking.register_model=true"]
    with pytest.raises(ConfigError, match=r"model.num_classes is 3, but .* lists 4 classes"):
        _main(["--config", str(path), "model.num_classes=3", "tracking.enabled=false"])
    with pytest.raises(ConfigError, match=r"set model.num_classes=4 \(or tracking.register"):
        _main(["--config", str(path), "model.num_classes=5", *register])
    assert not (tmp_path / "run").exists()


def test_missing_shards_fail_before_training(synthetic_shards, tmp_path):
    raw = tiny_raw(synthetic_shards, tmp_path / "run")
    raw["data"]["train_shards"] = str(tmp_path / "nowhere" / "train-*.tar")
    path = write_config(tmp_path / "c.json", raw)
    with pytest.raises(FileNotFoundError, match="data.train_shards"):
        _main(["--config", str(path)])
    assert not (tmp_path / "run").exists()


def test_unreachable_mlflow_server_fails_before_training(synthetic_shards, tmp_path):
    raw = tiny_raw(
        synthetic_shards,
        tmp_path / "run",
        tracking={"enabled": True, "tracking_uri": "http://127.0.0.1:1", "artifact_location": None},
    )
    path = write_config(tmp_path / "c.json", raw)
    proc = run_train(path, timeout=300)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: MLflow tracking server http://127.0.0.1:1 is unreachable"), last
    assert not (tmp_path / "run").exists()  # before any output, checkpoint or process group


def test_server_check_is_quick():
    from zeroi2v.engine.tracking import check_server
    from zeroi2v.errors import TrackingServerError

    start = time.perf_counter()
    with pytest.raises(TrackingServerError, match="tracking.enabled=false"):
        check_server("http://127.0.0.1:1")
    assert time.perf_counter() - start < 15  # no long HTTP retry loop


@pytest.mark.parametrize("processes", [1, 2])
def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(synthetic_shards, tmp_path, processes):
    """lr = 1e30: step 1 gives huge but finite weights (checkpointed), step 2's loss is NaN.
    The loss is read on the host only at the next log line or checkpoint (here: step 2's), and
    every rank stops there, naming step 2; nothing of step 2 is written."""
    out = tmp_path / "run"
    raw = tiny_raw(
        synthetic_shards,
        out,
        optim={"lr": 1e30, "warmup_epochs": 0.0},
        train={"checkpoint_every_steps": 1, "steps_per_epoch": 6},
        deepspeed={"train_micro_batch_size_per_gpu": 4, "train_batch_size": 4 * processes},
    )
    proc = run_train(write_config(tmp_path / "c.json", raw), processes=processes, timeout=300)
    assert proc.returncode != 0
    # Every rank, the same sentence. Searched, not split in lines: two ranks' prints may
    # interleave between a sentence and its newline on the shared stderr.
    sentence = (
        r"error: loss is (nan|inf|-inf) at step 2 \(epoch 0\); stopping, the last good "
        rf"checkpoint is step1 in {re.escape(str(out / 'checkpoints'))}"
    )
    said = re.findall(sentence, proc.stderr)
    assert len(said) == processes, proc.stderr[-3000:]
    assert proc.stderr.count("error:") == processes, proc.stderr[-3000:]  # and nothing else
    assert (out / "checkpoints" / "latest").read_text().strip() == "step1"
    assert not (out / "checkpoints" / "step2").exists()
    assert list(losses(out)) == [1]
