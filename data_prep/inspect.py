"""Look at shards: per-shard / per-class counts and a contact sheet of a few clips.

Reads the tars with `tarfile`, grouping members into samples by WebDataset's own key rule
(`webdataset.tariterators.base_plus_ext`: the key is the path up to the first dot of the
file name, so ``a.b/c.mp4`` is key ``a.b/c``), exactly as the loaders do; so it also checks
that what the manifest promises is what the files hold, and a member that the rule cannot
split, or a sample without a member a zeroi2v shard has, is one sentence, not a KeyError.
"""

from __future__ import annotations

import json
import tarfile
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from webdataset.tariterators import base_plus_ext

from data_prep.video_io import decode_at

LABEL_HEIGHT = 14  # pixels of caption above each row of the contact sheet


def iter_samples(shard: Path) -> Iterator[dict]:
    """Samples of one tar as {"__key__", "__url__", ext: bytes, ...} (webdataset's grouping
    rule: consecutive members with one key, the extension lower-cased)."""
    if not tarfile.is_tarfile(shard):
        raise ValueError(f"{shard} is not a tar shard (expected a {{split}}-NNNNNN.tar file)")
    sample: dict = {}
    try:
        tar = tarfile.open(shard)
    except tarfile.TarError:
        raise ValueError(
            f"{shard} is not a tar file (expected shards from data_prep shard)"
        ) from None
    with tar:
        for info in tar:
            if not info.isfile():
                continue
            key, ext = base_plus_ext(info.name)
            if key is None:
                raise ValueError(
                    f"{shard}: member {info.name!r} has no KEY.EXT name by WebDataset's rule "
                    "(an extension after the file name's first dot), so the loaders skip it; "
                    "rebuild the shard with data_prep shard"
                )
            if sample and sample["__key__"] != key:
                yield sample
                sample = {}
            sample.update({"__key__": key, "__url__": str(shard)})
            sample[ext.lower()] = tar.extractfile(info).read()
    if sample:
        yield sample


def member(sample: dict, ext: str) -> bytes:
    """``sample[ext]``, or one sentence naming the shard, the sample and what it holds."""
    if ext not in sample:
        held = sorted(k for k in sample if not k.startswith("__"))
        raise ValueError(
            f"{sample['__url__']}: sample {sample['__key__']!r} has no .{ext} member (it has "
            f"{held}); data_prep shard writes mp4, cls and json for every sample"
        )
    return sample[ext]


def labels_of(meta: dict, classes: Sequence[str]) -> list[str]:
    """A clip's class; for an AVA keyframe, its actions: one per annotated person and action
    (`labels` holds indices into the manifest's classes, one list per box)."""
    if "label" in meta:
        return [meta["label"]]
    return [classes[i] if i < len(classes) else str(i) for box in meta["labels"] for i in box]


def manifest_classes(shard: Path) -> list[str]:
    """The class names of the manifest beside a shard ([] when there is none)."""
    manifest = Path(shard).parent / "manifest.json"
    return json.loads(manifest.read_text())["classes"] if manifest.is_file() else []


def count(shards: Sequence[Path]) -> dict[str, Counter]:
    """{shard name: Counter(label → samples)}; AVA: label → annotated person-actions."""
    counts = {}
    for shard in map(Path, shards):
        classes = manifest_classes(shard)
        counts[shard.name] = Counter(
            label
            for x in iter_samples(shard)
            for label in labels_of(json.loads(member(x, "json")), classes)
        )
    return counts


def format_table(counts: dict[str, Counter]) -> str:
    """Rows = classes (+ total), columns = shards + total."""
    labels = sorted({label for c in counts.values() for label in c})
    names = list(counts)
    width = max([len(label) for label in labels] + [5])
    lines = [f"{'class':<{width}}  " + "  ".join(names) + "  total"]
    for label in [*labels, "total"]:
        cells = [sum(counts[n].values()) if label == "total" else counts[n][label] for n in names]
        row = "  ".join(f"{v:>{len(n)}}" for v, n in zip(cells, names, strict=True))
        lines.append(f"{label:<{width}}  {row}  {sum(cells):>5}")
    return "\n".join(lines)


def frame_indices(total: int, columns: int) -> list[int]:
    """`columns` frames spread evenly over the clip."""
    return sorted({int(i) for i in np.linspace(0, total - 1, min(columns, total))})


def contact_sheet(
    shards: Sequence[Path],
    clips: int = 4,
    columns: int = 8,
    scale: int = 2,
    skipped: list[tuple[str, str]] | None = None,
) -> Image.Image:
    """Rows = the first `clips` decodable samples, columns = evenly spaced frames, a caption.

    Only the frames shown are decoded. Samples that fail to decode are appended to `skipped`
    as (key, reason) and replaced by the next one. Frames are enlarged `scale`× (nearest) so
    tiny test clips stay visible. Tile (r, c) sits at x = c * W * scale,
    y = r * (H * scale + LABEL_HEIGHT) + LABEL_HEIGHT.
    """
    rows = []
    for shard in shards:
        classes = manifest_classes(Path(shard))
        for sample in iter_samples(Path(shard)):
            meta = json.loads(member(sample, "json"))
            stored = meta.get("frames")  # what decoded at shard time caps decord's count

            def choose(total: int, stored: int | None = stored) -> list[int]:
                return frame_indices(min(total, stored) if stored else total, columns)

            try:
                frames = decode_at(member(sample, "mp4"), choose)  # (columns, H, W, 3)
            except RuntimeError as err:
                if skipped is not None:
                    skipped.append((sample["__key__"], str(err)))
                continue
            caption = ", ".join(dict.fromkeys(labels_of(meta, classes)))  # AVA: its actions
            rows.append((caption, sample["__key__"], frames))
            if len(rows) == clips:
                break
        if len(rows) == clips:
            break
    if not rows:
        raise ValueError("no samples found in the given shards")
    height, width = (s * scale for s in rows[0][2].shape[1:3])
    cols = max(len(r[2]) for r in rows)
    sheet = Image.new("RGB", (cols * width, len(rows) * (height + LABEL_HEIGHT)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (label, key, frames) in enumerate(rows):
        top = r * (height + LABEL_HEIGHT)
        draw.text((2, top + 1), f"{label}  ({key})", fill="black")
        for c, frame in enumerate(frames):
            tile = Image.fromarray(frame).resize((width, height), Image.NEAREST)
            sheet.paste(tile, (c * width, top + LABEL_HEIGHT))
    return sheet
