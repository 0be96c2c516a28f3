"""A run's state in its checkpoints: what a save writes, and how a launch continues from it.

A save writes, in `ckpt_integrity`'s commit order, the run's `TrainState` (epoch, step,
position in the epoch, MLflow run id, ...; DeepSpeed's "client state") as JSON, so that
reading it runs no pickled code; every rank's RNG state (`rng`); DeepSpeed's module, optimizer
and scheduler files; then rank 0 commits the manifest and ``latest``. A resume reads them back
in the opposite order of need: the verified folder's `TrainState` first (where the loop
continues, and which world size wrote it), then DeepSpeed's files, then the RNG. Kept out of
`trainer` so that the loop there reads as a loop, and so that what a save writes and what a
resume reads sit side by side.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from zeroi2v.config import Config
from zeroi2v.engine import ckpt_integrity, parallel, position, rng, run_log
from zeroi2v.engine.position import Position
from zeroi2v.errors import ConfigError, NonFiniteLossError

log = logging.getLogger(__name__)

CLIENT_FILE = "client.json"


def checkpoint_dir(cfg: Config) -> Path:
    return Path(cfg.train.output_dir) / "checkpoints"


@dataclass
class TrainState:
    """Where a run stands, saved with every checkpoint (`CLIENT_FILE`) and moved along by every
    optimizer step of the loop; a resume continues from the checkpoint's."""

    world_size: int  # processes of the run (in a saved state: those that wrote it)
    train_batch_size: int  # clips per optimizer step, all ranks together
    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    best_score: float | None = None  # the best evaluation so far: top-1, or mAP for detection
    best_step: int | None = None  # the step of that evaluation; its checkpoint is never pruned
    run_id: str | None = None  # the MLflow run, continued by a resume
    position: Position | None = None  # within the epoch; None at its start
    metrics_bytes: int | None = None  # metrics.jsonl's size at the save (`run_log`)
    frozen_backbone: dict[str, Any] | None = None  # `frozen.fingerprint` of the model built

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (the position in its flat form)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        if self.position is not None:
            values["position"] = self.position.to_dict()
        return values

    @classmethod
    def from_dict(cls, saved: dict[str, Any], where: str) -> TrainState:
        """`to_dict`'s form, or a client state that code before this class wrote (it named
        `best_score` ``best_top1``); `where` names the file in the errors."""
        values = {_RENAMED.get(key, key): value for key, value in saved.items()}
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(values) - set(names))
        missing = [n for n in ("world_size", "train_batch_size") if n not in values]
        if unknown or missing:
            what = f"unknown entries {unknown}" if unknown else f"no {' or '.join(missing)}"
            raise ConfigError(
                f"{where} has {what}: a zeroi2v version other than this one wrote it; resume "
                f"or load that checkpoint with the version that wrote it"
            )
        if values.get("position") is not None:
            values["position"] = Position.from_dict(values["position"])
        return cls(**values)

    @classmethod
    def read(cls, path: Path) -> TrainState:
        return cls.from_dict(json.loads(path.read_text()), str(path))

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=1))


# client-state keys of older checkpoints → their `TrainState` fields
_RENAMED = {"best_top1": "best_score"}


@dataclass(frozen=True)
class Resume:
    """A verified checkpoint `source/tag` that `saved_world_size` ranks wrote; DeepSpeed loads
    it from `load_dir/load_tag`, its universal form when `universal`."""

    source: Path
    tag: str
    saved_world_size: int
    load_dir: Path
    load_tag: str
    universal: bool

    def engine_config(self, ds_config: dict[str, Any]) -> dict[str, Any]:
        return parallel.universal_config(ds_config) if self.universal else ds_config


def refuse_overwrite(cfg: Config, info: parallel.DistInfo) -> None:
    """Every rank, before a fresh (not resumed) run writes anything: stop, all ranks alike,
    when `train.output_dir` holds a committed checkpoint, since the new run's checkpoints,
    metrics and registered model would bury that run's; the sentence names the ways out."""
    directory = checkpoint_dir(cfg)
    tag = ckpt_integrity.job_last_committed(directory, info.rank, info.world_size)
    if tag is not None:
        out = cfg.train.output_dir
        raise ConfigError(
            f"train.output_dir {out} already holds a run (its last committed checkpoint is "
            f"{tag} in {directory}); not touching it: pass --resume to continue that run, or "
            f"set another train.output_dir=... (or remove {out}) to start a new one"
        )


