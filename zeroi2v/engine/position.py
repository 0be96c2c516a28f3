"""Where training stands in an epoch's sample order, saved with every checkpoint.

Why not just "step k of the epoch": a resume on another number of processes plays the epoch's
remaining positions on a different layout (`zeroi2v.data.order`), so a checkpoint stores the
layout's segments and how many micro-batches each rank has played; the positions still to play
follow from that by arithmetic, exactly, for any new layout that keeps the global batch.
Positions count clips: with ``data.clips_per_decode`` N, N consecutive positions are one
video's clips, so a position saved under one N means another video under another N.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from zeroi2v.config import ConfigError
from zeroi2v.data.order import Layout, Segment


@dataclass(frozen=True)
class Position:
    """`batches` micro-batches played per rank of `segments` (the epoch's positions still to
    play when the epoch, or the resume, began) on `layout`. Saved as a flat JSON object (its
    layout's three numbers beside the rest), the form checkpoints have always stored."""

    segments: list[Segment]
    layout: Layout
    batches: int = 0
    clips_per_decode: int = 1

    @classmethod
    def new_epoch(cls, layout: Layout, epoch_size: int, clips_per_decode: int = 1) -> Position:
        """The position at the start of an epoch of `epoch_size` clips."""
        return cls([(0, epoch_size)], layout, 0, clips_per_decode)

    def played(self, batches: int) -> Position:
        return replace(self, batches=batches)

    def resume(self, layout: Layout) -> Position:
        """The same point of the epoch for `layout`: unchanged when the layout is the same (so
        the run continues batch for batch), else the remaining positions as a fresh layout's
        segments."""
        if self.layout == layout:
            return self
        remaining = self.layout.remaining(self.segments, self.batches)
        return Position(remaining, layout, 0, self.clips_per_decode)

    def to_dict(self) -> dict[str, Any]:
        return {
            "segments": [list(segment) for segment in self.segments],
            "world_size": self.layout.world_size,
            "num_streams": self.layout.num_streams,
            "micro_batch_size": self.layout.micro_batch_size,
            "batches": self.batches,
            "clips_per_decode": self.clips_per_decode,
        }

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> Position:
        """`to_dict`'s form; positions saved before ``clips_per_decode`` existed count one
        clip per video."""
        layout = Layout(saved["world_size"], saved["num_streams"], saved["micro_batch_size"])
        segments = [(int(a), int(b)) for a, b in saved["segments"]]
        return cls(segments, layout, saved["batches"], saved.get("clips_per_decode", 1))


def start(
    saved: Position | None,
    played: int,
    layout: Layout,
    epoch_size: int,
    clips_per_decode: int = 1,
) -> Position:
    """Where an epoch of `epoch_size` clips starts playing on `layout`: at the `saved` position
    (a resume mid-epoch), else with `played` micro-batches skipped (0 at a new epoch; more for a
    checkpoint from before positions were saved, which had this same layout)."""
    if played and saved:
        if saved.clips_per_decode != clips_per_decode:
            before = saved.clips_per_decode
            raise ConfigError(
                f"the checkpoint stopped mid-epoch with data.clips_per_decode={before}, and its "
                f"data position counts clips of that many per video; resume with "
                f"data.clips_per_decode={before} (change it at an epoch boundary)"
            )
        return saved.resume(layout)
    return Position.new_epoch(layout, epoch_size, clips_per_decode).played(played)


def check_global_batch(
    tag: str, before: int, saved_world_size: int, ds_config: dict[str, Any]
) -> None:
    """A step must mean the same samples after a resume: the LR schedule, the epoch length and
    the data position count steps of one global batch (`before` samples, in the checkpoint
    `tag` that `saved_world_size` processes wrote)."""
    now = ds_config["train_batch_size"]
    if before == now:
        return
    micro, world = (
        ds_config["train_micro_batch_size_per_gpu"],
        now
        // (ds_config["train_micro_batch_size_per_gpu"] * ds_config["gradient_accumulation_steps"]),
    )
    if before % (micro * world) == 0:
        fix = f"set deepspeed.gradient_accumulation_steps={before // (micro * world)}"
    elif before % world == 0:
        fix = f"choose a deepspeed.train_micro_batch_size_per_gpu that divides {before // world}"
    else:
        fix = f"use a number of processes that divides {before}"
    raise ConfigError(
        f"checkpoint {tag} was trained with a global batch of {before} samples per step "
        f"({saved_world_size} processes), but this launch makes it {now} ({world} processes "
        f"× {micro} × {ds_config['gradient_accumulation_steps']}); to resume exactly, {fix}"
    )
