"""One trial of a search: the training of `launch/train.py` with this trial's overrides.

`tune.workers_per_trial` picks the shape. With 1 (the default), `trainable` calls the trainer
in the Tune trial's own process (world size 1) and reports to Tune. With N > 1,
`train_driver` is the Tune trial: it launches a Ray Train `TorchTrainer` of N workers, each
one DeepSpeed rank running the same `zeroi2v.engine.trainer.train` (Ray Train has already
created the process group and set RANK / WORLD_SIZE / MASTER_ADDR, which the trainer and
DeepSpeed read), and Ray Train's `TuneReportCallback` forwards rank 0's per-epoch metrics to
Tune, where ASHA sees them.

Checkpoints: every evaluation is followed by a DeepSpeed checkpoint, which the epoch hook
hands to Ray. One worker sends the whole tag; with N workers each rank sends the files it
wrote (`rng_rank{r}.pt`, `zero_pp_rank_{r}_*`; rank 0 also the model states, `client.pt`
and `latest`), and Ray merges them into one checkpoint in `tune.storage_path`, so no file
needs to be on a disk that other nodes see. The folder a worker hands over holds hard links
to the trainer's files, so Ray's upload is the only copy made. A retry (a crashed worker: Ray
Train's FailureConfig; a crashed trial or `Tuner.restore`: Tune's) resumes from that
checkpoint and continues the same MLflow run (its id is in `client.pt`).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from zeroi2v import config as config_lib
from zeroi2v import logs
from zeroi2v.config import Config
from zeroi2v.engine.ckpt_integrity import last_committed
from zeroi2v.tune.allocation import trial_overrides

FAULT_ENV = "ZEROI2V_TUNE_FAULT_FILE"  # tests only: a trial/worker deletes this file, raises once
CKPT = "deepspeed"  # the trainer's checkpoint folder inside a Ray checkpoint
DRIVER_RESOURCES = {"cpu": 0, "memory": 256 * 2**20}  # a Ray Train driver mostly waits
_RANK_FILE = re.compile(r"(?:zero_pp_rank_|rng_rank)(\d+)")


def _maybe_inject_fault() -> None:
    """Test hook: the first trial (or worker) to find $ZEROI2V_TUNE_FAULT_FILE removes it and
    crashes."""
    path = os.environ.get(FAULT_ENV)
    if not path:
        return
    try:
        os.remove(path)
    except FileNotFoundError:
        return
    raise RuntimeError(f"injected fault ({FAULT_ENV}={path})")


def trial_config(
    base: Mapping[str, Any], point: Mapping[str, Any], trial_id: str
) -> tuple[Config, Path]:
    """The trial's config and output folder; a bad point fails here, like a CLI typo.

    The trainer's files (its checkpoints, merged.pt) stay on the node, one folder per trial;
    Ray keeps the copies a retry on any node resumes from.
    """
    output_dir = Path(base["train"]["output_dir"]) / trial_id
    overrides = trial_overrides(point, base)
    overrides.update({"train.output_dir": str(output_dir), "tracking.register_model": False})
    return config_lib.from_dict(base, overrides), output_dir


def tag_run(trial_name: str, trial_id: str, params: Mapping[str, Any]) -> str:
    """Name the trainer's MLflow run after the trial and log the trial's shape; its id or ''."""
    import mlflow  # lazy: MLflow ([train]/[serve] extra)

    run = mlflow.active_run()  # the trainer's run (None when tracking is off)
    if run is None:
        return ""
    mlflow.set_tags({"mlflow.runName": trial_name, "ray.trial_id": trial_id})
    mlflow.log_params(dict(params))  # the same values again on later epochs: allowed
    return run.info.run_id


# ---------------------------------------------------------------- one process per trial


def trainable(trial_config_: dict[str, Any], *, base: dict[str, Any], parent_run_id: str | None):
    """Ray function trainable: the training of `launch/train.py` with this trial's overrides."""
    # lazy: torch (this module stays torch-free); Ray ([tune] extra)
    import torch
    from ray import tune

    from zeroi2v.engine.parallel import select_accelerator
    from zeroi2v.engine.trainer import train

    logs.quiet_third_party()  # a trial runs in a Ray worker, not under a launch script
    context = tune.get_context()
    cfg, output_dir = trial_config(base, trial_config_, context.get_trial_id())
    cpus = context.get_trial_resources().required_resources.get("CPU", 1)
    torch.set_num_threads(max(1, int(cpus)))
    select_accelerator()

    checkpoints = output_dir / "checkpoints"
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:  # retried or restored: continue from Ray's copy
        with checkpoint.as_directory() as directory:
            shutil.rmtree(checkpoints, ignore_errors=True)
            shutil.copytree(Path(directory) / CKPT, checkpoints)
    # Without a Ray checkpoint, a retry still resumes from the trainer's own (same MLflow run).
    resume = last_committed(checkpoints) is not None

    def on_epoch(epoch: int, metrics: dict[str, float], saved: Path) -> None:
        run_id = tag_run(context.get_trial_name(), context.get_trial_id(), {"world_size": 1})
        # Only the latest tag goes to Ray, its files hard-linked (`stage_rank_files`). Ray may
        # upload after `report` returns, so a staged folder lives until the next one is reported.
        staging = output_dir / "ray_checkpoints" / f"epoch{epoch:04d}"
        shutil.rmtree(staging, ignore_errors=True)
        stage_rank_files(saved, staging / CKPT, rank=0, world_size=1)
        report = {**metrics, "epoch": epoch, "mlflow_run_id": run_id}
        tune.report(report, checkpoint=tune.Checkpoint.from_directory(staging))
        for old in staging.parent.glob("epoch*"):
            if old.name < f"epoch{epoch - 1:04d}":
                shutil.rmtree(old, ignore_errors=True)
        _maybe_inject_fault()

    train(cfg, resume=resume, on_epoch=on_epoch, mlflow_parent_run_id=parent_run_id)


