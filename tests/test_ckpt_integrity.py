"""Damaged checkpoints are never trained on: each damage kind is detected by the manifest,
`--resume` falls back to the newest intact checkpoint, and the resumed run's losses equal
the uninterrupted run's from that checkpoint on."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from engine_helpers import (
    become_rank,
    end_rank,
    free_port,
    losses,
    run_train,
    tiny_raw,
    write_config,
)
from test_resume import ONE_PROCESS_DS, SECTIONS

from zeroi2v import config
from zeroi2v.engine import ckpt_integrity
from zeroi2v.engine.ckpt_integrity import resume_point
from zeroi2v.errors import CheckpointDamagedError

TWO_PROCESS_DS = {"train_micro_batch_size_per_gpu": 4, "zero_optimization": {"stage": 1}}


def _overwrite_random(path: Path, count: int) -> None:
    """`count` random bytes written into the middle of `path` (its size stays the same)."""
    with open(path, "r+b") as f:
        f.seek(path.stat().st_size // 2)
        f.write(os.urandom(count))


def _truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


def _last(folder: Path, pattern: str) -> Path:
    """With 2 processes ZeRO-1 writes an optimizer file per rank: damage rank 1's."""
    return sorted(folder.glob(pattern))[-1]


DAMAGE = {
    "optimizer_bytes": lambda f: _overwrite_random(_last(f, "*optim_states.pt"), 2000),
    "model_bytes": lambda f: _overwrite_random(_last(f, "*model_states.pt"), 64),
    "client_truncated": lambda f: _truncate(f / "client.json"),
    "model_truncated": lambda f: _truncate(_last(f, "*model_states.pt")),
}


class _SimulatedCrash(RuntimeError):
    pass


def _crash_after_writing(step_tag: str):
    """`parallel.save_checkpoint` that dies (on every rank) once its files of `step_tag` are
    written, i.e. before the manifest and `latest`: what a crash mid-save leaves behind."""
    from zeroi2v.engine import parallel

    real = parallel.save_checkpoint

    def save(engine, directory, tag, client_state):
        real(engine, directory, tag, client_state)
        if tag == step_tag:
            raise _SimulatedCrash(tag)

    return save


def _worker(rank: int, world: int, port: int, root: Path, raws: dict[str, dict]) -> None:
    """Uninterrupted run; a run that crashes while saving step6; step3 + damaged step6 copies
    of the uninterrupted run's checkpoints; then `--resume` on each (rank 0 records the note)."""
    become_rank(rank, world, port)
    import torch.distributed as dist

    from zeroi2v.engine import parallel, trainer

    # The runs share this group: `train` leaves a group only if it made it.
    with parallel.process_group():
        trainer.train(config.from_dict(raws["full"]))
        real_save = parallel.save_checkpoint
        parallel.save_checkpoint = _crash_after_writing("step6")
        with pytest.raises(_SimulatedCrash):
            trainer.train(config.from_dict(raws["crash"]))
        parallel.save_checkpoint = real_save
        full = root / "full" / "checkpoints"
        if rank == 0:
            for kind, damage in DAMAGE.items():
                ckpts = root / kind / "checkpoints"
                for tag in ("step3", "step6"):
                    shutil.copytree(full / tag, ckpts / tag)
                (ckpts / "latest").write_text("step6")
                damage(ckpts / "step6")
        dist.barrier()
        notes = {}
        for name in ["crash", *DAMAGE]:
            ckpts = root / name / "checkpoints"
            notes[name] = {
                "latest": (ckpts / "latest").read_text(),
                "note": resume_point(ckpts).note,
            }
            dist.barrier()  # rank 0 reads the state before any rank resumes
            trainer.train(config.from_dict(raws[name]), resume=True)
        if rank == 0:
            (root / "notes.json").write_text(json.dumps(notes))
    end_rank()


