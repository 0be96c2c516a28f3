"""Ray Tune search end to end on the tiny model: nested MLflow runs, best config, retries,
resume after SIGKILL, and (slow) temporal heads beating the all-spatial model."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import pytest
from tune_helpers import kill_when, trial_state

from zeroi2v import config as config_lib
from zeroi2v.tune.search import run_search
from zeroi2v.tune.trial import FAULT_ENV

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray for the module, temp files in a short temp dir, shut down after."""
    ray = pytest.importorskip("ray")
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths are limited
    fault = Path(temp) / "fault"
    os.environ[FAULT_ENV] = str(fault)  # before init: workers inherit it
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # Ray on 127.0.0.1 only
    os.environ["DS_ACCELERATOR"] = "cpu"
    env = {"env_vars": {"PYTHONPATH": str(ROOT)}}
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp, runtime_env=env)
    yield fault
    ray.shutdown()
    os.environ.pop(FAULT_ENV, None)


def _raw(shards: Path, tmp: Path, pretrained: Path | None = None, **tune) -> dict:
    raw = json.loads((ROOT / "configs" / "tune_tiny_cpu.json").read_text())
    overrides = {
        "model.pretrained": None if pretrained is None else str(pretrained),
        "data.train_shards": str(shards / "train-*.tar"),
        "data.val_shards": str(shards / "val-*.tar"),
        "data.eval_batch_size": 16,
        "train.epochs": 2,
        "train.steps_per_epoch": 2,
        "train.output_dir": str(tmp / "runs"),
        "tracking.tracking_uri": f"sqlite:///{tmp / 'mlflow.db'}",
        "tracking.artifact_location": str(tmp / "mlartifacts"),
        "tune.storage_path": str(tmp / "ray_results"),
        "tune.search_space": {},
        "tune.head_allocation": {"temporal_heads": {"grid": [0, 1, 2]}, "max_offset": 1},
        "tune.num_samples": 1,
        "tune.scheduler": {"name": "fifo"},
        **{f"tune.{k}": v for k, v in tune.items()},
    }
    return config_lib.apply_overrides(raw, overrides)


def _children(raw: dict, parent: str) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(raw["tracking"]["tracking_uri"])
    experiment = client.get_experiment_by_name(raw["tracking"]["experiment"])
    return client.search_runs(
        [experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent}'"
    ), client


def test_search_logs_nested_runs_retries_a_crash_and_writes_a_runnable_best_config(
    ray_local, synthetic_shards, tmp_path
):
    import mlflow

    raw = _raw(synthetic_shards, tmp_path, name="three")
    ray_local.write_text("crash once")  # the first trial to report an epoch raises once
    result = run_search(raw)

    assert not ray_local.exists(), "the fault was never injected"
    errored = list(Path(result.experiment_path).glob("*/error.txt"))
    assert len(errored) == 1  # one trial crashed, was retried, and finished
    assert len(result.rows) == 3 and all(r["status"] == "ok" for r in result.rows)
    assert all(r["epochs"] == 2 for r in result.rows)
    assert {r["allocation"] for r in result.rows} == {
        "{0·4} RF1",
        "{1·1, 0·3} RF2",
        "{1·1, -1·1, 0·2} RF3",
    }
    top1 = [r["val/top1"] for r in result.rows]
    assert top1 == sorted(top1, reverse=True)

    children, client = _children(raw, result.parent_run_id)
    assert len(children) == 3  # the retried trial kept its MLflow run
    assert {c.data.tags["ray.trial_id"] for c in children} == {r["trial"] for r in result.rows}
    for child in children:
        curve = client.get_metric_history(child.info.run_id, "val/top1")
        assert [m.step for m in curve] == [2, 4]  # per-epoch curve, no duplicated epoch
    parent_files = {f.path for f in client.list_artifacts(result.parent_run_id)}
    assert {"trials.csv", "trials.md", "metric_by_allocation.png", "best_config.json"} <= (
        parent_files
    )
    assert result.model_uri and result.model_uri.startswith("models:/zeroi2v_tiny_cpu/")
    # registered with its class names, as a training registers (serving labels are names)
    mlflow.set_tracking_uri(raw["tracking"]["tracking_uri"])
    metadata = mlflow.models.get_model_info(result.model_uri).metadata
    manifest = json.loads((synthetic_shards / "manifest.json").read_text())
    assert metadata["zeroi2v_classes"] == manifest["classes"]

    best = config_lib.load(result.best_config_path)  # exactly what launch/train.py does
    assert best.tune is None
    assert best.model.head_offsets == result.rows[0]["overrides"]["model.head_offsets"]
    assert (result.output_dir / "trials.csv").read_text().count("\n") == 4


def test_killed_search_resumes_without_repeating_finished_trials(
    ray_local, synthetic_shards, tmp_path
):
    raw = _raw(synthetic_shards, tmp_path, name="killed", max_concurrent_trials=1)
    config = tmp_path / "search.json"
    config.write_text(json.dumps(raw))
    experiment = tmp_path / "ray_results" / "killed"
    env = {**os.environ, "RAY_TMPDIR": tempfile.mkdtemp(prefix="rk", dir="/tmp")}
    env.pop(FAULT_ENV)
    kill_when(
        [sys.executable, str(ROOT / "launch" / "tune.py"), "--config", str(config)],
        lambda: "TERMINATED" in trial_state(experiment).values(),
        cwd=tmp_path,
        env=env,
        timeout=150,
        log=tmp_path / "killed.log",
    )
    before = trial_state(experiment)
    finished = {t for t, s in before.items() if s == "TERMINATED"}
    assert 1 <= len(finished) < 3
    stamps = {t: (tmp_path / "runs" / "killed" / t / "merged.pt").stat().st_mtime for t in finished}

    from launch.tune import main

    assert main(["--config", str(config), "--resume"]) == 0
    after = trial_state(experiment)
    assert len(after) == 3 and set(after.values()) == {"TERMINATED"}
    assert finished <= set(after)  # same trials, none added
    for trial, stamp in stamps.items():  # a finished trial did not train again
        assert (tmp_path / "runs" / "killed" / trial / "merged.pt").stat().st_mtime == stamp
    rows = (experiment / "trials.csv").read_text().strip().splitlines()
    assert len(rows) == 4


@pytest.mark.slow
def test_temporal_heads_beat_the_all_spatial_model(
    ray_local, motion_shards, tiny_pretrained, tmp_path
):
    """From the image-pre-trained tiny backbone, 4 epochs on 1536 clips (the config's
    schedule): 2 temporal heads clearly beat 0, whose model cannot see motion."""
    raw = _raw(
        motion_shards,
        tmp_path,
        pretrained=tiny_pretrained,
        name="rank",
        head_allocation={"temporal_heads": {"grid": [0, 2]}, "max_offset": 1},
    )
    epochs = json.loads((ROOT / "configs" / "tune_tiny_cpu.json").read_text())["train"]["epochs"]
    raw = config_lib.apply_overrides(raw, {"train.epochs": epochs, "train.steps_per_epoch": None})
    result = run_search(raw)
    by_alloc = {r["allocation"]: r["val/top1"] for r in result.rows}
    assert by_alloc["{1·1, -1·1, 0·2} RF3"] > by_alloc["{0·4} RF1"] + 0.1, by_alloc
    assert result.rows[0]["allocation"] != "{0·4} RF1"
