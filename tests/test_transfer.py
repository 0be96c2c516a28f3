"""Transfer (`model.init_from`): what a child takes from its parent, lineage, and exact re-merge."""

from __future__ import annotations

import json

import pytest
import torch
from engine_helpers import run_train, tiny_raw, write_config

from zeroi2v import build_model, merge
from zeroi2v.config import ConfigError, from_dict, to_dict
from zeroi2v.engine.loading import load_parent
from zeroi2v.engine.release import (
    example_clips,
    load_checkpoint_model,
    save_merged,
)
from zeroi2v.engine.transfer import initialise_from
from zeroi2v.models.adapters import adaptations

FRAMES = 4


def _cfg(num_classes: int, **model):
    raw = {
        "backbone": "tiny_vit",
        "image_size": 32,
        "num_frames": FRAMES,
        "num_classes": num_classes,
        **model,
    }
    return from_dict({"model": raw, "adapt": {"strategy": "zeroi2v"}})


def _randomise_adapters(model, seed: int) -> None:
    """Non-zero adapters (the default init, up = 0, would merge trivially)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for adaptation in adaptations(model):
            for p in adaptation.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.1)


def _clip() -> torch.Tensor:
    return torch.randn(2, 3, FRAMES, 32, 32, generator=torch.Generator().manual_seed(3))


@pytest.fixture
def merged_parent(tmp_path):
    """A trained-looking 5-class parent, merged and saved like launch/merge.py does."""
    torch.manual_seed(0)
    parent_cfg = _cfg(5)
    parent = build_model(parent_cfg).eval()
    _randomise_adapters(parent, 1)
    merged = merge(parent).eval()
    return merged, save_merged(merged, parent_cfg, tmp_path / "parent.pt")


def test_merged_parent_becomes_the_frozen_backbone_and_remerging_is_exact(merged_parent):
    parent, path = merged_parent
    cfg = _cfg(3, init_from=str(path), head_offsets=[[1, 2], [0, 2]])  # other allocation: fine
    loaded = load_parent(cfg)
    assert loaded.lineage == {"lineage.parent_uri": str(path.resolve())}
    torch.manual_seed(0)
    child = build_model(cfg).eval()
    what = initialise_from(child, loaded, cfg)
    assert "new classifier (5 → 3 classes)" in what and "fresh adapters" in what
    clip = _clip()
    with torch.no_grad():
        # identity adapters on the parent's merged weights: the parent's features, except
        # where the other head allocation changes the attention
        same_cfg = from_dict(to_dict(cfg), {"model.head_offsets": "{1·1, -1·1, 0·2}"})
        same_heads = build_model(same_cfg)
        initialise_from(same_heads, loaded, cfg)
        assert torch.allclose(same_heads.eval().features(clip), parent.features(clip), atol=1e-6)
    frozen = {k: v for k, v in child.state_dict().items() if ".adaptation." not in k}
    for key, value in parent.backbone.state_dict().items():
        assert torch.equal(frozen[f"backbone.{key}"], value), key
    # train (here: perturb) the fresh adapters; merging folds them into the parent's weights
    _randomise_adapters(child, 7)
    remerged = merge(child).eval()
    with torch.no_grad():
        assert (remerged(clip) - child(clip)).abs().max() < 1e-5
    assert remerged.state_dict().keys() == parent.state_dict().keys()


def test_same_class_count_copies_the_classifier(merged_parent):
    parent, path = merged_parent
    cfg = _cfg(5, init_from=str(path))
    child = build_model(cfg).eval()
    assert "classifier" in initialise_from(child, load_parent(cfg), cfg)
    with torch.no_grad():
        assert (child(_clip()) - parent(_clip())).abs().max() < 1e-6


@pytest.mark.parametrize("parent_adapters", [4, 6])
def test_unmerged_parent_gives_its_adapters_or_is_merged_first(parent_adapters):
    """Same `adapt` section: backbone + adapters copied; another one: the parent is merged."""
    from zeroi2v.engine.transfer import Parent

    parent_cfg = from_dict(to_dict(_cfg(5)), {"adapt.num_adapters": parent_adapters})
    torch.manual_seed(0)
    parent = build_model(parent_cfg).eval()
    _randomise_adapters(parent, 1)
    cfg = _cfg(5, init_from="unused")
    child = build_model(cfg).eval()
    what = initialise_from(child, Parent(parent, parent_cfg), cfg)
    assert what.startswith("backbone and adapters" if parent_adapters == 4 else "merged weights")
    with torch.no_grad():
        assert (child(_clip()) - parent(_clip())).abs().max() < 1e-5


def test_mismatched_parent_and_bad_values_fail_in_one_sentence(merged_parent, tmp_path):
    _, path = merged_parent
    with pytest.raises(ConfigError, match="model.image_size 32, this config 64"):
        load_parent(_cfg(3, init_from=str(path), image_size=64))
    with pytest.raises(ConfigError, match="model.init_from: .*missing.pt does not exist"):
        load_parent(_cfg(3, init_from=str(tmp_path / "missing.pt")))
    with pytest.raises(ConfigError, match="set model.pretrained to null"):
        _cfg(3, init_from=str(path), pretrained="x.pt")


# ---------------------------------------------------------------- registry, end to end


def _two_class_shards(videos, out):
    """Two of the four motion classes: a second dataset with another class count."""
    from data_prep.shard import shard_split
    from data_prep.sources import SourceList, folder

    keep = ["moving_left", "moving_right"]
    for split in ("train", "val"):
        source = folder(videos, split)
        items = [item for item in source.items if item.label in keep]
        shard_split(SourceList(keep, items), out, split, root=videos, progress_bar=False)
    return out


def _client(cfg):
    import mlflow

    return mlflow.MlflowClient(cfg.tracking.tracking_uri)


def test_transfer_from_registered_model_records_lineage_and_merges_exactly(
    synthetic_shards, synthetic_videos, tmp_path
):
    train = {"epochs": 1, "steps_per_epoch": 3, "checkpoint_every_steps": 100}
    tracking = {"enabled": True, "experiment": "transfer"}
    parent_raw = tiny_raw(
        synthetic_shards,
        tmp_path / "parent",
        model={"num_frames": FRAMES},
        tracking={**tracking, "model_name": "tiny_parent"},
        train=train,
    )
    proc = run_train(write_config(tmp_path / "parent.json", parent_raw))
    assert proc.returncode == 0, proc.stderr[-3000:]

    shards = _two_class_shards(synthetic_videos, tmp_path / "two_classes")
    child_raw = tiny_raw(
        shards,
        tmp_path / "child",
        model={"num_frames": FRAMES, "num_classes": 2, "init_from": "models:/tiny_parent@champion"},
        tracking={**tracking, "model_name": "tiny_child"},
        train={**train, "seed": 1},
    )
    proc = run_train(write_config(tmp_path / "child.json", child_raw))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "the classifier is re-created" in proc.stderr

    cfg = from_dict(child_raw)
    client = _client(cfg)
    parent_version = client.get_model_version_by_alias("tiny_parent", "champion")
    child_version = client.get_model_version_by_alias("tiny_child", "latest")
    run = client.get_run(child_version.run_id)
    lineage = {
        "lineage.parent_uri": "models:/tiny_parent@champion",
        "lineage.parent_model_name": "tiny_parent",
        "lineage.parent_model_version": str(parent_version.version),
        "lineage.parent_run_id": parent_version.run_id,
    }
    assert lineage.items() <= run.data.tags.items()
    assert lineage.items() <= child_version.tags.items()
    assert run.data.params["model.init_from"] == "models:/tiny_parent@champion"

    # the child's frozen backbone is the parent's merged weights, untouched by training
    from zeroi2v.engine.release import load_model

    # (rebuilt from model.init_from by the checkpoint's reader, checked by its fingerprint)
    parent_model, _ = load_model("models:/tiny_parent@champion", cfg)
    child, _ = load_checkpoint_model(tmp_path / "child" / "checkpoints")
    state = child.state_dict()
    for key, value in parent_model.backbone.state_dict().items():
        assert torch.equal(state[f"backbone.{key}"], value), key
    # the registered child = the merged trained child: exact re-merge, plain architecture
    registered, registered_cfg = load_model("models:/tiny_child@latest", cfg)
    assert registered_cfg.model.init_from == "models:/tiny_parent@champion"
    clips = example_clips(cfg, batch=4)
    with torch.no_grad():
        assert (registered(clips) - child(clips)).abs().max() < 1e-5
    assert registered.state_dict().keys() == parent_model.state_dict().keys()
    assert registered.head.out_features == 2
    assert json.loads(run.data.params["model.num_classes"]) == 2

    # launch/evaluate.py over "splits": each config's champion, then mean ± std
    from launch import evaluate as evaluate_cli

    child_json = str(tmp_path / "child.json")
    summary = evaluate_cli.main(["--config", child_json, child_json])
    assert [s["model"] for s in summary["splits"]] == ["models:/tiny_child@champion"] * 2
    assert summary["top1_mean"] == pytest.approx(run.data.metrics["val/top1"], abs=1e-6)
    assert summary["top1_std"] == 0.0


def test_split_summary_is_mean_and_sample_std():
    from launch.evaluate import summarise

    results = [{"top1": t, "top5": 1.0} for t in (0.70, 0.80, 0.90)]
    summary = summarise(results)
    assert summary["top1_mean"] == pytest.approx(0.80)
    assert summary["top1_std"] == pytest.approx(0.10)  # n − 1: sqrt((0.01 + 0 + 0.01) / 2)
    assert summary["top5_std"] == 0.0