def _run_damage_kinds(shards: Path, root: Path, world: int, ds: dict) -> None:
    names = ["full", "crash", *DAMAGE]
    raws = {n: tiny_raw(shards, root / n, deepspeed=ds, **SECTIONS) for n in names}
    mp.spawn(_worker, args=(world, free_port(), root, raws), nprocs=world)
    notes = json.loads((root / "notes.json").read_text())
    reference = losses(root / "full")
    assert sorted(reference) == list(range(1, 11))
    # crash mid-save: `latest` stayed on step3; step6's files are there but never committed
    assert notes["crash"] == {"latest": "step3", "note": None}
    for kind in DAMAGE:
        note = notes[kind]["note"]
        assert note.startswith("checkpoint step6 (") and note.count(". ") == 0, note
        assert note.endswith("damaged or incomplete; resuming from step3, the newest intact one.")
    assert "does not match its sha256" in notes["optimizer_bytes"]["note"]
    assert "optim_states.pt" in notes["optimizer_bytes"]["note"]
    assert "model_states.pt does not match" in notes["model_bytes"]["note"]
    assert "client.json is" in notes["client_truncated"]["note"]
    assert "model_states.pt is" in notes["model_truncated"]["note"]
    later = [s for s in reference if s > 3]
    for name in ["crash", *DAMAGE]:
        records = [json.loads(x) for x in (root / name / "metrics.jsonl").read_text().splitlines()]
        steps = [r["step"] for r in records if "loss" in r]
        if name == "crash":  # metrics.jsonl was cut back to step 3 on resume: no step twice
            assert steps == list(range(1, 11)), steps
        else:
            assert steps == later
        got = losses(root / name)
        assert [got[s] for s in later] == [reference[s] for s in later], name


def test_damaged_checkpoints_fall_back_one_process(synthetic_shards, tmp_path):
    """1 process, ZeRO-1: each damage kind, and a crash mid-save, on the tiny config."""
    _run_damage_kinds(synthetic_shards, tmp_path, 1, ONE_PROCESS_DS)


@pytest.mark.slow
def test_damaged_checkpoints_fall_back_two_processes(synthetic_shards, tmp_path):
    """2 gloo processes, ZeRO-1 (one optimizer partition file per rank)."""
    _run_damage_kinds(synthetic_shards, tmp_path, 2, TWO_PROCESS_DS)


# ----------------------------------------------------------------------------- without training


def _fake_checkpoint(directory: Path, step: int) -> Path:
    folder = ckpt_integrity.prepare_folder(directory, step)
    (folder / "a.pt").write_bytes(os.urandom(4096))
    (folder / "client.json").write_text(json.dumps({"global_step": step}))
    ckpt_integrity.commit(directory, step)
    return folder


def test_manifest_commit_names_the_damaged_file_and_stop_refuses(tmp_path):
    for step in (2, 4):
        _fake_checkpoint(tmp_path, step)
    assert (tmp_path / "latest").read_text() == "step4"
    assert resume_point(tmp_path).tag == "step4"
    _overwrite_random(tmp_path / "step4" / "a.pt", 16)
    with pytest.raises(CheckpointDamagedError, match=r"step4 \(a.pt does not match") as error:
        resume_point(tmp_path, "stop")
    assert "train.on_damaged_checkpoint is 'stop'" in str(error.value)
    (tmp_path / "step2" / "extra.pt").write_bytes(b"x")
    with pytest.raises(CheckpointDamagedError, match="extra.pt is not in its manifest"):
        resume_point(tmp_path)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        resume_point(tmp_path / "nothing")


