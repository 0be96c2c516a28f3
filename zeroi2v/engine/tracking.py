"""MLflow: one run per training, the merged model in the Model Registry, and loading it back.

Embedded default: a SQLite file and a local artifact folder in the working directory, so a
laptop run needs no server; `tracking.tracking_uri` or $MLFLOW_TRACKING_URI point at a server
instead. Only rank 0 creates a `Tracker`. How a model is stored (flavors, the config as model
metadata) is `model_format`'s business; loading it back is `release.load_model`'s.

Aliases: MLflow 3 reserves `latest` (it always resolves to the newest version), so every new
version is `@latest` automatically; `champion` moves to a version only when its val top-1
(kept as the version tag `val_top1`) beats the current champion's.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

import torch
from torch import nn

from zeroi2v import config as config_lib
from zeroi2v.config import Config
from zeroi2v.engine.model_format import log_pyfunc_model
from zeroi2v.errors import TrackingServerError

log = logging.getLogger(__name__)

_LIBRARIES = ("torch", "deepspeed", "mlflow", "timm", "open_clip_torch", "webdataset", "decord")


def tracking_uri(cfg: Config) -> str:
    """Config, then $MLFLOW_TRACKING_URI, then `sqlite:///<cwd>/mlflow.db`."""
    uri = cfg.tracking.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    return uri or f"sqlite:///{Path('mlflow.db').resolve()}"


@contextmanager
def _short_http_timeouts(seconds: int = 5):
    keys = {"MLFLOW_HTTP_REQUEST_TIMEOUT": str(seconds), "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update(keys)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def check_server(uri: str) -> None:
    """Fail before training, in one sentence, when the tracking server can't be reached."""
    from mlflow import MlflowClient

    with _short_http_timeouts():
        try:
            MlflowClient(uri).search_experiments(max_results=1)
        except Exception as error:  # noqa: BLE001 - any failure means "unusable"
            reason = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
            raise TrackingServerError(
                f"MLflow tracking server {uri} is unreachable ({reason}); start it, fix "
                f"tracking.tracking_uri / $MLFLOW_TRACKING_URI, or set tracking.enabled=false."
            ) from None


def _git_sha() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).parent,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _environment_tags(world_size: int) -> dict[str, str]:
    tags = {"git_sha": _git_sha(), "python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            tags[f"version.{name}"] = metadata.version(name)
        except metadata.PackageNotFoundError:
            tags[f"version.{name}"] = "not installed"
    tags["hardware.cpu"] = f"{platform.processor() or platform.machine()} x{os.cpu_count()}"
    tags["hardware.gpu"] = (
        f"{torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
        if torch.cuda.is_available()
        else "none"
    )
    tags["hardware.world_size"] = str(world_size)
    return tags


class Tracker:
    """Rank 0's MLflow run: params, metrics, confusion matrices, final merged model."""

    def __init__(
        self,
        cfg: Config,
        *,
        world_size: int = 1,
        run_id: str | None = None,
        parent_run_id: str | None = None,
    ):
        import mlflow
        from mlflow import MlflowClient

        self.cfg = cfg
        self.lineage: dict[str, str] = {}
        self.uri = tracking_uri(cfg)
        check_server(self.uri)
        mlflow.set_tracking_uri(self.uri)
        self.client = MlflowClient(self.uri)
        experiment = self.client.get_experiment_by_name(cfg.tracking.experiment)
        if experiment is None:
            location = cfg.tracking.artifact_location
            if "://" not in location:
                location = Path(location).resolve().as_uri()
            experiment_id = self.client.create_experiment(
                cfg.tracking.experiment, artifact_location=location
            )
        else:
            experiment_id = experiment.experiment_id
        self.run = mlflow.start_run(  # a new run may be nested under a search's parent run
            run_id=run_id,
            experiment_id=None if run_id else experiment_id,
            parent_run_id=None if run_id else parent_run_id,
        )
        self.run_id = self.run.info.run_id
        if run_id is None:  # a resumed run keeps what it logged at the start
            mlflow.set_tags(_environment_tags(world_size))
            mlflow.log_dict(config_lib.to_dict(cfg), "config.json")
            params = {
                k: json.dumps(v) if not isinstance(v, str) else v
                for k, v in config_lib.flatten(cfg).items()
            }
            items = sorted(params.items())
            for start in range(0, len(items), 100):  # MLflow accepts ≤ 100 params per call
                mlflow.log_params(dict(items[start : start + 100]))

    def set_lineage(self, tags: dict[str, str]) -> None:
        """Record the parent model (``model.init_from``) on the run and, later, on the version."""
        import mlflow

        self.lineage = dict(tags)
        mlflow.set_tags(self.lineage)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        import mlflow

        mlflow.log_metrics(metrics, step=step)

    def log_confusion(self, confusion: torch.Tensor, classes: list[str], step: int) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import mlflow

        size = max(4, len(classes) * 0.5)
        fig, ax = plt.subplots(figsize=(size, size))
        ax.imshow(confusion.numpy(), cmap="Blues")
        ax.set(
            xlabel="predicted",
            ylabel="true",
            xticks=range(len(classes)),
            yticks=range(len(classes)),
            title=f"confusion, step {step}",
        )
        ax.set_xticklabels(classes, rotation=90)
        ax.set_yticklabels(classes)
        for i in range(len(classes)):
            for j in range(len(classes)):
                ax.text(j, i, str(int(confusion[i, j])), ha="center", va="center", fontsize=7)
        fig.tight_layout()
        mlflow.log_figure(fig, f"confusion/step{step:07d}.png")
        plt.close(fig)

    def log_model(
        self,
        merged: nn.Module,
        example: torch.Tensor,
        val_top1: float | None,
        classes: list[str] | None = None,
    ) -> str:
        """Log the merged model with both flavors (`model_format`: pytorch + the video pyfunc,
        config and class names as metadata) and register it; returns the
        `models:/` URI. `example` (clips) checks the model gives one logit per class before
        anything is logged.
        """
        import mlflow

        merged = merged.eval()
        with torch.no_grad():
            output = merged(example)
        expected = (example.shape[0], self.cfg.model.num_classes)
        if tuple(output.shape) != expected:
            raise ValueError(
                f"merged model gives logits of shape {tuple(output.shape)}, expected {expected}"
            )
        info = log_pyfunc_model(merged, self.cfg, classes, name="model")
        if not self.cfg.tracking.register_model:
            return info.model_uri
        name = self.cfg.tracking.model_name
        tags = dict(self.lineage)
        if val_top1 is not None:
            tags["val_top1"] = f"{val_top1:.6f}"
        version = mlflow.register_model(info.model_uri, name, tags=tags).version
        if val_top1 is not None and val_top1 > self._champion_top1(name):
            self.client.set_registered_model_alias(name, "champion", version)
            log.info(
                "Model %s version %s is the new champion (val top-1 %.4f).", name, version, val_top1
            )
        return f"models:/{name}/{version}"

    def _champion_top1(self, name: str) -> float:
        try:
            champion = self.client.get_model_version_by_alias(name, "champion")
        except Exception:  # noqa: BLE001 - no champion yet
            return float("-inf")
        return float(champion.tags.get("val_top1", "-inf"))

    def finish(self, status: str = "FINISHED") -> None:
        import mlflow

        mlflow.end_run(status=status)
