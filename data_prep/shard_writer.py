"""Deterministic, crash-safe, resumable tar shards for any ordered list of tasks.

Every source's writer uses this module: the folder-style video sources (`data_prep.shard`)
and the AVA keyframes (`data_prep.ava`); `data_prep.subset` its tar and manifest.
Tar headers are fixed (mtime 0, uid/gid 0, mode 0444), so the same members give the same bytes.

Crash safety: a shard is written to `name.tar.tmp` and `os.replace`d; only then is it recorded
(name, count, sha256, input position) in `{split}.progress.json`. A re-run with the same inputs
and options (the same `fingerprint`) verifies the recorded shards by sha256 and continues
after the last good one. `in_order` runs a task function in a pool, keeping the order.
"""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import os
import signal
import tarfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from zeroi2v.files import sha256_file, write_atomic

FORMAT_VERSION = 2  # 2: lossy x264 without mbtree (shards of version 1 differ)
KILL_HOOK = "DATA_PREP_KILL_AFTER_SAMPLES"  # test hook: SIGKILL self after N samples written


class DeterministicTar:
    """A tar file whose bytes depend only on the members written (no times, owners)."""

    def __init__(self, path: Path):
        self.path = path
        self.file = open(path, "wb")
        self.tar = tarfile.open(fileobj=self.file, mode="w", format=tarfile.GNU_FORMAT)
        self.count = 0

    def add(self, key: str, members: dict[str, bytes]) -> None:
        for ext, payload in members.items():
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(payload), 0, 0o444
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            self.tar.addfile(info, io.BytesIO(payload))
        self.count += 1

    def close(self) -> None:
        self.tar.close()
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()


def _write_json(path: Path, data: dict) -> None:
    write_atomic(path, json.dumps(data, indent=1, sort_keys=False) + "\n")


def fingerprint(**fields: object) -> str:
    """The resume fingerprint of a run: sha256 of the format version and `fields`, everything
    that decides the output bytes besides file contents (dataclasses count by their fields).
    Every source's writer (`write_resumable`) compares it with the recorded one."""
    blob = json.dumps({"version": FORMAT_VERSION, **fields}, default=vars)
    return hashlib.sha256(blob.encode()).hexdigest()


def _load_progress(out: Path, split: str, fingerprint: str, overwrite: bool) -> dict:
    """The verified progress of an earlier run, or a fresh one; stale shards are removed."""
    path = out / f"{split}.progress.json"
    existing = sorted(out.glob(f"{split}-*.tar"))
    fresh = {"fingerprint": fingerprint, "shards": [], "position": 0, "skipped": [], "done": False}
    progress = json.loads(path.read_text()) if path.exists() else None
    if not overwrite:
        if progress is None and existing:
            raise ValueError(
                f"{out} already has {split} shards but no {path.name}; "
                "pass --overwrite to replace them"
            )
        if progress is not None and progress["fingerprint"] != fingerprint:
            raise ValueError(
                f"{out} has {split} shards from different inputs or options; "
                "pass --overwrite to replace them or use another --out"
            )
    if overwrite or progress is None:
        progress = fresh
    good = []
    for shard in progress["shards"]:  # keep the verified prefix
        shard_path = out / shard["name"]
        if not shard_path.exists() or sha256_file(shard_path) != shard["sha256"]:
            break
        good.append(shard)
    if len(good) < len(progress["shards"]):
        last = good[-1] if good else {"position": 0, "skipped": 0}
        progress.update(
            shards=good,
            position=last["position"],
            skipped=progress["skipped"][: last["skipped"]],
            done=False,
        )
    keep = {s["name"] for s in good}
    for stale in existing + sorted(out.glob(f"{split}-*.tar.tmp")):
        if stale.name not in keep:
            stale.unlink()
    _write_json(path, progress)
    return progress


def in_order(work: Callable[[Any], Any], tasks: Iterable, workers: int) -> Iterator:
    """``work(task)`` for each task, in task order; `workers` > 1 uses a process pool (imap
    keeps the order). Closing the iterator shuts the pool down."""
    if workers <= 1:
        yield from map(work, tasks)
        return
    context = multiprocessing.get_context("spawn" if os.name == "nt" else "fork")
    with context.Pool(workers) as pool:
        yield from pool.imap(work, tasks, chunksize=1)


