"""Where training stands in an epoch's sample order, saved with every checkpoint.

Why not just "step k of the epoch": a resume on another number of processes plays the epoch's
remaining positions on a different layout (`zeroi2v.data.order`), so a checkpoint stores the
layout's segments and how many micro-batches each rank has played; the positions still to play
follow from that by arithmetic, exactly, for any new layout that keeps the global batch.
Positions count clips: with ``data.clips_per_decode`` N, N consecutive positions are one
video's clips, so a position saved under one N means another video under another N.
"""

from __future__ import annotations

from typing import Any

from zeroi2v.config import ConfigError
from zeroi2v.data.order import Layout, Segment


def layout_of(position: dict[str, Any]) -> Layout:
    return Layout(position["world_size"], position["num_streams"], position["micro_batch_size"])


def new_epoch(layout: Layout, epoch_size: int, clips_per_decode: int = 1) -> dict[str, Any]:
    """The position at the start of an epoch of `epoch_size` clips."""
    return {
        "segments": [(0, epoch_size)],
        "world_size": layout.world_size,
        "num_streams": layout.num_streams,
        "micro_batch_size": layout.micro_batch_size,
        "batches": 0,
        "clips_per_decode": clips_per_decode,
    }


def resume(position: dict[str, Any], layout: Layout) -> dict[str, Any]:
    """The same point of the epoch for `layout`: unchanged when the layout is the same (so the
    run continues batch for batch), else the remaining positions as a fresh layout's segments."""
    saved = layout_of(position)
    if saved == layout:
        return position
    segments: list[Segment] = saved.remaining(position["segments"], position["batches"])
    return {**new_epoch(layout, 0, position.get("clips_per_decode", 1)), "segments": segments}


def start(
    saved: dict[str, Any] | None,
    played: int,
    layout: Layout,
    epoch_size: int,
    clips_per_decode: int = 1,
) -> dict[str, Any]:
    """Where an epoch of `epoch_size` clips starts playing on `layout`: at the `saved` position
    (a resume mid-epoch), else with `played` micro-batches skipped (0 at a new epoch; more for a
    checkpoint from before positions were saved, which had this same layout)."""
    if played and saved:
        before = saved.get("clips_per_decode", 1)  # positions saved before the key: one clip
        if before != clips_per_decode:
            raise ConfigError(
                f"the checkpoint stopped mid-epoch with data.clips_per_decode={before}, and its "
                f"data position counts clips of that many per video; resume with "
                f"data.clips_per_decode={before} (change it at an epoch boundary)"
            )
        return resume(saved, layout)
    return {**new_epoch(layout, epoch_size, clips_per_decode), "batches": played}


def check_global_batch(tag: str, saved: dict[str, Any], ds_config: dict[str, Any]) -> None:
    """A step must mean the same samples after a resume: the LR schedule, the epoch length and
    the data position count steps of one global batch."""
    before, now = saved["train_batch_size"], ds_config["train_batch_size"]
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
        f"({saved['world_size']} processes), but this launch makes it {now} ({world} processes "
        f"× {micro} × {ds_config['gradient_accumulation_steps']}); to resume exactly, {fix}"
    )
