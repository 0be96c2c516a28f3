"""Ray Tune search: every trial is `launch/train.py` fed the base config + dotted overrides.

The config's `tune` section maps dotted keys to specs (``{"loguniform": [1e-4, 1e-2]}``,
``{"choice": [...]}``, ...) and, under `head_allocation`, the allocation params of
`zeroi2v.tune.allocation`, which a trial turns into `model.head_offsets`. A trial builds
its config with `from_dict(base, overrides)`, so a bad point fails like a CLI typo, then
calls the trainer in-process (world size 1) with a per-epoch hook that reports to Ray with
a checkpoint, and an MLflow run nested under the search's parent run.

Fault tolerance: FailureConfig retries a crashed trial from its last Ray checkpoint; an
interrupted search resumes with `Tuner.restore` (finished trials are not run again).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zeroi2v import config as config_lib
from zeroi2v import logs
from zeroi2v.config import Config, ConfigError
from zeroi2v.tune import report
from zeroi2v.tune.allocation import model_section, resolve_space, trial_overrides

log = logging.getLogger(__name__)

FAULT_ENV = "ZEROI2V_TUNE_FAULT_FILE"  # tests only: a trial deletes this file and raises once
PARENT_TAG = "zeroi2v.tune.experiment"  # on the parent MLflow run: the experiment path
_CKPT = "deepspeed"  # the trainer's checkpoint folder inside a Ray checkpoint


# ---------------------------------------------------------------- search space


def to_domain(spec: Any, where: str) -> Any:
    """Config spec → Ray domain: ``{"loguniform": [a, b]}``, a list (= choice), a constant."""
    from ray import tune

    kinds: dict[str, Callable[..., Any]] = {
        "uniform": tune.uniform,
        "loguniform": tune.loguniform,
        "randint": tune.randint,
        "lograndint": tune.lograndint,
        "choice": lambda *values: tune.choice(list(values)),
        "grid": lambda *values: tune.grid_search(list(values)),
    }
    if isinstance(spec, list):
        return tune.choice(spec)
    if not isinstance(spec, Mapping):
        return spec
    if len(spec) != 1 or next(iter(spec)) not in kinds:
        raise ConfigError(f"{where}: write one of {sorted(kinds)} as {{kind: [args]}}, got {spec}")
    ((kind, args),) = spec.items()
    return kinds[kind](*args)


def param_space(cfg: Config, raw: Mapping[str, Any]) -> dict[str, Any]:
    """Ray param space ``{"overrides": {dotted: domain}, "head_allocation": {param: domain}}``.

    Each dotted key is tried once with a sampled value, so a misspelled key fails now, not
    in every trial.
    """
    tune_cfg = cfg.tune
    overrides = {
        key: to_domain(spec, f"tune.search_space.{key}")
        for key, spec in tune_cfg.search_space.items()
    }
    for key, domain in overrides.items():
        value = domain.sample() if hasattr(domain, "sample") else domain
        if isinstance(value, dict) and "grid_search" in value:
            value = value["grid_search"][0]
        config_lib.from_dict(raw, {key: value})
    space: dict[str, Any] = {"overrides": overrides}
    if tune_cfg.head_allocation is not None:
        if "model.head_offsets" in overrides:
            raise ConfigError("tune: search model.head_offsets or head_allocation, not both")
        if cfg.model.temporal_op != "stdha":
            raise ConfigError("tune.head_allocation needs model.temporal_op 'stdha'")
        backbone, frames = model_section(raw, {})
        checked = resolve_space(tune_cfg.head_allocation, backbone, frames)
        space["head_allocation"] = {
            name: to_domain(spec, f"tune.head_allocation.{name}") for name, spec in checked.items()
        }
    return space


# ---------------------------------------------------------------- the trial


def _maybe_inject_fault() -> None:
    """Test hook: the first trial to find $ZEROI2V_TUNE_FAULT_FILE removes it and crashes."""
    path = os.environ.get(FAULT_ENV)
    if not path:
        return
    try:
        os.remove(path)
    except FileNotFoundError:
        return
    raise RuntimeError(f"injected fault ({FAULT_ENV}={path})")


def trainable(trial_config: dict[str, Any], *, base: dict[str, Any], parent_run_id: str | None):
    """Ray function trainable: the training of `launch/train.py` with this trial's overrides."""
    import torch
    from ray import tune

    from zeroi2v.engine.parallel import latest_tag, select_accelerator
    from zeroi2v.engine.trainer import train

    logs.quiet_third_party()  # a trial runs in a Ray worker, not under a launch script
    context = tune.get_context()
    # The trainer's files (its checkpoints, merged.pt) stay on this node, one folder per trial;
    # Ray copies each epoch's checkpoint to its storage, from where a retry on any node resumes.
    output_dir = Path(base["train"]["output_dir"]) / context.get_trial_id()
    overrides = trial_overrides(trial_config, base)
    overrides.update({"train.output_dir": str(output_dir), "tracking.register_model": False})
    cfg = config_lib.from_dict(base, overrides)  # a bad point fails here, like a CLI typo
    cpus = context.get_trial_resources().required_resources.get("CPU", 1)
    torch.set_num_threads(max(1, int(cpus)))
    select_accelerator()

    checkpoints = output_dir / "checkpoints"
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:  # retried or restored: continue from Ray's copy
        with checkpoint.as_directory() as directory:
            shutil.rmtree(checkpoints, ignore_errors=True)
            shutil.copytree(Path(directory) / _CKPT, checkpoints)
    # Without a Ray checkpoint, a retry still resumes from the trainer's own (same MLflow run).
    resume = latest_tag(checkpoints) is not None

    def on_epoch(epoch: int, metrics: dict[str, float], checkpoint_dir: Path) -> None:
        import mlflow

        run = mlflow.active_run()  # the trainer's run (None when tracking is off)
        if run is not None:
            mlflow.set_tags(
                {"mlflow.runName": context.get_trial_name(), "ray.trial_id": context.get_trial_id()}
            )
        tag = latest_tag(checkpoint_dir)
        # Only the latest tag goes to Ray. Ray may upload after `report` returns, so a staged
        # copy lives until the next epoch's is reported.
        staging = output_dir / "ray_checkpoints" / f"epoch{epoch:04d}"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(checkpoint_dir / tag, staging / _CKPT / tag)
        shutil.copy(checkpoint_dir / "latest", staging / _CKPT / "latest")
        report = {**metrics, "epoch": epoch, "mlflow_run_id": run.info.run_id if run else ""}
        tune.report(report, checkpoint=tune.Checkpoint.from_directory(staging))
        for old in staging.parent.glob("epoch*"):
            if old.name < f"epoch{epoch - 1:04d}":
                shutil.rmtree(old, ignore_errors=True)
        _maybe_inject_fault()

    train(cfg, resume=resume, on_epoch=on_epoch, mlflow_parent_run_id=parent_run_id)


