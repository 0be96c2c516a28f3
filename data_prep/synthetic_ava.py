"""A tiny AVA-like set: movies with two "people" and the official file formats (tests, bench).

Each person is a textured rectangle; its actions are what it does for the whole movie: it
stands still (action 1) or walks back and forth (action 4), and a red person also "holds" (7).
Label map ids are non-contiguous (1, 4, 7) like AVA's 60 of 80. Written per movie: the
annotation rows of every keyframe (seconds ``START + 2 ..``), jittered proposals (score > 0.9)
plus one low-scoring distractor per keyframe. `extra_rows` adds rows data_prep must skip.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_prep.video_io import Encoding, encode_rgb

LABEL_MAP = {1: "stand", 4: "walk", 7: "hold red"}
START = 900  # movie second of each file's first frame (the official 15-minute cuts start here)
FPS = 8
SIZE = 64
PERSON_W, PERSON_H = 14, 26


@dataclass(frozen=True)
class Person:
    x: float  # left edge (pixels) when still / centre of the walk
    y: float
    walks: bool
    red: bool

    def actions(self) -> list[int]:
        return [4 if self.walks else 1] + ([7] if self.red else [])

    def left(self, frame: int) -> float:
        return self.x + (12 * np.sin(2 * np.pi * frame / (2 * FPS)) if self.walks else 0.0)

    def box(self, frame: int) -> tuple[float, float, float, float]:
        x1 = self.left(frame)
        return (x1 / SIZE, self.y / SIZE, (x1 + PERSON_W) / SIZE, (self.y + PERSON_H) / SIZE)


def render(people: list[Person], frames: int, rng: np.random.Generator) -> np.ndarray:
    background = rng.integers(90, 140, (SIZE, SIZE, 3), dtype=np.uint8)
    video = np.repeat(background[None], frames, axis=0)
    for person in people:
        colour = np.array([210, 40, 40] if person.red else [40, 60, 210], dtype=np.uint8)
        for t in range(frames):
            x1, y1 = round(person.left(t)), round(person.y)
            video[t, y1 : y1 + PERSON_H, x1 : x1 + PERSON_W] = colour
            video[t, y1 : y1 + 6, x1 + 3 : x1 + PERSON_W - 3] = 230  # a "head"
    return video


def write_set(root: Path, videos: int, keyframes: int, seed: int, prefix: str) -> dict[str, Path]:
    """Movies in ``root/videos`` and the CSVs + label map beside them; returns their paths."""
    rng = np.random.default_rng(seed)
    (root / "videos").mkdir(parents=True, exist_ok=True)
    annotations, proposals = [], []
    frames = (keyframes + 4) * FPS
    for v in range(videos):
        name = f"{prefix}{v:02d}"
        people = [
            Person(6 + 8 * rng.random(), 4 + 30 * rng.random(), *map(bool, rng.integers(0, 2, 2))),
            Person(36 + 6 * rng.random(), 4 + 30 * rng.random(), *map(bool, rng.integers(0, 2, 2))),
        ]
        clip = render(people, frames, rng)
        (root / "videos" / f"{name}.mp4").write_bytes(
            encode_rgb(clip, FPS, encoding=Encoding(crf=10))
        )
        for k in range(keyframes):
            second = START + 2 + k
            frame = (second - START) * FPS
            for p, person in enumerate(people):
                box = [round(c, 4) for c in person.box(frame)]
                annotations += [[name, second, *box, a, p] for a in person.actions()]
                jitter = [round(min(max(c + rng.normal(0, 0.01), 0.0), 1.0), 4) for c in box]
                proposals.append([name, second, *jitter, "", round(0.9 + 0.09 * rng.random(), 3)])
            proposals.append([name, second, 0.0, 0.0, 0.2, 0.2, "", 0.3])
    paths = {
        "annotations": root / f"{prefix}_annotations.csv",
        "proposals": root / f"{prefix}_proposals.csv",
        "label_map": root / "label_map.pbtxt",
        "excluded": root / f"{prefix}_excluded.csv",
    }
    _write_csv(paths["annotations"], annotations)
    _write_csv(paths["proposals"], proposals)
    paths["excluded"].write_text("")
    items = [f'item {{\n  name: "{n}"\n  id: {i}\n}}\n' for i, n in LABEL_MAP.items()]
    paths["label_map"].write_text("".join(items))
    return paths


def _write_csv(path: Path, rows: list[list]) -> None:
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)


def shard_args(paths: dict[str, Path], out: Path, split: str) -> list[str]:
    """``python -m data_prep`` arguments that shard a set `write_set` wrote, as a user would."""
    return [
        "shard",
        "--source=ava",
        f"--root={paths['annotations'].parent / 'videos'}",
        f"--annotations={paths['annotations']}",
        f"--label-map={paths['label_map']}",
        f"--proposals={paths['proposals']}",
        f"--excluded={paths['excluded']}",
        f"--video-start={START}",
        "--clip-seconds=1.0",
        f"--out={out}",
        f"--split={split}",
        "--shard-size=10",
    ]
