"""The train / eval loop: DeepSpeed steps, periodic multi-view eval, checkpoints, exact resume.

Read top to bottom: checks that can fail fast run before any process group exists, then a
resumed checkpoint is verified (the ranks share the hashing), the model is built, wrapped,
optionally restored, trained epoch by epoch, evaluated, checkpointed and finally merged and
registered (rank 0). Resume is exact: the data loader is a pure
function of (seed, epoch, rank, world size) and skips the batches already consumed, the
scheduler lives in the DeepSpeed checkpoint, and every rank's RNG state is saved beside it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import torch
import torch.distributed as dist
from torch import nn

from zeroi2v import config as config_lib
from zeroi2v import logs
from zeroi2v.config import Config
from zeroi2v.data.order import Layout
from zeroi2v.data.pipeline import (
    build_eval_loader,
    build_train_loader,
    count_samples,
    read_manifest,
)
from zeroi2v.data.shards import expand_shards
from zeroi2v.engine import (
    ckpt_integrity,
    liveness,
    parallel,
    position,
    release,
    rng,
    tasks,
    tracking,
    train_state,
)
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
    if cfg.train.steps_per_epoch is not None:
        return cfg.train.steps_per_epoch
    steps = count_samples(cfg.data.train_shards) // train_batch_size
    if steps == 0:
        raise ConfigError(
            f"deepspeed.train_batch_size ({train_batch_size}) exceeds the number of training "
            f"samples in data.train_shards; lower it or set train.steps_per_epoch"
        )
    return steps


def _memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return psutil.Process().memory_info().rss / 2**20


def _all_finite(tensors: list[torch.Tensor], device: torch.device) -> bool:
    """True on every rank iff every rank's tensors are finite (one all_reduce)."""
    bad = sum(int(not torch.isfinite(t).all()) for t in tensors if t.numel())
    flag = torch.tensor([float(bad)], device=device)
    dist.all_reduce(flag)
    return flag.item() == 0


