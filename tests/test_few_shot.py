"""Few-shot: deterministic class-balanced K-shot shards, and the N seeds × K shots runner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_prep.__main__ import main as data_prep_main
from data_prep.subset import make_subset, read_samples

REPO = Path(__file__).resolve().parents[1]


# `python launch/few_shot.py ARGS` as a user runs it, then the heavy libraries it had imported
def _keys(manifest: dict) -> dict[str, list[str]]:
    return manifest["subset"]["keys"]


def test_subset_is_deterministic_balanced_nested_and_byte_exact(synthetic_shards, tmp_path):
    source = {
        key: members for key, members in read_samples(sorted(synthetic_shards.glob("train-*")))
    }
    three = make_subset(synthetic_shards, tmp_path / "a", 3, seed=0, shard_size=5)
    again = make_subset(synthetic_shards, tmp_path / "b", 3, seed=0, shard_size=5)
    six = make_subset(synthetic_shards, tmp_path / "c", 6, seed=0)
    other = make_subset(synthetic_shards, tmp_path / "d", 3, seed=1)
    assert three["splits"]["train"] == again["splits"]["train"]  # same names, counts, sha256
    assert (
        three["splits"]["train"]["count"] == 4 * 3 and len(three["splits"]["train"]["shards"]) == 3
    )
    for name, keys in _keys(three).items():
        assert len(keys) == 3 and set(keys) < set(_keys(six)[name])  # K-shot ⊂ 2K-shot
    assert _keys(other) != _keys(three)
    written = read_samples(sorted((tmp_path / "a").glob("train-*.tar")))
    assert {k for k, _ in written} == {k for keys in _keys(three).values() for k in keys}
    for key, members in written:  # copied byte for byte, label included
        assert members == source[key]
    classes = three["classes"]
    for name, keys in _keys(three).items():
        assert {int(source[k]["cls"]) for k in keys} == {classes.index(name)}


def test_subset_cli_keys_file_and_errors(synthetic_shards, tmp_path, capsys):
    keys = ["moving_up__00001", "moving_left__00007"]
    (tmp_path / "keys.txt").write_text("\n".join(keys))
    status = data_prep_main(
        ["subset", "--shards", str(synthetic_shards), "--out", str(tmp_path / "k")]
        + ["--keys", str(tmp_path / "keys.txt")]
    )
    assert status == 0, capsys.readouterr().err
    manifest = json.loads((tmp_path / "k" / "manifest.json").read_text())
    assert manifest["splits"]["train"]["count"] == 2
    assert _keys(manifest)["moving_up"] == ["moving_up__00001"]
    status = data_prep_main(
        ["subset", "--shards", str(synthetic_shards), "--out", str(tmp_path / "x"), "--shots", "49"]
    )
    assert status == 1
    assert "has 48 training samples, fewer than 49" in capsys.readouterr().err


@pytest.mark.slow
def test_runner_nests_one_run_per_seed_and_logs_mean_and_std(synthetic_shards, tmp_path):
    from engine_helpers import tiny_raw, write_config

    from launch.few_shot import main

    raw = tiny_raw(
        synthetic_shards,
        tmp_path / "unused",
        model={"num_frames": 4},
        tracking={"enabled": True, "experiment": "few_shot"},
        train={"epochs": 1, "steps_per_epoch": 2, "checkpoint_every_steps": 100},
    )
    config = write_config(tmp_path / "c.json", raw)
    results = main(
        ["--config", str(config), "--shots", "2", "--seeds", "0", "1"]
        + ["--workdir", str(tmp_path / "fs")]
    )
    import mlflow

    client = mlflow.MlflowClient(raw["tracking"]["tracking_uri"])
    runs = client.search_runs(client.get_experiment_by_name("few_shot").experiment_id)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 2
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    top1 = sorted(c.data.metrics["val/top1"] for c in children)
    assert sorted(results[2]) == pytest.approx(top1)
    metrics = parents[0].data.metrics
    assert metrics["few_shot/2shot/top1_mean"] == pytest.approx(sum(top1) / 2)
    assert (tmp_path / "fs" / "few_shot.md").read_text().startswith("| shots |")
