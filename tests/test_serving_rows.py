"""The video pyfunc answers every input row, in order, or refuses the request in one sentence.

In-process (`VideoPyfunc` over a random tiny model, no MLflow): each case is what a hostile
client sent to `mlflow models serve` (tests/test_serving.py checks the same over HTTP).
"""

from __future__ import annotations

import base64
import pathlib
from pathlib import Path

import pandas as pd
import pytest
import torch

from bench.serving_load import hostile_videos
from zeroi2v.config import load

LIMIT = 1_000_000  # max_request_bytes of these tests


@pytest.fixture(scope="module")
def pyfunc(synthetic_videos):
    import zeroi2v
    from zeroi2v.use.serving import VideoPyfunc

    cfg = load("configs/tiny_cpu.json", {"model.pretrained": None, "data.num_workers": 0})
    torch.manual_seed(0)
    classes = ["down", "left", "right", "up"]
    root = synthetic_videos / "val"
    return VideoPyfunc(
        zeroi2v.build_model(cfg).eval(), cfg, classes, path_root=root, max_request_bytes=LIMIT
    )


@pytest.fixture(scope="module")
def good(synthetic_videos) -> list[Path]:
    return sorted((synthetic_videos / "val").glob("*/*.mp4"))[:2]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_every_row_gets_an_output_row_in_order(pyfunc, good):
    bad = hostile_videos(good[0].read_bytes())
    rows = [good[0].read_bytes(), *bad.values(), good[1].read_bytes()]
    out = pyfunc.predict(pd.DataFrame({"video": [b64(r) for r in rows]}))
    assert out["row"].tolist() == list(range(len(rows)))
    assert out["error"].iloc[0] is None and out["error"].iloc[-1] is None
    alone = pyfunc.predict(pd.DataFrame({"video": [b64(good[1].read_bytes())]}))
    assert out["label"].iloc[-1] == alone["label"].iloc[0]  # the good ones keep their answers
    assert out["score"].iloc[-1] == pytest.approx(alone["score"].iloc[0])
    for number, name in enumerate(bad, start=1):
        error = out["error"].iloc[number]
        assert error.startswith(f"row {number}: it does not decode: "), (name, error)
        assert out["label"].iloc[number] is None and out["score"].iloc[number] is None
    assert out.to_json(orient="records")  # None, not NaN: the server's reply is valid JSON


def test_an_image_signature_is_a_row_error_not_zero_division(pyfunc):
    out = pyfunc.predict([b"\x89PNG\r\n\x1a\n" + bytes(64)])
    assert out["error"].tolist() == [
        "row 0: it does not decode: the video header gives no usable frame size (0×0)"
    ]


def test_rows_that_are_not_videos_say_why(pyfunc, good, synthetic_videos):
    outside = sorted((synthetic_videos / "train").glob("*/*.mp4"))[0]
    loop = good[0].parents[1] / "loop.mp4"
    loop.symlink_to(loop)
    records = [
        {"video": "not base64 at all!"},
        {"path": str(outside)},
        {"path": str(good[0])},
        {"video": None, "path": None},
        {"path": str(loop)},
        {"path": "a\0b"},
    ]
    try:
        out = pyfunc.predict(pd.DataFrame.from_records(records))
    finally:
        loop.unlink()
    errors = out["error"].tolist()
    assert errors[0].startswith("row 0: its 'video' value is not valid base64")
    assert errors[1].startswith(f"row 1: path '{outside}' is not a file under the allowed root")
    assert errors[2] is None and out["label"].iloc[2] is not None
    assert errors[3] == "row 3: it has no non-empty 'video' (base64) or 'path'"
    assert errors[4].startswith("row 4: its path cannot be resolved (")
    assert errors[5] == "row 5: its path holds a NUL byte"


def test_an_over_long_path_is_refused_before_it_is_resolved(pyfunc, good, monkeypatch):
    resolved: list[str] = []
    original = pathlib.Path.resolve

    def spy(self, *args, **kwargs):
        resolved.append(str(self))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "resolve", spy)
    long_path = "a/" * 50_000 + "x.mp4"  # 100 kB; 50 MB took a worker minutes to resolve
    component = "/tmp/" + "b" * 300 + ".mp4"
    out = pyfunc.predict(pd.DataFrame({"path": [long_path, component]}))
    assert out["error"].tolist() == [
        "row 0: its path is 100005 bytes long, over the OS limit of 4095 (PATH_MAX)",
        "row 1: its path has a 304-byte component, over the OS limit of 255",
    ]
    listed = pyfunc.predict([long_path])  # a list item that long is base64, never a path
    assert listed["error"].iloc[0].startswith("row 0: its 'video' value is not valid base64")
    assert resolved == []


def test_a_request_over_the_limit_is_refused_with_the_limit(pyfunc, good, monkeypatch):
    from zeroi2v.use import serving

    monkeypatch.setattr(serving, "_row_video", lambda *a: pytest.fail("a row was read"))
    big = b64(bytes(LIMIT))
    with pytest.raises(ValueError) as error:
        pyfunc.predict(pd.DataFrame({"video": [big]}))
    assert str(error.value) == (
        f"the request holds {len(big)} bytes of videos and paths, over the limit of {LIMIT} "
        "bytes (model_config max_request_bytes): send fewer or smaller videos per request"
    )


def test_wrong_columns_name_what_came_and_what_is_expected(pyfunc):
    with pytest.raises(ValueError) as error:
        pyfunc.predict({"vid": ["AAAA"], "path": ["x"]})
    assert str(error.value) == (
        "expected a 'video' (base64) and/or 'path' column, got columns ['vid', 'path']"
    )
    with pytest.raises(ValueError, match="the request has no rows"):
        pyfunc.predict(pd.DataFrame({"video": []}))
