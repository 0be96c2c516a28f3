"""Every expected failure of an entry point is one sentence naming the file or field, with a
non-zero exit; and what data_prep keeps or skips does not depend on the wall clock."""

from __future__ import annotations

import io
import json
import shutil
import sys
from pathlib import Path

import av
import numpy as np
import pytest

from data_prep.__main__ import main as data_prep_main
from data_prep.inspect import iter_samples
from data_prep.video_io import encode_rgb, probe
from zeroi2v.redact import run_cli

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "tiny_cpu.json")


@pytest.fixture
def process_hooks(monkeypatch):
    """`run_cli` installs process-wide masking; give the test process its hooks back."""
    import logging

    factory = logging.getLogRecordFactory()
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    yield
    logging.setLogRecordFactory(factory)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["model.head_offsets=null"],
            "model.head_offsets: give one multiset, one per block (2) "
            "or one per stage (1); got None",
        ),
        (
            ["model.head_offsets=5"],
            "model.head_offsets: give one multiset, one per block (2) or one per stage (1); got 5",
        ),
        (
            ["deepspeed.train_micro_batch_size_per_gpu=0"],
            "deepspeed.train_micro_batch_size_per_gpu must be a positive integer, got 0",
        ),
        (
            ["deepspeed.gradient_accumulation_steps=0"],
            "deepspeed.gradient_accumulation_steps must be a positive integer, got 0",
        ),
    ],
)
def test_bad_config_values_are_one_sentence(args, expected, monkeypatch, process_hooks):
    from launch import train as train_cli

    monkeypatch.setattr(sys, "argv", ["train.py", "--config", TINY, *args, "--print-config"])
    with pytest.raises(SystemExit) as exit_:
        run_cli(train_cli.main)
    assert exit_.value.code == f"error: {expected}"


def test_config_file_that_is_a_json_list(tmp_path, monkeypatch, process_hooks):
    from launch import train as train_cli

    path = tmp_path / "list.json"
    path.write_text(json.dumps([{"model": {}}]))
    monkeypatch.setattr(sys, "argv", ["train.py", "--config", str(path)])
    with pytest.raises(SystemExit) as exit_:
        run_cli(train_cli.main)
    assert exit_.value.code == (
        f'error: {path} must hold one JSON object of sections ({{"model": {{...}}, ...}}), '
        f"not a list"
    )


def test_predict_with_a_missing_model_is_one_sentence(tmp_path, monkeypatch, process_hooks):
    from launch import predict as predict_cli

    missing = tmp_path / "nothing.pt"
    monkeypatch.setattr(sys, "argv", ["predict.py", "--model", str(missing), "a.mp4"])
    with pytest.raises(SystemExit) as exit_:
        run_cli(predict_cli.main)
    assert exit_.value.code == (
        f"error: model {missing} does not exist (expected models:/NAME@ALIAS, a merged .pt or "
        f"a DeepSpeed checkpoint folder)"
    )


def test_inspect_on_a_file_that_is_not_a_tar(tmp_path, capsys):
    path = tmp_path / "train-000000.tar"
    path.write_text("not a tar\n" * 100)
    assert data_prep_main(["inspect", str(path)]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: {path} is not a tar shard (expected a {{split}}-NNNNNN.tar file)"
    ]


def _encode_without_checks(frames: np.ndarray) -> bytes:
    """What any other tool may write: an mp4 whose width decord 0.6 cannot decode."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for frame in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode())
    return buf.getvalue()


def _shard_args(root: Path, out: Path, *extra: str) -> list[str]:
    return ["shard", "--source", "folder", "--root", str(root), "--split", "train",
            "--out", str(out), "--no-progress", *extra]  # fmt: skip


def test_short_side_24_keeps_every_video_decord_can_read(synthetic_videos, tmp_path, capsys):
    """32x32 → 24x24 would be unreadable by decord 0.6; the width is widened to 26 instead."""
    root = tmp_path / "videos"
    for cls in ("moving_up", "moving_left"):
        (root / "train" / cls).mkdir(parents=True)
        for path in sorted((synthetic_videos / "train" / cls).glob("*.mp4"))[:2]:
            shutil.copy(path, root / "train" / cls / path.name)
    out = tmp_path / "shards"
    assert data_prep_main(_shard_args(root, out, "--short-side", "24")) == 0
    assert "4 samples in 1 shards, 0 skipped" in capsys.readouterr().out
    samples = list(iter_samples(out / "train-000000.tar"))
    assert [(json.loads(s["json"])["width"], json.loads(s["json"])["height"]) for s in samples] == [
        (26, 24)
    ] * 4
    assert all(probe(s["mp4"]).frames == 16 for s in samples)
    with pytest.raises(ValueError, match="decord 0.6 cannot read back videos 24 pixels wide"):
        encode_rgb(np.zeros((2, 24, 24, 3), np.uint8), 8.0)


def test_a_shard_run_that_keeps_nothing_is_an_error_with_clock_free_reasons(tmp_path, capsys):
    root = tmp_path / "videos"
    (root / "train" / "a").mkdir(parents=True)
    frames = np.random.default_rng(0).integers(0, 255, (16, 32, 32, 3), dtype=np.uint8)
    whole = _encode_without_checks(frames)
    (root / "train" / "a" / "x.mp4").write_bytes(whole[: len(whole) // 2])  # cut mid-file
    manifests = []
    for run in ("one", "two"):
        assert data_prep_main(_shard_args(root, tmp_path / run)) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1] == (
            f"error: no train sample was kept: all 1 inputs were skipped (reasons above and in "
            f"{tmp_path / run / 'manifest.json'})"
        )
        manifests.append((tmp_path / run / "manifest.json").read_text())
    reason = json.loads(manifests[0])["skipped"][0]["reason"]
    assert reason.startswith("truncated"), reason
    assert manifests[0] == manifests[1]  # no wall-clock time in the reasons