# ---------------------------------------------------------------- a Ray Train job per trial


def train_driver(
    trial_config_: dict[str, Any],
    *,
    base: dict[str, Any],
    parent_run_id: str | None,
    workers: int,
    worker_resources: dict[str, float],
    storage: str,
    max_failures: int,
) -> None:
    """Tune function trainable for `workers_per_trial` > 1: one Ray Train job per trial.

    The job is named after the trial and stored under the trial's folder, so a restarted
    trial (Tune retry, `Tuner.restore`) finds and restores the same job.
    """
    # lazy: Ray ([tune] extra)
    import ray.train
    from ray import tune
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    context = tune.get_context()
    trial_id = context.get_trial_id()
    loop_config = {
        "base": base,
        "point": trial_config_,
        "parent_run_id": parent_run_id,
        "trial_id": trial_id,
        "trial_name": context.get_trial_name(),
        "cpus": worker_resources.get("CPU", 1),
    }
    trainer = TorchTrainer(
        worker_loop,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=workers,
            use_gpu=worker_resources.get("GPU", 0) > 0,
            resources_per_worker=worker_resources,
        ),
        run_config=ray.train.RunConfig(
            name="ray_train",
            storage_path=f"{storage.rstrip('/')}/{trial_id}",
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
            callbacks=[TuneReportCallback()],
        ),
    )
    trainer.fit()


def stage_rank_files(saved: Path, dest: Path, rank: int, world_size: int) -> int:
    """Put the files of checkpoint tag folder `saved` that `rank` wrote into `dest/<tag>`;
    rank 0 also the shared ones and a `latest` naming the tag. Returns the bytes copied.

    Ray uploads a whole folder, so this rank's files need one of their own, but not a copy:
    they are hard-linked where `dest` is on the same filesystem (a committed tag's files are
    never written again: a new save writes a new folder, pruning only unlinks), and copied
    only where it is not. The tag comes from the trainer, not from a `latest` file: rank 0
    writes that file after the other ranks' files, and on a cluster without a shared disk
    they never see it.
    """
    (dest / saved.name).mkdir(parents=True)
    copied = 0
    for file in saved.iterdir():
        owner = _RANK_FILE.search(file.name)
        if world_size == 1 or (int(owner.group(1)) if owner else 0) == rank:
            copied += _link_or_copy(file, dest / saved.name / file.name)
    if rank == 0:
        (dest / "latest").write_text(saved.name)
    return copied


def _link_or_copy(source: Path, target: Path) -> int:
    """Hard-link `source` as `target`, or copy it where linking fails (another filesystem,
    one without hard links); the bytes copied."""
    try:
        os.link(source, target)
        return 0
    except OSError:
        shutil.copy(source, target)
        return source.stat().st_size


def worker_loop(config: dict[str, Any]) -> None:
    """One Ray Train worker = one DeepSpeed rank of the trial's training."""
    # lazy: Ray ([tune] extra); torch (this module stays torch-free)
    import ray
    import ray.train
    import torch
    import torch.distributed as dist

    from zeroi2v.engine.parallel import select_accelerator
    from zeroi2v.engine.trainer import train

    logs.quiet_third_party()  # a worker runs in a Ray actor, not under a launch script
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    cfg, output_dir = trial_config(config["base"], config["point"], config["trial_id"])
    torch.set_num_threads(max(1, int(config["cpus"])))
    select_accelerator()
    nodes: list[Any] = [None] * world_size  # Ray Train's process group exists already
    dist.all_gather_object(nodes, ray.get_runtime_context().get_node_id())
    shape = {"world_size": world_size, "ray_nodes": len(set(nodes))}

    def on_epoch(epoch: int, metrics: dict[str, float], saved: Path) -> None:
        run_id = tag_run(config["trial_name"], config["trial_id"], shape) if rank == 0 else ""
        report = {**metrics, "epoch": epoch, "mlflow_run_id": run_id}
        # uploaded before `report` returns; beside the checkpoints, so that it can link them
        with tempfile.TemporaryDirectory(prefix="ray_staging", dir=output_dir) as staging:
            stage_rank_files(saved, Path(staging) / CKPT, rank, world_size)
            ray.train.report(report, checkpoint=ray.train.Checkpoint.from_directory(staging))
        _maybe_inject_fault()

    parent = config["parent_run_id"]
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        # A first attempt, or a retry that failed before Ray got a checkpoint: it starts over.
        # An earlier attempt's saves in the trial's own folder are dropped, which a fresh run
        # would otherwise refuse to overwrite; without a shared disk they are not whole anyway.
        if rank == 0:
            shutil.rmtree(output_dir / "checkpoints", ignore_errors=True)
        train(cfg, on_epoch=on_epoch, mlflow_parent_run_id=parent)
        return
    with checkpoint.as_directory() as directory:  # a retry: every rank reads Ray's copy
        train(
            cfg, resume_from=Path(directory) / CKPT, on_epoch=on_epoch, mlflow_parent_run_id=parent
        )