def test_ranks_hash_each_file_once_and_agree_on_the_damaged_one(tmp_path, monkeypatch):
    """3 ranks (threads, agreeing through a barrier as the all-gather does): each file of a
    folder is hashed by exactly one rank, and the rank that finds the damage tells the others,
    so all fall back to the same checkpoint with the same note."""
    import threading

    world = 3
    for step in (2, 4):
        folder = _fake_checkpoint(tmp_path, step)
        for i in range(4):
            (folder / f"rng_rank{i}.pt").write_bytes(os.urandom(100 + i))
        ckpt_integrity.commit(tmp_path, step)  # the manifest again, with the new files
    damaged = "rng_rank3.pt"
    _overwrite_random(tmp_path / "step4" / damaged, 8)
    hashed: dict[int, list[str]] = {r: [] for r in range(world)}
    real_hash = ckpt_integrity.sha256_file

    def counting_hash(path: Path) -> str:
        hashed[int(threading.current_thread().name)].append(f"{path.parent.name}/{path.name}")
        return real_hash(path)

    monkeypatch.setattr(ckpt_integrity, "sha256_file", counting_hash)
    verdicts: list[str | None] = [None] * world
    barrier = threading.Barrier(world)

    def agree_as(rank: int):
        def agree(why: str | None) -> str | None:
            verdicts[rank] = why
            barrier.wait()
            found = next((w for w in verdicts if w is not None), None)
            barrier.wait()  # everyone read this round's verdicts before the next round
            return found

        return agree

    points = {}

    def rank_main(rank: int) -> None:
        share = (rank, world)
        points[rank] = resume_point(tmp_path, share=share, agree=agree_as(rank))

    threads = [threading.Thread(target=rank_main, args=(r,), name=str(r)) for r in range(world)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert {p.tag for p in points.values()} == {"step2"}
    assert len({p.note for p in points.values()}) == 1
    assert f"step4 ({damaged} does not match its sha256" in points[0].note
    step2 = sorted(hashed[0] + hashed[1] + hashed[2])
    step2 = [f for f in step2 if f.startswith("step2/")]
    files = sorted(
        f"step2/{p.name}" for p in (tmp_path / "step2").iterdir() if p.name != "manifest.json"
    )
    assert step2 == files  # the intact folder: every file hashed once, by one rank
    assert all(hashed[r] for r in range(world))  # and every rank did a share


def test_keep_checkpoints_bounds_the_folders_on_disk(tmp_path):
    for step in (1, 2, 3, 4, 5):
        folder = _fake_checkpoint(tmp_path, step)
    ckpt_integrity.prepare_folder(tmp_path, 6)  # a save that never committed
    assert ckpt_integrity.prune(tmp_path, 2) == ["step3", "step2", "step1"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step4", "step5", "step6"]
    assert resume_point(tmp_path).tag == folder.name == "step5"


def test_only_a_committed_checkpoint_is_a_run_to_keep(tmp_path):
    """What a fresh run refuses to overwrite: a ``stepN`` with its manifest, at or before
    ``latest`` (what --resume would load); not a missing folder or a save that never finished."""
    assert ckpt_integrity.last_committed(tmp_path / "nothing") is None
    ckpt_integrity.prepare_folder(tmp_path, 3)  # a crash in the first save
    assert ckpt_integrity.last_committed(tmp_path) is None
    _fake_checkpoint(tmp_path, 3)
    ckpt_integrity.prepare_folder(tmp_path, 6)  # the next save, unfinished
    assert ckpt_integrity.last_committed(tmp_path) == "step3"
    (tmp_path / "latest").unlink()  # a crash between the first manifest and `latest`
    assert ckpt_integrity.last_committed(tmp_path) == resume_point(tmp_path).tag == "step3"


def test_resume_stop_is_one_sentence_from_the_cli(synthetic_shards, tmp_path):
    out = tmp_path / "run"
    _fake_checkpoint(out / "checkpoints", 3)
    (out / "checkpoints" / "step3" / "client.json").write_text("{}")
    raw = tiny_raw(synthetic_shards, out, train={"on_damaged_checkpoint": "stop"})
    result = run_train(write_config(tmp_path / "c.json", raw), "--resume", timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: checkpoint step3 (client.json is 2 bytes, the manifest says 18) in "
        f"{out / 'checkpoints'} is damaged or incomplete; not resuming because "
        f"train.on_damaged_checkpoint is 'stop' (set it to 'fallback' to resume from the newest "
        f"intact checkpoint)"
    ]


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_deepspeed_files_load_weights_only(tmp_path, monkeypatch):
    """The engine's checkpoint loader and `read_checkpoint_weights` run no pickled code."""
    from zeroi2v.engine import parallel

    monkeypatch.chdir(tmp_path)
    torch.save({"module": {"w": torch.ones(2)}, "evil": _RunsCode()}, tmp_path / "x.pt")
    with pytest.raises(Exception, match="unsupported GLOBAL posix.system"):
        parallel.load_weights_only(tmp_path / "x.pt")
    assert not (tmp_path / "pwned").exists()
