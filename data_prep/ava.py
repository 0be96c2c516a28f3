"""AVA v2.2 → WebDataset shards, one sample per keyframe ``(video_id, timestamp)``.

Inputs are the official files: the annotation CSV (rows ``video_id,timestamp,x1,y1,x2,y2,
action_id,person_id``, boxes normalised to [0, 1]), the excluded-timestamps CSV
(``video_id,timestamp``), the label map pbtxt (``item { name: "..." id: N }``, the 60 evaluated
actions) and the person proposals: a CSV in the layout of SlowFast's
``ava_*_predicted_boxes.csv`` (``video_id,timestamp,x1,y1,x2,y2[,action_id],score``; the action
column is ignored) or FAIR's ``ava_dense_proposals_*.FAIR.recall_93.9.pkl`` (read without
running code: `data_prep.ava_pickle`). Videos
are ``root/{video_id}.*``; ``video_start`` is the movie second at the file's first frame (0 for
the full movies, 900 for the official 15-minute cuts).

A sample's mp4 holds ``clip_seconds`` around the keyframe (at the video's frame rate), its json
the keyframe's frame index, the person boxes with their class indices (label map order) and
the proposals with their scores; proposals are not thresholded here (``data.proposal_min_score``
does that at load time). Every input row is accounted for: it is in a written sample, or listed
in ``manifest.json`` under ``skipped`` as ``FILE:LINE`` with the reason. A row that does not parse
is an error naming its file and line.
"""

from __future__ import annotations

import csv
import json
import re
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import decord
import numpy as np

from data_prep import video_io
from data_prep.ava_pickle import is_pickle, load_proposal_pickle
from data_prep.shard_writer import (
    Outcome,
    fingerprint,
    in_order,
    skip_entry,
    update_manifest,
    write_resumable,
)
from data_prep.sources import is_side_file, make_key
from zeroi2v.data.quiet import decoder_detail, quiet_stderr

Key = tuple[str, int]


@dataclass(frozen=True)
class Row:
    where: str  # "file.csv:LINE", the row's place in the inputs
    key: Key
    box: tuple[float, float, float, float]
    value: float  # action id (annotations) or detector score (proposals)
    person: str = ""


def read_label_map(path: Path) -> list[tuple[int, str]]:
    """[(action id, name)] in file order, from the official pbtxt."""
    text = Path(path).read_text()
    items = re.findall(r'name:\s*"([^"]*)"\s*(?:label_)?id:\s*(\d+)', text)
    if not items:
        raise ValueError(f"{path}: no 'item {{ name: \"...\" id: N }}' entries in the label map")
    return [(int(action), name) for name, action in items]


def read_excluded(path: Path | None) -> set[Key]:
    if path is None:
        return set()
    return {row.key for row in _rows(path, columns=(2,), value_column=None)}


def read_annotations(path: Path) -> list[Row]:
    return list(_rows(path, columns=(8,), value_column=6, person_column=7))


def read_proposals(path: Path) -> list[Row]:
    """SlowFast's CSV or FAIR's pickle (`data_prep.ava_pickle`), told apart by content."""
    if is_pickle(path):
        return _pickled_rows(path)
    try:
        return list(_rows(path, columns=(7, 8), value_column=-1))
    except (UnicodeDecodeError, csv.Error):
        raise ValueError(
            f"{Path(path).name}: neither a proposal CSV (video_id,timestamp,x1,y1,x2,y2[,action],"
            "score) nor a proposal pickle (dict 'video_id,timestamp' -> (N, 5) array)"
        ) from None


def _pickled_rows(path: Path) -> list[Row]:
    """Rows in the pickle's order (keys as stored, boxes in array order); a box's place is
    ``FILE:video,timestamp#i``. Numbers go through their shortest repr, so float32 arrays give
    the same values as the 3-6 decimals of the CSV release."""
    rows = []
    for key, boxes in load_proposal_pickle(path).items():
        video, timestamp = key.rsplit(",", 1)
        try:
            at = (video, int(timestamp))
        except ValueError:
            raise ValueError(f"{Path(path).name}: key {key!r} has no integer timestamp") from None
        for i, values in enumerate(boxes):
            x1, y1, x2, y2, *score = (float(str(v)) for v in values)
            where = f"{Path(path).name}:{key}#{i}"
            rows.append(Row(where, at, (x1, y1, x2, y2), score[0] if score else 1.0))
    return rows


