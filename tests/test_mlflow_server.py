"""One MLflow server for a team: a real `mlflow server` (SQLite store, proxied artifacts) on
127.0.0.1. Artifacts land on the server's side and load from elsewhere; concurrent
registrations lose no version and leave the best champion; a server killed mid-training
costs nothing that `launch/sync_mlflow.py` cannot log afterwards."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from engine_helpers import REPO, clean_env, tiny_raw, train_cmd, write_config
from servers import MlflowServer, http_file_server, mlflow_server

from zeroi2v.config import ConfigError, from_dict
from zeroi2v.engine.tracking import artifact_location

# Registers `scores` as versions of model "race" from one process, starting when both
# processes are ready (a file each in the ready folder), so their registrations overlap.
_REGISTER = """
import sys, time, torch
from pathlib import Path
from zeroi2v import config
from zeroi2v.engine.tracking import Tracker
out, uri, ready, scores = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), sys.argv[4]
cfg = config.from_dict({"model": {"num_classes": 4}, "train": {"output_dir": str(out)},
    "tracking": {"tracking_uri": uri, "experiment": "race", "model_name": "race"}})
(ready / out.name).touch()
deadline = time.time() + 120
while len(list(ready.iterdir())) < 2 and time.time() < deadline:
    time.sleep(0.05)
tracker = Tracker(cfg)
for score in map(float, scores.split(",")):
    tracker.log_model(torch.nn.Linear(3, 4), torch.randn(1, 3), score)
tracker.finish()
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with mlflow_server(tmp_path_factory.mktemp("mlflow_server")) as running:
        yield running


def _client(url: str):
    from mlflow import MlflowClient

    return MlflowClient(url)


def test_artifacts_go_through_the_server_unless_a_shared_store_is_named():
    def cfg(location):
        return from_dict({"tracking": {"artifact_location": location}})

    server = "http://mlflow.example:5000"
    assert artifact_location(cfg(None), server) is None  # the server's mlflow-artifacts:/
    assert artifact_location(cfg("s3://team/mlartifacts"), server) == "s3://team/mlartifacts"
    with pytest.raises(ConfigError, match="tracking.artifact_location 'mlartifacts' is a folder"):
        artifact_location(cfg("mlartifacts"), server)
    local = artifact_location(cfg(None), "sqlite:///mlflow.db")  # embedded: today's folder
    assert local == (Path.cwd() / "mlartifacts").as_uri()


@pytest.mark.slow
def test_concurrent_registrations_lose_no_version_and_keep_the_best_champion(server, tmp_path):
    ready = tmp_path / "ready"
    ready.mkdir()
    scores = {"a": "0.5,0.9,0.6", "b": "0.7,0.9,0.8"}  # 0.9 twice: the earlier version wins
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _REGISTER, str(tmp_path / name), server.url, str(ready), s],
            env=clean_env(PYTHONPATH=str(REPO)),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name, s in scores.items()
    ]
    for proc in procs:
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out[-3000:]
    client = _client(server.url)
    versions = {
        int(v.version): v.tags["val_top1"] for v in client.search_model_versions("name='race'")
    }
    assert sorted(versions) == [1, 2, 3, 4, 5, 6]
    assert sorted(versions.values()) == sorted(",".join(scores.values()).split(","))
    champion = client.get_model_version_by_alias("race", "champion")
    assert int(champion.version) == min(v for v, tag in versions.items() if tag == "0.9")


