"""File helpers that checkpoints and shards both rely on for their integrity promises.

A manifest, a `latest` pointer or a progress file is written whole or not at all (a crash
leaves the previous version), and files are hashed in blocks so a multi-GB shard or optimizer
state never sits in memory. Bottom layer: imports nothing of zeroi2v.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_atomic(path: Path, text: str) -> None:
    """Replace `path` with `text` in one step, flushed to disk before the rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
