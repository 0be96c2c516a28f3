"""Write one split of a source as deterministic, resumable WebDataset tar shards.

Order: items are shuffled with `seed`, validated (decord) / re-encoded in worker processes in
that order, and packed `shard_size` valid samples per shard. Tar headers are fixed (mtime 0,
uid/gid 0, mode 0444) and x264 runs single-threaded without mbtree
(`video_io.Encoding.x264_options`), so the same inputs and options give byte-identical shards
on every run.

The writing itself (tar, crash safety, resuming, the manifest) is `data_prep.shard_writer`'s,
shared with the AVA keyframes of `data_prep.ava`.
"""

from __future__ import annotations

import json
import random
import stat
from collections import Counter
from collections.abc import Iterator
from contextlib import closing
from dataclasses import asdict, dataclass
from pathlib import Path

from data_prep import check, shard_writer, video_io
from data_prep.sources import Item, SourceList
from zeroi2v.data.quiet import decoder_detail


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
        kind = _not_regular(item.path)  # stat only: opening a FIFO would wait forever
        if kind:
            return Prepared(item, reason=f"not a regular file ({kind}): never opened")
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


_KINDS = (
    (stat.S_ISFIFO, "a named pipe"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISDIR, "a directory"),
)


def _not_regular(path: Path) -> str | None:
    """What `path` (symlinks followed) is when it is not a regular file, else None."""
    mode = path.stat().st_mode
    if stat.S_ISREG(mode):
        return None
    return next((name for test, name in _KINDS if test(mode)), "not a file")


def _asks_change(data: bytes, report: check.DecodeReport, options: EncodeOptions) -> bool:
    """A resize or frame-rate change is asked, or the container is not mp4."""
    if options.short_side and min(report.width, report.height) > options.short_side:
        return True
    if options.fps and abs(options.fps - report.fps) > 1e-3:
        return True
    return video_io.container_format(data) != video_io.MP4_FORMAT


def _prepare_star(args: tuple[Item, EncodeOptions]) -> Prepared:
    return prepare(*args)


def _fingerprint(
    source: SourceList, order: list[Item], shard_size: int, options: EncodeOptions, seed: int
) -> str:
    return shard_writer.fingerprint(
        classes=source.classes,
        seed=seed,
        shard_size=shard_size,
        options=asdict(options),
        items=[[i.key, str(i.path), i.label] for i in order],
    )


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

    def outcomes(start: int) -> Iterator[shard_writer.Outcome]:
        todo = order[start:]
        labelled = [item for item in todo if item.label in class_index]
        results = shard_writer.in_order(
            _prepare_star, ((item, options) for item in labelled), workers
        )
        with closing(results):
            for item in todo:
                where = _relative(item.path, root)
                if item.label not in class_index:
                    reason = f"label {item.label!r} not in class list"
                    yield shard_writer.Outcome(
                        skipped=[shard_writer.skip_entry(where, split, reason)]
                    )
                    continue
                result = next(results)
                if result.reason is not None:
                    yield shard_writer.Outcome(
                        skipped=[shard_writer.skip_entry(where, split, result.reason)]
                    )
                    continue
                meta = {"label": item.label, "source": where, **result.meta}
                members = {
                    "mp4": result.data,
                    "cls": str(class_index[item.label]).encode(),
                    "json": json.dumps(meta, sort_keys=True).encode(),
                }
                yield shard_writer.Outcome(
                    item.key, members, keyframe_interval=result.meta["keyframe_interval"]
                )

    progress = shard_writer.write_resumable(
        Path(out),
        split,
        _fingerprint(source, order, shard_size, options, seed),
        len(order),
        outcomes,
        shard_size=shard_size,
        overwrite=overwrite,
        progress_bar=progress_bar,
        last_skips=[
            shard_writer.skip_entry(_relative(p, root), split, why) for p, why in source.unusable
        ],
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
    shard_writer.update_manifest(out, source.classes, split, entry, progress["skipped"])
    return {**entry, "skipped": progress["skipped"]}


def _relative(path: Path, root: Path | None) -> str:
    if root is not None:
        try:
            return Path(path).relative_to(root).as_posix()
        except ValueError:
            pass
    return str(path)
