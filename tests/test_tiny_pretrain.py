"""Tiny image pre-training: spatial features a frozen backbone can be adapted from."""

import pytest
import torch

from launch import pretrain_tiny
from zeroi2v import build_model, config
from zeroi2v.config import ConfigError


def test_pretrained_tiny_weights_learn_the_image_task_and_load_strictly(tmp_path):
    out = tmp_path / "tiny.pt"
    accuracy = pretrain_tiny.main(["--config", "configs/tiny_cpu.json", "--out", str(out)])
    assert accuracy >= 0.9  # the location task is learnt: the features know where things are
    saved = torch.load(out, weights_only=True)
    cfg = config.load("configs/tiny_cpu.json", {"model.pretrained": str(out)})
    model = build_model(cfg)  # strict load into the STDHA + adapters video model
    for name, tensor in model.backbone.state_dict().items():
        if name in saved:
            assert torch.equal(tensor, saved[name]), name
    assert set(saved) <= set(model.backbone.state_dict())


def test_real_backbones_are_not_pretrained_here(tmp_path):
    with pytest.raises(ConfigError, match="only for tiny backbones"):
        pretrain_tiny.main(
            [
                "--config",
                "configs/k400_b16_8f.json",
                "--out",
                str(tmp_path / "x.pt"),
                "--steps",
                "1",
            ]
        )


def test_digit_pre_training_runs_from_the_command_line_and_loads_strictly(tmp_path):
    out = tmp_path / "digits.pt"
    overrides = ["model.backbone=tiny_vit12", "model.num_classes=2", "model.temporal_op=none"]
    args = ["--config", "configs/tiny_cpu.json", "--out", str(out), "--steps", "2"]
    pretrain_tiny.main([*args, "--task", "digits", *overrides])
    video = {"model.pretrained": str(out), "model.backbone": "tiny_vit12"}
    cfg = config.load("configs/tiny_cpu.json", {**video, "model.head_offsets": "{1·1, -1·1, 0·10}"})
    assert set(torch.load(out, weights_only=True)) <= set(build_model(cfg).backbone.state_dict())
