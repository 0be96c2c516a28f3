"""How zeroi2v stores a trained model in MLflow: one model, two flavors over one copy of weights.

- ``pytorch`` (written by `mlflow.pytorch.save_model`): `mlflow.pytorch.load_model(uri)` gives
  the merged `VideoClassifier`, which is what `zeroi2v.engine.release.load_model` uses;
- ``python_function`` whose ``loader_module`` is `PYFUNC_LOADER` (`zeroi2v.use.serving`):
  `mlflow.pyfunc.load_model(uri)` and ``mlflow models serve`` get a pyfunc that takes videos
  and returns labels and scores.

The loader is named, not imported: writing the format needs nothing of the pyfunc that
reads it, so the training engine logs models without depending on the serving code above it.
A pyfunc written with ``python_model=`` would need a second copy of the weights (as an
artifact) or a model without the pytorch flavor; replacing the loader of the pyfunc flavor
keeps one copy and both loaders. `log_pyfunc_model` is the call `Tracker.log_model` makes.
The resolved config and the class names travel as model metadata (`CONFIG_KEY`,
`CLASSES_KEY`), so a loaded model rebuilds its views and transforms.
"""

from __future__ import annotations

import sys
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from torch import nn

from zeroi2v.config import Config, to_dict
from zeroi2v.redact import mask_config

CONFIG_KEY = "zeroi2v_config"  # model metadata key holding the resolved config
CLASSES_KEY = "zeroi2v_classes"  # model metadata key with the class names
PYFUNC_LOADER = "zeroi2v.use.serving"  # the module whose `_load_pyfunc` MLflow calls
DEFAULT_TOP_K = 5
# Serving refuses a request whose video bytes and paths add up to more (model_config
# "max_request_bytes"): 64 MiB is ~100 ten-second 480p clips, far above one batch's worth.
DEFAULT_MAX_REQUEST_BYTES = 64 * 2**20


def signature():
    """Pyfunc schema: the output columns and ``top_k``; no input schema, on purpose.

    With an input schema MLflow drops every column it does not declare before the model sees
    the request (a ``vid`` column arrived as no columns and no rows), so the pyfunc checks its
    own input (``video`` / ``path`` columns, `zeroi2v.use.serving`) and names what it got.
    """
    # lazy: MLflow ([train]/[serve] extra)
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema

    outputs = Schema(
        [
            ColSpec(DataType.long, "row"),
            ColSpec(DataType.string, "label", required=False),
            ColSpec(DataType.double, "score", required=False),
            ColSpec(DataType.long, "index", required=False),
            ColSpec(DataType.string, "error", required=False),
        ]
    )
    params = ParamSchema([ParamSpec("top_k", DataType.long, DEFAULT_TOP_K)])
    return ModelSignature(inputs=None, outputs=outputs, params=params)


def save_model(
    path: str,
    mlflow_model: Any,
    pytorch_model: nn.Module,
    cfg: Config,
    classes: list[str] | None = None,
    **kwargs: Any,
) -> None:
    """Flavor hook for `mlflow.models.Model.log`: pytorch flavor + our pyfunc loader."""
    import mlflow  # lazy: MLflow ([train]/[serve] extra)

    metadata = {**(mlflow_model.metadata or {}), **(kwargs.pop("metadata", None) or {})}
    metadata[CONFIG_KEY] = mask_config(to_dict(cfg))  # the registry never sees credentials
    if classes is not None:
        if len(classes) != cfg.model.num_classes:
            raise ValueError(f"got {len(classes)} class names for {cfg.model.num_classes} classes")
        metadata[CLASSES_KEY] = list(classes)
    mlflow.pytorch.save_model(
        pytorch_model, path, mlflow_model=mlflow_model, metadata=metadata, **kwargs
    )
    pyfunc_conf = mlflow_model.flavors["python_function"]
    pyfunc_conf["loader_module"] = PYFUNC_LOADER
    # MLflow lets model_config override only the keys the logged flavor declares ("config");
    # path_root (None: the server reads no files) and max_request_bytes are two, see
    # zeroi2v.use.serving
    pyfunc_conf["config"] = {
        **pyfunc_conf.get("config", {}),
        "path_root": None,
        "max_request_bytes": DEFAULT_MAX_REQUEST_BYTES,
    }
    mlflow_model.save(str(Path(path) / "MLmodel"))


def log_pyfunc_model(
    merged: nn.Module,
    cfg: Config,
    classes: list[str] | None = None,
    *,
    name: str = "model",
    registered_model_name: str | None = None,
    metadata: dict[str, Any] | None = None,
    pip_requirements: list[str] | None = None,
):
    """Log `merged` to the active run with both flavors; returns MLflow's `ModelInfo`.

    The signature is the pyfunc's (videos in, labels out); no input example is stored
    (a video would have to be embedded in every logged model).
    """

    from mlflow.models import Model  # lazy: MLflow ([train]/[serve] extra)

    if pip_requirements is None:
        names = ("torch", "timm", "open_clip_torch", "decord", "torchvision", "mlflow")
        pip_requirements = [f"{n}=={importlib_metadata.version(n)}" for n in names]
    return Model.log(
        artifact_path=None,
        name=name,
        flavor=sys.modules[__name__],
        registered_model_name=registered_model_name,
        metadata=metadata,
        pytorch_model=merged.eval(),
        cfg=cfg,
        classes=classes,
        signature=signature(),
        pip_requirements=pip_requirements,
        # pickle, not MLflow 3's default pt2: the loaded model is the real `VideoClassifier`
        # (any batch, hookable for attention maps), not a graph traced at one batch size.
        serialization_format="pickle",
    )