@dataclass
class Outcome:
    """What one task of a split gave: a sample (`key` and its tar members), the inputs it
    skipped (`skip_entry` dicts), or both."""

    key: str | None = None
    members: dict[str, bytes] | None = None
    skipped: list[dict] = field(default_factory=list)
    keyframe_interval: int = 0  # of the sample's video (the longest run between key frames)


def skip_entry(source: str, split: str, reason: str) -> dict:
    return {"source": source, "split": split, "reason": reason}


def write_resumable(
    out: Path,
    split: str,
    fingerprint: str,
    total: int,
    outcomes: Callable[[int], Iterator[Outcome]],
    *,
    shard_size: int,
    overwrite: bool = False,
    progress_bar: bool = True,
    unit: str = "video",
    last_skips: Iterable[dict] = (),
) -> dict:
    """Write ``{out}/{split}-NNNNNN.tar`` from the outcomes of `total` ordered tasks, resuming
    an earlier run with the same `fingerprint` (module docstring); ``outcomes(start)`` yields
    one outcome per task from index `start` on. `last_skips` (inputs known to be unusable
    before any task ran) end the skipped list. Returns the progress record."""
    out.mkdir(parents=True, exist_ok=True)
    progress_path = out / f"{split}.progress.json"
    progress = _load_progress(out, split, fingerprint, overwrite)
    if progress["done"]:
        return progress
    position, skipped = progress["position"], progress["skipped"]
    pending: list[dict] = []
    writer: DeterministicTar | None = None
    longest_gop = 0  # the longest key-frame interval of the videos in `writer`
    kill_after, written = int(os.environ.get(KILL_HOOK, "0")), 0

    def finish_shard(at: int) -> None:
        nonlocal writer, longest_gop
        assert writer is not None
        writer.close()
        final = writer.path.with_suffix("")  # drop ".tmp"
        os.replace(writer.path, final)
        skipped.extend(pending)
        pending.clear()
        progress["shards"].append(
            {
                "name": final.name,
                "count": writer.count,
                "sha256": sha256_file(final),
                "keyframe_interval": longest_gop,
                "position": at,
                "skipped": len(skipped),
            }
        )
        progress["position"] = at
        _write_json(progress_path, progress)
        writer, longest_gop = None, 0

    # disable=None: a bar on a terminal only (no carriage-return redraws in log files)
    shown = None if progress_bar else True
    with (
        tqdm(total=total - position, desc=f"shard {split}", unit=unit, disable=shown) as bar,
        closing(outcomes(position)) as results,  # closing shuts a worker pool down
    ):
        for index, outcome in enumerate(results, start=position):
            bar.update()
            pending.extend(outcome.skipped)
            if outcome.key is None:
                continue
            if writer is None:
                writer = DeterministicTar(out / f"{split}-{len(progress['shards']):06d}.tar.tmp")
            writer.add(outcome.key, outcome.members)
            longest_gop = max(longest_gop, outcome.keyframe_interval)
            written += 1
            if kill_after and written >= kill_after:
                os.kill(os.getpid(), signal.SIGKILL)
            if writer.count == shard_size:
                finish_shard(index + 1)
    if writer is not None:
        finish_shard(total)
    skipped.extend(pending)
    skipped.extend(last_skips)
    progress.update(position=total, skipped=skipped, done=True)
    _write_json(progress_path, progress)
    return progress


def update_manifest(
    out: Path, classes: list[str], split: str, entry: dict, skipped: list[dict]
) -> dict:
    """Merge one split into `{out}/manifest.json` (run splits one after another, not at once)."""
    path = Path(out) / "manifest.json"
    manifest = (
        json.loads(path.read_text())
        if path.exists()
        else {"classes": classes, "splits": {}, "skipped": []}
    )
    if manifest["classes"] != classes:
        raise ValueError(
            f"{path} lists other classes than this source "
            f"({len(manifest['classes'])} vs {len(classes)}); use another --out"
        )
    manifest["splits"][split] = entry
    manifest["skipped"] = [s for s in manifest["skipped"] if s.get("split") != split] + skipped
    _write_json(path, manifest)
    return manifest