def _build_model(cfg: Config, parent: Any = None) -> nn.Module:
    from zeroi2v import build_model

    model = build_model(cfg)
    if parent is not None:  # model.init_from: the parent's weights (engine/transfer.py)
        from zeroi2v.engine.transfer import initialise_from

        initialise_from(model, parent, cfg)
    if cfg.train.activation_checkpointing:
        # Per block, torch's non-reentrant checkpoint: it works with frozen inputs (reentrant
        # checkpoint drops grads when no input requires grad), with ZeRO-3's parameter hooks
        # and with kwargs; recomputation costs one extra block forward.
        from zeroi2v.engine.checkpointing import apply_activation_checkpointing

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
    if cfg.tracking.enabled:
        from zeroi2v.engine.tracking import artifact_location, tracking_uri

        artifact_location(cfg, tracking_uri(cfg))  # a local folder with a server: ConfigError
    return ds_config


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

    `resume_from` resumes from that checkpoint folder (a Ray Train checkpoint that every rank
    reads in place) instead of `train.output_dir/checkpoints`, where new checkpoints still go.
    `on_epoch(epoch, val_metrics, checkpoint)` runs on every rank after every evaluation,
    once a checkpoint of that point is saved; `checkpoint` is that save's tag folder
    (`checkpoints/stepN`), named here because another rank's `latest` file may not be
    written yet, or not be on this node's disk at all (Ray Tune and Ray Train report and
    checkpoint through it; Ray Train needs every worker to report); `mlflow_parent_run_id`
    nests this run under a search's run.
    """
    world_size = parallel.world_size_from_env()
    ds_config = check_before_launch(cfg, world_size)
    out = Path(cfg.train.output_dir)
    ckpt_dir = out / "checkpoints"
    source = Path(resume_from) if resume_from is not None else ckpt_dir
    resume = resume or resume_from is not None
    client: dict[str, Any] = {
        "epoch": 0,
        "step_in_epoch": 0,
        "global_step": 0,
        "best_top1": None,
        "run_id": None,
        "world_size": world_size,
        "train_batch_size": ds_config["train_batch_size"],
        "position": None,  # within the epoch; None at its start
    }
    info = parallel.init_distributed(timeout_s=cfg.train.dist_timeout_s)
    with liveness.watched(info.rank, info.world_size, cfg.train.dist_timeout_s):
        resumed = _verified_resume(cfg, info, source, client, ds_config) if resume else None
        tracker = None
        if info.rank == 0 and cfg.tracking.enabled:
            tracker = tracking.Tracker(
                cfg,
                world_size=world_size,
                run_id=client["run_id"],
                parent_run_id=mlflow_parent_run_id or cfg.tracking.parent_run_id,
            )
            client["run_id"] = tracker.run_id
        with tracking.run_ends_with(tracker):
            return _train(
                cfg, info, ds_config, tracker, client, resumed, source, ckpt_dir, on_epoch
            )


def _verified_resume(
    cfg: Config,
    info: parallel.DistInfo,
    source: Path,
    client: dict[str, Any],
    ds_config: dict[str, Any],
) -> tuple[str, int]:
    """The checkpoint to resume from, verified (sizes, sha256) before anything in it is loaded;
    every rank hashes a share of its files and all agree on the verdict, so each file is read
    once, not once per rank. Updates `client` from it; returns (its tag, the world size that
    wrote it)."""
    point = ckpt_integrity.job_resume_point(
        source, cfg.train.on_damaged_checkpoint, info.rank, info.world_size
    )
    if point.note and info.rank == 0:
        log.warning(point.note)
    client.update(train_state.load_client(source / point.tag))
    position.check_global_batch(point.tag, client, ds_config)
    saved_world, client["world_size"] = client["world_size"], info.world_size
    return point.tag, saved_world


def _train(
    cfg: Config,
    info: parallel.DistInfo,
    ds_config: dict[str, Any],
    tracker: Any,
    client: dict[str, Any],
    resumed: tuple[str, int] | None,
    source: Path,
    ckpt_dir: Path,
    on_epoch: EpochHook | None = None,
) -> TrainResult:
    """`resumed`: (checkpoint tag, world size that wrote it), or None for a fresh run."""
    rank0, device = info.rank == 0, parallel.device()
    dtype = parallel.input_dtype(ds_config)
    micro, accum = (
        ds_config["train_micro_batch_size_per_gpu"],
        ds_config["gradient_accumulation_steps"],
    )
    batch = ds_config["train_batch_size"]
    per_epoch = steps_per_epoch(cfg, batch)
    total_steps = per_epoch * cfg.train.epochs
    out = Path(cfg.train.output_dir)
    if rank0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(config_lib.to_dict(cfg), indent=2))
        log.info(
            "%d processes on %s; %d steps/epoch × %d epochs, batch %d = %d × %d × %d",
            info.world_size,
            device,
            per_epoch,
            cfg.train.epochs,
            batch,
            micro,
            accum,
            info.world_size,
        )

    from zeroi2v.engine.transfer import load_parent

    parent = load_parent(cfg)
    if parent is not None and tracker is not None:
        tracker.set_lineage(parent.lineage)
    torch.manual_seed(cfg.train.seed)
    tag = resumed[0] if resumed is not None else None
    resharded = resumed is not None and resumed[1] != info.world_size
    load_dir, load_tag = source, tag
    if resharded and ds_config.get("zero_optimization", {}).get("stage", 0) > 0:
        # ZeRO partitions belong to the old world size: load DeepSpeed's universal form instead
        # (stage 0 keeps the whole optimizer state in the model-states file: it loads as is)
        ds_config = parallel.universal_config(ds_config)
        load_dir, load_tag = parallel.to_universal(source, tag, info.rank == 0)
    model = _build_model(cfg, parent)
    del parent
    engine = parallel.build_engine(model, cfg, ds_config, total_steps, per_epoch)
    if tag is not None:
        parallel.load_checkpoint(engine, load_dir, load_tag)
        if resharded:  # no RNG state of this rank was saved; dropout masks change from here on
            torch.manual_seed(cfg.train.seed + 1000 * client["global_step"] + info.rank)
        else:
            rng.load(source / tag / rng.file_name(info.rank))
        if rank0:
            log.info(
                "Resumed from %s/%s at epoch %d, step %d (written by %d processes, now %d)",
                source,
                tag,
                client["epoch"],
                client["global_step"],
                resumed[1],
                info.world_size,
            )
    keys_log = _sample_key_log(cfg, info) if cfg.train.log_sample_keys else None
    task = tasks.task_for(cfg)  # classification or detection: loss, batches, evaluation
    classes = read_manifest(cfg.data.train_shards)["classes"]
    log_file = _open_metrics_log(out / "metrics.jsonl", client.get("metrics_bytes"), rank0)
    last_saved = tag

    def save(step: int) -> None:
        nonlocal last_saved
        if not _all_finite(parallel.local_params(engine), device):
            raise NonFiniteLossError(
                f"weights became non-finite at step {step}; not saving them, the last good "
                f"checkpoint is {last_saved or 'none'} in {ckpt_dir}"
            )
        name = ckpt_integrity.tag_for(step)
        if rank0:
            ckpt_integrity.prepare_folder(ckpt_dir, step)
            # a resume cuts metrics.jsonl back to what was logged up to here
            client["metrics_bytes"] = (out / "metrics.jsonl").stat().st_size
            train_state.save_client(ckpt_dir / name, client)
        dist.barrier()
        rng.save(ckpt_dir / name / rng.file_name(info.rank))
        parallel.save_checkpoint(engine, ckpt_dir, name, client)  # ends with a barrier
        if rank0:  # every rank's files exist: manifest, then `latest`, then pruning
            ckpt_integrity.commit(ckpt_dir, step, cfg.train.keep_checkpoints)
        last_saved = name

    @torch.random.fork_rng(devices=[])  # evaluation leaves the training RNG untouched
    def run_eval(step: int) -> Any:
        engine.eval()
        loader = build_eval_loader(
            cfg, rank=info.rank, world_size=info.world_size, batch_size=cfg.data.eval_batch_size
        )
        if keys_log is not None:
            loader = _logging_keys(loader, keys_log, {"eval_at_step": step})
        res = task.evaluate(
            engine,
            loader,
            device=device,
            dtype=dtype,
            lockstep=parallel.zero_stage(engine) == 3,
            progress=rank0,
        )
        engine.train()
        if rank0:
            shown = ", ".join(f"{k} {v:.4f}" for k, v in res.as_metrics().items())
            log.info("step %d: %s (%d clips)", step, shown, res.count)
            _write(log_file, {"step": step, **res.as_metrics()})
            if tracker is not None:
                tracker.log_metrics(res.as_metrics(), step)
                task.log_extras(tracker, res, classes, step)
        return res

    step = client["global_step"]
    result = None
    bar = logs.progress(
        total=total_steps, initial=step, disable=not rank0, desc="train", logger=log
    )
    engine.train()
    layout = Layout(info.world_size, max(cfg.data.num_workers, 1), micro)
    for epoch in range(client["epoch"], cfg.train.epochs):
        first = client["step_in_epoch"] * accum if epoch == client["epoch"] else 0
        if first and client["position"]:
            at = position.resume(client["position"], layout)
        else:  # a new epoch (or a checkpoint from before positions were saved: same layout)
            at = {**position.new_epoch(layout, per_epoch * batch), "batches": first}
        loader = build_train_loader(
            cfg,
            rank=info.rank,
            world_size=info.world_size,
            epoch=epoch,
            micro_batch_size=micro,
            num_batches=layout.batches(at["segments"]),
            skip_batches=at["batches"],
            segments=at["segments"],
            device=device,
        )
        losses, tick, clips_seen = [], time.perf_counter(), 0
        batches = rng.outside_training_rng(loader)
        for micro_index, micro_batch in enumerate(batches, start=first):
            if keys_log is not None:
                _write(keys_log, {"epoch": epoch, "step": step + 1, "keys": micro_batch[2]})
            lr = engine.get_lr()[0]
            inputs, targets = task.unpack(micro_batch, device, dtype)
            loss = train_step(engine, task.criterion, inputs, targets)
            if not math.isfinite(loss):
                raise NonFiniteLossError(
                    f"loss is {loss} at step {step + 1} (epoch {epoch}); stopping, the last "
                    f"good checkpoint is {last_saved or 'none'} in {ckpt_dir}"
                )
            losses.append(loss)
            clips_seen += len(inputs[0]) * info.world_size
            if (micro_index + 1) % accum:
                continue
            step += 1
            played = at["batches"] + micro_index + 1 - first
            client.update(
                epoch=epoch,
                step_in_epoch=(micro_index + 1) // accum,
                global_step=step,
                position={**at, "batches": played},
            )
            bar.update()
            record = {"step": step, "epoch": epoch, "loss": sum(losses[-accum:]) / accum, "lr": lr}
            if step % cfg.train.log_every_steps == 0:
                elapsed = time.perf_counter() - tick
                record.update(
                    {"clips_per_s": clips_seen / elapsed, "memory_mb": _memory_mb(device)}
                )
                tick, clips_seen = time.perf_counter(), 0
                bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{lr:.2e}")
                if tracker is not None:
                    tracker.log_metrics(
                        {f"train/{k}": v for k, v in record.items() if k not in ("step", "epoch")},
                        step,
                    )
            if rank0:
                _write(log_file, record)  # with clips/s and memory every log_every_steps
            if step % cfg.train.checkpoint_every_steps == 0:
                save(step)
        client.update(epoch=epoch + 1, step_in_epoch=0, position=None)
        last = epoch + 1 == cfg.train.epochs
        if (epoch + 1) % cfg.train.eval_every_epochs == 0 or last:
            result = run_eval(step)
            if client["best_top1"] is None or result.score > client["best_top1"]:
                client["best_top1"] = result.score  # mAP for detection
            if on_epoch is not None:
                if last_saved != f"step{step}":
                    save(step)
                on_epoch(epoch + 1, result.as_metrics(), ckpt_dir / last_saved)
    bar.close()
    if last_saved != f"step{step}":
        save(step)
    if result is None:  # resumed after the final eval was already done
        result = run_eval(step)
    model_uri = _finish(engine, cfg, tracker, result, info.rank, device)
    for handle in (log_file, keys_log):
        if handle is not None:
            handle.close()
    return TrainResult(step, model_uri=model_uri, output_dir=out, **task.result_fields(result))


def train_step(
    engine: Any, criterion: nn.Module, inputs: tuple[torch.Tensor, ...], targets: torch.Tensor
) -> float:
    """One micro-step; returns the loss averaged over ranks (the same value on every rank, so a
    non-finite loss stops all ranks together, before its gradients touch the weights).
    `inputs`: the forward's arguments, (clips,) or, for detection, (clips, person boxes)."""
    loss = criterion(engine(*inputs), targets)
    reduced = loss.detach().float().clone()
    dist.all_reduce(reduced)
    reduced = reduced.item() / dist.get_world_size()
    if math.isfinite(reduced):
        engine.backward(loss)
        engine.step()
    return reduced


