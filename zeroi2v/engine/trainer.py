"""The train / eval loop: DeepSpeed steps, periodic multi-view eval, checkpoints, exact resume.

Read top to bottom: checks that can fail fast run before any process group exists; `train`
joins the group, verifies a resumed checkpoint (the ranks share the hashing) or refuses a
fresh run into a `train.output_dir` that holds one, and opens the MLflow run; `_train` builds,
wraps and optionally restores the model, trains epoch by epoch (`_train_epoch`), evaluates
(`_evaluate`), checkpoints, and finally merges and registers the model (rank 0, `release`).
What a checkpoint holds and how a run continues from it is `train_state`; the run's own JSONL
records are `run_log`. Resume is exact: the data loader is a pure function of (seed, epoch,
rank, world size) and skips the batches already consumed, the scheduler lives in the DeepSpeed
checkpoint, and every rank's RNG state is saved beside it.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zeroi2v import config as config_lib
from zeroi2v import logs
from zeroi2v.config import Config
from zeroi2v.data.order import Layout
from zeroi2v.data.pipeline import build_eval_loader, build_train_loader, count_samples
from zeroi2v.data.shards import expand_shards, read_manifest
from zeroi2v.engine import (
    frozen,
    liveness,
    parallel,
    position,
    release,
    rng,
    run_log,
    step_losses,
    tasks,
    tracking,
    train_state,
)
from zeroi2v.engine.activation_checkpointing import apply_activation_checkpointing
from zeroi2v.engine.loading import load_parent
from zeroi2v.errors import ConfigError, NonFiniteLossError

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    global_step: int
    val_top1: float | None  # model.task "classification" (`tasks.Task.result_fields`)
    val_top5: float | None
    model_uri: str | None
    output_dir: Path
    val_map: float | None = None  # model.task "detection": frame-level mAP@0.5


def steps_per_epoch(cfg: Config, train_batch_size: int) -> int:
    """Optimizer steps of `train_batch_size` clips in an epoch, which plays every training video
    once as `data.clips_per_decode` clips (the LR schedule's and the data position's unit)."""
    if cfg.train.steps_per_epoch is not None:
        return cfg.train.steps_per_epoch
    clips = count_samples(cfg.data.train_shards) * cfg.data.clips_per_decode
    steps = clips // train_batch_size
    if steps == 0:
        raise ConfigError(
            f"deepspeed.train_batch_size ({train_batch_size}) exceeds the {clips} training clips "
            f"of an epoch (data.train_shards × data.clips_per_decode); lower it or set "
            f"train.steps_per_epoch"
        )
    return steps


def _build_model(cfg: Config, parent: Any = None) -> nn.Module:
    """Seeded; `parent`: model.init_from's weights (`frozen.build`, what checkpoint readers
    rebuild too)."""
    model = frozen.build(cfg, parent)
    if cfg.train.activation_checkpointing:
        # Per block, torch's non-reentrant checkpoint: it works with frozen inputs (reentrant
        # checkpoint drops grads when no input requires grad), with ZeRO-3's parameter hooks
        # and with kwargs; recomputation costs one extra block forward.
        apply_activation_checkpointing(model, cfg.train.activation_checkpointing_every)
    return model


def check_before_launch(cfg: Config, world_size: int) -> dict[str, Any]:
    """Everything that can fail without a process group: config, batch identity, data, MLflow."""
    ds_config = parallel.deepspeed_config(cfg, world_size)
    for field in ("train_shards", "val_shards"):
        pattern = getattr(cfg.data, field)
        expand_shards(pattern, field=f"data.{field}")  # names the field when nothing matches
        count_samples(pattern)  # needs manifest.json beside the shards
    steps_per_epoch(cfg, ds_config["train_batch_size"])
    _check_classes(cfg)
    if cfg.tracking.enabled:  # a local artifact folder with a server: ConfigError
        tracking.artifact_location(cfg, tracking.tracking_uri(cfg))
    return ds_config


def _check_classes(cfg: Config) -> None:
    """The head must have a logit for every class of the shards, and, when the run registers
    its model (which names every class), exactly one: found at the end, after hours of
    training, the registration itself failed on it."""
    classes = read_manifest(cfg.data.train_shards).get("classes") or []
    heads, registers = cfg.model.num_classes, cfg.tracking.enabled and cfg.tracking.register_model
    if len(classes) > heads or (registers and classes and len(classes) != heads):
        shown = ", ".join(classes[:3]) + (", …" if len(classes) > 3 else "")
        unless = "" if len(classes) > heads else " (or tracking.register_model=false)"
        raise ConfigError(
            f"model.num_classes is {heads}, but data.train_shards' manifest lists "
            f"{len(classes)} classes ({shown}); set model.num_classes={len(classes)}{unless}"
        )


EpochHook = Callable[[int, dict[str, float], Path], None]


def train(
    cfg: Config,
    *,
    resume: bool = False,
    resume_from: Path | None = None,
    on_epoch: EpochHook | None = None,
    mlflow_parent_run_id: str | None = None,
) -> TrainResult:
    """Train `cfg` on this process's rank; returns the final metrics (same on every rank).

    Without `resume` (or `resume_from`), a `train.output_dir` that holds a committed
    checkpoint stops every rank with a `ConfigError` before anything is written.

    `resume_from` resumes from that checkpoint folder (a Ray Train checkpoint that every rank
    reads in place) instead of `train.output_dir/checkpoints`, where new checkpoints still go.
    `on_epoch(epoch, val_metrics, checkpoint)` runs on every rank after every evaluation,
    once a checkpoint of that point is saved; the last epoch's only after the merge (on rank 0,
    once ``merged.pt`` is written): Ray Tune stops a trial as soon as it reports its last
    epoch, ending its processes, so nothing may be left to do then. `checkpoint` is that save's
    tag folder (`checkpoints/stepN`), named here because another rank's `latest` file may not be
    written yet, or not be on this node's disk at all (Ray Tune and Ray Train report and
    checkpoint through it; Ray Train needs every worker to report); `mlflow_parent_run_id`
    nests this run under a search's run.
    """
    world_size = parallel.world_size_from_env()
    ds_config = check_before_launch(cfg, world_size)
    source = Path(resume_from) if resume_from is not None else train_state.checkpoint_dir(cfg)
    resume = resume or resume_from is not None
    state = train_state.TrainState(world_size, ds_config["train_batch_size"])
    timeout_s = cfg.train.dist_timeout_s
    with (
        parallel.process_group(timeout_s) as info,  # left after a successful run only
        liveness.watched(info.rank, info.world_size, timeout_s),
    ):
        resumed = None
        if resume:
            resumed, state = train_state.resume_point(cfg, info, source, ds_config)
        else:  # a fresh run into a folder that holds one: every rank stops, nothing written
            train_state.refuse_overwrite(cfg, info)
        tracker = None
        if info.rank == 0 and cfg.tracking.enabled:
            tracker = tracking.Tracker(
                cfg,
                world_size=world_size,
                run_id=state.run_id,
                parent_run_id=mlflow_parent_run_id or cfg.tracking.parent_run_id,
            )
            state.run_id = tracker.run_id
        with tracking.run_ends_with(tracker):
            return _train(cfg, info, ds_config, tracker, state, resumed, on_epoch)


@dataclass(kw_only=True)
class _Run:
    """What the parts of the loop share, built once by `_train`."""

    cfg: Config
    info: parallel.DistInfo
    ds_config: dict[str, Any]
    steps_per_epoch: int
    engine: Any
    task: tasks.Task
    tracker: Any
    state: train_state.TrainState  # where the run stands; saved with every checkpoint
    records: run_log.RunLog
    ckpts: train_state.Checkpoints
    device: torch.device


def _train(
    cfg: Config,
    info: parallel.DistInfo,
    ds_config: dict[str, Any],
    tracker: Any,
    state: train_state.TrainState,
    resumed: train_state.Resume | None,
    on_epoch: EpochHook | None,
) -> TrainResult:
    """Epochs from where `state` stands, each followed by an evaluation every
    `train.eval_every_epochs` (and after the last); then the final checkpoint and the merge."""
    per_epoch = steps_per_epoch(cfg, ds_config["train_batch_size"])
    if info.rank == 0:
        _record_start(cfg, info, ds_config, per_epoch)
    engine = _engine(cfg, ds_config, per_epoch, resumed, tracker, state)
    if resumed is not None:  # weights, optimizer, schedule, this rank's RNG
        train_state.restore(engine, resumed, cfg.train.seed, state, info)
    ckpts = train_state.Checkpoints(engine, cfg, state, info.rank, resumed)
    task = tasks.task_for(cfg)  # classification or detection: loss, batches, evaluation
    with contextlib.closing(run_log.RunLog(cfg, info, state.metrics_bytes)) as records:
        run = _Run(
            cfg=cfg,
            info=info,
            ds_config=ds_config,
            steps_per_epoch=per_epoch,
            engine=engine,
            task=task,
            tracker=tracker,
            state=state,
            records=records,
            ckpts=ckpts,
            device=parallel.device(),
        )
        result = None
        bar = logs.progress(
            total=per_epoch * cfg.train.epochs,
            initial=state.global_step,
            disable=info.rank != 0,
            desc="train",
            logger=log,
        )
        engine.train()
        for epoch in range(state.epoch, cfg.train.epochs):
            _train_epoch(run, epoch, bar)
            if (epoch + 1) % cfg.train.eval_every_epochs == 0 or epoch + 1 == cfg.train.epochs:
                result = _evaluate(run)
                if state.best_score is None or result.score > state.best_score:
                    # a new best is checkpointed, and that checkpoint is never pruned
                    state.best_score, state.best_step = result.score, state.global_step
                    ckpts.ensure(state.global_step)
                if on_epoch is not None and epoch + 1 < cfg.train.epochs:
                    saved = ckpts.ensure(state.global_step)
                    on_epoch(epoch + 1, result.as_metrics(), saved)
        bar.close()
        saved = ckpts.ensure(state.global_step)
        report_last = on_epoch is not None and result is not None  # this call ran the last epoch
        if result is None:  # resumed after the final eval was already done
            result = _evaluate(run)
    model_uri = release.release_trained(engine, cfg, tracker, result.score)
    if report_last:  # after the merge: Tune ends a trial at its last report, killing the merge
        on_epoch(cfg.train.epochs, result.as_metrics(), saved)
    out = Path(cfg.train.output_dir)
    return TrainResult(
        state.global_step, model_uri=model_uri, output_dir=out, **task.result_fields(result)
    )


def _record_start(cfg: Config, info: parallel.DistInfo, ds: dict[str, Any], per_epoch: int) -> None:
    """Rank 0: the resolved config beside the run's outputs, and the shape of the job."""
    out = Path(cfg.train.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config_lib.to_dict(cfg), indent=2))
    log.info(
        "%d processes on %s; %d steps/epoch × %d epochs, batch %d = %d × %d × %d clips, "
        "%d clips per decoded video",
        *(info.world_size, parallel.device(), per_epoch, cfg.train.epochs, ds["train_batch_size"]),
        *(ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"], info.world_size),
        cfg.data.clips_per_decode,
    )


def _engine(
    cfg: Config,
    ds_config: dict[str, Any],
    per_epoch: int,
    resumed: train_state.Resume | None,
    tracker: Any,
    state: train_state.TrainState,
) -> Any:
    """The DeepSpeed engine of the model built from `cfg`, from `model.init_from`'s parent
    if any; configured to load `resumed` (which `train_state.restore` then does).

    The frozen backbone's fingerprint goes into `state` (saved with every checkpoint), after
    a resume only once it matches the checkpoint's: taken here, on the model as built, because
    ZeRO-3 partitions it and bf16 casts it once the engine wraps it.
    """

    parent = load_parent(cfg)
    if parent is not None and tracker is not None:
        tracker.set_lineage(parent.lineage)
    model = _build_model(cfg, parent)
    del parent  # its weights are in the model: not held twice while the engine is built
    built = frozen.fingerprint(model, cfg)
    frozen.agree(built, parallel.world_size_from_env())
    if resumed is not None:
        frozen.check(state.frozen_backbone, built, f"checkpoint {resumed.source / resumed.tag}")
    state.frozen_backbone = built
    if resumed is not None:
        ds_config = resumed.engine_config(ds_config)
    return parallel.build_engine(model, cfg, ds_config, per_epoch * cfg.train.epochs, per_epoch)


def _train_epoch(run: _Run, epoch: int, bar: Any) -> None:
    """`epoch` from where `run.state` stands (mid-epoch after a resume), a checkpoint every
    `train.checkpoint_every_steps`; every optimizer step moves the state along."""
    cfg, state, engine, task = run.cfg, run.state, run.engine, run.task
    micro = run.ds_config["train_micro_batch_size_per_gpu"]
    accum = run.ds_config["gradient_accumulation_steps"]
    layout = Layout(run.info.world_size, max(cfg.data.num_workers, 1), micro)
    first = state.step_in_epoch * accum  # micro-batches already played; 0 at a new epoch
    clips = run.steps_per_epoch * run.ds_config["train_batch_size"]  # positions of the order
    at = position.start(state.position, first, layout, clips, cfg.data.clips_per_decode)
    loader = build_train_loader(
        cfg,
        rank=run.info.rank,
        world_size=run.info.world_size,
        epoch=epoch,
        micro_batch_size=micro,
        num_batches=layout.batches(at.segments),
        skip_batches=at.batches,
        segments=at.segments,
        device=run.device,
    )
    dtype, step = parallel.input_dtype(run.ds_config), state.global_step
    losses = step_losses.StepLosses(parallel.step_guard(engine), run.info.world_size)
    speed = run_log.Throughput(run.device)
    for micro_index, micro_batch in enumerate(rng.outside_training_rng(loader), start=first):
        run.records.sample_keys({"epoch": epoch, "step": step + 1, "keys": micro_batch[2]})
        lr = engine.get_lr()[0]
        inputs, targets = task.unpack(micro_batch, run.device, dtype)
        train_step(engine, task.criterion, inputs, targets, losses)
        speed.add(len(inputs[0]) * run.info.world_size)
        if (micro_index + 1) % accum:
            continue
        step += 1
        state.epoch, state.global_step = epoch, step
        state.step_in_epoch = (micro_index + 1) // accum
        state.position = at.played(at.batches + micro_index + 1 - first)
        bar.update()
        losses.record({"step": step, "epoch": epoch, "lr": lr})
        logged = step % cfg.train.log_every_steps == 0
        saving = step % cfg.train.checkpoint_every_steps == 0
        if logged or saving:  # the only host sync of the loop; a checkpoint holds its metrics
            _write_losses(run, losses, (speed, bar) if logged else None)
        if saving:
            run.ckpts.save(step)
    _write_losses(run, losses, None)
    state.epoch, state.step_in_epoch, state.position = epoch + 1, 0, None


def _write_losses(
    run: _Run, losses: step_losses.StepLosses, shown: tuple[run_log.Throughput, Any] | None
) -> None:
    """The steps' records since the last write, read from the device (a host sync; every
    rank); stops every rank at the first non-finite loss. `shown` (speed, progress bar), every
    log_every_steps: the last record gets clips/s and memory, and goes to the bar and MLflow."""
    records, bad = losses.flush()
    if shown is not None and records and bad is None:
        speed, bar = shown
        record = records[-1]
        record.update(speed.measure())
        bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}")
        if run.tracker is not None:
            run.tracker.log_metrics(
                {f"train/{k}": v for k, v in record.items() if k not in ("step", "epoch")},
                record["step"],
            )
    for record in records:
        run.records.metric(record)
    if bad is not None:
        raise NonFiniteLossError(f"{bad}; stopping, {run.ckpts.last_good()}")