def _rows(
    path: Path,
    columns: tuple[int, ...],
    value_column: int | None,
    person_column: int | None = None,
) -> Iterator[Row]:
    with open(path, newline="") as f:
        for line, fields in enumerate(csv.reader(f), start=1):
            if not fields:
                continue
            where = f"{Path(path).name}:{line}"
            if len(fields) not in columns:
                raise ValueError(f"{where}: expected {' or '.join(map(str, columns))} columns")
            try:
                key = (fields[0], int(float(fields[1])))
                box = tuple(float(v) for v in fields[2:6]) if len(fields) > 2 else (0, 0, 0, 0)
                value = float(fields[value_column]) if value_column is not None else 0.0
            except ValueError as err:
                raise ValueError(f"{where}: not a number ({err})") from None
            person = fields[person_column] if person_column is not None else ""
            yield Row(where, key, box, value, person)


def _box_problem(box: tuple[float, ...]) -> str | None:
    x1, y1, x2, y2 = box
    if 0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1:
        return None
    return f"box {list(box)} is not inside [0, 1] with x1 < x2 and y1 < y2"


def _find_video(root: Path, video: str) -> Path | None:
    found = sorted(p for p in Path(root).glob(f"{video}.*") if not is_side_file(p))
    return found[0] if found else None


