"""Typed, strict experiment configuration.

One complete JSON file per experiment, layered as defaults < file < dotted overrides
(``--optim.lr=3e-4``). The same `apply_overrides` serves the CLI, Ray Tune search spaces
and MLflow params, so a key means the same thing everywhere. Unknown keys are errors that
list the valid ones: a misspelled key must never be silently ignored.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from zeroi2v.errors import ConfigError
from zeroi2v.offsets import HeadOffsets, resolve
from zeroi2v.specs import BACKBONES


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


TemporalOp = Literal[
    "stdha", "none", "cls_shift", "channel_shift", "kv_shift", "qkv_shift", "hr_qkv"
]
HEAD_RELOCATION_OPS = ("stdha", "hr_qkv")  # the operators that read model.head_offsets
# the operators that move a fraction model.shift_ratio of channels (read model.shift_fill)
CHANNEL_SHIFT_OPS = ("cls_shift", "channel_shift", "kv_shift", "qkv_shift")
Strategy = Literal[
    "zeroi2v",
    "full_finetune",
    "linear_probe",
    "temporal_heads_only",
    "lora",
    "gelu_adapter",
    "st_adapter",
]
MERGEABLE_STRATEGIES = ("zeroi2v", "full_finetune", "linear_probe", "temporal_heads_only", "lora")


class ModelConfig(_Section):
    backbone: str = "tiny_vit"
    pretrained: str | None = None  # library tag ("openai", "augreg_in21k") or a local file
    # Transfer: models:/NAME@ALIAS, runs:/…, a merged .pt or a checkpoint folder (engine.transfer)
    init_from: str | None = None
    num_frames: int = Field(8, ge=1)
    image_size: int = Field(224, ge=8)
    num_classes: int = Field(400, ge=2)
    temporal_op: TemporalOp = "stdha"
    # One multiset for every block, one per block, or one per stage (Swin).
    head_offsets: Any = [[1, 1], [-1, 1], [0, 2]]
    temporal_patch_size: int = Field(1, ge=1)
    # channel change ratio R_c of the channel-shift operators (paper Table 1 compares at 1/6)
    shift_ratio: float = Field(1 / 6, gt=0.0, le=1.0)
    # where t∓1 falls outside the clip, a channel shift reads the frame's "own" values (the
    # released ablation code) or "zeros" (TSM / TokShift); models/temporal_baselines.py
    shift_fill: Literal["own", "zeros"] = "own"
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    # The released code's recipe (zeroi2v/models/convert.py); defaults keep ours. CLIP ViTs only:
    quick_gelu: bool | None = None  # None: as the pretrained tag says (True for "openai")
    clip_projection: bool = True  # False: the classifier reads the width-d ln_post feature
    temporal_embedding: bool = False  # a trainable (T, width) embedding added before ln_pre
    # "detection": AVA-style person boxes → multi-label actions (zeroi2v/models/detection.py)
    task: Literal["classification", "detection"] = "classification"
    roi_size: int = Field(7, ge=1)  # detection: RoIAlign output cells per side
    # `head_offsets` resolved per block by `Config`'s validation (it needs the backbone and
    # the clip length); a section changed afterwards is unresolved until validated again.
    _offsets: HeadOffsets | None | Literal["unresolved"] = PrivateAttr("unresolved")

    @model_validator(mode="after")
    def _unresolve(self) -> ModelConfig:  # built or assigned: the old resolution is stale
        self._offsets = "unresolved"
        return self

    @property
    def offsets(self) -> HeadOffsets | None:
        """`head_offsets`, parsed and checked once: every block's per-head Δt (None when
        `temporal_op` moves no whole heads, i.e. is not one of `HEAD_RELOCATION_OPS`)."""
        if self._offsets == "unresolved":
            raise ConfigError(
                "model.head_offsets is resolved when the whole config is validated; build the "
                "config with zeroi2v.config.load or from_dict, not a model section alone"
            )
        return self._offsets


class AdaptConfig(_Section):
    strategy: Strategy = "zeroi2v"
    num_adapters: Literal[4, 6] = 4
    bottleneck_ratio: float = Field(0.25, gt=0.0)
    bottleneck_width: int | None = Field(None, ge=1)  # overrides the ratio (paper Table 3)
    lora_rank: int = Field(16, ge=1)
    adapter_scale: float = Field(1.0, gt=0.0)  # linear adapter branch × scale (official: 0.5)
    adapter_dropout: float = Field(0.0, ge=0.0, lt=1.0)  # inside the branch (official: 0.1)
    train_final_norm: bool = False  # also train the backbone's final LayerNorm (official)


class DataConfig(_Section):
    train_shards: str = ""
    val_shards: str = ""
    sampling: Literal["dense", "uniform"] = "dense"
    frame_interval: int = Field(16, ge=1)  # dense sampling only
    num_clips: int = Field(1, ge=1)  # test views along time
    num_crops: int = Field(1, ge=1)  # test views in space
    short_side: int = Field(256, ge=8)
    # RandomResizedCrop's area range (fraction of the frame); (1, 1) keeps the whole frame.
    crop_scale: tuple[float, float] = (0.08, 1.0)
    randaugment_m: int = Field(7, ge=0)
    randaugment_n: int = Field(4, ge=0)  # 0 disables RandAugment
    hflip: float = Field(0.5, ge=0.0, le=1.0)  # 0 for datasets with left/right classes
    random_erasing: float = Field(0.0, ge=0.0, le=1.0)
    # Where RandAugment, normalisation and erasing run: in the loader workers, or on the
    # training device after a uint8 copy (same draws, see zeroi2v/data/transforms.py).
    augment_on: Literal["cpu", "device"] = "cpu"
    shuffle_buffer: int = Field(1000, ge=0)
    num_workers: int = Field(2, ge=0)
    # Decode once, train on several clips (VideoMAE's repeated augmentation): an epoch decodes
    # every training video once and plays it as this many clips, each with its own frames and
    # augmentation draws; an epoch is videos × clips_per_decode clips (zeroi2v/data/pipeline.py).
    clips_per_decode: int = Field(1, ge=1)
    # Who decodes (zeroi2v/data/decode.py), and where: "cuda" is torchcodec on NVDEC.
    decoder: Literal["decord", "torchcodec"] = "decord"
    decode_device: Literal["cpu", "cuda"] = "cpu"
    eval_batch_size: int = Field(8, ge=1)
    # detection: person proposals below this detector score are dropped (train and test)
    proposal_min_score: float = Field(0.8, ge=0.0, le=1.0)
    # detection training: short side drawn in [min, max] (SlowFast's TRAIN_JITTER_SCALES), then
    # a random model.image_size crop; null resizes the whole frame to image_size² (test always)
    detection_jitter_scales: tuple[int, int] | None = None


class OptimConfig(_Section):
    lr: float = Field(3e-4, gt=0.0)
    weight_decay: float = Field(0.05, ge=0.0)
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_epochs: float = Field(5.0, ge=0.0)
    min_lr: float = Field(0.0, ge=0.0)
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)


class TrainConfig(_Section):
    epochs: int = Field(40, ge=1)
    seed: int = 0
    output_dir: str = "runs/default"
    eval_every_epochs: int = Field(1, ge=1)
    checkpoint_every_steps: int = Field(500, ge=1)
    # the newest N checkpoints stay on disk, and the best evaluation's; None: keep every one
    keep_checkpoints: int | None = Field(3, ge=1)
    # a damaged / incomplete newest checkpoint on --resume: resume from the newest intact one,
    # or stop with its name
    on_damaged_checkpoint: Literal["fallback", "stop"] = "fallback"
    activation_checkpointing: bool = False
    activation_checkpointing_every: int = Field(1, ge=1)  # k: blocks 0, k, 2k, ... (selective)
    compile: bool = False  # torch.compile through DeepSpeed's engine.compile()
    log_every_steps: int = Field(10, ge=1)
    steps_per_epoch: int | None = Field(None, ge=1)  # None: samples in the manifest // batch
    # Collectives fail after this long without progress (a lost node); torch's default.
    dist_timeout_s: float = Field(1800.0, gt=0.0)
    log_sample_keys: bool = False  # output_dir/sample_keys/rank{R}.jsonl: who played what


class TrackingConfig(_Section):
    enabled: bool = True
    tracking_uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else a local SQLite file
    # None: `mlartifacts` beside the embedded store; through the server when using one
    artifact_location: str | None = None
    experiment: str = "zeroi2v"
    model_name: str = "zeroi2v"
    register_model: bool = True  # register the merged model in the Model Registry
    parent_run_id: str | None = None  # nest the run under this MLflow run (few-shot runner)


class TuneConfig(_Section):
    """Ray Tune search: dotted config keys → search-space specs (see `zeroi2v.tune`)."""

    search_space: dict[str, Any] = {}
    head_allocation: dict[str, Any] | None = None
    num_samples: int = Field(8, ge=1)
    metric: str = "val/top1"
    mode: Literal["max", "min"] = "max"
    scheduler: dict[str, Any] = {"name": "asha", "grace_period": 1, "reduction_factor": 2}
    # The whole trial's resources; with workers_per_trial N each worker (one DeepSpeed rank)
    # gets 1/N of them, e.g. {"cpu": 16, "gpu": 8} and N = 8: 2 CPUs + 1 GPU per rank.
    resources_per_trial: dict[str, float] = {"cpu": 1, "gpu": 0}
    workers_per_trial: int = Field(1, ge=1)  # > 1: each trial is a Ray Train (TorchTrainer) job
    max_concurrent_trials: int = Field(2, ge=1)
    max_failures: int = Field(1, ge=0)
    storage_path: str = "ray_results"
    name: str = "zeroi2v_tune"


def _default_deepspeed() -> dict[str, Any]:
    return {
        "train_micro_batch_size_per_gpu": 8,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": 0},
        "bf16": {"enabled": False},
    }


class Config(_Section):
    """The whole experiment. Each component receives only its own section."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)

    comment: str = Field("", alias="_comment")
    model: ModelConfig = ModelConfig()
    adapt: AdaptConfig = AdaptConfig()
    data: DataConfig = DataConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    deepspeed: dict[str, Any] = Field(default_factory=_default_deepspeed)  # native DeepSpeed JSON
    tracking: TrackingConfig = TrackingConfig()
    tune: TuneConfig | None = None

    @model_validator(mode="after")
    def _cross_checks(self) -> Config:
        spec = BACKBONES.get(self.model.backbone)
        if spec is None:
            raise ConfigError(
                f"model.backbone: unknown backbone '{self.model.backbone}'; "
                f"choose one of {sorted(BACKBONES)}"
            )
        frames = self.model.num_frames // self.model.temporal_patch_size
        if self.model.num_frames % self.model.temporal_patch_size:
            raise ConfigError(
                f"model.num_frames ({self.model.num_frames}) must be a multiple of "
                f"model.temporal_patch_size ({self.model.temporal_patch_size})"
            )
        if self.model.temporal_patch_size > 1 and spec.family != "swin":
            raise ConfigError("model.temporal_patch_size > 1 is only supported for Swin backbones")
        offsets = None
        if self.model.temporal_op in HEAD_RELOCATION_OPS:
            offsets = resolve(self.model.head_offsets, spec, frames)
        channel_shift = self.model.temporal_op in CHANNEL_SHIFT_OPS
        if self.model.shift_fill != "own" and not channel_shift:
            raise ConfigError(
                f"model.shift_fill '{self.model.shift_fill}' is read by the channel shifts "
                f"{list(CHANNEL_SHIFT_OPS)} only, not by temporal_op '{self.model.temporal_op}'; "
                "remove it"
            )
        clip_options = {
            "model.quick_gelu": self.model.quick_gelu is not None,
            "model.clip_projection": not self.model.clip_projection,
            "model.temporal_embedding": self.model.temporal_embedding,
        }
        used = [key for key, is_set in clip_options.items() if is_set]
        if used and spec.impl != "open_clip":
            raise ConfigError(f"{used[0]} is supported on open_clip (CLIP) ViT backbones only")
        if self.model.task == "detection" and spec.family != "vit":
            raise ConfigError(
                f"model.task 'detection' needs a ViT backbone (its patch tokens form the RoI "
                f"feature map), not '{self.model.backbone}'"
            )
        if self.model.task == "detection" and self.data.augment_on != "cpu":
            raise ConfigError(
                "model.task 'detection' needs data.augment_on 'cpu' (its boxes follow the "
                "frames through the CPU transforms)"
            )
        jitter = self.data.detection_jitter_scales
        if jitter is not None and not self.model.image_size <= jitter[0] <= jitter[1]:
            raise ConfigError(
                f"data.detection_jitter_scales {list(jitter)} must be [min, max] with "
                f"model.image_size ({self.model.image_size}) <= min <= max: the training crop "
                "is cut from the rescaled frame"
            )
        if self.model.init_from is not None and self.model.pretrained is not None:
            raise ConfigError(
                "model.init_from and model.pretrained are both set; the parent's weights replace "
                "the pretrained ones, so set model.pretrained to null"
            )
        check_batch_sizes(self.deepspeed)
        _check_decoding(self)
        self.model._offsets = offsets  # last: a failed check leaves the section unresolved
        return self