@torch.random.fork_rng(devices=[])  # evaluation leaves the training RNG untouched
def _evaluate(run: _Run) -> Any:
    """Every rank scores its share of `data.val_shards`; rank 0 logs the metrics."""
    step, rank0 = run.state.global_step, run.info.rank == 0
    run.engine.eval()
    loader = build_eval_loader(
        run.cfg,
        rank=run.info.rank,
        world_size=run.info.world_size,
        batch_size=run.cfg.data.eval_batch_size,
    )
    result = run.task.evaluate(
        run.engine,
        run.records.logging_keys(loader, {"eval_at_step": step}),
        device=run.device,
        dtype=parallel.input_dtype(run.ds_config),
        lockstep=parallel.zero_stage(run.engine) == 3,
        progress=rank0,
    )
    run.engine.train()
    if rank0:
        metrics = result.as_metrics()
        shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
        log.info("step %d: %s (%d %s)", step, shown, result.count, result.counted)
        run.records.metric({"step": step, **metrics})
        if run.tracker is not None:
            run.tracker.log_metrics(metrics, step)
            classes = read_manifest(run.cfg.data.train_shards)["classes"]
            run.task.log_extras(run.tracker, result, classes, step)
    return result


def train_step(
    engine: Any,
    criterion: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    targets: torch.Tensor,
    losses: step_losses.StepLosses,
) -> None:
    """One micro-step, with no host synchronisation: forward, backward, and DeepSpeed's step,
    which updates the weights at the end of each accumulation unless a rank's loss was not
    finite (`step_losses`: the check stays on the device; the loop reads the losses, and stops,
    every train.log_every_steps). `inputs`: the forward's arguments, (clips,) or, for
    detection, (clips, person boxes)."""
    loss = criterion(engine(*inputs), targets)
    losses.add(loss)
    engine.backward(loss)
    if engine.is_gradient_accumulation_boundary():
        losses.end_step()  # before the optimizer step: every rank's losses, on the device
    engine.step()
