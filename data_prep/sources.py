"""Dataset sources: official annotation files → a class list and (key, path, label) items.

One small function per dataset. They only parse; they never open videos. A label that is not
in the class list is kept here and reported as skipped by the sharder, so that every input
line is accounted for in the manifest.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from glob import escape as glob_escape
from pathlib import Path

# Clearly not videos: ignored (and counted) instead of being probed. Anything else is probed.
SIDE_FILE_SUFFIXES = {".txt", ".json", ".csv", ".tsv", ".md", ".nfo", ".srt", ".vtt", ".log"}
K400_COLUMNS = {"label", "youtube_id", "time_start", "time_end", "split"}
SOURCES = ("folder", "k400", "ssv2", "ucf101", "hmdb51", "diving48")


@dataclass(frozen=True)
class Item:
    key: str  # stable sample id: [A-Za-z0-9_-] only (webdataset splits names at the first dot)
    path: Path
    label: str


@dataclass(frozen=True)
class SourceList:
    classes: list[str]
    items: list[Item]
    unusable: list[tuple[Path, str]] = field(default_factory=list)  # files, why not an item
    side_files: int = 0  # .txt/.json/.csv/hidden files found and ignored


def make_key(text: str) -> str:
    """A webdataset-safe key: no dots or slashes, ASCII only, readable.

    Accents are dropped ("épée" → "epee"); a name with any non-ASCII character also gets a
    short hash of the full name, so names differing only there stay apart.
    """
    plain = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    key = re.sub(r"[^A-Za-z0-9_-]+", "_", plain.replace("/", "__")).strip("_") or "_"
    return key if text.isascii() else f"{key}-{_short_hash(text)}"


def _short_hash(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=4).hexdigest()


def unique_keys(items: list[Item], root: Path) -> list[Item]:
    """Items whose keys collide ("a b" and "a_b" both give "a_b") get a hash of their path."""
    counts = Counter(item.key for item in items)
    return [
        replace(item, key=f"{item.key}-{_short_hash(_relative(item.path, root))}")
        if counts[item.key] > 1
        else item
        for item in items
    ]


def _relative(path: Path, root: Path) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return str(path)


def is_side_file(path: Path) -> bool:
    """Hidden files and text/metadata files that sit next to videos in real collections."""
    return path.name.startswith(".") or path.suffix.lower() in SIDE_FILE_SUFFIXES


def read_classes(path: Path) -> list[str]:
    """One class name per line (blank lines ignored)."""
    return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]


def folder(root: Path, split: str, classes: list[str] | None = None) -> SourceList:
    """`root/{split}/{class}/**/*`; classes = sorted class folders of all splits.

    Every regular file is judged by its content later (no extension list): all files in class
    folders are items, side files are counted, files outside class folders are unusable.
    Taking the union over every split folder keeps class indices identical for train and val.
    """
    root = Path(root)
    split_dir = root / split
    if not split_dir.is_dir():
        raise ValueError(f"folder source: {split_dir} is not a directory (want root/split/class)")
    if classes is None:
        classes = sorted(
            {p.name for s in _visible_dirs(root) for p in _visible_dirs(s)},
        )
    items, unusable, side_files = [], [], 0
    for path in sorted(split_dir.rglob("*")):
        if path.is_dir():
            continue
        relative = path.relative_to(split_dir)
        if any(part.startswith(".") for part in relative.parts) or is_side_file(path):
            side_files += 1
        elif len(relative.parts) == 1:
            unusable.append((path, f"not inside a class folder (want {split}/CLASS/{path.name})"))
        else:
            label = relative.parts[0]
            name = relative.with_suffix("").as_posix()
            items.append(Item(make_key(name), path, label))
    return SourceList(classes, items, unusable, side_files)


def _visible_dirs(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]


def k400(
    root: Path, annotations: Sequence[Path], split: str, classes: list[str] | None = None
) -> SourceList:
    """Kinetics CSVs (label,youtube_id,time_start,time_end,split); rows where split == `split`.

    Classes default to the sorted labels of all given CSVs (pass train and val CSVs together so
    both splits get the same indices). Videos: `root/{label}/{name}.*` if that exists, else
    `root/{name}.*`, with name `{youtube_id}_{start:06d}_{end:06d}` (any container).
    """
    rows = []
    for path in annotations:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            missing = K400_COLUMNS - set(reader.fieldnames or ())
            if missing:
                raise ValueError(f"k400: {path} lacks CSV columns {sorted(missing)}")
            rows += list(reader)
    if classes is None:
        classes = sorted({row["label"] for row in rows})
    items = []
    for row in rows:
        if row["split"] != split:
            continue
        name = (
            f"{row['youtube_id']}_{int(float(row['time_start'])):06d}_"
            f"{int(float(row['time_end'])):06d}"
        )
        items.append(Item(make_key(name), _k400_path(Path(root), row["label"], name), row["label"]))
    return SourceList(classes, items)


def _k400_path(root: Path, label: str, name: str) -> Path:
    """`root/label/name.*` or `root/name.*` (downloads come as .mp4, .mkv or .webm)."""
    for folder in (root / label, root):
        found = sorted(p for p in folder.glob(f"{glob_escape(name)}.*") if not is_side_file(p))
        if found:
            return found[0]
    return root / f"{name}.mp4"  # missing: reported as "cannot read the file"


def ssv2_class_name(template: str) -> str:
    """ "Putting [something] into [something]" → "Putting something into something"."""
    return template.replace("[", "").replace("]", "")


def ssv2(root: Path, annotations: Sequence[Path]) -> SourceList:
    """SSv2: labels JSON {name: index} and a sample list [{id, label, template, placeholders}].

    The two files are told apart by their JSON type (dict vs list). Videos: `root/{id}.webm`.
    """
    labels, samples = None, None
    for path in annotations:
        data = json.loads(Path(path).read_text())
        if isinstance(data, dict):
            labels = data
        else:
            samples = data
    if labels is None or samples is None:
        raise ValueError("ssv2 needs --annotations LABELS.json SAMPLES.json (a dict and a list)")
    classes = [name for name, _ in sorted(labels.items(), key=lambda kv: int(kv[1]))]
    items = [
        Item(
            make_key(str(s["id"])),
            Path(root) / f"{s['id']}.webm",
            ssv2_class_name(s.get("template", "")),
        )
        for s in samples
    ]
    return SourceList(classes, items)


def ucf101(root: Path, annotations: Sequence[Path]) -> SourceList:
    """UCF101: classInd.txt ("1 ApplyEyeMakeup") + one train/test list ("Class/v_x.avi [idx]").

    The label is the class folder of each line (test lists carry no index).
    """
    class_file = [p for p in annotations if Path(p).name.lower().startswith("classind")]
    lists = [p for p in annotations if p not in class_file]
    if len(class_file) != 1 or not lists:
        raise ValueError("ucf101 needs --annotations classInd.txt trainlist01.txt (or testlist)")
    lines = Path(class_file[0]).read_text().splitlines()
    numbered = [line.split() for line in lines if line.strip()]
    classes = [name for _, name in sorted(numbered, key=lambda p: int(p[0]))]
    items = []
    for path in lists:
        for line in Path(path).read_text().splitlines():
            if line.strip():
                relative = line.split()[0]
                items.append(
                    Item(
                        make_key(Path(relative).stem), Path(root) / relative, relative.split("/")[0]
                    )
                )
    return SourceList(classes, items)


HMDB_SPLIT_IDS = {"train": "1", "val": "2", "test": "2"}


def hmdb51(root: Path, annotations: Sequence[Path], split: str) -> SourceList:
    """HMDB51: `{class}_test_split{k}.txt` files, lines "video.avi id" (1 train, 2 test, 0 unused).

    `split` train selects id 1, val/test id 2. Classes: sorted class names of the given files.
    Videos: `root/{class}/{video}`.
    """
    if split not in HMDB_SPLIT_IDS:
        raise ValueError(f"hmdb51: --split must be one of {sorted(HMDB_SPLIT_IDS)}, got {split!r}")
    wanted = HMDB_SPLIT_IDS[split]
    per_class = {}
    for path in annotations:
        match = re.match(r"(.+)_test_split\d+\.txt$", Path(path).name)
        if not match:
            raise ValueError(f"hmdb51: {path} is not named CLASS_test_splitK.txt")
        per_class[match.group(1)] = Path(path)
    items = []
    for name in sorted(per_class):
        for line in per_class[name].read_text().splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1] == wanted:
                path = Path(root) / name / parts[0]
                items.append(Item(make_key(path.stem), path, name))
    return SourceList(sorted(per_class), items)


def diving48(root: Path, annotations: Sequence[Path]) -> SourceList:
    """Diving48: vocab JSON (list of 4-part dive names) + sample list [{vid_name, label}].

    Class name: the vocab entry joined with spaces ("Back 15som 05Twis FREE"). Videos:
    `root/{vid_name}.mp4`. An out-of-range label index becomes "#<index>" (reported as skipped).
    """
    vocab, samples = None, None
    for path in annotations:
        data = json.loads(Path(path).read_text())
        if data and isinstance(data[0], dict):
            samples = data
        else:
            vocab = data
    if vocab is None or samples is None:
        raise ValueError("diving48 needs --annotations Diving48_vocab.json Diving48_V2_train.json")
    classes = [" ".join(entry) if isinstance(entry, list) else str(entry) for entry in vocab]
    items = []
    for s in samples:
        index = int(s["label"])
        label = classes[index] if 0 <= index < len(classes) else f"#{index}"
        items.append(Item(make_key(s["vid_name"]), Path(root) / f"{s['vid_name']}.mp4", label))
    return SourceList(classes, items)


def load_source(
    name: str, root: Path, annotations: Sequence[Path], split: str, classes_file: Path | None = None
) -> SourceList:
    """Dispatch on the source name (the CLI's --source)."""
    if classes_file is not None and name not in ("folder", "k400"):
        raise ValueError(f"--classes is only for folder and k400; {name} defines its own classes")
    classes = read_classes(classes_file) if classes_file else None
    if name != "folder" and not annotations:
        raise ValueError(f"--source {name} needs --annotations")
    source = _load(name, root, annotations, split, classes)
    return replace(source, items=unique_keys(source.items, Path(root)))


def _load(
    name: str, root: Path, annotations: Sequence[Path], split: str, classes: list[str] | None
) -> SourceList:
    if name == "folder":
        return folder(root, split, classes)
    if name == "k400":
        return k400(root, annotations, split, classes)
    if name == "ssv2":
        return ssv2(root, annotations)
    if name == "ucf101":
        return ucf101(root, annotations)
    if name == "hmdb51":
        return hmdb51(root, annotations, split)
    if name == "diving48":
        return diving48(root, annotations)
    raise ValueError(f"unknown source {name!r}; choose one of {', '.join(SOURCES)}")
