"""MLflow: what a training run records, and the registered model pulled back by alias."""

from __future__ import annotations

import pytest
import torch
from engine_helpers import run_train, tiny_raw, write_config

from zeroi2v import build_model, config
from zeroi2v.engine.release import example_clips, load_checkpoint_model


@pytest.fixture(scope="module")
def tracked_run(synthetic_shards, tmp_path_factory):
    """One short tracked training run (1 process) registering `tiny_test`."""
    root = tmp_path_factory.mktemp("tracked")
    raw = tiny_raw(
        synthetic_shards,
        root / "run",
        tracking={"enabled": True, "model_name": "tiny_test", "experiment": "t"},
        train={
            "epochs": 1,
            "steps_per_epoch": 3,
            "checkpoint_every_steps": 100,
            "log_every_steps": 1,
        },
    )
    path = write_config(root / "c.json", raw)
    proc = run_train(path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return config.from_dict(raw), root


def _client(cfg):
    import mlflow

    mlflow.set_tracking_uri(cfg.tracking.tracking_uri)
    return mlflow.MlflowClient(cfg.tracking.tracking_uri)


def test_registered_model_equals_trained_unmerged_model(tracked_run):
    cfg, root = tracked_run
    from zeroi2v.engine.release import load_model

    loaded, loaded_cfg = load_model("models:/tiny_test@latest", cfg)
    assert loaded_cfg == cfg  # the config travels with the model
    trained, _ = load_checkpoint_model(root / "run" / "checkpoints")  # frozen part rebuilt
    clips = example_clips(cfg, batch=4)
    with torch.no_grad():
        assert torch.allclose(loaded(clips), trained(clips), atol=1e-5, rtol=1e-4)
    # merged = the plain backbone + head: the keys and shapes of a model without adapters
    plain = build_model(config.from_dict(config.to_dict(cfg), {"adapt.strategy": "linear_probe"}))
    assert {k: v.shape for k, v in loaded.state_dict().items()} == {
        k: v.shape for k, v in plain.state_dict().items()
    }
    assert not any("adapter" in k for k in loaded.state_dict())


@pytest.mark.parametrize(
    ("uri", "says"),
    [
        ("models:/no_such_model@champion", "Registered Model with name=no_such_model not found"),
        ("models:/tiny_test@no_such_alias", "alias no_such_alias not found"),
        ("models:/tiny_test/99", "version=99) not found"),
    ],
)
def test_a_model_missing_from_the_registry_is_one_sentence(tracked_run, uri, says):
    """launch/evaluate.py, predict.py, export.py and `model.init_from` report it as
    `error: <sentence>` (FileNotFoundError is a user error), naming the URI and the store."""
    cfg, _ = tracked_run
    from zeroi2v.engine.release import load_model

    with pytest.raises(FileNotFoundError) as error:
        load_model(uri, cfg)
    assert str(error.value).startswith(f"cannot load {uri} from {cfg.tracking.tracking_uri}: ")
    assert says in str(error.value)


def test_run_records_config_params_environment_metrics_and_confusion(tracked_run):
    cfg, _ = tracked_run
    client = _client(cfg)
    version = client.get_model_version_by_alias("tiny_test", "champion")
    run = client.get_run(version.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["optim.lr"] == str(cfg.optim.lr)
    stage = cfg.deepspeed["zero_optimization"]["stage"]
    assert run.data.params["deepspeed.zero_optimization.stage"] == str(stage)
    assert {"git_sha", "version.torch", "version.deepspeed", "hardware.cpu"} <= set(run.data.tags)
    assert "val/top1" in run.data.metrics and "train/loss" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.json", "confusion"} <= artifacts
    pngs = client.list_artifacts(run.info.run_id, "confusion")
    assert pngs and pngs[0].path.endswith(".png")
    assert float(version.tags["val_top1"]) == pytest.approx(run.data.metrics["val/top1"], abs=1e-6)


def test_champion_moves_only_when_top1_improves(tracked_run):
    cfg, _ = tracked_run
    from zeroi2v.engine.tracking import Tracker

    cfg = config.from_dict(config.to_dict(cfg), {"tracking.model_name": "champion_test"})
    model = torch.nn.Linear(3, cfg.model.num_classes)  # log_model checks one logit per class
    example = torch.randn(1, 3)
    tracker = Tracker(cfg)
    client = _client(cfg)
    try:
        # an equal score (version 4) does not move the champion
        for top1, champion in ((0.5, "1"), (0.4, "1"), (0.7, "3"), (0.7, "3")):
            tracker.log_model(model, example, top1)
            assert (
                str(client.get_model_version_by_alias("champion_test", "champion").version)
                == champion
            )
    finally:
        tracker.finish()
    assert str(client.get_model_version_by_alias("champion_test", "latest").version) == "4"
    versions = {
        str(v.version): v.tags["val_top1"]
        for v in client.search_model_versions("name='champion_test'")
    }
    assert versions == {"1": "0.5", "2": "0.4", "3": "0.7", "4": "0.7"}  # exact, not rounded


def test_an_equal_score_does_not_beat_the_champion(tracked_run):
    """The same 5/6 logged again must leave the champion where it is."""
    cfg, _ = tracked_run
    from zeroi2v.engine.tracking import Tracker

    cfg = config.from_dict(config.to_dict(cfg), {"tracking.model_name": "champion_equal"})
    model = torch.nn.Linear(3, cfg.model.num_classes)
    tracker = Tracker(cfg)
    client = _client(cfg)
    try:
        for _ in range(2):
            tracker.log_model(model, torch.randn(1, 3), 5 / 6)
            alias = client.get_model_version_by_alias("champion_equal", "champion")
            assert str(alias.version) == "1"
    finally:
        tracker.finish()
