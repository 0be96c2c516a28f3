"""Dataset sources: official annotation files → a class list and (key, path, label) items.

One small function per dataset. They only parse; they never open videos. A label that is not
in the class list is kept here and reported as skipped by the sharder, so that every input
line is accounted for in the manifest.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

VIDEO_EXTENSIONS = {".mp4", ".webm", ".avi", ".mkv", ".mov", ".m4v"}
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


def make_key(text: str) -> str:
    """A webdataset-safe key: no dots or slashes, ASCII only."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text.replace("/", "__")).strip("_") or "_"


def read_classes(path: Path) -> list[str]:
    """One class name per line (blank lines ignored)."""
    return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]


def folder(root: Path, split: str, classes: list[str] | None = None) -> SourceList:
    """`root/{split}/{class}/*.{mp4,webm,...}`; classes = sorted class folders of all splits.

    Taking the union over every split folder keeps class indices identical for train and val.
    """
    root = Path(root)
    split_dir = root / split
    if not split_dir.is_dir():
        raise ValueError(f"folder source: {split_dir} is not a directory (want root/split/class)")
    if classes is None:
        classes = sorted(
            {
                p.name
                for s in root.iterdir()
                if s.is_dir()
                for p in s.iterdir()
                if p.is_dir() and p.suffix.lower() not in VIDEO_EXTENSIONS
            }
        )
    items = []
    for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
        if class_dir.suffix.lower() in VIDEO_EXTENSIONS:
            continue  # a directory named like a video directly under split/ is not a class
        for path in sorted(class_dir.iterdir()):
            if path.suffix.lower() in VIDEO_EXTENSIONS:
                items.append(Item(make_key(f"{class_dir.name}/{path.stem}"), path, class_dir.name))
    return SourceList(classes, items)


def k400(
    root: Path, annotations: Sequence[Path], split: str, classes: list[str] | None = None
) -> SourceList:
    """Kinetics CSVs (label,youtube_id,time_start,time_end,split); rows where split == `split`.

    Classes default to the sorted labels of all given CSVs (pass train and val CSVs together so
    both splits get the same indices). Videos: `root/{label}/{name}` if that exists, else
    `root/{name}`, with name `{youtube_id}_{start:06d}_{end:06d}.mp4`.
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
        path = Path(root) / row["label"] / f"{name}.mp4"
        if not path.exists():
            path = Path(root) / f"{name}.mp4"
        items.append(Item(make_key(name), path, row["label"]))
    return SourceList(classes, items)


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