# ---------------------------------------------------------------- the search


@dataclass
class SearchResult:
    experiment_path: str
    output_dir: Path  # table, plot, best config
    rows: list[dict[str, Any]]  # one per trial, best first
    best_config_path: Path
    parent_run_id: str | None
    model_uri: str | None


def _local(path: str) -> bool:
    return "://" not in path


def trial_base(raw: Mapping[str, Any], cfg: Config) -> dict[str, Any]:
    """The base config as trials see it: relative local paths made absolute (trials run in
    other working directories), and the MLflow URI resolved once, here."""
    from zeroi2v.engine.tracking import artifact_location, tracking_uri

    base = json.loads(json.dumps(raw))
    uri = tracking_uri(cfg)
    fixes: dict[str, Any] = {
        "tracking.tracking_uri": uri,
        "tracking.artifact_location": artifact_location(cfg, uri),  # a URI or the server's
        "train.output_dir": str(Path(cfg.train.output_dir).absolute() / cfg.tune.name),
    }
    for key in ("data.train_shards", "data.val_shards"):
        value = config_lib.flatten(cfg).get(key)
        if isinstance(value, str) and value and _local(value) and not value.startswith("pipe:"):
            fixes[key] = str(Path(value).absolute())
    pretrained = cfg.model.pretrained
    if pretrained and _local(pretrained) and Path(pretrained).exists():
        fixes["model.pretrained"] = str(Path(pretrained).absolute())
    return config_lib.apply_overrides(base, fixes)


