"""Ray Tune trials that are Ray Train jobs of 2 DeepSpeed ranks, on a real 2-node Ray cluster:
a crashed worker, a killed search resumed with `Tuner.restore`, ASHA stopping trials.

The cluster is Ray's own multi-node test harness (`ray.cluster_utils.Cluster`): a head with
1 CPU and two nodes with 3 CPUs each, all on 127.0.0.1 (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0).
A trial asks for 4 CPUs over 2 workers, 2 per worker, so its two ranks cannot share a node.
`launch/tune.py` joins the cluster through $RAY_ADDRESS, as a user would.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from engine_helpers import clean_env, losses, run_train, tiny_raw, write_config
from tune_helpers import kill_when, tiny_search, trial_state

from zeroi2v import config as config_lib
from zeroi2v.config import ConfigError, TuneConfig
from zeroi2v.engine.parallel import read_checkpoint_weights
from zeroi2v.tune.search import check_fits, worker_resources
from zeroi2v.tune.trial import FAULT_ENV, stage_rank_files

ROOT = Path(__file__).resolve().parents[1]


def test_trial_resources_are_split_over_workers_and_checked_against_the_cluster():
    four_gpus = TuneConfig(resources_per_trial={"cpu": 8, "gpu": 4}, workers_per_trial=4)
    assert worker_resources(four_gpus) == {"CPU": 2, "GPU": 1}
    assert worker_resources(TuneConfig()) == {"CPU": 1}  # today's default: one process
    with pytest.raises(ConfigError, match="set tune.workers_per_trial to 2"):
        worker_resources(TuneConfig(resources_per_trial={"cpu": 1, "gpu": 2}))
    nodes = [{"CPU": 1}, {"CPU": 3}, {"CPU": 3}]
    check_fits({"CPU": 2}, 2, nodes)
    with pytest.raises(ConfigError, match="largest node has 3"):
        check_fits({"CPU": 4}, 1, nodes)
    with pytest.raises(ConfigError, match="1 GPU each .* all 3 node"):
        check_fits({"CPU": 1, "GPU": 1}, 2, nodes)


def test_each_rank_hands_ray_only_the_checkpoint_files_it_wrote(tmp_path):
    """Ray merges the workers' uploads into one folder: no file may come from two ranks.

    The tag comes from the trainer, not from `latest`: here `latest` still names the previous
    save (rank 0 moves it only after every rank wrote its files), the race that once sent
    rank 1's files of step2 into the step4 checkpoint."""
    tag = tmp_path / "ckpt" / "step4"
    tag.mkdir(parents=True)
    (tag.parent / "latest").write_text("step2")
    names = [
        "mp_rank_00_model_states.pt",
        "client.pt",
        "manifest.json",
        "rng_rank0.pt",
        "rng_rank1.pt",
        "zero_pp_rank_0_mp_rank_00_optim_states.pt",
        "zero_pp_rank_1_mp_rank_00_optim_states.pt",
    ]
    for name in names:
        (tag / name).write_text(name)
    staged = {}
    for rank in (0, 1):
        assert stage_rank_files(tag, tmp_path / f"rank{rank}", rank, world_size=2) == 0
        staged[rank] = {
            str(p.relative_to(tmp_path / f"rank{rank}"))
            for p in (tmp_path / f"rank{rank}").rglob("*.*")
        }
    assert staged[1] == {"step4/rng_rank1.pt", "step4/zero_pp_rank_1_mp_rank_00_optim_states.pt"}
    assert staged[0] | staged[1] == {f"step4/{n}" for n in names}
    assert not staged[0] & staged[1]
    assert (tmp_path / "rank0" / "latest").read_text() == "step4"
    assert not (tmp_path / "rank1" / "latest").exists()
    stage_rank_files(tag, tmp_path / "alone", 0, world_size=1)  # one process: every file
    assert {p.name for p in (tmp_path / "alone" / "step4").iterdir()} == set(names)
    for name in names:  # linked, not copied: the trainer's files themselves
        assert (tmp_path / "alone" / "step4" / name).samefile(tag / name)


