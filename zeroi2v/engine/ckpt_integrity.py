"""Checkpoints that prove they are intact: a manifest of every file's size and sha256.

A save is committed in this order, each step only after the one before finished:

1. every rank writes its files into ``<dir>/stepN/`` (DeepSpeed's model / optimizer states,
   our per-rank RNG tensors, the client state as JSON);
2. after a barrier, rank 0 hashes every file of the folder and writes ``stepN/manifest.json``
   (temporary file + ``os.replace``, so it is either absent or complete);
3. rank 0 points ``<dir>/latest`` at ``stepN`` the same way and prunes old checkpoints.

A crash before step 3 leaves ``latest`` on the previous checkpoint, and a folder without a
manifest is never loaded. `--resume` verifies sizes and hashes *before* anything is unpickled;
a damaged newest checkpoint is named in one sentence and the newest intact one is used instead
(or the run stops, ``train.on_damaged_checkpoint="stop"``). With N ranks every file is hashed
once, not N times: each rank hashes its share of the files (`share`) and the ranks agree on
the verdict (`job_resume_point`, one all-gather per folder examined).

This proves integrity, not authenticity: whoever can write the folder can rewrite the
manifest too. Load only checkpoints you (or someone you trust) wrote. The manifest assumes the
ranks share one filesystem, as DeepSpeed's own ``latest`` file does.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from zeroi2v.errors import CheckpointDamagedError
from zeroi2v.files import sha256_file, write_atomic

MANIFEST = "manifest.json"
LATEST = "latest"
_TAG = re.compile(r"^step(\d+)$")

OnDamaged = Literal["fallback", "stop"]
# this rank's verdict on a folder → the job's (the first problem any rank found, or None)
Agree = Callable[[str | None], str | None]


def tag_for(step: int) -> str:
    return f"step{step}"


def _step(tag: str) -> int | None:
    match = _TAG.match(tag)
    return int(match.group(1)) if match else None


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def prepare_folder(directory: Path, step: int) -> Path:
    """Rank 0, before any rank writes: an empty ``stepN`` folder (a crashed save's leftovers
    would otherwise end up in the new manifest)."""
    folder = Path(directory) / tag_for(step)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def commit(directory: Path, step: int, keep: int | None = None, best: str | None = None) -> None:
    """Rank 0, once every rank wrote ``stepN``: the manifest, then ``latest``, then pruning
    (which spares `best`, the checkpoint of the best evaluation so far)."""
    directory = Path(directory)
    folder = directory / tag_for(step)
    files = {
        p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": sha256_file(p)}
        for p in _files(folder)
    }
    write_atomic(folder / MANIFEST, json.dumps({"step": step, "files": files}, indent=1))
    write_atomic(directory / LATEST, tag_for(step))
    if keep is not None:
        prune(directory, keep, best)


def prune(directory: Path, keep: int, best: str | None = None) -> list[str]:
    """Keep the `keep` newest committed checkpoints (at or before ``latest``) and `best`;
    delete every other checkpoint folder older than the oldest kept one. Returns the deleted
    tags. `best` is spared so that the weights of the best evaluation stay on disk however
    many saves follow it (at most `keep` + 1 checkpoints)."""
    tags = _tags_newest_first(Path(directory))
    committed = _committed(Path(directory), tags)
    if len(committed) <= keep:
        return []
    oldest_kept = _step(committed[keep - 1])
    doomed = [t for t in tags if _step(t) < oldest_kept and t != best]
    for tag in doomed:
        shutil.rmtree(Path(directory) / tag, ignore_errors=True)
    return doomed


def _tags_newest_first(directory: Path) -> list[str]:
    """``stepN`` folders no newer than ``latest`` (newer ones are saves that never committed)."""
    latest = directory / LATEST
    limit = _step(latest.read_text().strip()) if latest.is_file() else None
    steps = [
        _step(p.name) for p in directory.glob("step*") if p.is_dir() and _step(p.name) is not None
    ]
    return [tag_for(s) for s in sorted(steps, reverse=True) if limit is None or s <= limit]


def _committed(directory: Path, tags: list[str]) -> list[str]:
    """The `tags` whose save finished (its manifest is written), in their order."""
    return [t for t in tags if (directory / t / MANIFEST).is_file()]


def problem(folder: Path, share: tuple[int, int] = (0, 1)) -> str | None:
    """Why `folder` is not an intact checkpoint (a phrase naming the file), or None.

    Names and sizes are checked in full (a `stat` each); of the hashes, only the share
    (rank, world size) of this rank: every `world size`-th file, largest first, so that the
    ranks' shares cover each file once and hold about as many bytes.
    """
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        expected = manifest["files"]
    except FileNotFoundError:
        return f"it has no {MANIFEST}, so its save never finished"
    except (OSError, ValueError, KeyError, TypeError):
        return f"its {MANIFEST} is unreadable"
    present = {p.relative_to(folder).as_posix(): p for p in _files(folder)}
    for name, entry in expected.items():
        path = present.get(name)
        if path is None:
            return f"{name} is missing"
        if path.stat().st_size != entry["size"]:
            return f"{name} is {path.stat().st_size} bytes, the manifest says {entry['size']}"
    extra = sorted(set(present) - set(expected))
    if extra:
        return f"{extra[0]} is not in its manifest"
    rank, world_size = share
    by_size = sorted(expected, key=lambda name: (-expected[name]["size"], name))
    for name in by_size[rank::world_size]:
        if sha256_file(present[name]) != expected[name]["sha256"]:
            return f"{name} does not match its sha256 in the manifest"
    return None


@dataclass(frozen=True)
class ResumePoint:
    tag: str
    note: str | None  # one sentence on the damaged checkpoints skipped; None: `latest` was intact


def resume_point(
    directory: Path,
    on_damaged: OnDamaged = "fallback",
    *,
    share: tuple[int, int] = (0, 1),
    agree: Agree | None = None,
) -> ResumePoint:
    """The newest intact checkpoint in `directory`, verified before anything loads it.

    Raises `FileNotFoundError` when there is no checkpoint at all, and `CheckpointDamagedError`
    when none is intact, or when the newest is damaged and `on_damaged` is ``"stop"``.
    Alone, this process hashes every file; a rank of a job hashes its `share` and `agree`s with
    the others on each folder's verdict, so all ranks choose (or refuse) the same checkpoint.
    """
    directory = Path(directory)
    tags = _tags_newest_first(directory)
    if not tags:
        raise FileNotFoundError(f"--resume: no checkpoint (stepN folder) in {directory}")
    damaged = []
    for tag in tags:
        why = problem(directory / tag, share)
        if agree is not None:
            why = agree(why)
        if why is None:
            if not damaged:
                return ResumePoint(tag, None)
            return ResumePoint(
                tag, f"{_describe(directory, damaged)}; resuming from {tag}, the newest intact one."
            )
        damaged.append((tag, why))
        if on_damaged == "stop":
            raise CheckpointDamagedError(
                f"{_describe(directory, damaged)}; not resuming because "
                f"train.on_damaged_checkpoint is 'stop' (set it to 'fallback' to resume from the "
                f"newest intact checkpoint)"
            )
    raise CheckpointDamagedError(f"{_describe(directory, damaged)}; no intact checkpoint is left")


def job_resume_point(
    directory: Path, on_damaged: OnDamaged, rank: int, world_size: int
) -> ResumePoint:
    """`resume_point` on every rank of the process group (collective): the ranks share the
    hashing and agree on the verdicts, one all-gather per folder examined."""
    if world_size == 1:
        return resume_point(directory, on_damaged)
    import torch.distributed as dist  # lazy: torch (this module stays torch-free)

    def agree(why: str | None) -> str | None:
        found: list[str | None] = [None] * world_size
        dist.all_gather_object(found, why)
        return next((w for w in found if w is not None), None)

    return resume_point(directory, on_damaged, share=(rank, world_size), agree=agree)


def last_committed(directory: Path) -> str | None:
    """The newest committed checkpoint in `directory` (a ``stepN``, at or before ``latest``,
    with its manifest: what `--resume` would consider), or None: only such a folder holds a
    run that a fresh start must not overwrite; an uncommitted save's leftovers do not."""
    directory = Path(directory)
    return next(iter(_committed(directory, _tags_newest_first(directory))), None)


