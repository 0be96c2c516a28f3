"""The registered model as an MLflow pyfunc that takes videos and returns labels and scores.

A model logged by `zeroi2v.engine.tracking.model_format.log_pyfunc_model` names this module as the
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
resolving ``..`` and symlinks) are read; a path longer than the OS allows is refused before it
is resolved (resolving ~10^6 components takes minutes).

Output: one row per input row, in order: ``row`` (its position), ``label``, ``score`` (top-1
probability), ``index``, the top-k ``labels`` / ``scores`` / ``indices`` lists
(``params={"top_k": k}``, default 5) and ``error``: None, or for a row that has no prediction
(bytes that do not decode, invalid base64, a refused path) ``"row N: <why>"`` with the other
fields None. What is wrong with the request as a whole (columns other than ``video``/``path``,
no rows, more than ``max_request_bytes`` of videos and paths, a bad ``top_k``) raises
ValueError, which ``mlflow models serve`` answers with HTTP 400; the size is checked before
anything is decoded or resolved (MLflow's server has already read and parsed the body by then:
put a proxy's body limit in front of it for bytes that never reach Python).
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from zeroi2v.config import Config, from_dict
from zeroi2v.engine.tracking.model_format import (
    CLASSES_KEY,
    CONFIG_KEY,
    DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_TOP_K,
)
from zeroi2v.use.inference import VideoPredictor

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- inputs

COLUMNS = ("video", "path")
OUTPUT_COLUMNS = ("row", "label", "score", "index", "labels", "scores", "indices", "error")
PATH_MAX = os.pathconf("/", "PC_PATH_MAX")  # bytes, the terminating NUL included (4096)
NAME_MAX = os.pathconf("/", "PC_NAME_MAX")  # bytes of one path component (255)


class RowError(ValueError):
    """What is wrong with one row: its output row says so and the other rows go on."""


def _decode_base64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as error:
        raise RowError(f"its 'video' value is not valid base64 ({error})") from None


def _checked_path(path: str) -> None:
    """Refuse, before any file system call, a path the OS could not open anyway."""
    try:
        raw = os.fsencode(path)
    except UnicodeEncodeError:
        raise RowError("its path is not valid text (a lone surrogate)") from None
    if b"\0" in raw:
        raise RowError("its path holds a NUL byte")
    if len(raw) >= PATH_MAX:
        raise RowError(
            f"its path is {len(raw)} bytes long, over the OS limit of {PATH_MAX - 1} (PATH_MAX)"
        )
    longest = max(len(part) for part in raw.split(b"/"))
    if longest > NAME_MAX:
        raise RowError(f"its path has a {longest}-byte component, over the OS limit of {NAME_MAX}")


def _resolved(path: str) -> Path:
    """`path` with ``..`` and symlinks resolved, after `_checked_path`; a symlink loop or an
    unreadable folder is this row's error."""
    _checked_path(path)
    try:
        return Path(path).resolve()
    except (OSError, RuntimeError) as error:  # RuntimeError: a symlink loop (Python < 3.13)
        raise RowError(f"its path cannot be resolved ({error})") from None


def _allowed_path(path: str, root: Path | None) -> str:
    """`path` when it names a file under `root`; refuses everything when no root is set."""
    if root is None:
        raise RowError(
            "reading files on the server is off: send the video's bytes as base64 in 'video' "
            "(or serve the model with model_config {'path_root': DIR} to allow files under DIR)"
        )
    resolved = _resolved(path)
    if not resolved.is_relative_to(root) or not resolved.is_file():
        raise RowError(f"path {path[:200]!r} is not a file under the allowed root {root}")
    return str(resolved)


def _cells(model_input: Any) -> list[tuple[Any, Any]]:
    """(video, path) of every row, untouched; ValueError for a request that is not rows of
    ``video`` / ``path``, naming what it got. A list item is a (video, None) row."""
    if isinstance(model_input, dict):
        model_input = pd.DataFrame(model_input)
    if isinstance(model_input, pd.DataFrame):
        got = [str(column) for column in model_input.columns]
        if not got or set(got) - set(COLUMNS):
            raise ValueError(f"expected a 'video' (base64) and/or 'path' column, got columns {got}")
        records = model_input.to_dict(orient="records")
        cells = [(row.get("video"), row.get("path")) for row in records]
    else:
        if isinstance(model_input, np.ndarray | pd.Series):
            model_input = model_input.tolist()
        if isinstance(model_input, bytes | str):
            model_input = [model_input]
        if not isinstance(model_input, list):
            raise ValueError(f"unsupported input type {type(model_input).__name__}")
        cells = [(item, None) for item in model_input]
    if not cells:
        raise ValueError("the request has no rows")
    return cells


