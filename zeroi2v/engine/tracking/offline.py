"""What a training could not log because the MLflow server went away, and logging it later.

A tracking server that dies mid-run must not cost the training: the `Tracker` stops talking
to the server at the first failed request and writes everything still to be logged under
``<train.output_dir>/mlflow_pending/`` instead (metrics as JSON lines, figures as files, the
merged model's path and val top-1). The training finishes as usual (checkpoints and
``merged.pt`` are local anyway), and ``python launch/sync_mlflow.py --run-dir <output_dir>``
replays the folder into the same MLflow run once the server is back: metrics, figures, the
registered model (with the champion check) and the run's final status.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PENDING = "mlflow_pending"
SYNC_COMMAND = "python launch/sync_mlflow.py --run-dir {run_dir}"


class PendingLog:
    """The ``mlflow_pending`` folder of one run: state.json, metrics.jsonl, artifacts/."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.root = self.run_dir / PENDING

    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    def exists(self) -> bool:
        return self.state_file.is_file()

    def state(self) -> dict[str, Any]:
        return json.loads(self.state_file.read_text())

    def update(self, **values: Any) -> None:
        state = self.state() if self.exists() else {}
        state.update(values)
        self.root.mkdir(parents=True, exist_ok=True)
        self.state_file.write_text(json.dumps(state, indent=2))

    def start(self, *, uri: str, run_id: str, config: dict[str, Any], step: int, reason: str):
        self.update(
            tracking_uri=uri,
            run_id=run_id,
            config=config,
            since_step=step,
            reason=reason,
            model=None,
            status=None,
        )

    def metrics(self, metrics: dict[str, float], step: int) -> None:
        with (self.root / "metrics.jsonl").open("a") as handle:
            record = {"step": step, "time_ms": int(time.time() * 1000), "metrics": metrics}
            handle.write(json.dumps(record) + "\n")

    def artifact_path(self, relative: str) -> Path:
        path = self.root / "artifacts" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def summary(self) -> str:
        """One sentence: what was not logged, where the training is, how to log it later."""
        state = self.state()
        figures = sum(path.is_file() for path in (self.root / "artifacts").rglob("*"))
        model = state.get("model")
        what = f"metrics from step {state['since_step']} on, {figures} figure(s)"
        if model:
            what += f" and the merged model {model['path']} (not registered)"
        return (
            f"MLflow server {state['tracking_uri']} became unreachable at step "
            f"{state['since_step']} ({state['reason']}); not logged to run {state['run_id']}: "
            f"{what}; the training itself is complete in {self.run_dir} and the rest is kept "
            f"in {self.root}; log it later with: {SYNC_COMMAND.format(run_dir=self.run_dir)}"
        )
