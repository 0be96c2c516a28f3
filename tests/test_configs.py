"""Every shipped config loads, and its settings are the paper's (SPEC §2 Table 11, §3 Table 12)."""

from __future__ import annotations

from pathlib import Path

import pytest

from zeroi2v.config import load
from zeroi2v.offsets import offsets_per_block, receptive_field
from zeroi2v.specs import BACKBONES

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

# name: (backbone, frames, per-stage multisets as {Δt: count}, RF per stage, adapters per block)
TABLE_11 = {
    "k400_b16_8f": ("clip_vit_b16", 8, [{1: 1, -1: 1, 0: 10}], [3], 4),
    "k400_b16_16f": ("clip_vit_b16", 16, [{1: 1, -1: 1, 2: 1, 0: 9}], [4], 4),
    "k400_b16_32f": ("clip_vit_b16", 32, [{1: 1, -1: 1, 2: 1, -2: 1, 3: 1, 0: 7}], [6], 4),
    "k400_l14_8f": ("clip_vit_l14", 8, [{1: 2, -1: 2, 0: 12}], [3], 4),
    "k400_l14_16f": ("clip_vit_l14", 16, [{1: 2, -1: 2, 2: 1, 0: 11}], [4], 4),
    "k400_l14_32f": ("clip_vit_l14", 32, [{1: 2, -1: 2, 2: 1, -2: 1, 3: 1, 0: 9}], [6], 4),
    "k400_b16in21k_8f": ("vit_b16_in21k", 8, [{1: 1, -1: 1, 0: 10}], [3], 4),
    "ssv2_b16_8f": ("clip_vit_b16", 8, [{1: 1, -1: 1, 0: 10}], [3], 6),
    "ssv2_b16_16f": ("clip_vit_b16", 16, [{1: 1, -1: 1, 2: 1, -2: 1, 0: 8}], [5], 4),
    "ssv2_b16_32f": ("clip_vit_b16", 32, [{1: 1, -1: 1, 2: 1, -2: 1, 3: 1, 0: 7}], [6], 4),
    "ssv2_l14_8f": ("clip_vit_l14", 8, [{1: 2, -1: 2, 0: 12}], [3], 4),
    "ssv2_l14_16f": ("clip_vit_l14", 16, [{1: 2, -1: 2, 2: 2, -2: 2, 0: 8}], [5], 4),
    "ssv2_l14_32f": ("clip_vit_l14", 32, [{1: 2, -1: 2, 2: 1, -2: 1, 3: 1, 0: 9}], [6], 4),
    "ssv2_swinb_32f": (
        "swin_b",
        32,
        [
            {1: 1, 0: 3},
            {1: 1, -1: 1, 0: 6},
            {1: 1, -1: 1, 2: 1, -2: 1, 0: 12},
            {1: 2, -1: 2, 2: 2, -2: 2, 0: 24},
        ],
        [2, 3, 5, 5],
        4,
    ),
}
K400_INTERVAL = {8: 16, 16: 8, 32: 4}


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.json")), ids=lambda p: p.stem)
def test_every_config_loads(path: Path) -> None:
    cfg = load(path)
    assert cfg.comment, "each config documents itself in _comment"


def test_every_paper_setting_has_a_config() -> None:
    assert set(TABLE_11) | {"tiny_cpu"} <= {p.stem for p in CONFIGS.glob("*.json")}