@pytest.mark.slow
def test_team_training_over_the_server_from_http_shards(server, synthetic_shards, tmp_path):
    """2 DeepSpeed processes train from http:// shards through MLFLOW_TRACKING_URI; the
    registered model is stored by the server and evaluated from another working directory."""
    client_cwd, elsewhere = tmp_path / "client", tmp_path / "elsewhere"
    client_cwd.mkdir()
    elsewhere.mkdir()
    with http_file_server(synthetic_shards) as base:
        raw = tiny_raw(
            synthetic_shards,
            tmp_path / "run",
            tracking={
                "enabled": True,
                "tracking_uri": None,  # from $MLFLOW_TRACKING_URI
                "artifact_location": None,
                "experiment": "team",
                "model_name": "team_tiny",
            },
            train={"epochs": 1, "steps_per_epoch": 3, "checkpoint_every_steps": 100},
        )
        raw["data"].update(
            train_shards=f"{base}/train-{{000000..000005}}.tar",
            val_shards=f"{base}/val-{{000000..000001}}.tar",
        )
        path = write_config(tmp_path / "team.json", raw)
        env = clean_env(MLFLOW_TRACKING_URI=server.url)
        train = subprocess.run(
            train_cmd(path, processes=2),
            env=env,
            cwd=client_cwd,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert train.returncode == 0, train.stderr[-3000:]
        assert "(64 videos)" in train.stderr  # eval over 2 ranks saw each val video once
        evaluate = subprocess.run(
            [sys.executable, str(REPO / "launch" / "evaluate.py"), "--model"]
            + ["models:/team_tiny@champion", "--config", str(path), "--out", "m.json"],
            env=env,
            cwd=elsewhere,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    client = _client(server.url)
    version = client.get_model_version_by_alias("team_tiny", "champion")
    run = client.get_run(version.run_id)
    assert run.info.status == "FINISHED"
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/")
    stored = list(server.artifacts.rglob("MLmodel"))  # the server's --artifacts-destination
    assert stored and list(stored[0].parent.rglob("model.pth"))
    assert not list(client_cwd.rglob("MLmodel")) and not (client_cwd / "mlartifacts").exists()
    metrics = json.loads((elsewhere / "m.json").read_text())
    assert metrics["count"] == 64
    assert metrics["top1"] == pytest.approx(run.data.metrics["val/top1"], abs=1 / 64 + 1e-9)


@pytest.mark.slow
def test_tune_search_over_the_server(server, synthetic_shards, tmp_path):
    """`launch/tune.py` (2 trials, local Ray) through MLFLOW_TRACKING_URI: the parent run, a
    nested run per trial and the best trial's registered model, all stored by the server."""
    raw = json.loads((REPO / "configs" / "tune_tiny_cpu.json").read_text())
    raw["model"]["pretrained"] = None
    raw["data"].update(
        train_shards=str(synthetic_shards / "train-*.tar"),
        val_shards=str(synthetic_shards / "val-*.tar"),
    )
    raw["train"].update(epochs=1, steps_per_epoch=2, output_dir=str(tmp_path / "runs"))
    raw["tracking"].update(experiment="team-tune", model_name="team_tune")
    raw["tune"].update(
        search_space={},
        head_allocation={"temporal_heads": {"grid": [0, 1]}, "max_offset": 1},
        num_samples=1,
        scheduler={"name": "fifo"},
        storage_path=str(tmp_path / "ray_results"),
        name="team",
    )
    path = write_config(tmp_path / "tune.json", raw)
    tune = subprocess.run(
        [sys.executable, str(REPO / "launch" / "tune.py"), "--config", str(path)],
        env=clean_env(
            MLFLOW_TRACKING_URI=server.url,
            RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
            PYTHONPATH=str(REPO),
        ),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert tune.returncode == 0, tune.stderr[-3000:]
    client = _client(server.url)
    experiment = client.get_experiment_by_name("team-tune")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(parents) == 1 and len(children) == 2
    assert all(r.info.artifact_uri.startswith("mlflow-artifacts:/") for r in runs)
    version = client.get_model_version_by_alias("team_tune", "champion")
    assert version.run_id in {c.info.run_id for c in children}
    assert not (tmp_path / "mlartifacts").exists() and not (tmp_path / "mlruns").exists()


def _wait_for_step(metrics_file: Path, step: int, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics_file.exists():
            steps = [json.loads(x).get("step", 0) for x in metrics_file.read_text().splitlines()]
            if max(steps, default=0) >= step:
                return
        time.sleep(0.1)
    raise AssertionError(f"training did not reach step {step}")


@pytest.mark.slow
def test_server_killed_mid_training_loses_nothing(synthetic_shards, tmp_path):
    """SIGKILL the server at step 2 of 30: the training finishes, says in one sentence what it
    kept, and `launch/sync_mlflow.py` logs all of it to the same run once a server is back."""
    out, steps = tmp_path / "run", 30
    server = MlflowServer(tmp_path / "server").start()
    try:
        raw = tiny_raw(
            synthetic_shards,
            out,
            tracking={
                "enabled": True,
                "tracking_uri": server.url,
                "artifact_location": None,
                "experiment": "outage",
                "model_name": "outage_tiny",
            },
            train={"epochs": 1, "steps_per_epoch": steps, "log_every_steps": 1},
        )
        path = write_config(tmp_path / "outage.json", raw)
        log = tmp_path / "train.log"
        with log.open("w") as sink:
            proc = subprocess.Popen(
                train_cmd(path), env=clean_env(), cwd=tmp_path, stdout=sink, stderr=sink
            )
            try:
                _wait_for_step(out / "metrics.jsonl", 2, proc, timeout=300)
                server.stop(sig=9)
                assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]
            finally:
                proc.kill()
        text = log.read_text()
        assert "became unreachable at step" in text, text[-3000:]
        assert f"python launch/sync_mlflow.py --run-dir {out}" in text
        state = json.loads((out / "mlflow_pending" / "state.json").read_text())
        assert 2 <= state["since_step"] < steps and state["model"]["path"] == str(out / "merged.pt")
        server = MlflowServer(tmp_path / "server").start()  # same store, new port
        sync = subprocess.run(
            [sys.executable, str(REPO / "launch" / "sync_mlflow.py"), "--run-dir", str(out)]
            + ["--tracking-uri", server.url],
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert sync.returncode == 0, sync.stderr[-3000:]
        client = _client(server.url)
        run = client.get_run(state["run_id"])
        assert run.info.status == "FINISHED"
        losses = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
        assert sorted(losses) == list(range(1, steps + 1))  # every step once, none lost
        assert "val/top1" in run.data.metrics
        assert client.list_artifacts(run.info.run_id, "confusion")
        champion = client.get_model_version_by_alias("outage_tiny", "champion")
        assert champion.run_id == run.info.run_id
        assert not (out / "mlflow_pending").exists()
    finally:
        server.stop()