def _check_size(cells: list[tuple[Any, Any]], limit: int) -> None:
    """Refuse a request over `limit` bytes of videos and paths before any of them is read."""
    size = sum(len(v) for cell in cells for v in cell if isinstance(v, bytes | str))
    if size > limit:
        raise ValueError(
            f"the request holds {size} bytes of videos and paths, over the limit of {limit} "
            f"bytes (model_config max_request_bytes): send fewer or smaller videos per request"
        )


def _row_video(video: Any, path: Any, root: Path | None, listed: bool) -> bytes | str:
    """A row's raw bytes (``video``) or allowed file (``path``); RowError says why not."""
    if listed:
        return _list_item(video, root)
    if isinstance(video, bytes | str) and len(video):
        return video if isinstance(video, bytes) else _decode_base64(video)
    if isinstance(path, str) and path:
        return _allowed_path(path, root)
    raise RowError("it has no non-empty 'video' (base64) or 'path'")


def _list_item(item: Any, root: Path | None) -> bytes | str:
    """Bytes, base64, or (only with a path root) a file under it; without a root a string is
    always base64, so the server never even checks whether a file exists."""
    if isinstance(item, bytes):
        return item
    if isinstance(item, str):
        if root is not None and _is_path_under(item, root):
            return _allowed_path(item, root)
        return _decode_base64(item)
    raise RowError(f"list items must be base64 strings or bytes, got {type(item).__name__}")


def _is_path_under(text: str, root: Path) -> bool:
    """Whether a list item names something under `root` (base64 may hold '/' too)."""
    try:
        return _resolved(text).is_relative_to(root)  # a long base64 string is never resolved
    except RowError:
        return False


def _rows(
    model_input: Any, root: Path | None, max_bytes: int = DEFAULT_MAX_REQUEST_BYTES
) -> list[bytes | str | RowError]:
    """Every input row, in order, as the video to predict or the `RowError` that replaces it."""
    cells = _cells(model_input)
    _check_size(cells, max_bytes)
    listed = not isinstance(model_input, dict | pd.DataFrame)
    rows: list[bytes | str | RowError] = []
    for video, path in cells:
        try:
            rows.append(_row_video(video, path, root, listed))
        except RowError as error:
            rows.append(error)
    return rows


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
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    ):
        self.predictor = VideoPredictor(model, cfg, classes, device=device, compile=compile)
        self.path_root = None if path_root is None else Path(path_root).resolve()
        self.max_bytes = int(max_request_bytes)
        if self.max_bytes < 1:
            raise ValueError(f"max_request_bytes must be >= 1, got {max_request_bytes}")

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """One output row per input row, in order: a prediction, or ``error`` says why not."""
        top_k = int((params or {}).get("top_k") or DEFAULT_TOP_K)
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        out = []
        for number, video in enumerate(_rows(model_input, self.path_root, self.max_bytes)):
            if isinstance(video, RowError):
                out.append(_error_row(number, str(video)))
                continue
            try:
                prediction = self.predictor.predict_one(video, top_k=top_k)
            except (*self.predictor.loader.errors, OSError) as exc:
                out.append(_error_row(number, f"it does not decode: {exc}"))
                continue
            out.append(
                {
                    "row": number,
                    "label": prediction.labels[0],
                    "score": prediction.scores[0],
                    "index": prediction.indices[0],
                    "labels": prediction.labels,
                    "scores": prediction.scores,
                    "indices": prediction.indices,
                    "error": None,
                }
            )
        # object columns where a row has None: pandas would turn a float None into NaN, which
        # is not JSON
        columns = {name: [row[name] for row in out] for name in OUTPUT_COLUMNS}
        return pd.DataFrame(
            {
                name: pd.Series(values, dtype=object if None in values else None)
                for name, values in columns.items()
            }
        )


def _error_row(number: int, reason: str) -> dict[str, Any]:
    log.warning("row %d has no prediction: %s", number, reason)
    empty = dict.fromkeys(OUTPUT_COLUMNS)
    return {**empty, "row": number, "error": f"row {number}: {reason}"}


def _load_pyfunc(data_path: str, model_config: dict[str, Any] | None = None) -> VideoPyfunc:
    """MLflow's loader hook: `data_path` is ``<model>/data`` (the pytorch flavor's data);
    `model_config` may set ``device``, ``path_root`` and ``max_request_bytes`` (see the
    module docstring)."""
    # lazy: MLflow ([train]/[serve] extra)
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
    return VideoPyfunc(
        model,
        cfg,
        list(classes),
        device=device,
        path_root=model_config.get("path_root"),
        compile=compile,
        max_request_bytes=model_config.get("max_request_bytes") or DEFAULT_MAX_REQUEST_BYTES,
    )