def job_last_committed(directory: Path, rank: int, world_size: int) -> str | None:
    """`last_committed` as rank 0 sees it, on every rank of the process group (collective).

    Rank 0 alone looks: it writes the manifest and ``latest``, so on nodes without a shared
    disk only it sees them. Its error, if it has one, is broadcast too, so that the other
    ranks fail with it instead of waiting in the broadcast for a rank that left.
    """
    if world_size == 1:
        return last_committed(directory)
    import torch.distributed as dist  # lazy: torch (this module stays torch-free)

    found, error = None, None
    if rank == 0:
        try:
            found = last_committed(directory)
        except Exception as exc:  # noqa: BLE001 - re-raised below, after the others hear of it
            error = exc
    shared = [found, None if error is None else f"{type(error).__name__}: {error}"]
    dist.broadcast_object_list(shared, src=0)
    if error is not None:
        raise error
    if shared[1] is not None:
        raise OSError(f"rank 0 could not look for checkpoints in {directory} ({shared[1]})")
    return shared[0]


def _describe(directory: Path, damaged: list[tuple[str, str]]) -> str:
    parts = [f"{tag} ({why})" for tag, why in damaged]
    noun = "checkpoint" if len(parts) == 1 else "checkpoints"
    verb = "is" if len(parts) == 1 else "are"
    return f"{noun} {', '.join(parts)} in {directory} {verb} damaged or incomplete"