@pytest.mark.parametrize("name", sorted(TABLE_11))
def test_config_matches_paper(name: str) -> None:
    cfg = load(CONFIGS / f"{name}.json")
    backbone, frames, stages, rfs, adapters = TABLE_11[name]
    spec = BACKBONES[backbone]
    assert (cfg.model.backbone, cfg.model.num_frames, cfg.model.image_size) == (
        backbone,
        frames,
        224,
    )
    assert f"deepspeed launch/train.py --config configs/{name}.json" in cfg.comment

    # Table 11: per-block head offsets (per stage for Swin), RF, adapters.
    stdha_frames = frames // cfg.model.temporal_patch_size
    assert cfg.model.temporal_patch_size == (2 if backbone == "swin_b" else 1)
    per_block = offsets_per_block(cfg.model.head_offsets, spec, stdha_frames)
    stage_of = spec.stage_of_block()
    for block, dts in enumerate(per_block):
        expected = stages[0] if len(stages) == 1 else stages[stage_of[block]]
        assert {dt: dts.count(dt) for dt in set(dts)} == expected, (name, block)
        expected_rf = rfs[0] if len(rfs) == 1 else rfs[stage_of[block]]
        assert receptive_field(dts) == expected_rf
    assert cfg.model.temporal_op == "stdha"
    assert cfg.adapt.strategy == "zeroi2v"
    assert (cfg.adapt.num_adapters, cfg.adapt.bottleneck_ratio) == (adapters, 0.25)
    assert cfg.adapt.bottleneck_width is None

    # Table 12: optimisation and sampling.
    assert (cfg.optim.lr, cfg.optim.weight_decay) == (3e-4, 0.05)
    ds = cfg.deepspeed
    assert ds["train_batch_size"] == 64
    assert ds["train_micro_batch_size_per_gpu"] * ds["gradient_accumulation_steps"] * 8 == 64
    assert ds["bf16"]["enabled"] is True
    assert (cfg.data.randaugment_m, cfg.data.randaugment_n) == (7, 4)
    if name.startswith("k400"):
        assert cfg.model.num_classes == 400
        assert cfg.train.epochs == 40
        assert (cfg.data.sampling, cfg.data.frame_interval) == ("dense", K400_INTERVAL[frames])
        assert (cfg.data.num_clips, cfg.data.num_crops) == (3, 1)
        assert (cfg.data.hflip, cfg.data.random_erasing, cfg.optim.label_smoothing) == (0.5, 0, 0)
    else:
        assert cfg.model.num_classes == 174
        assert cfg.train.epochs == 50
        assert cfg.data.sampling == "uniform"
        assert (cfg.data.num_clips, cfg.data.num_crops) == (1, 3)
        assert (cfg.data.random_erasing, cfg.optim.label_smoothing) == (0.25, 0.1)
        assert cfg.data.hflip == 0.0  # SSv2 has left/right classes (documented in _comment)


def test_tiny_cpu_config() -> None:
    cfg = load(CONFIGS / "tiny_cpu.json")
    assert (cfg.model.backbone, cfg.model.num_frames, cfg.model.image_size) == ("tiny_vit", 8, 32)
    assert cfg.model.num_classes == 4
    # no downloads, ever, on the CPU demo: image pre-trained locally by launch/pretrain_tiny.py
    assert cfg.model.pretrained == "data/tiny_vit_image.pt"
    assert "launch/pretrain_tiny.py" in cfg.comment
    assert "launch/train.py --config configs/tiny_cpu.json" in cfg.comment
    assert cfg.deepspeed["bf16"]["enabled"] is False


# Table 6 (SPEC §5): name → (classes, init_from, shard folder)
K400_PARENT = "models:/zeroi2v_k400_b16_8f@champion"
TRANSFER = {
    **{f"ucf101_b16_8f_split{k}": (101, K400_PARENT, f"data/ucf101/split{k}") for k in (1, 2, 3)},
    **{f"hmdb51_b16_8f_split{k}": (51, K400_PARENT, f"data/hmdb51/split{k}") for k in (1, 2, 3)},
    "diving48_b16_8f": (48, None, "data/diving48"),
}


@pytest.mark.parametrize("name", sorted(TRANSFER))
def test_transfer_configs(name: str) -> None:
    cfg = load(CONFIGS / f"{name}.json")
    classes, parent, folder = TRANSFER[name]
    assert (cfg.model.num_classes, cfg.model.init_from) == (classes, parent)
    assert cfg.model.pretrained == (None if parent else "openai")
    assert cfg.model.quick_gelu is (True if parent else None)  # CLIP's activation either way
    assert (cfg.data.train_shards, cfg.data.val_shards) == (
        f"{folder}/train-*.tar",
        f"{folder}/val-*.tar",
    )
    assert cfg.tracking.model_name == f"zeroi2v_{name}"  # evaluate.py's default per split
    assert f"deepspeed launch/train.py --config configs/{name}.json" in cfg.comment
    # Table 11, ViT-B 8 frames: the parent's STDHA allocation and 4 adapters
    per_block = offsets_per_block(cfg.model.head_offsets, BACKBONES["clip_vit_b16"], 8)
    assert {dt: per_block[0].count(dt) for dt in set(per_block[0])} == {1: 1, -1: 1, 0: 10}
    assert (cfg.adapt.num_adapters, cfg.deepspeed["train_batch_size"]) == (4, 64)
    if name.startswith("diving48"):  # paper: 1 temporal clip
        assert (cfg.data.sampling, cfg.data.num_clips) == ("uniform", 1)
