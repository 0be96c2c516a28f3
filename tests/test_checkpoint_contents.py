"""What a checkpoint holds: what trains (not the frozen backbone), its fingerprint, the best.

The frozen backbone is rebuilt by every reader (resume, merge, evaluate) from where the run got
it; a checkpoint records the backbone's fingerprint, and a reader that builds another one stops.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from engine_helpers import run_train, tiny_raw, write_config

from zeroi2v import config
from zeroi2v.engine import ckpt_integrity, frozen, parallel
from zeroi2v.engine.release import load_checkpoint_model
from zeroi2v.engine.train_state import TrainState
from zeroi2v.errors import FrozenBackboneError

RUN_STATE = ("client.json", "manifest.json")  # and the per-rank RNG files, rng_rank*.pt


def _trainable_elements(cfg: config.Config) -> int:
    return sum(p.numel() for p in frozen.build(cfg).parameters() if p.requires_grad)


@pytest.mark.parametrize("stage", [1, 3])
def test_a_checkpoint_holds_what_trains_and_no_more(synthetic_shards, tmp_path, stage):
    """Checkpoint bytes ≤ 1.1 × (trainable fp32 weights + fp32 master copy + Adam's two
    moments: 16 bytes per trainable element, + the run state); no frozen key is saved; merge's
    reader rebuilds the frozen backbone and gives the trained model's logits."""
    out = tmp_path / "run"
    raw = tiny_raw(
        synthetic_shards,
        out,
        deepspeed={"train_micro_batch_size_per_gpu": 4, "zero_optimization": {"stage": stage}},
        train={"epochs": 1, "steps_per_epoch": 2, "checkpoint_every_steps": 2},
    )
    proc = run_train(write_config(tmp_path / "c.json", raw), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cfg = config.from_dict(raw)
    folder = out / "checkpoints" / "step2"
    sizes = {p.name: p.stat().st_size for p in folder.iterdir()}
    run_state = sum(n for name, n in sizes.items() if name in RUN_STATE or name.startswith("rng"))
    bound = 16 * _trainable_elements(cfg) + run_state
    assert sum(sizes.values()) <= 1.1 * bound, (sizes, bound)

    saved = parallel.read_checkpoint_weights(out / "checkpoints")
    model = frozen.build(cfg)
    assert set(saved) == {n for n, p in model.named_parameters() if p.requires_grad}
    state = TrainState.read(folder / "client.json")
    assert state.frozen_backbone == frozen.fingerprint(model, cfg)

    rebuilt, _ = load_checkpoint_model(out / "checkpoints")
    merged = torch.load(out / "merged.pt", weights_only=True)  # the run's own release
    from zeroi2v.engine.release import example_clips, merge_checked

    clips = example_clips(cfg)
    merged_again = merge_checked(rebuilt, clips)
    with torch.no_grad():
        want = load_checkpoint_model(out / "merged.pt")[0](clips)
        got = merged_again(clips)
    assert merged["state_dict"].keys() == merged_again.state_dict().keys()
    assert (got - want).abs().max() < 1e-5


def test_a_resume_on_another_backbone_stops_in_one_sentence(synthetic_shards, tmp_path):
    """A resume (and merge's reader) that builds another frozen backbone than the checkpoint
    recorded stops, naming both fingerprints and where each came from."""
    out = tmp_path / "run"
    raw = tiny_raw(
        synthetic_shards,
        out,
        train={"epochs": 1, "steps_per_epoch": 2, "checkpoint_every_steps": 1},
    )
    path = write_config(tmp_path / "c.json", raw)
    assert run_train(path, timeout=300).returncode == 0
    cfg = config.from_dict(raw)
    before = frozen.fingerprint(frozen.build(cfg), cfg)["sha256"][:16]
    other = config.from_dict(raw, {"train.seed": 1})
    after = frozen.fingerprint(frozen.build(other), other)["sha256"][:16]

    proc = run_train(path, "--resume", "train.seed=1", timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: checkpoint {out / 'checkpoints' / 'step2'} was trained on the frozen backbone "
        f"{before} (from a random init (model.pretrained null, train.seed 0)) but this config "
        f"builds {after} (from a random init (model.pretrained null, train.seed 1)); use the "
        f"config and weights the run was trained with (its config.json), or start a new run"
    ), proc.stderr[-3000:]

    saved = json.loads((out / "config.json").read_text())
    saved["train"]["seed"] = 1  # the run's config edited after the fact
    (out / "config.json").write_text(json.dumps(saved))
    with pytest.raises(FrozenBackboneError, match=f"{before}.* builds {after}"):
        load_checkpoint_model(out / "checkpoints")


def test_a_missing_trainable_key_is_an_error_a_missing_frozen_one_is_not():
    cfg = config.from_dict(
        json.loads((Path(__file__).parents[1] / "configs" / "tiny_cpu.json").read_text()),
        {"model.pretrained": None},
    )
    model = frozen.build(cfg)
    trainable = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    assert not frozen.load_trainable(model, trainable, "checkpoint x")  # frozen ones rebuilt
    assert frozen.load_trainable(model, model.state_dict(), "checkpoint x")  # an older, full one
    lacking = dict(trainable)
    gone = sorted(lacking)[0]
    del lacking[gone]
    with pytest.raises(RuntimeError, match=rf"checkpoint x does not fit .*\['{gone}'\]"):
        frozen.load_trainable(model, lacking, "checkpoint x")


def _checkpoint(directory: Path, step: int, best: int | None, keep: int) -> None:
    folder = ckpt_integrity.prepare_folder(directory, step)
    (folder / "client.json").write_text(json.dumps({"global_step": step, "best_step": best}))
    ckpt_integrity.commit(directory, step, keep, None if best is None else f"step{best}")


def test_pruning_keeps_the_newest_and_the_best(tmp_path):
    """keep 2: the newest two stay, and the best evaluation's checkpoint however old."""
    for step, best in [(1, None), (2, 2), (3, 2), (4, 2), (5, 2), (6, 6), (7, 6), (8, 6)]:
        _checkpoint(tmp_path, step, best, keep=2)
        if step == 5:
            assert sorted(p.name for p in tmp_path.glob("step*")) == ["step2", "step4", "step5"]
    assert sorted(p.name for p in tmp_path.glob("step*")) == ["step6", "step7", "step8"]
    assert config.from_dict({}).train.keep_checkpoints == 3  # the default bounds disk use
