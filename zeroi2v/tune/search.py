"""Ray Tune search: every trial is `launch/train.py` fed the base config + dotted overrides.

The space comes from `zeroi2v.tune.space`, the trial itself from `zeroi2v.tune.trial` (one
process, or a Ray Train job of `tune.workers_per_trial` DeepSpeed ranks); each trial's
MLflow run is nested under the search's parent run.

Fault tolerance: FailureConfig retries a crashed trial from its last Ray checkpoint; an
interrupted search resumes with `Tuner.restore` (finished trials are not run again).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zeroi2v import config as config_lib
from zeroi2v.config import Config, ConfigError
from zeroi2v.tune import preflight, report, trial
from zeroi2v.tune.preflight import check_fits, worker_resources
from zeroi2v.tune.space import param_space

log = logging.getLogger(__name__)

PARENT_TAG = "zeroi2v.tune.experiment"  # on the parent MLflow run: the experiment path


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
    # lazy: torch (this module stays torch-free)
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
    # lazy: Ray ([tune] extra)
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    tune_cfg = cfg.tune
    base = trial_base(raw, cfg)
    workers = worker_resources(tune_cfg)
    if tune_cfg.workers_per_trial == 1:
        fn = tune.with_parameters(trial.trainable, base=base, parent_run_id=parent_run_id)
        fn = tune.with_resources(fn, {k.lower(): v for k, v in workers.items()})
    else:
        fn = tune.with_parameters(
            trial.train_driver,
            base=base,
            parent_run_id=parent_run_id,
            workers=tune_cfg.workers_per_trial,
            worker_resources=workers,
            storage=experiment_path(cfg),
            max_failures=tune_cfg.max_failures,
        )
        fn = tune.with_resources(fn, trial.DRIVER_RESOURCES)
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
    # lazy: MLflow ([train]/[serve] extra); torch (this module stays torch-free)
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


def _init_ray(dashboard: bool) -> bool:
    """Join $RAY_ADDRESS, else start a local Ray on this machine's cores; True if started.

    Ray Train trials need the dashboard of a local Ray: when Tune stops a trial (ASHA, or at
    its last epoch) it ends the trial's process before Ray Train does, and Ray Train's
    PlacementGroupCleaner frees the workers' resources through the dashboard's State API;
    without it the next trials wait forever for them.
    """
    if not os.environ.get("RAY_ADDRESS"):
        # A local Ray serves this machine only: keep it on 127.0.0.1, not the network address.
        # Ray reads this when it is first imported, so it is set before the import.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray  # lazy: Ray ([tune] extra)

    if ray.is_initialized():
        return False
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, include_dashboard=False)
    else:  # local workers import zeroi2v from this checkout, installed or not
        root = str(Path(__file__).resolve().parents[2])
        path = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
        env = {"env_vars": {"PYTHONPATH": path}}
        ray.init(num_cpus=os.cpu_count(), include_dashboard=dashboard, runtime_env=env)
    return True


def run_search(raw: Mapping[str, Any], resume: bool = False) -> SearchResult:
    """Run (or resume) the search of a raw config dict; write and log its outputs."""
    raw = dict(raw)
    cfg = config_lib.from_dict(raw)
    if cfg.tune is None:
        raise ConfigError("tune: this config has no 'tune' section to search")
    path = experiment_path(cfg)
    preflight.check_search(cfg, raw)  # every trial's config, before Ray starts
    started = _init_ray(dashboard=cfg.tune.workers_per_trial > 1)  # Ray's first import
    from ray import tune  # lazy: Ray ([tune] extra)

    try:
        restorable = tune.Tuner.can_restore(path)
        if resume and not restorable:
            raise RuntimeError(f"--resume: no interrupted search to resume at {path}")
        if restorable:
            log.warning("Resuming the search at %s (change tune.name for a new one).", path)
        import ray  # lazy: Ray ([tune] extra)

        nodes = [node["Resources"] for node in ray.nodes() if node["Alive"]]
        check_fits(worker_resources(cfg.tune), cfg.tune.workers_per_trial, nodes)
        parent = _parent_run(cfg, restorable)
        tuner = build_tuner(cfg, raw, parent, restorable)
        grid = tuner.fit()
    finally:
        if started:
            import ray  # lazy: Ray ([tune] extra)

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
    model_uri = report.register_best(raw, rows[0], metric, trial.CKPT)
    if parent is not None:
        # lazy: MLflow ([train]/[serve] extra); torch (this module stays torch-free)
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