def test_staging_copies_where_it_cannot_link(tmp_path, monkeypatch):
    """Another filesystem (EXDEV) or one without hard links: the files are copied instead."""
    tag = tmp_path / "ckpt" / "step2"
    tag.mkdir(parents=True)
    sizes = {"mp_rank_00_model_states.pt": 300, "rng_rank0.pt": 20, "rng_rank1.pt": 21}
    for name, size in sizes.items():
        (tag / name).write_bytes(bytes(range(256)) * (size // 256) + b"x" * (size % 256))

    def cross_device(source, target):
        raise OSError(errno.EXDEV, "Invalid cross-device link", str(source))

    monkeypatch.setattr(os, "link", cross_device)
    assert stage_rank_files(tag, tmp_path / "rank0", 0, world_size=2) == 320
    for name in ("mp_rank_00_model_states.pt", "rng_rank0.pt"):
        staged = tmp_path / "rank0" / "step2" / name
        assert not staged.samefile(tag / name)
        assert staged.read_bytes() == (tag / name).read_bytes()


def test_resuming_from_a_checkpoint_folder_elsewhere_equals_the_uninterrupted_run(
    synthetic_shards, tmp_path
):
    """What a restarted Ray Train worker does: `train(resume_from=<Ray's checkpoint>)` into an
    empty output folder continues exactly (same later losses, same final weights)."""
    sections = dict(
        model={"dropout": 0.3},
        train={"epochs": 1, "steps_per_epoch": 4, "checkpoint_every_steps": 2},
    )
    full_dir, resumed_dir, ray_dir = tmp_path / "full", tmp_path / "resumed", tmp_path / "ray"
    full = write_config(tmp_path / "full.json", tiny_raw(synthetic_shards, full_dir, **sections))
    resumed = write_config(
        tmp_path / "resumed.json", tiny_raw(synthetic_shards, resumed_dir, **sections)
    )
    done = run_train(full)
    assert done.returncode == 0, done.stderr[-3000:]
    shutil.copytree(full_dir / "checkpoints" / "step2", ray_dir / "step2")
    (ray_dir / "latest").write_text("step2")
    code = (
        "import sys; from pathlib import Path; from zeroi2v.config import load; "
        "from zeroi2v.engine.trainer import train; "
        "train(load(sys.argv[1]), resume_from=Path(sys.argv[2]))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(resumed), str(ray_dir)],
        env=clean_env(PYTHONPATH=str(ROOT)),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    reference, got = losses(full_dir), losses(resumed_dir)
    assert sorted(got) == [3, 4]  # nothing before the checkpoint was trained again
    assert got == {step: reference[step] for step in (3, 4)}
    a = read_checkpoint_weights(full_dir / "checkpoints")
    b = read_checkpoint_weights(resumed_dir / "checkpoints")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _registered_checkpoint(experiment: Path, trial: str) -> bool:
    """Whether Ray Train has registered a checkpoint of that trial (its run snapshot)."""
    for snapshot in experiment.glob(f"{trial}/ray_train/checkpoint_manager_snapshot.json"):
        try:
            return json.loads(snapshot.read_text())["latest_checkpoint_result"] is not None
        except (json.JSONDecodeError, KeyError):  # being written
            return False
    return False


@pytest.fixture
def ray_cluster(monkeypatch, tmp_path):
    """Head (1 CPU) + 2 nodes (3 CPUs each) on 127.0.0.1; always shut down."""
    # Read once, when Ray is first imported: set it before.
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    from ray.cluster_utils import Cluster

    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    # Every node's workers import zeroi2v from this checkout, and see the fault file.
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    )
    monkeypatch.setenv(FAULT_ENV, str(tmp_path / "fault"))
    # The dashboard's State API lets Ray Train free the workers of a trial Tune has stopped.
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": True}
    )
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=3)
        cluster.wait_for_nodes()
        assert cluster.address.startswith("127.0.0.1:"), cluster.address
        yield cluster
    finally:
        cluster.shutdown()


