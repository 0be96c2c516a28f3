"""Check a search before Ray starts: every trial's config as the trial will run it.

A trial runs `zeroi2v.engine.trainer.train` on `tune.workers_per_trial` ranks with the base
config + its overrides; whatever would fail there (a global batch those ranks cannot keep,
a searched value the config refuses, a head allocation that does not fit the model, shards
that are not there) would otherwise fail in every trial, minutes later, as a traceback in its
log. So `check_search` builds each config the space can produce and runs the trainer's own
pre-launch checks (`check_before_launch`) at the trial's world size, then checks the
scheduler against `train.epochs` and, for a local Ray, the trial's resources against this
machine. Each failure is one `ConfigError` sentence naming the field and the fix.

Which points: every value of a finite spec (choice, grid, randint) and both ends of a
continuous one (uniform, loguniform), all combined when there are at most `MAX_POINTS`
combinations, else each key's values with the others at their first (the common case, one
or two searched keys and an allocation grid, is exhaustive).
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Mapping
from typing import Any

from zeroi2v import config as config_lib
from zeroi2v.config import Config, ConfigError, TuneConfig
from zeroi2v.tune.allocation import model_section, resolve_space, trial_overrides

MAX_POINTS = 256
# ASHAScheduler's own arguments besides those the search sets (max_t, time_attr, metric, mode)
ASHA_KEYS = {"grace_period", "reduction_factor", "brackets", "stop_last_trials"}


def check_search(cfg: Config, raw: Mapping[str, Any]) -> None:
    """Raise `ConfigError` (one sentence) for a search that cannot work; import no Ray."""
    check_scheduler(cfg)
    workers = cfg.tune.workers_per_trial
    for point in trial_points(cfg, raw):
        check_trial(raw, point, workers)
    if not os.environ.get("RAY_ADDRESS"):  # a local Ray gets this machine's cores and GPUs
        machine = _this_machine()
        per_worker = {k: v for k, v in worker_resources(cfg.tune).items() if k in machine}
        check_fits(per_worker, workers, [machine])


def worker_resources(tune_cfg: TuneConfig) -> dict[str, float]:
    """Ray resources of one training process: the trial's, split over its workers."""
    workers = tune_cfg.workers_per_trial
    per_worker = {
        key.upper(): value / workers for key, value in tune_cfg.resources_per_trial.items() if value
    }
    if per_worker.get("GPU", 0) > 1:
        gpus = tune_cfg.resources_per_trial["gpu"]
        raise ConfigError(
            f"tune.resources_per_trial.gpu: {gpus:g} GPUs for {workers} worker(s); one DeepSpeed "
            f"rank drives one GPU, so set tune.workers_per_trial to {int(gpus)}"
        )
    return per_worker


def check_fits(per_worker: Mapping[str, float], workers: int, nodes: list[dict]) -> None:
    """Fail now, not as a trial waiting forever, when a trial's workers cannot be placed.

    `nodes` are Ray's per-node resource totals; each worker must fit on one node.
    """
    for name, amount in per_worker.items():
        largest = max((node.get(name, 0) for node in nodes), default=0)
        total = sum(node.get(name, 0) for node in nodes)
        if amount > largest or amount * workers > total:
            raise ConfigError(
                f"tune.resources_per_trial: a trial's {workers} worker(s) need {amount:g} {name} "
                f"each ({amount * workers:g} in all), but the Ray cluster's largest node has "
                f"{largest:g} and all {len(nodes)} node(s) {total:g}"
            )


def check_scheduler(cfg: Config) -> None:
    spec = dict(cfg.tune.scheduler)
    name = spec.pop("name", "asha")
    if name == "fifo":
        return
    if name != "asha":
        raise ConfigError(f"tune.scheduler.name: '{name}'; allowed: asha, fifo")
    unknown = sorted(set(spec) - ASHA_KEYS)
    if unknown:
        raise ConfigError(
            f"tune.scheduler: unknown keys {unknown} for asha; allowed: {sorted(ASHA_KEYS)}"
        )
    grace = spec.get("grace_period", 1)
    epochs = cfg.train.epochs
    if isinstance(grace, bool) or not isinstance(grace, int) or grace < 1:
        raise ConfigError(f"tune.scheduler.grace_period must be a positive integer, got {grace!r}")
    if grace > epochs:
        raise ConfigError(
            f"tune.scheduler.grace_period ({grace}) is more than train.epochs ({epochs}): ASHA "
            f"would stop no trial before its end; set grace_period <= {epochs} or raise "
            "train.epochs"
        )
    factor = spec.get("reduction_factor", 2)
    if isinstance(factor, bool) or not isinstance(factor, int | float) or factor <= 1:
        raise ConfigError(f"tune.scheduler.reduction_factor must be > 1, got {factor!r}")


def candidates(spec: Any) -> list[Any]:
    """The values of one search-space spec worth checking (see the module docstring)."""
    if isinstance(spec, list):
        return list(spec)
    if not isinstance(spec, Mapping) or len(spec) != 1:
        return [spec]  # a constant (a malformed spec fails in `space.to_domain`)
    ((kind, args),) = spec.items()
    if kind in ("choice", "grid"):
        return list(args)
    if kind in ("randint", "lograndint"):  # Ray excludes the upper bound
        return sorted({int(args[0]), int(args[1]) - 1})
    if kind in ("uniform", "loguniform"):
        return sorted({float(args[0]), float(args[1])})
    return [spec]


def trial_points(cfg: Config, raw: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Trial configs ``{"overrides": {...}, "head_allocation": {...}}`` to check."""
    axes = {("overrides", key): candidates(spec) for key, spec in cfg.tune.search_space.items()}
    if cfg.tune.head_allocation is not None and cfg.model.temporal_op == "stdha":
        backbone, frames = model_section(raw, {})
        for name, spec in resolve_space(cfg.tune.head_allocation, backbone, frames).items():
            axes["head_allocation", name] = candidates(spec)
    total = 1
    for values in axes.values():
        total *= max(1, len(values))
    if total <= MAX_POINTS:
        combos = [
            dict(zip(axes, combo, strict=True)) for combo in itertools.product(*axes.values())
        ]
    else:
        first = {axis: values[0] for axis, values in axes.items() if values}
        combos = [{**first, axis: v} for axis, values in axes.items() for v in values]
    points = []
    for combo in combos:
        point: dict[str, Any] = {"overrides": {}}
        if cfg.tune.head_allocation is not None:
            point["head_allocation"] = {}
        for (part, key), value in combo.items():
            point[part][key] = value
        points.append(point)
    return points


def check_trial(raw: Mapping[str, Any], point: Mapping[str, Any], workers: int) -> None:
    """The trainer's pre-launch checks on one trial's config at the trial's world size."""
    # lazy: torch (this module stays torch-free)
    from zeroi2v.engine.trainer import check_before_launch

    shown = {**point["overrides"], **point.get("head_allocation", {})}
    where = f"with {json.dumps(shown, default=str)} " if shown else ""
    try:
        cfg = config_lib.from_dict(raw, trial_overrides(point, raw))
        check_before_launch(cfg, workers)
    except (ConfigError, ValueError) as error:
        raise ConfigError(
            f"a trial {where}on tune.workers_per_trial={workers} rank(s) would fail before "
            f"training: {error}"
        ) from None


def _this_machine() -> dict[str, float]:
    import torch  # lazy: torch (this module stays torch-free)

    return {"CPU": float(os.cpu_count() or 1), "GPU": float(torch.cuda.device_count())}