def _check_decoding(cfg: Config) -> None:
    """data.clips_per_decode, data.decoder and data.decode_device go together (or not)."""
    data, micro = cfg.data, cfg.deepspeed.get("train_micro_batch_size_per_gpu")
    if data.clips_per_decode > 1 and cfg.model.task != "classification":
        raise ConfigError(
            f"data.clips_per_decode {data.clips_per_decode} is for model.task 'classification' "
            "(a detection sample is one key frame with its boxes); set data.clips_per_decode=1"
        )
    if data.clips_per_decode > 1 and isinstance(micro, int) and micro % data.clips_per_decode:
        raise ConfigError(
            f"deepspeed.train_micro_batch_size_per_gpu ({micro}) must be a multiple of "
            f"data.clips_per_decode ({data.clips_per_decode}): a video's clips share one "
            "micro-batch, so that it is decoded once"
        )
    if data.decode_device == "cuda" and data.decoder != "torchcodec":
        raise ConfigError(
            f"data.decode_device 'cuda' needs data.decoder 'torchcodec' ('{data.decoder}' "
            "decodes on the CPU only); set data.decoder=torchcodec or data.decode_device=cpu"
        )
    if data.decode_device == "cuda" and cfg.model.task != "classification":
        raise ConfigError(
            "data.decode_device 'cuda' is for model.task 'classification' (detection boxes "
            "follow the frames through the CPU transforms); set data.decode_device=cpu"
        )
    if data.decode_device == "cuda" and data.num_workers:
        raise ConfigError(
            f"data.decode_device 'cuda' needs data.num_workers 0, not {data.num_workers}: CUDA "
            "cannot start in forked DataLoader workers, and NVDEC decodes beside the training "
            "process without taking its cores"
        )