@pytest.mark.slow
def test_search_of_two_rank_trials_on_a_two_node_cluster(ray_cluster, synthetic_shards, tmp_path):
    raw = tiny_search(
        synthetic_shards,
        tmp_path,  # tune.storage_path under it: every node sees it
        **{
            "train.epochs": 2,
            "train.steps_per_epoch": 2,
            "deepspeed.train_batch_size": 32,  # 16 per rank × 2 ranks
            "tune.name": "cluster",
            "tune.search_space": {},
            "tune.head_allocation": {"temporal_heads": {"grid": [0, 2]}, "max_offset": 1},
            "tune.num_samples": 1,
            "tune.scheduler": {"name": "asha", "grace_period": 2, "reduction_factor": 2},
            "tune.resources_per_trial": {"cpu": 4, "gpu": 0},
            "tune.workers_per_trial": 2,
            "tune.max_concurrent_trials": 1,
            "tune.max_failures": 1,
        },
    )
    config = tmp_path / "search.json"
    config.write_text(json.dumps(raw))
    fault = Path(os.environ[FAULT_ENV])
    fault.write_text("crash once")  # the first worker to report an epoch raises once
    experiment = tmp_path / "ray_results" / "cluster"
    command = [sys.executable, "launch/tune.py", "--config", str(config)]
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.address}
    # Interrupted once Ray Train has registered the second trial's first-epoch checkpoint (Ray
    # ends the dead driver's trial actors), then resumed with `Tuner.restore` on the same
    # cluster: the first trial is not run again, the second continues from its checkpoint.
    kill_when(
        command,
        lambda: _registered_checkpoint(experiment, "*_00001"),
        cwd=ROOT,
        env=env,
        timeout=300,
        log=tmp_path / "killed.log",
    )
    (finished,) = [t for t, state in trial_state(experiment).items() if state == "TERMINATED"]
    merged = tmp_path / "runs" / "cluster" / finished / "merged.pt"
    stamp = merged.stat().st_mtime
    log = tmp_path / "tune.log"
    with log.open("w") as out:
        proc = subprocess.run(
            [*command, "--resume"], cwd=ROOT, env=env, stdout=out, stderr=out, timeout=420
        )
    assert proc.returncode == 0, log.read_text()[-4000:]
    assert not fault.exists(), "the fault was never injected"
    assert merged.stat().st_mtime == stamp  # the finished trial did not train again

    rows = (experiment / "trials.csv").read_text().strip().splitlines()
    assert len(rows) == 3 and all(",ok," in row for row in rows[1:]), rows
    best = config_lib.load(experiment / "best_config.json")
    assert best.tune is None

    from mlflow import MlflowClient

    client = MlflowClient(raw["tracking"]["tracking_uri"])
    experiment_id = client.get_experiment_by_name(raw["tracking"]["experiment"]).experiment_id
    parent = client.search_runs([experiment_id], "tags.`zeroi2v.tune.experiment` LIKE '%cluster'")
    assert len(parent) == 1
    children = client.search_runs(
        [experiment_id], f"tags.mlflow.parentRunId = '{parent[0].info.run_id}'"
    )
    # One run per trial: the worker crash and the restore each resumed their trial's run.
    curves = {
        child.info.run_id: client.get_metric_history(child.info.run_id, "val/top1")
        for child in children
    }
    assert len(children) == 2
    for child in children:
        assert child.data.params["world_size"] == "2"  # what the trainer saw
        assert child.data.params["ray_nodes"] == "2"  # its two ranks on two Ray nodes
        # per epoch, in order: the crash and the resume continued from a checkpoint, not from
        # the start. An evaluation made after the last checkpoint Ray registered is made (and
        # logged) again when the trial resumes: on a loaded machine the kill can land after
        # epoch 2's evaluation and before its checkpoint's registration, giving [2, 4, 4].
        steps = [m.step for m in curves[child.info.run_id]]
        assert sorted(set(steps)) == [2, 4] and steps == sorted(steps), steps
        assert steps.count(2) == 1, steps  # the registered first-epoch checkpoint was used
    versions = client.search_model_versions(f"name = '{raw['tracking']['model_name']}'")
    assert len(versions) == 1