def build_tuner(cfg: Config, raw: Mapping[str, Any], parent_run_id: str | None, restore: bool):
    """A new `Tuner`, or the interrupted one at `storage_path/name` when `restore`."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    tune_cfg = cfg.tune
    resources = {k: v for k, v in tune_cfg.resources_per_trial.items() if v}
    if resources.get("gpu", 0) > 1:
        raise ConfigError(
            "tune.resources_per_trial.gpu: a trial trains in one process (world size 1); "
            "use at most 1 GPU per trial"
        )
    fn = tune.with_parameters(trainable, base=trial_base(raw, cfg), parent_run_id=parent_run_id)
    fn = tune.with_resources(fn, resources)
    path = experiment_path(cfg)
    if restore:
        return tune.Tuner.restore(path, trainable=fn, resume_errored=True)
    scheduler_spec = dict(tune_cfg.scheduler)
    name = scheduler_spec.pop("name", "asha")
    if name == "asha":
        scheduler = ASHAScheduler(
            max_t=cfg.train.epochs, time_attr="training_iteration", **scheduler_spec
        )
    elif name == "fifo":
        scheduler = FIFOScheduler()
    else:
        raise ConfigError(f"tune.scheduler.name: '{name}'; allowed: asha, fifo")
    return tune.Tuner(
        fn,
        param_space=param_space(cfg, raw),
        tune_config=tune.TuneConfig(
            metric=tune_cfg.metric,
            mode=tune_cfg.mode,
            scheduler=scheduler,
            num_samples=tune_cfg.num_samples,
            max_concurrent_trials=tune_cfg.max_concurrent_trials,
            trial_dirname_creator=lambda trial: trial.trial_id,
        ),
        run_config=tune.RunConfig(
            name=tune_cfg.name,
            storage_path=storage_path(cfg),
            failure_config=tune.FailureConfig(max_failures=tune_cfg.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            verbose=1,
        ),
    )


def storage_path(cfg: Config) -> str:
    path = cfg.tune.storage_path
    return str(Path(path).absolute()) if _local(path) else path


def experiment_path(cfg: Config) -> str:
    return f"{storage_path(cfg).rstrip('/')}/{cfg.tune.name}"


def output_dir(cfg: Config) -> Path:
    """Where the table, plot and best config go: the experiment folder when it is local."""
    path = experiment_path(cfg)
    return Path(path) if _local(path) else Path(cfg.train.output_dir) / "tune" / cfg.tune.name


def _parent_run(cfg: Config, restore: bool) -> str | None:
    """The search's MLflow run (reused on resume, found by its experiment-path tag)."""
    if not cfg.tracking.enabled:
        return None
    from mlflow import MlflowClient

    from zeroi2v.engine.tracking import check_server, tracking_uri
    from zeroi2v.engine.tracking import experiment_id as find_experiment

    uri = tracking_uri(cfg)
    check_server(uri)
    client = MlflowClient(uri)
    experiment_id = find_experiment(client, cfg, uri)
    path = experiment_path(cfg)
    if restore:
        found = client.search_runs(
            [experiment_id],
            f"tags.`{PARENT_TAG}` = '{path}'",
            max_results=1,
            order_by=["attributes.start_time DESC"],
        )
        if found:
            client.update_run(found[0].info.run_id, status="RUNNING")
            return found[0].info.run_id
    run = client.create_run(
        experiment_id, run_name=f"tune-{cfg.tune.name}", tags={PARENT_TAG: path}
    )
    params = config_lib.flatten(config_lib.to_dict(cfg)["tune"], "tune.")
    for key, value in params.items():
        client.log_param(run.info.run_id, key, json.dumps(value))
    return run.info.run_id


def _init_ray() -> bool:
    """Join $RAY_ADDRESS, else start a local Ray on this machine's cores; True if started."""
    import ray

    if ray.is_initialized():
        return False
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, include_dashboard=False)
    else:  # local workers import zeroi2v from this checkout, installed or not
        root = str(Path(__file__).resolve().parents[2])
        path = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
        env = {"env_vars": {"PYTHONPATH": path}}
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, runtime_env=env)
    return True


def run_search(raw: Mapping[str, Any], resume: bool = False) -> SearchResult:
    """Run (or resume) the search of a raw config dict; write and log its outputs."""
    from ray import tune

    raw = dict(raw)
    cfg = config_lib.from_dict(raw)
    if cfg.tune is None:
        raise ConfigError("tune: this config has no 'tune' section to search")
    path = experiment_path(cfg)
    started = _init_ray()
    try:
        restorable = tune.Tuner.can_restore(path)
        if resume and not restorable:
            raise RuntimeError(f"--resume: no interrupted search to resume at {path}")
        if restorable:
            log.warning("Resuming the search at %s (change tune.name for a new one).", path)
        parent = _parent_run(cfg, restorable)
        tuner = build_tuner(cfg, raw, parent, restorable)
        grid = tuner.fit()
    finally:
        if started:
            import ray

            ray.shutdown()
    out = output_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    rows = report.trial_rows(grid, cfg, raw)
    metric = cfg.tune.metric
    if not rows or rows[0][metric] is None:
        raise RuntimeError(f"no trial of {path} reported {metric}; see the trial errors above")
    files = [*report.write_table(rows, out), report.plot(rows, metric, out)]
    best_path = report.write_best_config(raw, rows[0], metric, path, out)
    files.append(best_path)
    print(report.markdown_table(rows))
    print(f"best config: {best_path}")
    model_uri = report.register_best(raw, rows[0], metric, _CKPT)
    if parent is not None:
        from mlflow import MlflowClient

        from zeroi2v.engine.tracking import tracking_uri

        client = MlflowClient(tracking_uri(cfg))
        for file in files:
            client.log_artifact(parent, str(file))
        client.log_metric(parent, f"best/{metric}", rows[0][metric])
        client.set_tag(parent, "best_trial", rows[0]["trial"])
        client.set_tag(parent, "best_allocation", rows[0]["allocation"])
        experiment = client.get_run(parent).info.experiment_id
        for child in client.search_runs([experiment], f"tags.mlflow.parentRunId = '{parent}'"):
            if child.info.status == "RUNNING":  # stopped early by the scheduler
                client.set_terminated(child.info.run_id, "KILLED")
        client.set_terminated(parent)
    return SearchResult(path, out, rows, best_path, parent, model_uri)
