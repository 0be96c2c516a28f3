"""MLflow: one run per training, the merged model in the Model Registry, and loading it back.

Embedded default: a SQLite file and a local artifact folder in the working directory, so a
laptop run needs no server; `tracking.tracking_uri` or $MLFLOW_TRACKING_URI point at a server
instead. Only rank 0 creates a `Tracker`. How a model is stored (flavors, the config as model
metadata) is `model_format`'s business; loading it back is `release.load_model`'s.

Artifacts: with the embedded store they go to `tracking.artifact_location` (default
`mlartifacts/` in the working directory). With a server (http/https URI) they go through the
server (`mlflow server --serve-artifacts`: `mlflow-artifacts:/` locations, stored wherever its
`--artifacts-destination` points) unless `tracking.artifact_location` names another store every
machine can reach (`s3://...`, `file:///shared/...`); a plain local folder is refused there,
because no other machine could load the model from it.

Aliases: MLflow 3 reserves `latest` (it always resolves to the newest version), so every new
version is `@latest` automatically; `champion` is the version with the best val top-1 (the
version tag `val_top1`), kept right under concurrent registrations (`champion`).

A server that goes away mid-run costs no training: the tracker switches to the local
`mlflow_pending/` folder of the run (`offline`) and says at the end what to replay.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zeroi2v import config as config_lib
from zeroi2v.config import Config
from zeroi2v.engine.tracking.champion import SCORE_TAG, promote_champion, score_tag
from zeroi2v.engine.tracking.model_format import log_pyfunc_model
from zeroi2v.engine.tracking.offline import PendingLog
from zeroi2v.errors import ConfigError, TrackingServerError
from zeroi2v.redact import mask_config, mask_secrets

log = logging.getLogger(__name__)

_LIBRARIES = ("torch", "deepspeed", "mlflow", "timm", "open_clip_torch", "webdataset", "decord")


def tracking_uri(cfg: Config) -> str:
    """Config, then $MLFLOW_TRACKING_URI, then `sqlite:///<cwd>/mlflow.db`."""
    uri = cfg.tracking.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    return uri or f"sqlite:///{Path('mlflow.db').resolve()}"


def is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def artifact_location(cfg: Config, uri: str) -> str | None:
    """Where a new experiment keeps its artifacts; None lets the server decide (proxied)."""
    location = cfg.tracking.artifact_location
    if is_server(uri):
        if location is not None and "://" not in location:
            raise ConfigError(
                f"tracking.artifact_location '{location}' is a folder on this machine, but "
                f"the tracking URI {uri} is a server that other machines use; set it to null "
                f"(artifacts go through the server) or to a shared store such as "
                f"s3://bucket/path or file:///shared/mlartifacts"
            )
        return location
    location = location or "mlartifacts"
    return location if "://" in location else Path(location).resolve().as_uri()


def experiment_id(client: Any, cfg: Config, uri: str) -> str:
    """The id of `tracking.experiment`, created on first use (two runs may race to create it)."""
    from mlflow.exceptions import MlflowException  # lazy: MLflow ([train]/[serve] extra)

    name = cfg.tracking.experiment
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name, artifact_location=artifact_location(cfg, uri))
        except MlflowException:
            experiment = client.get_experiment_by_name(name)  # created meanwhile by a rival
            if experiment is None:
                raise
    if is_server(uri) and experiment.artifact_location.startswith("file:"):
        log.warning(
            "experiment %s on %s keeps its artifacts at %s, a path only the machine that "
            "created it may see; use a new tracking.experiment for shared artifacts",
            name,
            uri,
            experiment.artifact_location,
        )
    return experiment.experiment_id


@contextmanager
def _http_limits(timeout: int, retries: int, *, override: bool = True):
    """MLflow's HTTP timeout/retries (read per request) for the block; `override=False` keeps
    values the user set in the environment."""
    keys = {
        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(timeout),
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(retries),
    }
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: v for k, v in keys.items() if override or saved[k] is None})
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
    from mlflow import MlflowClient  # lazy: MLflow ([train]/[serve] extra)

    with _http_limits(timeout=15, retries=1):  # quick, but a busy server may be slow
        try:
            MlflowClient(uri).search_experiments(max_results=1)
        except Exception as error:  # noqa: BLE001 - any failure means "unusable"
            reason = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
            raise TrackingServerError(
                mask_secrets(
                    f"MLflow tracking server {uri} is unreachable ({reason}); start it, fix "
                    f"tracking.tracking_uri / $MLFLOW_TRACKING_URI, or set tracking.enabled=false."
                )
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


# What MLflow reports for an unreachable or failing server (client-side connection errors are
# wrapped as INTERNAL_ERROR); requests/OS errors come from artifact transfers.
_OUTAGE_CODES = {"INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED", None}


def _error_code(error: BaseException) -> str | None:
    return getattr(error, "error_code", None)


@contextmanager
def run_ends_with(tracker: Tracker | None) -> Iterator[None]:
    """End `tracker`'s MLflow run with the block: FAILED when it raises (the error goes on),
    FINISHED otherwise; nothing without a tracker (tracking off, or a rank other than 0)."""
    try:
        yield
    except BaseException:
        if tracker is not None:
            tracker.finish("FAILED")
        raise
    if tracker is not None:
        tracker.finish()


class Tracker:
    """Rank 0's MLflow run: params, metrics, confusion matrices, final merged model.

    With `offline_fallback` (the default) a failed request to the tracking server does not
    stop the training: from then on nothing is sent, everything goes to the run's
    `mlflow_pending/` folder, and `finish` logs one sentence saying what to replay and how.
    """

    def __init__(
        self,
        cfg: Config,
        *,
        world_size: int = 1,
        run_id: str | None = None,
        parent_run_id: str | None = None,
        offline_fallback: bool = True,
    ):
        # lazy: MLflow ([train]/[serve] extra)
        import mlflow
        from mlflow import MlflowClient

        self.cfg = cfg
        self.lineage: dict[str, str] = {}
        self.uri = tracking_uri(cfg)
        self.offline_fallback = offline_fallback
        self.pending = PendingLog(Path(cfg.train.output_dir))
        self.offline = False
        self.step = 0  # the last step a metric was logged for: where an outage starts
        check_server(self.uri)
        mlflow.set_tracking_uri(self.uri)
        self.client = MlflowClient(self.uri)
        self.run = mlflow.start_run(  # a new run may be nested under a search's parent run
            run_id=run_id,
            experiment_id=None if run_id else experiment_id(self.client, cfg, self.uri),
            parent_run_id=None if run_id else parent_run_id,
        )
        self.run_id = self.run.info.run_id
        if run_id is None:  # a resumed run keeps what it logged at the start
            mlflow.set_tags(_environment_tags(world_size))
            mlflow.log_dict(mask_config(config_lib.to_dict(cfg)), "config.json")
            params = {
                k: mask_secrets(json.dumps(v) if not isinstance(v, str) else v)
                for k, v in config_lib.flatten(cfg).items()
            }
            items = sorted(params.items())
            for start in range(0, len(items), 100):  # MLflow accepts ≤ 100 params per call
                mlflow.log_params(dict(items[start : start + 100]))

    def _send(self, call: Callable[[], Any]) -> bool:
        """Run one MLflow request; False (and offline from now on) when the server fails."""
        if self.offline:
            return False
        # lazy: MLflow ([train]/[serve] extra); requests (comes with MLflow)
        from mlflow.exceptions import MlflowException
        from requests import RequestException

        try:
            with _http_limits(timeout=30, retries=3, override=False):
                call()
            return True
        except (MlflowException, RequestException, OSError) as error:  # not our own bugs
            if not self.offline_fallback or _error_code(error) not in _OUTAGE_CODES:
                raise
            reason = (str(error).splitlines() or [type(error).__name__])[0][:200]
            log.warning("MLflow request failed (%s); logging locally from now on", reason)
            self.offline = True
            self.pending.start(
                uri=self.uri,
                run_id=self.run_id,
                config=config_lib.to_dict(self.cfg),
                step=self.step,
                reason=reason,
            )
            return False

    def set_lineage(self, tags: dict[str, str]) -> None:
        """Record the parent model (``model.init_from``) on the run and, later, on the version."""
        import mlflow  # lazy: MLflow ([train]/[serve] extra)

        self.lineage = dict(tags)
        self._send(lambda: mlflow.set_tags(self.lineage))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        import mlflow  # lazy: MLflow ([train]/[serve] extra)

        self.step = step
        if not self._send(lambda: mlflow.log_metrics(metrics, step=step)):
            self.pending.metrics(metrics, step)

    def log_confusion(self, confusion: torch.Tensor, classes: list[str], step: int) -> None:
        import matplotlib  # lazy: matplotlib ([train]/[serve] extra)

        matplotlib.use("Agg")
        # lazy: matplotlib ([train]/[serve] extra); MLflow ([train]/[serve] extra)
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
        name = f"confusion/step{step:07d}.png"
        if not self._send(lambda: mlflow.log_figure(fig, name)):
            fig.savefig(self.pending.artifact_path(name))
        plt.close(fig)

    def log_model(
        self,
        merged: nn.Module,
        example: torch.Tensor,
        val_top1: float | None,
        classes: list[str] | None = None,
        saved: Path | None = None,
    ) -> str | None:
        """Log the merged model with both flavors (pytorch + the video pyfunc of
        `model_format`, config and class names as metadata) and register it; returns the
        `models:/` URI, or None when the server is unreachable (then `saved`, the model's copy
        from `release.save_merged`, is what `launch/sync_mlflow.py` registers later).
        `example` (clips) checks the model gives one logit per class before anything is logged.
        """
        merged = merged.eval()
        with torch.no_grad():
            output = merged(example)
        expected = (example.shape[0], self.cfg.model.num_classes)
        if tuple(output.shape) != expected:
            raise ValueError(
                f"merged model gives logits of shape {tuple(output.shape)}, expected {expected}"
            )
        uri: list[str] = []
        if self._send(lambda: uri.append(self._register(merged, val_top1, classes))):
            return uri[0]
        if saved is not None:  # without a saved copy there is nothing to register later
            path = str(Path(saved).resolve())
            self.pending.update(model={"path": path, "val_top1": val_top1, "classes": classes})
        return None

    def _register(
        self, merged: nn.Module, val_top1: float | None, classes: list[str] | None
    ) -> str:
        import mlflow  # lazy: MLflow ([train]/[serve] extra)

        info = log_pyfunc_model(merged, self.cfg, classes, name="model")
        if not self.cfg.tracking.register_model:
            return info.model_uri
        name = self.cfg.tracking.model_name
        tags = dict(self.lineage)
        if val_top1 is not None:
            tags[SCORE_TAG] = score_tag(val_top1)
        version = mlflow.register_model(info.model_uri, name, tags=tags).version
        promote_champion(self.client, name)
        return f"models:/{name}/{version}"

    def finish(self, status: str = "FINISHED") -> None:
        """End the run; never raises (the training it tracks is done either way)."""
        import mlflow  # lazy: MLflow ([train]/[serve] extra)

        if self._send(lambda: mlflow.end_run(status=status)):
            return
        with suppress(Exception), _http_limits(timeout=5, retries=0):
            mlflow.end_run(status=status)  # clears this process's active run; the server is gone
        self.pending.update(status=status)
        log.warning(self.pending.summary())