def check_batch_sizes(ds: Mapping[str, Any], world_size: int | None = None) -> None:
    """DeepSpeed's batch identity: train_batch_size = micro × accumulation × world size."""
    micro = ds.get("train_micro_batch_size_per_gpu")
    accum = ds.get("gradient_accumulation_steps", 1)
    total = ds.get("train_batch_size")
    if micro is None:
        raise ConfigError("deepspeed.train_micro_batch_size_per_gpu is required")
    for key, value in (
        ("train_micro_batch_size_per_gpu", micro),
        ("gradient_accumulation_steps", accum),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"deepspeed.{key} must be a positive integer, got {value!r}")
    if total is None:
        return
    per_rank = micro * accum
    if world_size is None:
        if total % per_rank:
            raise ConfigError(
                f"deepspeed.train_batch_size ({total}) must be a multiple of "
                f"train_micro_batch_size_per_gpu × gradient_accumulation_steps ({micro} × {accum})"
            )
    elif total != per_rank * world_size:
        fits, rest = divmod(total, micro * world_size)
        smaller, left = divmod(total, accum * world_size)
        hint = ""
        if fits and not rest:
            hint = "; to keep the global batch, override deepspeed.gradient_accumulation_steps="
            hint += str(fits)
        elif smaller and not left:
            hint = "; to keep the global batch, override deepspeed.train_micro_batch_size_per_gpu="
            hint += str(smaller)
        raise ConfigError(
            f"deepspeed.train_batch_size ({total}) != train_micro_batch_size_per_gpu ({micro}) × "
            f"gradient_accumulation_steps ({accum}) × world size ({world_size}){hint}"
        )


