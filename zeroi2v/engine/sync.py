"""`launch/sync_mlflow.py`: replay a run's `mlflow_pending/` folder (`tracking.offline`) into
its MLflow run once the tracking server is back."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from zeroi2v import config as config_lib
from zeroi2v.engine.tracking.offline import PendingLog

log = logging.getLogger(__name__)


def _pending_metrics(pending: PendingLog) -> list[Any]:
    from mlflow.entities import Metric  # lazy: MLflow ([train]/[serve] extra)

    path = pending.root / "metrics.jsonl"
    if not path.is_file():
        return []
    found = []
    for line in path.read_text().splitlines():
        record = json.loads(line)
        found += [
            Metric(key, float(value), record["time_ms"], record["step"])
            for key, value in record["metrics"].items()
        ]
    return found


def sync(run_dir: Path, tracking_uri: str | None = None) -> dict[str, Any]:
    """Log a run's ``mlflow_pending`` folder into its MLflow run; the folder is then removed.

    Steps already done are recorded in state.json, so a sync that fails half way can be rerun.
    """
    # lazy: MLflow ([train]/[serve] extra); torch (this module stays torch-free)
    from mlflow import MlflowClient

    from zeroi2v.engine.tracking import check_server

    pending = PendingLog(run_dir)
    if not pending.exists():
        raise FileNotFoundError(f"{pending.state_file} does not exist: nothing to log")
    state = pending.state()
    uri = tracking_uri or state["tracking_uri"]
    check_server(uri)
    client, run_id = MlflowClient(uri), state["run_id"]
    metrics = _pending_metrics(pending)
    if not state.get("metrics_synced"):
        for start in range(0, len(metrics), 1000):  # MLflow's log_batch limit
            client.log_batch(run_id, metrics=metrics[start : start + 1000])
        pending.update(metrics_synced=True)
    artifacts = pending.root / "artifacts"
    if artifacts.is_dir() and not state.get("artifacts_synced"):
        client.log_artifacts(run_id, str(artifacts))
        pending.update(artifacts_synced=True)
    model_uri = None
    cfg = config_lib.from_dict(state["config"], {"tracking.tracking_uri": uri})
    if state.get("model"):
        model_uri = _log_model(cfg, run_id, state["model"], state.get("status") or "FINISHED")
    else:
        client.set_terminated(run_id, state.get("status") or "FINISHED")
    shutil.rmtree(pending.root)
    log.info("Logged %d metric values and the pending files to run %s", len(metrics), run_id)
    return {"run_id": run_id, "metrics": len(metrics), "model_uri": model_uri}


def _log_model(cfg: Any, run_id: str, model: dict[str, Any], status: str) -> str | None:
    # lazy: torch (this module stays torch-free)
    import torch

    from zeroi2v.engine.release import load_checkpoint_model
    from zeroi2v.engine.tracking import Tracker

    merged, _ = load_checkpoint_model(Path(model["path"]))
    m = cfg.model
    example = torch.randn(1, 3, m.num_frames, m.image_size, m.image_size)
    tracker = Tracker(cfg, run_id=run_id, offline_fallback=False)
    try:
        uri = tracker.log_model(merged, example, model["val_top1"], model["classes"])
    finally:
        tracker.finish(status)
    return uri
