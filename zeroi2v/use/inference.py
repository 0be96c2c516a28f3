"""Predict classes of whole videos with a trained model, exactly as evaluation scores them.

A video (bytes or a path) goes through the eval data path of `zeroi2v.data` — the same
`ClipLoader.for_eval` the eval loader uses: decord decode, the config's test views
(``num_clips`` temporal clips × ``num_crops`` spatial crops), eval transforms — and the views
are scored with the trainer's `view_scores` (softmax averaged over views). Sharing these two
functions is what makes `launch/predict.py` reproduce `launch/evaluate.py` to the sample.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from zeroi2v.config import Config
from zeroi2v.engine.evaluation.metrics import view_scores
from zeroi2v.engine.tracking.model_format import CLASSES_KEY
from zeroi2v.models.compilation import compile_for_inference

log = logging.getLogger(__name__)


VideoInput = bytes | str | Path


@dataclass
class Prediction:
    """Top-k classes of one video, best first."""

    source: str
    indices: list[int]
    labels: list[str]
    scores: list[float]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_model(uri: str | Path) -> tuple[nn.Module, Config]:
    """`models:/NAME@ALIAS`, a run/model URI or a checkpoint → (eval model on CPU, config)."""
    # lazy: decord ([data] extra), for checkpoints only
    from zeroi2v.engine.release import load_model as release_load

    model, cfg = release_load(uri)
    return model.eval(), cfg


def class_names(cfg: Config, uri: str | Path | None = None) -> list[str]:
    """Class names: the model's metadata, else the val shards' manifest, else the indices.

    Falling back to indices is announced (a log warning), never silent.
    """
    if uri is not None and _is_mlflow_uri(str(uri)):
        import mlflow  # lazy: MLflow ([train]/[serve] extra)

        metadata = mlflow.models.get_model_info(str(uri)).metadata or {}
        if CLASSES_KEY in metadata:
            return list(metadata[CLASSES_KEY])
    if cfg.data.val_shards:
        from zeroi2v.data.shards import read_manifest  # lazy: webdataset ([data] extra)

        try:
            classes = read_manifest(cfg.data.val_shards)["classes"]
        except (OSError, KeyError, ValueError) as error:
            log.warning("no class names (%s); labels will be class indices", error)
        else:
            if len(classes) == cfg.model.num_classes:
                return list(classes)
    log.warning("no class names for this model; labels will be class indices")
    return [str(i) for i in range(cfg.model.num_classes)]


def _is_mlflow_uri(text: str) -> bool:
    return "://" in text or text.startswith(("models:/", "runs:/"))


def display_name(video: VideoInput) -> str:
    """How logs and predictions name a video: its path, or its size for bytes."""
    return f"<{len(video)} bytes>" if isinstance(video, bytes | bytearray) else str(Path(video))


def read_video(video: VideoInput) -> tuple[bytes, str]:
    """(bytes, display name) of a video given as bytes or a path."""
    if isinstance(video, bytes | bytearray):
        return bytes(video), display_name(video)
    path = Path(video)
    if not path.is_file():
        raise FileNotFoundError(f"video file not found: {path}")  # a user error: one sentence
    return path.read_bytes(), str(path)


class VideoPredictor:
    """Test views + multi-view softmax of a model, for bytes or paths; CPU or one GPU."""

    def __init__(
        self,
        model: nn.Module,
        cfg: Config,
        classes: Sequence[str] | None = None,
        device: str | torch.device = "cpu",
        compile: bool = False,
    ) -> None:
        from zeroi2v.data.clips import ClipLoader  # lazy: decord and av ([data] extra)

        self.cfg = cfg
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        if compile:  # the views of every video have one shape: one graph (CUDA graph on GPU)
            compile_for_inference(self.model, self.device)
        self.loader = ClipLoader.for_eval(cfg)
        self.skipped: list[tuple[str, str]] = []  # (video, reason) of videos that fail to decode
        self.classes = (
            list(classes) if classes is not None else [str(i) for i in range(cfg.model.num_classes)]
        )
        if len(self.classes) != cfg.model.num_classes:
            raise ValueError(
                f"got {len(self.classes)} class names for a model with "
                f"{cfg.model.num_classes} classes"
            )

    def views(self, data: bytes, key: str = "video") -> Tensor:
        """(V, C, T, H, W) test views of one encoded video, V = num_clips × num_crops."""
        views, _ = self.loader({"__key__": key, "mp4": data, "cls": "-1"})
        return views

    @torch.no_grad()
    def scores(self, views: Tensor) -> Tensor:
        """(B, V, C, T, H, W) → (B, K) softmax averaged over views (as evaluation does)."""

        return view_scores(self.model, views.to(self.device)).cpu()

    def predict_one(self, video: VideoInput, top_k: int = 5) -> Prediction:
        """Top-k classes of one video; raises what a video that does not decode raises
        (``self.loader.errors``, or OSError for a path that cannot be read)."""
        data, name = read_video(video)
        probs = self.scores(self.views(data, name)[None])[0]  # (K,)
        top = probs.topk(min(top_k, len(self.classes)))
        indices = top.indices.tolist()
        return Prediction(
            source=name,
            indices=indices,
            labels=[self.classes[i] for i in indices],
            scores=[float(p) for p in top.values],
        )

    def predict(self, videos: Iterable[VideoInput], top_k: int = 5) -> list[Prediction]:
        """Top-k classes and their (view-averaged) probabilities for every decodable video.

        A video that cannot be decoded is logged, listed in ``self.skipped`` and left out.
        """
        results = []
        for video in videos:
            try:
                results.append(self.predict_one(video, top_k))
            except self.loader.errors as exc:
                name = display_name(video)
                log.warning("skipping %s: %s", name, exc)
                self.skipped.append((name, str(exc)))
        return results


def predict(
    model_uri: str | Path,
    videos: Sequence[VideoInput],
    top_k: int = 5,
    json_path: str | Path | None = None,
    device: str = "cpu",
    compile: bool = False,
) -> list[Prediction]:
    """Load a model by URI or checkpoint and predict `videos`; optionally write them as JSON."""
    model, cfg = load_model(model_uri)
    predictor = VideoPredictor(
        model, cfg, class_names(cfg, model_uri), device=device, compile=compile
    )
    predictions = predictor.predict(videos, top_k=top_k)
    if json_path is not None:
        Path(json_path).write_text(json.dumps([p.as_dict() for p in predictions], indent=2))
    return predictions


def format_predictions(predictions: Sequence[Prediction]) -> str:
    """Human-readable block: one header line per video, one line per class."""
    lines = []
    for prediction in predictions:
        lines.append(prediction.source)
        for rank, (label, score) in enumerate(
            zip(prediction.labels, prediction.scores, strict=True), start=1
        ):
            lines.append(f"  {rank}. {label:<30} {score:.4f}")
    return "\n".join(lines)