class _Movie:
    """One open video: the clip around a movie second, or why there is none."""

    def __init__(self, path: Path, video_start: float, short_side: int | None) -> None:
        with quiet_stderr():
            probe = decord.VideoReader(str(path), num_threads=1)
            width, height = probe[0].shape[1], probe[0].shape[0]
            scale = short_side / min(width, height) if short_side else 1.0
            if scale < 1:
                width = video_io.readable_width(max(2, round(width * scale) // 2 * 2))
                height = max(2, round(height * scale) // 2 * 2)
                self.reader = decord.VideoReader(
                    str(path), num_threads=1, width=width, height=height
                )
            else:
                self.reader = probe
        self.fps = float(self.reader.get_avg_fps())
        self.start = video_start

    def clip(self, timestamp: int, seconds: float) -> tuple[np.ndarray, int] | str:
        """((T, H, W, 3) frames, keyframe index among them), or the reason there are none."""
        frames = len(self.reader)
        keyframe = round((timestamp - self.start) * self.fps)
        if not 0 <= keyframe < frames:
            return (
                f"timestamp {timestamp} is outside the video ({frames / self.fps:.1f} s from "
                f"second {self.start:g})"
            )
        half = round(seconds * self.fps / 2)
        first, last = max(0, keyframe - half), min(frames - 1, keyframe + half)
        try:
            with quiet_stderr():
                pixels = self.reader.get_batch(list(range(first, last + 1))).asnumpy()
        except (RuntimeError, decord.DECORDError) as err:
            return f"frames {first}-{last} do not decode ({decoder_detail(err)})"
        return pixels, keyframe - first


def _person_boxes(rows: list[Row], index: dict[int, int]) -> tuple[list, list, list]:
    """Rows of one keyframe → (boxes, class indices per box, person ids); one box per person."""
    grouped: dict[tuple, list[int]] = defaultdict(list)
    for row in rows:
        grouped[(row.person, row.box)].append(index[int(row.value)])
    ordered = sorted(grouped.items())
    return (
        [list(box) for (_, box), _ in ordered],
        [sorted(set(labels)) for _, labels in ordered],
        [person for (person, _), _ in ordered],
    )


@dataclass(frozen=True)
class ClipOptions:
    """How every keyframe of a run is cut (also part of the resume fingerprint)."""

    root: Path
    split: str
    index: dict[int, int]  # action id → class index
    clip_seconds: float
    video_start: float
    short_side: int | None
    encoding: video_io.Encoding


@dataclass(frozen=True)
class Keyframe:
    key: Key
    gt: tuple[Row, ...]
    proposals: tuple[Row, ...]


# Per process: the last video opened (keyframes come sorted, so a worker reads one video at a
# time). `shard_ava` empties it first: a run in this process must not reuse an earlier run's file.
_open_movie: dict[str, _Movie | str] = {}


def keyframe_sample(task: tuple[Keyframe, ClipOptions]) -> Outcome:
    """One keyframe → its sample, or every row of it skipped with the reason (no video file, an
    unreadable one, frames that do not decode, a timestamp outside it). Runs in a worker."""
    keyframe, options = task
    video, second = keyframe.key
    if video not in _open_movie:
        _open_movie.clear()
        _open_movie[video] = _open(options.root, video, options.video_start, options.short_side)
    movie = _open_movie[video]
    clip = movie if isinstance(movie, str) else movie.clip(second, options.clip_seconds)
    if isinstance(clip, str):
        rows = keyframe.gt + keyframe.proposals
        return Outcome(skipped=[skip_entry(row.where, options.split, clip) for row in rows])
    pixels, at = clip
    person, labels, person_ids = _person_boxes(list(keyframe.gt), options.index)
    meta = {
        "video": video,
        "timestamp": second,
        "keyframe": at,
        "fps": movie.fps,
        "frames": len(pixels),
        "height": int(pixels.shape[1]),
        "width": int(pixels.shape[2]),
        "boxes": person,
        "labels": labels,
        "person_ids": person_ids,
        "proposals": [[*row.box, row.value] for row in keyframe.proposals],
    }
    members = {
        "mp4": video_io.encode_rgb(pixels, movie.fps, encoding=options.encoding),
        "json": json.dumps(meta, sort_keys=True).encode(),
    }
    return Outcome(make_key(f"{video}_{second:04d}"), members)


def shard_ava(
    root: Path,
    annotations: Path,
    label_map: Path,
    out: Path,
    split: str,
    *,
    excluded: Path | None = None,
    proposals: Path | None = None,
    clip_seconds: float = 2.2,
    video_start: float = 0.0,
    short_side: int | None = None,
    encoding: video_io.Encoding | None = None,
    shard_size: int = 100,
    workers: int = 1,
    overwrite: bool = False,
    progress_bar: bool = True,
) -> dict:
    """Write ``{out}/{split}-NNNNNN.tar`` keyframe samples in (video, timestamp) order with
    `data_prep.shard_writer.write_resumable` (``workers`` processes cut and encode the clips;
    a re-run with the same inputs keeps the finished shards); returns the split's manifest
    entry plus ``skipped`` (one entry per input row not in a sample)."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    actions = read_label_map(label_map)
    index = {action: i for i, (action, _) in enumerate(actions)}
    skip_keys = read_excluded(excluded)
    unusable: list[dict] = []
    gt: dict[Key, list[Row]] = defaultdict(list)
    boxes: dict[Key, list[Row]] = defaultdict(list)
    for rows, kind in ((read_annotations(annotations), gt), (_optional(proposals), boxes)):
        for row in rows:
            problem = _box_problem(row.box)
            if row.key in skip_keys:
                problem = "excluded timestamp"
            elif problem is None and kind is gt and int(row.value) not in index:
                problem = f"action {int(row.value)} is not in the label map"
            if problem:
                unusable.append(skip_entry(row.where, split, problem))
            else:
                kind[row.key].append(row)
    keyframes = [Keyframe(k, tuple(gt[k]), tuple(boxes[k])) for k in sorted(set(gt) | set(boxes))]
    _open_movie.clear()
    encoding = encoding or video_io.Encoding()  # x264 settings of the clips
    options = ClipOptions(Path(root), split, index, clip_seconds, video_start, short_side, encoding)
    progress = write_resumable(
        Path(out),
        split,
        fingerprint(
            source="ava",
            classes=actions,
            shard_size=shard_size,
            options={**vars(options), "root": str(root), "index": sorted(index.items())},
            keyframes=[[k.key, k.gt, k.proposals] for k in keyframes],
        ),
        len(keyframes),
        lambda start: in_order(keyframe_sample, ((k, options) for k in keyframes[start:]), workers),
        shard_size=shard_size,
        overwrite=overwrite,
        progress_bar=progress_bar,
        unit="keyframe",
        last_skips=unusable,
    )
    shards = [{k: s[k] for k in ("name", "count", "sha256")} for s in progress["shards"]]
    dropped = {entry["source"] for entry in progress["skipped"]}
    entry = {
        "shards": shards,
        "count": sum(s["count"] for s in shards),
        "rows_kept": {
            name: sum(row.where not in dropped for rows in kind.values() for row in rows)
            for name, kind in (("annotations", gt), ("proposals", boxes))
        },
        "side_files": 0,
    }
    update_manifest(out, [name for _, name in actions], split, entry, progress["skipped"])
    return {**entry, "skipped": progress["skipped"]}


def _optional(path: Path | None) -> list[Row]:
    return read_proposals(path) if path is not None else []


def _open(root: Path, video: str, start: float, short_side: int | None) -> _Movie | str:
    path = _find_video(root, video)
    if path is None:
        return f"video {video}: no file {video}.* in {root}"
    try:
        return _Movie(path, start, short_side)
    except (RuntimeError, decord.DECORDError, IndexError) as err:
        return f"video {video}: cannot be read ({decoder_detail(err)})"