def _parse_value(text: str) -> Any:
    """Values are JSON when they parse as JSON (numbers, lists, true/null), else strings."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _override_pairs(overrides: Iterable[str] | Mapping[str, Any]) -> list[tuple[str, Any]]:
    if isinstance(overrides, Mapping):
        return list(overrides.items())
    pairs = []
    for item in overrides:
        key, sep, value = item.removeprefix("--").partition("=")
        if not sep or not key:
            raise ConfigError(f"override '{item}': write it as section.key=value")
        pairs.append((key, _parse_value(value)))
    return pairs


_OVERRIDE = re.compile(r"(--)?[A-Za-z_]\w*(\.\w+)+=")


def parse_args_with_overrides(
    parser: argparse.ArgumentParser, argv: list[str] | None = None
) -> tuple[argparse.Namespace, list[str]]:
    """A launch script's arguments, and its overrides (`section.key=value`,
    `--section.key=value`) from anywhere on the line, in their order.

    The overrides are taken out before argparse sees the line, so that one may follow an option
    with several values (`--seeds 0 1 2 train.epochs=1`), which argparse would give the option
    instead. What argparse leaves over (the parser's `overrides` positional, unknown options)
    follows them, for `load` to name in its error.
    """
    line = sys.argv[1:] if argv is None else argv
    dotted = [item for item in line if _OVERRIDE.match(item)]
    args, unknown = parser.parse_known_args([item for item in line if not _OVERRIDE.match(item)])
    return args, [*dotted, *args.overrides, *unknown]


def apply_overrides(
    raw: dict[str, Any], overrides: Iterable[str] | Mapping[str, Any] | None
) -> dict:
    """Set dotted keys (``optim.lr``) in a raw config dict; returns a new dict."""
    result = json.loads(json.dumps(raw))
    for key, value in _override_pairs(overrides or []):
        *parents, leaf = key.split(".")
        node = result
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override '{key}': '{part}' is not a section")
            node = child
        node[leaf] = value
    return result


def _format_errors(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        field = ".".join(str(p) for p in item["loc"]) or "config"
        if item["type"] == "extra_forbidden":
            lines.append(f"{field}: unknown key; valid keys: {_valid_keys(item['loc'])}")
        elif isinstance(item.get("ctx", {}).get("error"), ConfigError):
            lines.append(str(item["ctx"]["error"]))
        else:
            lines.append(f"{field}: {item['msg']}")
    return "; ".join(lines)


def _valid_keys(loc: tuple) -> str:
    model: type[BaseModel] = Config
    for part in loc[:-1]:
        annotation = model.model_fields[str(part)].annotation
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        model = next(c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel))
    names = [f.alias or name for name, f in model.model_fields.items()]
    return ", ".join(sorted(names))


def from_dict(
    raw: Mapping[str, Any], overrides: Iterable[str] | Mapping[str, Any] | None = None
) -> Config:
    """Validate a raw dict (plus dotted overrides) into a `Config`."""
    raw = dict(raw)
    raw.setdefault("deepspeed", _default_deepspeed())  # so `deepspeed.x=...` overrides merge
    try:
        return Config.model_validate(apply_overrides(raw, overrides))
    except ValidationError as error:
        raise ConfigError(_format_errors(error)) from None


def load(
    path: str | Path | None, overrides: Iterable[str] | Mapping[str, Any] | None = None
) -> Config:
    """Defaults < JSON file at `path` (None: defaults only) < dotted overrides."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ConfigError(f"{path} is not valid JSON: {error}") from None
        if not isinstance(raw, dict):
            raise ConfigError(
                f'{path} must hold one JSON object of sections ({{"model": {{...}}, ...}}), '
                f"not a {type(raw).__name__}"
            )
    return from_dict(raw, overrides)


def to_dict(cfg: Config) -> dict[str, Any]:
    """The resolved config as plain JSON-able data (round-trips through `from_dict`)."""
    return cfg.model_dump(mode="json", by_alias=True, exclude_none=False)


def flatten(cfg: Config | Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted keys → leaf values: the names used for overrides and MLflow params."""
    data = to_dict(cfg) if isinstance(cfg, Config) else cfg
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat
