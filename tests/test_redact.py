"""No secrets in output: credentials in tracking URIs, shard URLs and `pipe:` commands are
masked in log lines, errors, MLflow params and the printed config, by one function."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest
from engine_helpers import clean_env, free_port, tiny_raw, train_cmd, write_config

from zeroi2v import config, redact
from zeroi2v.redact import mask_secrets

SHARDS = "pipe:curl -s -u bob:hunter2 -H 'Authorization: Bearer tok3n' https://h/train-{0..3}.tar"
SECRETS = ("s3cret", "hunter2", "tok3n", "AKIAXSECRET", "sig0123")


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("http://alice:s3cret@127.0.0.1:9/api", "http://alice:***@127.0.0.1:9/api"),
        ("https://ghp_tok3n@github.com/x.tar", "https://***@github.com/x.tar"),
        (
            "s3://b/x.tar?X-Amz-Credential=AKIAXSECRET&X-Amz-Signature=sig0123&n=1",
            "s3://b/x.tar?X-Amz-Credential=***&X-Amz-Signature=***&n=1",
        ),
        (
            SHARDS,
            "pipe:curl -s -u bob:*** -H 'Authorization: Bearer ***' https://h/train-{0..3}.tar",
        ),
        (
            "pipe:AWS_SECRET_ACCESS_KEY=s3cret aws s3 cp s3://b/x.tar -",
            "pipe:AWS_SECRET_ACCESS_KEY=*** aws s3 cp s3://b/x.tar -",
        ),
        ("pipe:tool --password s3cret --token=tok3n x", "pipe:tool --password *** --token=*** x"),
        (
            "data/train-*.tar and sqlite:///tmp/mlflow.db",
            "data/train-*.tar and sqlite:///tmp/mlflow.db",
        ),
    ],
)
def test_mask_secrets(text, masked):
    assert mask_secrets(text) == masked


def test_log_lines_and_tracebacks_are_masked(caplog, monkeypatch, capsys):
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    factory = logging.getLogRecordFactory()
    try:
        redact.install()
        redact.install()  # idempotent
        with caplog.at_level(logging.INFO):
            logging.getLogger("mlflow.somewhere").warning("cannot reach %s", "http://a:s3cret@h")
        assert caplog.records[-1].getMessage() == "cannot reach http://a:***@h"
        try:
            raise RuntimeError(f"shards {SHARDS} failed")
        except RuntimeError:
            sys.excepthook(*sys.exc_info())
        err = capsys.readouterr().err
        assert "RuntimeError: shards pipe:curl -s -u bob:***" in err
        assert not any(s in err for s in SECRETS)
    finally:
        logging.setLogRecordFactory(factory)


def test_print_config_is_masked(capsys):
    from launch import train as train_cli

    train_cli.main(
        [
            "--config",
            "configs/tiny_cpu.json",
            "--print-config",
            "tracking.tracking_uri=http://alice:s3cret@127.0.0.1:9",
            f"data.train_shards={SHARDS}",
        ]
    )
    printed = json.loads(capsys.readouterr().out)
    assert printed["tracking"]["tracking_uri"] == "http://alice:***@127.0.0.1:9"
    assert printed["data"]["train_shards"] == mask_secrets(SHARDS)


def test_tracking_error_from_the_cli_is_one_masked_sentence(synthetic_shards, tmp_path):
    raw = tiny_raw(synthetic_shards, tmp_path / "run")
    # artifacts through the (unreachable) server, as a team server's runs have them
    raw["tracking"].update(enabled=True, tracking_uri=None, artifact_location=None)
    cfg = write_config(tmp_path / "c.json", raw)
    uri = f"http://alice:s3cret@127.0.0.1:{free_port()}"  # nothing listens there
    result = subprocess.run(
        train_cmd(cfg),
        env=clean_env(MLFLOW_TRACKING_URI=uri),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith(
        f"error: MLflow tracking server {uri.replace('s3cret', '***')} is unreachable ("
    ), lines[-1]
    assert not any(s in result.stdout + result.stderr for s in SECRETS)


@pytest.mark.slow
def test_mlflow_params_and_logged_config_are_masked(tmp_path):
    from mlflow import MlflowClient

    from zeroi2v.engine.tracking import Tracker

    raw = {
        "data": {"train_shards": SHARDS, "val_shards": "s3://b/v.tar?X-Amz-Signature=sig0123"},
        "tracking": {
            "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
            "artifact_location": str(tmp_path / "artifacts"),
        },
    }
    tracker = Tracker(config.from_dict(raw))
    try:
        client = MlflowClient(tracker.uri)
        params = client.get_run(tracker.run_id).data.params
        assert params["data.train_shards"] == mask_secrets(SHARDS)
        logged = client.download_artifacts(tracker.run_id, "config.json", str(tmp_path))
        text = json.dumps(params) + open(logged).read()
        assert not any(s in text for s in SECRETS)
    finally:
        tracker.finish()
