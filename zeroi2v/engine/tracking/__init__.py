"""MLflow: a run's params, metrics and artifacts (`runs`), the registry's champion alias
(`champion`), how a model is stored (`model_format`), and what a run logs while the server is
away (`offline`; `engine.sync` replays it later, since it loads a checkpoint).

One room for everything that talks to MLflow, so the loop in `trainer` only calls a `Tracker`.
The run API keeps its old address: ``zeroi2v.engine.tracking.Tracker`` (and the other names
below) resolve lazily to `runs`, so importing `champion` or `offline` imports no torch.
"""

from __future__ import annotations

from zeroi2v.lazy import attribute_loader

_EXPORTS = {
    "Tracker": "zeroi2v.engine.tracking.runs",
    "artifact_location": "zeroi2v.engine.tracking.runs",
    "check_server": "zeroi2v.engine.tracking.runs",
    "experiment_id": "zeroi2v.engine.tracking.runs",
    "is_server": "zeroi2v.engine.tracking.runs",
    "run_ends_with": "zeroi2v.engine.tracking.runs",
    "tracking_uri": "zeroi2v.engine.tracking.runs",
}

__all__ = sorted(_EXPORTS)

__getattr__ = attribute_loader(__name__, _EXPORTS)
