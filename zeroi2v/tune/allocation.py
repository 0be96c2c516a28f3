"""A search space of head allocations that contains only valid ones.

Searching `model.head_offsets` directly (a list of ``[Δt, count]`` pairs) would make most
sampled points invalid: counts must sum to each block's heads and |Δt| must stay below the
clip length. Instead the search samples a few scalars and `allocation_from_params` maps
them, deterministically, to a multiset:

- ``temporal_heads`` (k, same count in every block) or ``temporal_fraction`` (f: each
  block gets ``floor(f·heads + 0.5)`` temporal heads, so Swin stages scale with their
  head count);
- ``max_offset`` (M, the largest |Δt|) and ``symmetric`` (whether −M is used too).

The temporal offsets are the nearest-first sequence 1, −1, 2, −2, …, M (and −M when
symmetric): the temporal receptive field is 2M+1 (symmetric) or 2M. k heads are dealt
round-robin over these offsets, nearest first; a block with fewer temporal heads than
offsets keeps the nearest ones. These two rules reproduce every row of the paper's
Table 11, e.g. ViT-L 32f {1·2, −1·2, 2·1, −2·1, 3·1, 0·9} is k=7, M=3, asymmetric, and
Swin-B's per-stage RF 2/3/5/5 is f=1/4, M=2, symmetric. k = 0 is the all-spatial model.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Mapping
from typing import Any

from zeroi2v import config as config_lib
from zeroi2v.config import ModelConfig
from zeroi2v.errors import ConfigError
from zeroi2v.offsets import (
    HeadOffsets,
    Multiset,
    format_multiset,
    offsets_per_block,
    receptive_field,
)
from zeroi2v.specs import BACKBONES, BackboneSpec

PARAMS = ("temporal_heads", "temporal_fraction", "max_offset", "symmetric")
_FIELD = "tune.head_allocation"


def offset_sequence(max_offset: int, symmetric: bool) -> list[int]:
    """Temporal offsets nearest first: 1, −1, 2, −2, …, M (and −M when symmetric)."""
    if max_offset < 1:
        raise ValueError(f"max_offset must be >= 1, got {max_offset}")
    offsets = [d for m in range(1, max_offset + 1) for d in (m, -m)]
    return offsets if symmetric else offsets[:-1]


def block_multiset(num_heads: int, temporal: int, offsets: list[int]) -> Multiset:
    """Deal `temporal` heads round-robin over `offsets` (nearest first); the rest are spatial."""
    if not 0 <= temporal <= num_heads:
        raise ValueError(f"{temporal} temporal heads do not fit in a block of {num_heads}")
    used = offsets[:temporal]
    counts = [temporal // len(used) + (i < temporal % len(used)) for i in range(len(used))]
    pairs = list(zip(used, counts, strict=True))
    if temporal < num_heads:
        pairs.append((0, num_heads - temporal))
    return pairs


def _temporal_count(params: Mapping[str, Any], num_heads: int) -> int:
    if ("temporal_heads" in params) == ("temporal_fraction" in params):
        raise ValueError("give exactly one of 'temporal_heads' and 'temporal_fraction'")
    if "temporal_heads" in params:
        count = int(params["temporal_heads"])
        if not 0 <= count <= num_heads:
            raise ValueError(f"temporal_heads={count} does not fit in a block of {num_heads} heads")
        return count
    fraction = float(params["temporal_fraction"])
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"temporal_fraction must lie in [0, 1], got {fraction}")
    return math.floor(fraction * num_heads + 0.5)  # round half up: 1/4 of 4/8/16/32 = 1/2/4/8


def allocation_from_params(
    params: Mapping[str, Any], backbone: BackboneSpec, frames: int
) -> list[list[int]] | list[list[list[int]]]:
    """Map search parameters to a `model.head_offsets` value (JSON form).

    One multiset when every block gets the same one (ViT), else one per stage (Swin).
    `frames` is what the attention sees, after any temporal patch stride. Raises
    ValueError for parameters outside the space (e.g. max_offset >= frames).
    """
    unknown = set(params) - set(PARAMS)
    if unknown:
        raise ValueError(f"unknown head-allocation params {sorted(unknown)}; valid: {PARAMS}")
    max_offset = int(params.get("max_offset", 1))
    symmetric = bool(params.get("symmetric", True))
    offsets = offset_sequence(max_offset, symmetric)
    stages = []
    for num_heads in backbone.heads:
        temporal = _temporal_count(params, num_heads)
        if temporal and max_offset >= frames:
            raise ValueError(f"max_offset={max_offset} needs more than {frames} frames")
        stages.append([list(pair) for pair in block_multiset(num_heads, temporal, offsets)])
    if all(stage == stages[0] for stage in stages) and len(set(backbone.heads)) == 1:
        return stages[0]
    return stages


def describe(offsets: HeadOffsets | None, backbone: BackboneSpec) -> str:
    """Paper notation with the RF, per stage when stages differ: ``{1·1, -1·1, 0·2} RF3``.

    `offsets` is a config's resolved ``model.offsets``; None (an operator that moves no
    whole heads) reads "-".
    """
    if offsets is None:
        return "-"
    texts = []
    for stage in range(len(backbone.depths)):
        block = backbone.stage_of_block().index(stage)
        dts = list(offsets[block])
        pairs = [(dt, dts.count(dt)) for dt in dict.fromkeys(dts)]
        texts.append(f"{format_multiset(pairs)} RF{receptive_field(dts)}")
    unique = list(dict.fromkeys(texts))
    return unique[0] if len(unique) == 1 else "; ".join(texts)


def default_space(backbone: BackboneSpec, frames: int) -> dict[str, dict[str, list]]:
    """Spec of the default space: up to half the heads temporal, |Δt| up to min(4, frames−1)."""
    max_offsets = list(range(1, min(4, frames - 1) + 1)) or [1]
    if frames < 2:
        temporal = {"temporal_heads": {"choice": [0]}}
    elif len(set(backbone.heads)) == 1:
        temporal = {"temporal_heads": {"choice": list(range(backbone.heads[0] // 2 + 1))}}
    else:
        temporal = {"temporal_fraction": {"choice": [0.0, 1 / 8, 1 / 6, 1 / 4, 1 / 3, 1 / 2]}}
    return {
        **temporal,
        "max_offset": {"choice": max_offsets},
        "symmetric": {"choice": [True, False]},
    }


def _normalise(spec: Any) -> dict[str, Any]:
    """A param's spec: a list is a choice, a scalar is fixed, else ``{"kind": args}``."""
    if isinstance(spec, list):
        return {"choice": spec}
    if not isinstance(spec, Mapping):
        return {"choice": [spec]}
    if len(spec) != 1:
        raise ConfigError(
            f"{_FIELD}: each param takes one spec like {{'choice': [...]}}, got {spec}"
        )
    return dict(spec)