def _sample_key_log(cfg: Config, info: parallel.DistInfo) -> Any:
    """`train.log_sample_keys`: which rank (of which node) played which samples, one file per
    rank, appended across resumes; a header line per launch says who this rank is."""
    folder = Path(cfg.train.output_dir) / "sample_keys"
    folder.mkdir(parents=True, exist_ok=True)
    handle = (folder / f"rank{info.rank}.jsonl").open("a")
    _write(handle, {"launch": parallel.describe_rank(info)})
    return handle


def _logging_keys(loader: Iterable[Any], handle: Any, record: dict[str, Any]) -> Iterator[Any]:
    for batch in loader:
        _write(handle, {**record, "keys": list(batch[2])})
        yield batch


def _open_metrics_log(path: Path, committed_bytes: int | None, rank0: bool) -> Any:
    """Rank 0: metrics.jsonl for appending; on resume first cut back to what the checkpoint had
    logged, so the steps between that checkpoint and a crash are not recorded twice."""
    if not rank0:
        return None
    if committed_bytes is not None and path.is_file() and path.stat().st_size > committed_bytes:
        os.truncate(path, committed_bytes)
    return path.open("a")


def _write(handle: Any, record: dict[str, Any]) -> None:
    handle.write(json.dumps(record) + "\n")
    handle.flush()


def _finish(
    engine: Any,
    cfg: Config,
    tracker: Any,
    result: Any,
    rank: int,
    device: torch.device,
) -> str | None:
    """Rank 0: rebuild the trained model in fp32, merge it, check the merge, register it."""
    state = parallel.full_state_dict(engine)  # collective (ZeRO-3 gathers)
    if rank != 0:
        return None
    model = release.unmerged_from_state_dict(cfg, state)
    example = release.example_clips(cfg)
    merged = release.merge_checked(model, example)
    saved = release.save_merged(merged, cfg, Path(cfg.train.output_dir) / "merged.pt")
    if tracker is None:
        return None
    classes = read_manifest(cfg.data.train_shards)["classes"]
    return tracker.log_model(merged, example[:1], result.score, classes, saved=saved)
