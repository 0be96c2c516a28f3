"""Write one split of a source as deterministic, resumable WebDataset tar shards.

Order: items are shuffled with `seed`, validated (decord) / re-encoded in worker processes in
that order, and packed `shard_size` valid samples per shard. Tar headers are fixed (mtime 0,
uid/gid 0, mode 0444) and x264 runs single-threaded without mbtree
(`video_io.Encoding.x264_options`), so the same inputs and options give byte-identical shards
on every run.

Crash safety: a shard is written to `name.tar.tmp` and `os.replace`d; only then is it recorded
(name, count, sha256, input position) in `{split}.progress.json`. A re-run with the same inputs
and options verifies the recorded shards by sha256 and continues after the last good one.
`write_resumable` is that writer for any ordered list of tasks (this module's videos, the AVA
keyframes of `data_prep.ava`); `in_order` runs a task function in a pool, keeping the order.
"""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import os
import random
import signal
import tarfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from data_prep import check, video_io
from data_prep.quiet import decoder_detail
from data_prep.sources import Item, SourceList
from zeroi2v.files import sha256_file, write_atomic

FORMAT_VERSION = 2  # 2: lossy x264 without mbtree (shards of version 1 differ)
KILL_HOOK = "DATA_PREP_KILL_AFTER_SAMPLES"  # test hook: SIGKILL self after N samples written


@dataclass(frozen=True)
class EncodeOptions:
    short_side: int | None = None
    fps: float | None = None
    encoding: video_io.Encoding = video_io.Encoding()
    reencode: bool = False  # also videos that could be copied (their key frames are the source's)


@dataclass
class Prepared:
    """A worker's answer for one item: mp4 bytes + metadata, or the reason it was skipped."""

    item: Item
    data: bytes | None = None
    meta: dict | None = None
    reason: str | None = None


def prepare(item: Item, options: EncodeOptions) -> Prepared:
    """Read, check (every frame decodes) and, if needed, re-encode one video. Never raises.

    Bytes are copied as they are when decord (the training reader) counts exactly the frames
    that FFmpeg decoded and no resize, frame-rate change, rotation or container change is asked;
    otherwise what decodes is re-encoded, so the frame count stored is always the true one.
    Copied bytes keep the source's key-frame interval (the json's `keyframe_interval` says it).
    """
    try:
        data = item.path.read_bytes()
    except OSError as err:
        return Prepared(item, reason=f"cannot read the file: {err.strerror or err}")
    try:
        report = check.decode_check(data)
    except check.Unusable as err:
        return Prepared(item, reason=str(err))
    try:
        meta = video_io.probe(data)
        honest = meta.frames == report.frames
    except RuntimeError:  # FFmpeg decodes it all but decord cannot: store a re-encoded copy
        honest = False
    try:
        if not honest or report.rotation or options.reencode or _asks_change(data, report, options):
            data = video_io.reencode(
                data,
                source_fps=report.fps,
                short_side=options.short_side,
                fps=options.fps,
                encoding=options.encoding,
                rotation=report.rotation,
            )
            meta = video_io.probe(data)  # describe (and check) what is actually stored
    except Exception as err:  # a decoder or encoder failure makes the input unusable
        return Prepared(item, reason=f"cannot be re-encoded: {decoder_detail(err)}")
    return Prepared(item, data, meta.as_dict())


def _asks_change(data: bytes, report: check.DecodeReport, options: EncodeOptions) -> bool:
    """A resize or frame-rate change is asked, or the container is not mp4."""
    if options.short_side and min(report.width, report.height) > options.short_side:
        return True
    if options.fps and abs(options.fps - report.fps) > 1e-3:
        return True
    return video_io.container_format(data) != video_io.MP4_FORMAT


def _prepare_star(args: tuple[Item, EncodeOptions]) -> Prepared:
    return prepare(*args)


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


def _fingerprint(
    source: SourceList, order: list[Item], shard_size: int, options: EncodeOptions, seed: int
) -> str:
    return fingerprint(
        classes=source.classes,
        seed=seed,
        shard_size=shard_size,
        options=asdict(options),
        items=[[i.key, str(i.path), i.label] for i in order],
    )


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


def shard_split(
    source: SourceList,
    out: Path,
    split: str,
    *,
    root: Path | None = None,
    shard_size: int = 100,
    workers: int = 1,
    short_side: int | None = None,
    fps: float | None = None,
    encoding: video_io.Encoding | None = None,
    reencode: bool = False,
    seed: int = 0,
    overwrite: bool = False,
    progress_bar: bool = True,
) -> dict:
    """Shard `source.items` into `{out}/{split}-{index:06d}.tar` and update `{out}/manifest.json`.

    `encoding` (x264 settings of re-encoded videos) defaults to `video_io.Encoding()`;
    `reencode` re-encodes videos that could be copied as they are.
    Returns this split's manifest entry plus its `skipped` list. `root` makes the `source`
    field in each sample's json relative (portable shards); defaults to absolute paths.
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    dup = sorted(k for k, n in Counter(item.key for item in source.items).items() if n > 1)
    if dup:
        raise ValueError(f"{len(dup)} duplicate sample keys in the source, e.g. {dup[:5]}")
    options = EncodeOptions(short_side, fps, encoding or video_io.Encoding(), reencode)
    order = list(source.items)
    random.Random(seed).shuffle(order)
    class_index = {name: i for i, name in enumerate(source.classes)}

    def outcomes(start: int) -> Iterator[Outcome]:
        todo = order[start:]
        labelled = [item for item in todo if item.label in class_index]
        results = in_order(_prepare_star, ((item, options) for item in labelled), workers)
        with closing(results):
            for item in todo:
                where = _relative(item.path, root)
                if item.label not in class_index:
                    reason = f"label {item.label!r} not in class list"
                    yield Outcome(skipped=[skip_entry(where, split, reason)])
                    continue
                result = next(results)
                if result.reason is not None:
                    yield Outcome(skipped=[skip_entry(where, split, result.reason)])
                    continue
                meta = {"label": item.label, "source": where, **result.meta}
                members = {
                    "mp4": result.data,
                    "cls": str(class_index[item.label]).encode(),
                    "json": json.dumps(meta, sort_keys=True).encode(),
                }
                yield Outcome(item.key, members, keyframe_interval=result.meta["keyframe_interval"])

    progress = write_resumable(
        Path(out),
        split,
        _fingerprint(source, order, shard_size, options, seed),
        len(order),
        outcomes,
        shard_size=shard_size,
        overwrite=overwrite,
        progress_bar=progress_bar,
        last_skips=[skip_entry(_relative(p, root), split, why) for p, why in source.unusable],
    )
    shards = [{k: s[k] for k in ("name", "count", "sha256")} for s in progress["shards"]]
    entry = {
        "shards": shards,
        "count": sum(s["count"] for s in shards),
        "side_files": source.side_files,
        # what bounds the loader's decode cost: decord decodes from the key frame before a frame
        "longest_keyframe_interval": max(
            (s.get("keyframe_interval", 0) for s in progress["shards"]), default=0
        ),
    }
    update_manifest(out, source.classes, split, entry, progress["skipped"])
    return {**entry, "skipped": progress["skipped"]}


def _relative(path: Path, root: Path | None) -> str:
    if root is not None:
        try:
            return Path(path).relative_to(root).as_posix()
        except ValueError:
            pass
    return str(path)


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