def _finite_values(name: str, spec: dict[str, Any]) -> list[Any] | None:
    """All values a param can take, when finite (used to check the space up front)."""
    ((kind, args),) = spec.items()
    if kind in ("choice", "grid"):
        return list(args)
    if kind == "randint":  # Ray's randint excludes the upper bound
        return list(range(int(args[0]), int(args[1])))
    if kind == "uniform" and name == "temporal_fraction":
        if not 0.0 <= float(args[0]) <= float(args[1]) <= 1.0:
            raise ConfigError(f"{_FIELD}.temporal_fraction: uniform bounds must lie in [0, 1]")
        return None  # every fraction in [0, 1] maps to a valid count
    raise ConfigError(
        f"{_FIELD}.{name}: unsupported spec '{kind}'; use choice, grid, randint "
        "(or uniform for temporal_fraction)"
    )


def _specs(raw: Mapping[str, Any] | None, backbone: BackboneSpec, frames: int) -> dict:
    return {k: _normalise(v) for k, v in (raw or {}).items()} or default_space(backbone, frames)


def resolve_space(
    raw: Mapping[str, Any] | None, backbone: BackboneSpec, frames: int
) -> dict[str, dict[str, Any]]:
    """The config's allocation space ({} → default), checked: every point must be valid.

    A bad space fails here, before any trial runs, naming `tune.head_allocation`.
    """
    space = _specs(raw, backbone, frames)
    unknown = set(space) - set(PARAMS)
    if unknown:
        raise ConfigError(f"{_FIELD}: unknown params {sorted(unknown)}; valid: {list(PARAMS)}")
    values = {name: _finite_values(name, spec) for name, spec in space.items()}
    finite = {name: vals for name, vals in values.items() if vals is not None}
    for combo in itertools.product(*finite.values()):
        params = dict(zip(finite, combo, strict=True))
        if "temporal_fraction" in space and "temporal_fraction" not in params:
            params["temporal_fraction"] = 0.5  # continuous fraction: any value maps validly
        try:
            offsets_per_block(allocation_from_params(params, backbone, frames), backbone, frames)
        except (ValueError, ConfigError) as error:
            raise ConfigError(f"{_FIELD}: the point {params} is invalid: {error}") from None
    return space


def sample_allocation(
    rng: random.Random, backbone: BackboneSpec, frames: int, space: Mapping[str, Any] | None = None
) -> tuple[dict[str, Any], Any]:
    """Draw params from the (default) space without Ray; returns (params, head_offsets).

    Does not re-check the space (`resolve_space` does): callers validate what it yields.
    """
    params = {}
    for name, spec in _specs(space, backbone, frames).items():
        ((kind, args),) = spec.items()
        if kind in ("choice", "grid"):
            params[name] = rng.choice(list(args))
        elif kind == "randint":
            params[name] = rng.randrange(int(args[0]), int(args[1]))
        else:
            params[name] = rng.uniform(float(args[0]), float(args[1]))
    return params, allocation_from_params(params, backbone, frames)


def model_section(raw: Mapping[str, Any], overrides: Mapping[str, Any]) -> tuple[BackboneSpec, int]:
    """Backbone and frames seen by attention, before `model.head_offsets` is known."""
    model = ModelConfig.model_validate(config_lib.apply_overrides(raw, overrides).get("model", {}))
    if model.backbone not in BACKBONES:
        raise ConfigError(f"model.backbone: unknown '{model.backbone}'; one of {sorted(BACKBONES)}")
    return BACKBONES[model.backbone], model.num_frames // model.temporal_patch_size


def trial_overrides(trial_config: Mapping[str, Any], raw: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted overrides of one trial, the allocation resolved to `model.head_offsets`."""
    overrides = dict(trial_config.get("overrides", {}))
    params = trial_config.get("head_allocation")
    if params is not None:
        backbone, frames = model_section(raw, overrides)
        overrides["model.head_offsets"] = allocation_from_params(params, backbone, frames)
    return overrides
