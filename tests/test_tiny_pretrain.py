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
