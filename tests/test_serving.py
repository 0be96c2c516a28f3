"""`mlflow models serve` on a registered tiny model answers like launch/predict.py does."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
from test_predict import register_tiny

from bench.serving_load import served as serve

MODEL_NAME = "tiny_serving"


def _post(port: int, payload: dict, timeout: float = 60) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations",
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def served(tmp_path_factory, synthetic_shards, synthetic_videos):
    """The registered model behind a real `mlflow models serve` on 127.0.0.1:<free port>,
    allowed to read files under the synthetic val videos only."""
    tmp = tmp_path_factory.mktemp("serving_registry")
    cfg, _, classes = register_tiny(tmp, synthetic_shards, MODEL_NAME)
    config = {"path_root": str(synthetic_videos / "val"), "max_request_bytes": 1_000_000}
    uri = f"models:/{MODEL_NAME}@champion"
    with serve(uri, cfg.tracking.tracking_uri, config, tmp / "serve.log") as (port, _):
        yield port, cfg, classes


def test_served_top1_equals_predict(served, synthetic_videos, monkeypatch):
    from launch import predict as predict_cli

    port, cfg, classes = served
    videos = [sorted((synthetic_videos / "val" / name).glob("*.mp4"))[0] for name in classes]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", cfg.tracking.tracking_uri)
    expected = predict_cli.main(
        ["--model", f"models:/{MODEL_NAME}@champion", *map(str, videos), "--top-k", "3"]
    )

    encoded = [base64.b64encode(v.read_bytes()).decode() for v in videos]
    records = _post(port, {"dataframe_records": [{"video": e} for e in encoded]})["predictions"]
    assert [r["label"] for r in records] == [p.labels[0] for p in expected]
    assert [r["index"] for r in records] == [p.indices[0] for p in expected]
    assert [r["score"] for r in records] == pytest.approx([p.scores[0] for p in expected], rel=1e-5)

    # `inputs` (columns) with top_k as a param, and a path the server can read.
    by_inputs = _post(port, {"inputs": {"video": encoded}, "params": {"top_k": 3}})["predictions"]
    assert [r["labels"] for r in by_inputs] == [p.labels for p in expected]
    by_path = _post(port, {"dataframe_records": [{"path": str(videos[1])}]})["predictions"]
    assert by_path[0]["label"] == expected[1].labels[0]


def test_server_reads_no_file_outside_its_path_root(served, synthetic_videos):
    port, cfg, _ = served
    inside = sorted((synthetic_videos / "val").rglob("*.mp4"))[0]
    outside = sorted((synthetic_videos / "train").rglob("*.mp4"))[0]
    escaping = (
        synthetic_videos / "val" / ".." / "train" / outside.relative_to(synthetic_videos / "train")
    )
    db = Path(cfg.tracking.tracking_uri.removeprefix("sqlite:///"))
    paths = [outside, escaping, db, inside]
    rows = _post(port, {"dataframe_records": [{"path": str(p)} for p in paths]})["predictions"]
    for number, row in enumerate(rows[:3]):
        assert row["error"].startswith(f"row {number}: path '{paths[number]}' is not a file under")
        assert row["label"] is None
    assert rows[3]["label"] and rows[3]["error"] is None


def test_every_row_is_answered_or_the_request_refused(served, synthetic_videos):
    """Bytes that do not decode never give `200 {"predictions": []}`: each row gets its entry."""
    port, _, _ = served
    good = base64.b64encode(sorted((synthetic_videos / "val").rglob("*.mp4"))[0].read_bytes())
    bad = [base64.b64encode(b).decode() for b in (b"text", b"\x89PNG\r\n\x1a\n" + bytes(64))]
    alone = _post(port, {"inputs": {"video": bad[:1]}})["predictions"]
    assert alone == [
        {
            "row": 0,
            "label": None,
            "score": None,
            "index": None,
            "labels": None,
            "scores": None,
            "indices": None,
            "error": "row 0: it does not decode: cannot read the video header: "
            "Invalid data found when processing input",
        }
    ]
    rows = _post(port, {"inputs": {"video": [bad[1], good.decode(), "not base64!"]}})
    assert [r["row"] for r in rows["predictions"]] == [0, 1, 2]
    assert [r["error"] is None for r in rows["predictions"]] == [False, True, False]
    assert "no usable frame size (0×0)" in rows["predictions"][0]["error"]
    for payload, sentence in (
        ({"dataframe_records": [{"vid": "AAAA"}]}, "got columns ['vid']"),
        ({"inputs": {"video": ["A" * 2_000_000]}}, "over the limit of 1000000 bytes"),
    ):
        with pytest.raises(urllib.error.HTTPError) as error:
            _post(port, payload)
        assert error.value.code == 400
        assert sentence in error.value.read().decode()


def test_pyfunc_in_process_accepts_base64_paths_and_bytes(served, synthetic_videos):
    """`mlflow.pyfunc.load_model` gives the video pyfunc; the torch flavor is still there."""
    import mlflow

    from zeroi2v.models.video import VideoClassifier
    from zeroi2v.use.serving import VideoPyfunc, _load_pyfunc

    _, cfg, classes = served
    mlflow.set_tracking_uri(cfg.tracking.tracking_uri)
    uri = f"models:/{MODEL_NAME}@champion"
    videos = [sorted((synthetic_videos / "val" / name).glob("*.mp4"))[0] for name in classes]
    encoded = [base64.b64encode(v.read_bytes()).decode() for v in videos]
    paths = pd.DataFrame({"path": list(map(str, videos))})
    pyfunc = mlflow.pyfunc.load_model(uri)  # by default it reads only what it is sent
    from_base64 = pyfunc.predict(pd.DataFrame({"video": encoded}))
    refused = pyfunc.predict(paths)["error"].tolist()
    assert all(e.endswith("to allow files under DIR)") for e in refused)
    assert refused[0].startswith("row 0: reading files on the server is off")
    allowed = mlflow.pyfunc.load_model(uri, model_config={"path_root": str(videos[0].parents[1])})
    from_paths = allowed.predict(paths)
    folder = allowed.predict(pd.DataFrame({"path": [str(videos[0].parents[2] / "train")]}))
    assert "is not a file under the allowed root" in folder["error"].iloc[0]
    assert from_base64["label"].tolist() == from_paths["label"].tolist()
    assert set(from_base64["label"]) <= set(classes)

    local = Path(mlflow.artifacts.download_artifacts(uri))
    raw = _load_pyfunc(str(local / "data"))  # what the server's loader builds
    assert isinstance(raw, VideoPyfunc)
    text = raw.predict([str(videos[0])])  # without a root, text is base64
    assert text["error"].iloc[0].startswith("row 0: its 'video' value is not valid base64")
    from_bytes = raw.predict([v.read_bytes() for v in videos])
    assert from_bytes["label"].tolist() == from_paths["label"].tolist()
    assert from_bytes["score"].tolist() == pytest.approx(from_paths["score"].tolist())
    assert isinstance(mlflow.pytorch.load_model(uri), VideoClassifier)
