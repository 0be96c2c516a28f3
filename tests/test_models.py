"""Backbone factory, pretrained loading, the video classifier and activation checkpointing."""

from __future__ import annotations

import pytest
import torch

from zeroi2v import build_model
from zeroi2v.config import ConfigError, from_dict
from zeroi2v.engine.activation_checkpointing import apply_activation_checkpointing
from zeroi2v.models.adapters import adaptations


def _cfg(backbone="tiny_vit", strategy="zeroi2v", **model):
    raw = {"backbone": backbone, "image_size": 32, "num_frames": 4, "num_classes": 5, **model}
    if backbone == "tiny_swin":
        raw.setdefault("head_offsets", [[[1, 1], [0, 1]], [[1, 1], [-1, 1], [0, 2]]])
    return from_dict({"model": raw, "adapt": {"strategy": strategy}})


@pytest.mark.parametrize("backbone", ["tiny_vit", "tiny_vit_timm"])
def test_pretrained_local_file_loads_strictly(tmp_path, backbone):
    torch.manual_seed(0)
    source = build_model(_cfg(backbone, "linear_probe"))
    weights = {k: v for k, v in source.backbone.state_dict().items()}
    torch.save(weights, tmp_path / "backbone.pt")
    torch.save(source.state_dict(), tmp_path / "classifier.pt")  # "backbone." prefixed keys
    for name in ("backbone.pt", "classifier.pt"):
        torch.manual_seed(1)
        model = build_model(_cfg(backbone, pretrained=str(tmp_path / name)))
        for key, value in weights.items():
            assert torch.equal(model.backbone.state_dict()[key], value), key


@pytest.mark.parametrize("backbone", ["tiny_vit", "tiny_vit_timm"])
def test_missing_or_wrong_pretrained_file_is_one_clear_sentence(tmp_path, backbone):
    with pytest.raises(RuntimeError, match=r"^could not load pretrained weights '.*nope\.pt'"):
        build_model(_cfg(backbone, pretrained=str(tmp_path / "nope.pt")))
    torch.save({"not_a_weight": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(RuntimeError, match=f"could not load pretrained weights .* {backbone}") as e:
        build_model(_cfg(backbone, pretrained=str(tmp_path / "bad.pt")))
    assert "\n" not in str(e.value) and e.value.__cause__ is None


def test_clip_shape_is_checked():
    model = build_model(_cfg())
    with pytest.raises(ValueError, match=r"expected a clip \(B, C, 4, H, W\)"):
        model(torch.randn(1, 3, 8, 32, 32))


def test_strategies_that_do_not_fit_the_model_are_config_errors():
    with pytest.raises(ConfigError, match="temporal_heads_only"):
        build_model(_cfg(strategy="temporal_heads_only", temporal_op="none"))
    with pytest.raises(ConfigError, match="st_adapter"):
        build_model(_cfg("tiny_swin", strategy="st_adapter"))


def _randomised(model):
    with torch.no_grad():
        for adaptation in adaptations(model):
            for p in adaptation.parameters():
                p.normal_(std=0.1)
    return model


def _saved_tensors(model, clip) -> tuple[torch.Tensor, int]:
    count = 0

    def pack(t):
        nonlocal count
        count += 1
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(clip)
    return out, count


@pytest.mark.parametrize("backbone", ["tiny_vit", "tiny_vit_timm", "tiny_swin"])
def test_activation_checkpointing_gives_same_outputs_and_gradients(backbone):
    torch.manual_seed(0)
    clip = torch.randn(2, 3, 4, 32, 32)
    outs, grads, saved = [], [], []
    for checkpointed in (False, True):
        torch.manual_seed(0)
        model = _randomised(build_model(_cfg(backbone))).train()
        keys = list(model.state_dict())
        if checkpointed:
            assert apply_activation_checkpointing(model) == (2 if backbone != "tiny_swin" else 4)
            apply_activation_checkpointing(model)  # idempotent
            assert list(model.state_dict()) == keys  # names unchanged
        out, n_saved = _saved_tensors(model, clip)
        out.square().mean().backward()
        outs.append(out.detach())
        saved.append(n_saved)
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    assert torch.equal(outs[0], outs[1])
    assert grads[0].keys() == grads[1].keys()
    for name, grad in grads[0].items():
        assert torch.allclose(grad, grads[1][name], atol=1e-7, rtol=1e-6), name
    assert saved[1] < saved[0]  # the blocks' activations are really recomputed


@pytest.mark.slow
def test_real_vit_b16_sizes_match_the_paper():
    """ViT-B/16 CLIP: 86 M backbone params; 4 adapters/block at ratio 0.25 → 14 M (Table 2)."""
    cfg = from_dict(
        {
            "model": {
                "backbone": "clip_vit_b16",
                "num_frames": 8,
                "num_classes": 400,
                "head_offsets": "{1·1, −1·1, 0·10}",
            }
        }
    )
    model = build_model(cfg)
    adapter_params = sum(p.numel() for a in adaptations(model) for p in a.parameters())
    backbone = sum(
        p.numel() for n, p in model.backbone.named_parameters() if ".adaptation." not in n
    )
    assert round(backbone / 1e6) == 86 and round(adapter_params / 1e6) == 14


@pytest.mark.parametrize("backbone", ["tiny_vit", "tiny_vit_timm", "tiny_swin"])
def test_no_attribute_is_set_on_the_library_backbone(backbone):
    """The frames and feature width live beside the open_clip / timm module, not on it."""
    section = {"backbone": backbone, "image_size": 32, "temporal_op": "none"}
    model = build_model(from_dict({"model": section}))
    for name in ("num_frames", "feature_dim", "temporal_patch_size"):
        assert name not in vars(model.backbone), name
