"""launch/predict.py on a registered model reproduces launch/evaluate.py on the same videos."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

MODEL_NAME = "tiny_predict"


def register_tiny(tmp: Path, shards: Path, name: str, overrides: dict | None = None):
    """A tiny random zeroi2v model (adapters and head perturbed so that merging and the
    predictions matter), merged and registered as ``models:/NAME@champion`` with the shards'
    class names, through `Tracker` (run) and `log_pyfunc_model` (what Tracker.log_model does).
    """
    import mlflow

    import zeroi2v
    from zeroi2v.config import load
    from zeroi2v.data.shards import read_manifest
    from zeroi2v.engine.tracking import Tracker
    from zeroi2v.engine.tracking.model_format import log_pyfunc_model

    cfg = load(
        "configs/tiny_cpu.json",
        {
            "data.val_shards": str(shards / "val-{000000..000001}.tar"),
            "data.train_shards": str(shards / "train-{000000..000005}.tar"),
            "data.num_clips": 2,  # two temporal views: multi-view averaging is exercised
            "data.frame_interval": 1,  # 8 of the 16 frames: room for two distinct clips
            "model.pretrained": None,  # random weights, perturbed below
            "data.num_workers": 0,
            "tracking.tracking_uri": f"sqlite:///{tmp / 'mlflow.db'}",
            "tracking.artifact_location": str(tmp / "mlartifacts"),
            "tracking.model_name": name,
            **(overrides or {}),
        },
    )
    torch.manual_seed(0)
    model = zeroi2v.build_model(cfg).eval()
    with torch.no_grad():
        for param_name, param in model.named_parameters():
            if "adaptation" in param_name or param_name.startswith("head"):
                param.normal_(0, 0.5)
    merged = zeroi2v.merge(model)
    classes = read_manifest(cfg.data.val_shards)["classes"]
    tracker = Tracker(cfg)
    try:
        log_pyfunc_model(merged, cfg, classes, registered_model_name=name)
    finally:
        tracker.finish()
    mlflow.MlflowClient(cfg.tracking.tracking_uri).set_registered_model_alias(name, "champion", 1)
    return cfg, merged, classes


@pytest.fixture(scope="module")
def registered(tmp_path_factory, synthetic_shards, monkeypatch_module):
    tmp = tmp_path_factory.mktemp("predict_registry")
    cfg, merged, classes = register_tiny(tmp, synthetic_shards, MODEL_NAME)
    monkeypatch_module.setenv("MLFLOW_TRACKING_URI", cfg.tracking.tracking_uri)
    return tmp, cfg, merged, classes


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_predict_reproduces_evaluate_accuracy(registered, synthetic_videos, tmp_path):
    from launch import evaluate as evaluate_cli
    from launch import predict as predict_cli

    tmp, cfg, _, classes = registered
    uri = f"models:/{MODEL_NAME}@champion"
    config = tmp / "local.json"
    config.write_text(
        json.dumps(
            {
                "data": {"val_shards": cfg.data.val_shards, "num_workers": 0, "eval_batch_size": 5},
                "tracking": {"tracking_uri": cfg.tracking.tracking_uri},
            }
        )
    )
    metrics = evaluate_cli.main(["--model", uri, "--config", str(config)])

    videos = sorted((synthetic_videos / "val").glob("*/*.mp4"))
    out = tmp_path / "predictions.json"
    predictions = predict_cli.main(
        ["--model", uri, *map(str, videos), "--top-k", "2", "--json", str(out)]
    )
    assert len(predictions) == len(videos) == metrics["count"]
    correct = sum(p.labels[0] == Path(p.source).parent.name for p in predictions)
    assert correct / len(videos) == metrics["top1"]  # exact: same views, transforms, averaging
    assert 0 < correct < len(videos)  # a random model: the comparison is not trivially 0 or 1

    written = json.loads(out.read_text())
    assert [w["labels"] for w in written] == [p.labels for p in predictions]
    assert all(len(w["scores"]) == 2 and w["scores"][0] >= w["scores"][1] for w in written)
    assert {w["labels"][0] for w in written} <= set(classes)


def test_scores_average_softmax_over_views(registered, synthetic_videos):
    """The probability of a video is the mean of its views' softmax (not of their logits)."""
    from zeroi2v.use.inference import VideoPredictor

    _, cfg, merged, classes = registered
    video = sorted((synthetic_videos / "val").glob("*/*.mp4"))[0]
    predictor = VideoPredictor(merged, cfg, classes)
    views = predictor.views(video.read_bytes())
    assert views.shape == (2, 3, cfg.model.num_frames, 32, 32)  # 2 clips × 1 crop
    assert not torch.equal(views[0], views[1])  # two different temporal clips
    with torch.no_grad():
        expected = merged(views).softmax(-1).mean(0)
    top = predictor.predict([video], top_k=4)[0]
    assert top.indices == expected.argsort(descending=True).tolist()
    torch.testing.assert_close(torch.tensor(top.scores), expected.sort(descending=True).values)


def test_missing_video_is_a_clear_error(registered, tmp_path):
    from zeroi2v.errors import USER_ERRORS
    from zeroi2v.use.inference import VideoPredictor

    _, cfg, merged, classes = registered
    with pytest.raises(FileNotFoundError, match="video file not found") as error:
        VideoPredictor(merged, cfg, classes).predict([tmp_path / "nope.mp4"])
    assert isinstance(error.value, USER_ERRORS)  # launch/predict.py: `error: ...`, no traceback
