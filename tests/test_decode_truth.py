"""Decode truth in every reader: a shard holding a lying header and a garbled stream.

The shard is written directly (as an older data_prep or another tool could have): the
training and eval loaders, `data_prep inspect` and predict must ask only for frames that
decode (the json's ``frames``), and skip-and-count the sample that fails.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import video_variants as variants

from data_prep.__main__ import main
from data_prep.inspect import LABEL_HEIGHT, contact_sheet, frame_indices, iter_samples
from data_prep.shard_writer import DeterministicTar
from zeroi2v.config import from_dict, load
from zeroi2v.data import build_eval_loader, build_train_loader

CLIP = variants.Variant("mp4", "libx264", frames=48, options=variants.X264)
KEEP = 12  # frames of the lying clip that decode; its header claims 48


@pytest.fixture(scope="module")
def hostile_shards(tmp_path_factory: pytest.TempPathFactory, synthetic_videos: Path) -> Path:
    out = tmp_path_factory.mktemp("hostile_shards")
    clip = variants.write(out / "clip.mp4", CLIP).read_bytes()
    good = sorted((synthetic_videos / "val").glob("*/*.mp4"))[:6]
    samples = [(f"good{i}", p.read_bytes(), 16, 32, 32) for i, p in enumerate(good)]
    samples.append(("lying", variants.lying_header(clip, keep=KEEP), KEEP, 96, 64))
    samples.append(("garbled", variants.corrupt_middle(clip, start=0.2, length=0.8), 48, 96, 64))
    tar = DeterministicTar(out / "val-000000.tar")
    for index, (key, data, frames, width, height) in enumerate(samples):
        meta = {"label": "x", "frames": frames, "width": width, "height": height, "fps": 24.0}
        tar.add(
            key, {"mp4": data, "cls": str(index % 4).encode(), "json": json.dumps(meta).encode()}
        )
    tar.close()
    shards = [{"name": "val-000000.tar", "count": len(samples), "sha256": ""}]
    manifest = {"classes": list("abcd"), "splits": {"val": {"shards": shards, "count": 8}}}
    (out / "manifest.json").write_text(json.dumps(manifest))
    (out / "clip.mp4").unlink()
    return out


@pytest.fixture
def asked(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, list[int]]]:
    """(decord's frame count, indices) of every get_batch call (in this process)."""
    import decord  # after PyAV (video_variants): the other order breaks libvpx-vp9 encoding

    calls: list[tuple[int, list[int]]] = []
    original = decord.VideoReader.get_batch

    def spy(self, indices):
        calls.append((len(self), [int(i) for i in indices]))
        return original(self, indices)

    monkeypatch.setattr(decord.VideoReader, "get_batch", spy)
    return calls


def _cfg(shards: Path, sampling: str = "uniform"):
    pattern = str(shards / "val-000000.tar")
    return from_dict(
        {
            "model": {"num_frames": 8, "image_size": 32, "num_classes": 4},
            "data": {
                "train_shards": pattern,
                "val_shards": pattern,
                "sampling": sampling,
                "frame_interval": 4,
                "short_side": 32,
                "shuffle_buffer": 1,
                "num_workers": 0,
                "num_clips": 2,
            },
            "train": {"seed": 3},
        }
    )


@pytest.mark.parametrize("sampling", ["uniform", "dense"])
def test_loaders_stay_within_decoded_frames_and_skip_what_fails(hostile_shards, asked, sampling):
    """decord counts 48 frames in the lying clip (and fails near its 12th, where FFmpeg stops
    too): no reader asks past the 12 stored; what fails anyway is skipped and counted."""
    cfg = _cfg(hostile_shards, sampling)
    train = build_train_loader(
        cfg, rank=0, world_size=1, epoch=0, micro_batch_size=7, num_batches=2
    )
    batches = list(train)
    assert [b[0].shape for b in batches] == [(7, 3, 8, 32, 32)] * 2
    evaluation = build_eval_loader(cfg, rank=0, world_size=1, batch_size=8)
    keys = [key for _, _, batch_keys in evaluation for key in batch_keys]
    assert {f"good{i}" for i in range(6)} <= set(keys) and "garbled" not in keys
    assert evaluation.skips.samples == 8 - len(keys) >= 1
    # 14 draws from 8 samples: the endless train stream starts a second pass, so garbled (and
    # lying, if its frame 11 is drawn) can fail once per pass
    assert 1 <= train.skips.samples <= 4
    lying = [indices for total, indices in asked if total == 48]  # garbled does not open
    assert lying and max(max(indices) for indices in lying) < KEEP


def test_inspect_decodes_only_shown_frames_and_skips_the_garbled(hostile_shards, asked, capfd):
    skipped: list[tuple[str, str]] = []
    sheet = contact_sheet([hostile_shards / "val-000000.tar"], clips=8, columns=4, skipped=skipped)
    # decord's threaded decoder may or may not fail at the lying clip's frame 11 (its last
    # stored one, shown last): timing decides; it is never asked for a later one
    assert [key for key, _ in skipped] in (["garbled"], ["lying", "garbled"])
    assert all(reason.startswith("decord cannot decode it (") for _, reason in skipped)
    shown = [(16, frame_indices(16, 4))] * 6 + [(48, frame_indices(KEEP, 4))]
    assert asked[:7] == shown
    assert sheet.size == (4 * 64, (8 - len(skipped)) * (64 + LABEL_HEIGHT))
    out = hostile_shards / "sheet.png"
    assert (
        main(["inspect", str(hostile_shards / "val-000000.tar"), "--out", str(out), "--clips", "8"])
        == 0
    )
    printed = capfd.readouterr()
    assert re.search(r"\([12] samples skipped: they do not decode\)", printed.out)
    assert "skipped garbled: decord cannot decode it (" in printed.err
    assert main(["inspect", str(hostile_shards / "manifest.json")]) == 1
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "is not a tar shard" in err


def test_predict_skips_and_counts_a_video_that_fails(hostile_shards, synthetic_videos):
    import zeroi2v
    from zeroi2v.use.inference import VideoPredictor

    cfg = load("configs/tiny_cpu.json", {"model.pretrained": None, "data.num_workers": 0})
    torch.manual_seed(0)
    predictor = VideoPredictor(zeroi2v.build_model(cfg).eval(), cfg)
    samples = {s["__key__"]: s["mp4"] for s in iter_samples(hostile_shards / "val-000000.tar")}
    good = sorted((synthetic_videos / "val").glob("*/*.mp4"))[0]
    predictions = predictor.predict([good, samples["garbled"], b"not a video", samples["lying"]])
    # predict has no stored count: decord's 48 for the lying clip fail at frame 11 → skipped
    assert [p.source for p in predictions] == [str(good)]
    assert [name for name, _ in predictor.skipped] == [
        f"<{len(samples['garbled'])} bytes>",
        "<11 bytes>",
        f"<{len(samples['lying'])} bytes>",
    ]
    assert predictor.skipped[1][1] == (
        "cannot read the video header: Invalid data found when processing input"
    )


def test_widths_decord_cannot_resize_to_are_read_one_pixel_wider(tmp_path):
    """decord 0.6 fails to resize to width 48 (and a few others): a 96×64 clip at short side
    32 is read 49 wide instead of being dropped as corrupt."""
    from zeroi2v.data.decode import DECORD_BAD_WIDTHS, open_video, read_frames

    data = variants.write(tmp_path / "wide.mp4", CLIP).read_bytes()
    for short_side, width in ((32, 49), (64, 96), (8, 13)):
        frames = read_frames(open_video(data, short_side=short_side), [0, 47])
        assert frames.shape[1:] == (short_side, width, 3) and width not in DECORD_BAD_WIDTHS
