"""The trainer's client state beside DeepSpeed's files in a checkpoint, as JSON (no pickle);
each rank's RNG state is `zeroi2v.engine.rng`'s tensor file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CLIENT_FILE = "client.json"


def save_client(folder: Path, client: dict[str, Any]) -> None:
    (Path(folder) / CLIENT_FILE).write_text(json.dumps(client, indent=1))


def load_client(folder: Path) -> dict[str, Any]:
    return json.loads((Path(folder) / CLIENT_FILE).read_text())
