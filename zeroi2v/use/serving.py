"""The registered model as an MLflow pyfunc that takes videos and returns labels and scores.

A model logged by `zeroi2v.engine.model_format.log_pyfunc_model` names this module as the
loader of its ``python_function`` flavor: `mlflow.pyfunc.load_model(uri)` and
``mlflow models serve -m models:/NAME@ALIAS --env-manager local`` call `_load_pyfunc`, which
gives `VideoPyfunc`: it decodes videos into the config's test views
(`zeroi2v.use.inference.VideoPredictor`) and averages softmax over views, exactly as
predict.py and evaluation do. The same saved weights also load as the ``pytorch`` flavor.

Inputs (one row per video): a DataFrame / records / ``{"inputs": {...}}`` with a ``video``
column (base64 of the file bytes), or a plain list of base64 strings or bytes. The server reads
only what it is sent: a ``path`` column (a file on the server) is refused unless the model is
loaded with ``model_config={"path_root": DIR}`` (for ``mlflow models serve``:
``SERVING_MODEL_CONFIG='{"path_root": "DIR"}'``), and then only files under DIR (after
resolving ``..`` and symlinks) are read. Output: a DataFrame with ``label``, ``score``
(top-1 probability), ``index``, and the top-k ``labels`` / ``scores`` / ``indices`` lists;
``params={"top_k": k}`` (default 5).
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from zeroi2v.config import Config, from_dict
from zeroi2v.engine.model_format import CLASSES_KEY, CONFIG_KEY, DEFAULT_TOP_K
from zeroi2v.use.inference import VideoPredictor

# ----------------------------------------------------------------------------- inputs


def _decode_base64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as error:
        raise ValueError(f"a 'video' value is not valid base64 ({error})") from None


def _allowed_path(path: str, root: Path | None) -> str:
    """`path` when it names a file under `root`; refuses everything when no root is set."""
    if root is None:
        raise ValueError(
            "reading files on the server is off: send the video's bytes as base64 in 'video' "
            "(or serve the model with model_config {'path_root': DIR} to allow files under DIR)"
        )
    resolved = Path(path).resolve()
    if not resolved.is_relative_to(root) or not resolved.is_file():
        raise ValueError(f"path {path!r} is not a file under the allowed root {root}")
    return str(resolved)


def _as_videos(model_input: Any, root: Path | None = None) -> list[bytes | str]:
    """Rows of any accepted input → raw bytes (for ``video``) or an allowed path (``path``)."""
    if isinstance(model_input, dict):
        model_input = pd.DataFrame(model_input)
    if isinstance(model_input, pd.DataFrame):
        unknown = set(model_input.columns) - {"video", "path"}
        if unknown or model_input.empty:
            raise ValueError(
                f"expected rows with a 'video' (base64) or 'path' column, got columns "
                f"{sorted(map(str, model_input.columns))}"
            )
        videos: list[bytes | str] = []
        for row in model_input.to_dict(orient="records"):
            video, path = row.get("video"), row.get("path")
            if isinstance(video, bytes | str) and len(video):
                videos.append(video if isinstance(video, bytes) else _decode_base64(video))
            elif isinstance(path, str) and path:
                videos.append(_allowed_path(path, root))
            else:
                raise ValueError("every row needs a non-empty 'video' (base64) or 'path'")
        return videos
    if isinstance(model_input, np.ndarray | pd.Series):
        model_input = model_input.tolist()
    if isinstance(model_input, bytes | str):
        model_input = [model_input]
    if isinstance(model_input, list):
        return [_list_item(item, root) for item in model_input]
    raise ValueError(f"unsupported input type {type(model_input).__name__}")


def _list_item(item: Any, root: Path | None) -> bytes | str:
    """Bytes, base64, or (only with a path root) a file under it; without a root a string is
    always base64, so the server never even checks whether a file exists."""
    if isinstance(item, bytes):
        return item
    if isinstance(item, str):
        if root is not None and Path(item).resolve().is_relative_to(root):
            return _allowed_path(item, root)
        return _decode_base64(item)
    raise ValueError(f"list items must be base64 strings or bytes, got {type(item).__name__}")


# ----------------------------------------------------------------------------- pyfunc


class VideoPyfunc:
    """What ``mlflow.pyfunc.load_model`` returns for a zeroi2v model (via `_load_pyfunc`)."""

    def __init__(
        self,
        model: nn.Module,
        cfg: Config,
        classes: list[str],
        device: str = "cpu",
        path_root: str | Path | None = None,
        compile: bool = False,
    ):
        self.predictor = VideoPredictor(model, cfg, classes, device=device, compile=compile)
        self.path_root = None if path_root is None else Path(path_root).resolve()

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> pd.DataFrame:
        top_k = int((params or {}).get("top_k") or DEFAULT_TOP_K)
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        predictions = self.predictor.predict(_as_videos(model_input, self.path_root), top_k=top_k)
        return pd.DataFrame(
            {
                "label": [p.labels[0] for p in predictions],
                "score": [p.scores[0] for p in predictions],
                "index": [p.indices[0] for p in predictions],
                "labels": [p.labels for p in predictions],
                "scores": [p.scores for p in predictions],
                "indices": [p.indices for p in predictions],
            }
        )


def _load_pyfunc(data_path: str, model_config: dict[str, Any] | None = None) -> VideoPyfunc:
    """MLflow's loader hook: `data_path` is ``<model>/data`` (the pytorch flavor's data);
    `model_config` may set ``device`` and ``path_root`` (see the module docstring)."""
    import mlflow
    from mlflow.models import Model

    root = Path(data_path).parent
    meta = Model.load(str(root / "MLmodel")).metadata or {}
    if CONFIG_KEY not in meta:
        raise ValueError(f"{root} has no '{CONFIG_KEY}' metadata; was it logged by zeroi2v?")
    cfg = from_dict(meta[CONFIG_KEY])
    classes = meta.get(CLASSES_KEY) or [str(i) for i in range(cfg.model.num_classes)]
    model_config = model_config or {}
    device = model_config.get("device") or ("cuda" if torch.cuda.is_available() else "cpu")
    compile = str(model_config.get("compile", False)).lower() in ("1", "true")
    model = mlflow.pytorch.load_model(str(root), map_location="cpu")
    path_root = model_config.get("path_root")
    return VideoPyfunc(
        model, cfg, list(classes), device=device, path_root=path_root, compile=compile
    )