def resume_point(
    cfg: Config,
    info: parallel.DistInfo,
    source: Path,
    ds_config: dict[str, Any],
) -> tuple[Resume, TrainState]:
    """The checkpoint in `source` to resume from, verified (sizes, sha256) before anything in
    it is loaded; every rank hashes a share of its files and all agree on the verdict, so each
    file is read once, not once per rank; with the run's state saved in it.

    Under ZeRO, the optimizer partitions (and ZeRO-3's weight partitions) belong to the world
    size that wrote them: on another one DeepSpeed loads its universal form, converted here
    once (collective). Stage 0 keeps the whole optimizer state in the model-states file, which
    loads as is.
    """
    point = ckpt_integrity.job_resume_point(
        source, cfg.train.on_damaged_checkpoint, info.rank, info.world_size
    )
    if point.note and info.rank == 0:
        log.warning(point.note)
    state = TrainState.read(source / point.tag / CLIENT_FILE)
    saved_world = state.world_size
    position.check_global_batch(point.tag, state.train_batch_size, saved_world, ds_config)
    state.world_size = info.world_size
    universal = (
        saved_world != info.world_size
        and ds_config.get("zero_optimization", {}).get("stage", 0) > 0
    )
    load_dir, load_tag = source, point.tag
    if universal:
        load_dir, load_tag = parallel.to_universal(source, point.tag, info.rank == 0)
    return Resume(source, point.tag, saved_world, load_dir, load_tag, universal), state


def restore(
    engine: Any, resumed: Resume, seed: int, state: TrainState, info: parallel.DistInfo
) -> None:
    """Load module, optimizer and scheduler into `engine`, then this rank's RNG state."""
    parallel.load_checkpoint(engine, resumed.load_dir, resumed.load_tag)
    if resumed.saved_world_size != info.world_size:
        # no RNG state of this rank was saved; dropout masks change from here on
        torch.manual_seed(seed + 1000 * state.global_step + info.rank)
    else:
        rng.load(resumed.source / resumed.tag / rng.file_name(info.rank))
    if info.rank == 0:
        log.info(
            "Resumed from %s/%s at epoch %d, step %d (written by %d processes, now %d)",
            resumed.source,
            resumed.tag,
            state.epoch,
            state.global_step,
            resumed.saved_world_size,
            info.world_size,
        )


class Checkpoints:
    """Saves of one run into `checkpoint_dir(cfg)`; remembers the newest good one, which the
    errors that stop a run name."""

    def __init__(
        self, engine: Any, cfg: Config, state: TrainState, rank: int, resumed: Resume | None
    ) -> None:
        """`state`: the run's state, saved as it stands at each save."""
        self.engine, self.cfg, self.state, self.rank = engine, cfg, state, rank
        self.directory = checkpoint_dir(cfg)
        self.last = resumed.tag if resumed is not None else None

    def last_good(self) -> str:
        return f"the last good checkpoint is {self.last or 'none'} in {self.directory}"

    def save(self, step: int) -> Path:
        """Every rank: refuse non-finite weights, then write and commit ``stepN``; its folder."""
        if not _all_finite(parallel.local_params(self.engine), parallel.device()):
            raise NonFiniteLossError(
                f"weights became non-finite at step {step}; not saving them, {self.last_good()}"
            )
        name = ckpt_integrity.tag_for(step)
        if self.rank == 0:
            ckpt_integrity.prepare_folder(self.directory, step)
            # a resume cuts metrics.jsonl back to what was logged up to here
            self.state.metrics_bytes = run_log.metrics_path(self.cfg).stat().st_size
            self.state.write(self.directory / name / CLIENT_FILE)
        dist.barrier()
        rng.save(self.directory / name / rng.file_name(self.rank))
        parallel.save_checkpoint(
            self.engine, self.directory, name, self.state.to_dict()
        )  # ends in a barrier
        if self.rank == 0:  # every rank's files exist: manifest, then `latest`, then pruning
            best = self.state.best_step
            ckpt_integrity.commit(
                self.directory,
                step,
                self.cfg.train.keep_checkpoints,
                None if best is None else ckpt_integrity.tag_for(best),
            )
        self.last = name
        return self.directory / name

    def ensure(self, step: int) -> Path:
        """The folder of a checkpoint at `step`, saved now unless the last save was at `step`."""
        if self.last != ckpt_integrity.tag_for(step):
            return self.save(step)
        return self.directory / self.last


def _all_finite(tensors: list[torch.Tensor], device: torch.device) -> bool:
    """True on every rank iff every rank's tensors are finite (one all_reduce)."""
    bad = sum(int(not torch.isfinite(t).all()) for t in tensors if t.numel())
    flag = torch.tensor([float(bad)], device=device)
    dist.all_reduce(flag)
    return flag.item() == 0
