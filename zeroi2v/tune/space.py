"""The search space: config specs → Ray domains (a sampled point becomes dotted overrides
with `zeroi2v.tune.allocation.trial_overrides`).

The config's `tune` section maps dotted keys to specs (``{"loguniform": [1e-4, 1e-2]}``,
``{"choice": [...]}``, ...) and, under `head_allocation`, the allocation params of
`zeroi2v.tune.allocation`, which a trial turns into `model.head_offsets`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from zeroi2v import config as config_lib
from zeroi2v.config import Config, ConfigError
from zeroi2v.tune.allocation import model_section, resolve_space


def to_domain(spec: Any, where: str) -> Any:
    """Config spec → Ray domain: ``{"loguniform": [a, b]}``, a list (= choice), a constant."""
    from ray import tune  # lazy: Ray ([tune] extra)

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
