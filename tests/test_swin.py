"""Swin STDHA against a slow per-head / per-window / per-frame reference, and the inflated stem."""

from __future__ import annotations

import copy
import random

import pytest
import torch
from timm.models.swin_transformer import (
    SwinTransformerBlock,
    window_partition,
    window_reverse,
)

from zeroi2v.config import from_dict
from zeroi2v.models.backbones import build_backbone
from zeroi2v.models.swin import (
    STDHAWindowAttention,
    TemporalPatchEmbed,
    create_swin,
    install_stdha,
)
from zeroi2v.specs import BACKBONES

SPEC = BACKBONES["tiny_swin"]  # 32x32, patch 4, window 4, depths (2, 2), heads (2, 4)


def _blocks(model: torch.nn.Module) -> list[SwinTransformerBlock]:
    return [m for m in model.modules() if isinstance(m, SwinTransformerBlock)]


def _random_offsets(frames: int, rng: random.Random) -> list[list[int]]:
    """One random Δt list per block, the same within a stage (as the configs give them)."""
    per_stage = [[rng.randint(-(frames - 1), frames - 1) for _ in range(h)] for h in SPEC.heads]
    return [per_stage[s] for s in SPEC.stage_of_block()]


def _reference_attn(block: SwinTransformerBlock, x: torch.Tensor, frames: int) -> torch.Tensor:
    """Shifted-window attention of `block` with STDHA, one (clip, frame, window, head) at a time."""
    attn: STDHAWindowAttention = block.attn
    BT, H, W, C = x.shape
    shift = block.shift_size
    if any(shift):
        x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
    windows = window_partition(x, block.window_size).flatten(1, 2)  # (B*T*nW, N, C)
    n_win, N = windows.shape[0] // BT, windows.shape[1]
    heads = attn.num_heads
    q, k, v = attn.qkv(windows).view(BT // frames, frames, n_win, N, 3, heads, -1).unbind(4)
    bias = attn._get_rel_pos_bias()[0]  # (heads, N, N)
    mask = block.attn_mask
    out = torch.zeros_like(q)  # (B, T, nW, N, heads, d)
    for b in range(BT // frames):
        for t in range(frames):
            for w in range(n_win):
                for h, dt in enumerate(attn.offsets):
                    src = t + dt if 0 <= t + dt < frames else t  # boundary: own frame
                    logits = q[b, t, w, :, h] @ k[b, src, w, :, h].T * attn.scale + bias[h]
                    if mask is not None:
                        logits = logits + mask[w]
                    out[b, t, w, :, h] = logits.softmax(-1) @ v[b, src, w, :, h]
    out = attn.proj(out.flatten(4).reshape(BT * n_win, N, C))
    y = window_reverse(out.view(-1, *block.window_size, C), block.window_size, H, W)
    if any(shift):
        y = torch.roll(y, shifts=shift, dims=(1, 2))
    return y


@pytest.mark.parametrize("frames", [1, 2, 3, 8])
def test_stdha_matches_slow_reference(frames: int) -> None:
    torch.manual_seed(frames)
    model = create_swin(SPEC, SPEC.image_size)
    install_stdha(model, _random_offsets(frames, random.Random(frames)), frames)
    blocks = _blocks(model)
    assert any(any(b.shift_size) for b in blocks), "tiny_swin must exercise shifted windows"
    assert any(b.attn.num_windows > 1 for b in blocks)
    with torch.no_grad():
        for block in blocks:
            H, W = block.input_resolution
            x = torch.randn(2 * frames, H, W, block.attn.dim)
            torch.testing.assert_close(
                block._attn(x), _reference_attn(block, x, frames), rtol=1e-5, atol=1e-5
            )


def test_zero_offsets_equal_timm_swin() -> None:
    torch.manual_seed(0)
    plain = create_swin(SPEC, SPEC.image_size).eval()
    stdha = copy.deepcopy(plain)
    install_stdha(stdha, [[0] * h for h in SPEC.heads_per_block()], num_frames=4)
    assert all(isinstance(b.attn, STDHAWindowAttention) for b in _blocks(stdha))
    assert stdha.state_dict().keys() == plain.state_dict().keys()
    x = torch.randn(8, 3, SPEC.image_size, SPEC.image_size)
    with torch.no_grad():
        torch.testing.assert_close(stdha(x), plain(x), rtol=1e-5, atol=1e-5)


def test_static_clip_ignores_temporal_heads() -> None:
    """Identical frames: reading another frame's K/V changes nothing."""
    torch.manual_seed(1)
    plain = create_swin(SPEC, SPEC.image_size).eval()
    stdha = copy.deepcopy(plain)
    install_stdha(stdha, _random_offsets(4, random.Random(0)), num_frames=4)
    frame = torch.randn(2, 1, 3, SPEC.image_size, SPEC.image_size)
    clip = frame.expand(2, 4, -1, -1, -1).flatten(0, 1)  # (B*T, C, H, W)
    with torch.no_grad():
        torch.testing.assert_close(stdha(clip), plain(clip), rtol=1e-5, atol=1e-5)


def test_inflated_patch_embed_on_static_clip_equals_2d() -> None:
    torch.manual_seed(2)
    model = create_swin(SPEC, SPEC.image_size)
    embed3d = TemporalPatchEmbed(model.patch_embed, temporal_patch_size=2)
    assert tuple(embed3d.proj.weight.shape) == (SPEC.width, 3, 2, SPEC.patch_size, SPEC.patch_size)
    frames = torch.randn(2, 3, 3, SPEC.image_size, SPEC.image_size)  # (B, C, T', H, W)
    clip = frames.repeat_interleave(2, dim=2)  # every frame twice: (B, C, 2T', H, W)
    with torch.no_grad():
        expected = model.patch_embed(frames.transpose(1, 2).flatten(0, 1))  # (B*T', H', W', D)
        torch.testing.assert_close(embed3d(clip), expected, rtol=1e-5, atol=1e-5)


def test_build_swin_backbone_halves_frames() -> None:
    cfg = from_dict(
        {
            "model": {
                "backbone": "tiny_swin",
                "image_size": SPEC.image_size,
                "num_frames": 8,
                "temporal_patch_size": 2,
                "head_offsets": [[[1, 1], [0, 1]], [[1, 1], [-1, 1], [0, 2]]],
            }
        }
    )
    built = build_backbone(cfg.model)
    assert (built.num_frames, built.temporal_patch_size) == (4, 2)
    model = built.module
    assert not hasattr(model, "num_frames")  # facts beside the timm module, not set on it
    assert [b.attn.offsets for b in _blocks(model)] == [
        [1, 0],
        [1, 0],
        [1, -1, 0, 0],
        [1, -1, 0, 0],
    ]
    clip = torch.randn(2, 3, 8, SPEC.image_size, SPEC.image_size)
    with torch.no_grad():
        feats = model(clip)
    assert feats.shape == (2 * 4, SPEC.width * 2) == (2 * 4, built.feature_dim)


def test_unavailable_pretrained_is_one_clear_error(tmp_path) -> None:
    with pytest.raises(RuntimeError, match="could not load Swin weights"):
        create_swin(SPEC, SPEC.image_size, pretrained=str(tmp_path / "missing_tag_or_file"))


def test_local_checkpoint_loads(tmp_path) -> None:
    torch.manual_seed(3)
    source = create_swin(SPEC, SPEC.image_size)
    path = tmp_path / "swin.pth"
    torch.save(source.state_dict(), path)
    loaded = create_swin(SPEC, SPEC.image_size, pretrained=str(path))
    for name, tensor in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


def test_window_attention_offsets_must_match_heads() -> None:
    model = create_swin(SPEC, SPEC.image_size)
    with pytest.raises(ValueError, match="head offsets"):
        install_stdha(model, [[0]] * SPEC.num_blocks, num_frames=2)


@pytest.mark.parametrize(("num_adapters", "temporal_patch_size"), [(4, 1), (6, 2)])
def test_adapters_merge_on_tiny_swin(num_adapters: int, temporal_patch_size: int) -> None:
    """Merged logits == unmerged; merged state dict == plain Swin + head (keys and shapes)."""
    from zeroi2v import build_model, merge
    from zeroi2v.config import from_dict

    raw = {
        "model": {
            "backbone": "tiny_swin",
            "image_size": SPEC.image_size,
            "num_frames": 4,
            "num_classes": 5,
            "temporal_patch_size": temporal_patch_size,
            "head_offsets": [[[1, 1], [0, 1]], [[1, 1], [-1, 1], [0, 2]]],
        },
        "adapt": {"strategy": "zeroi2v", "num_adapters": num_adapters},
    }
    torch.manual_seed(4)
    model = build_model(from_dict(raw)).eval()
    with torch.no_grad():  # adapters start as the identity: make them do something
        for param in model.parameters():
            if param.requires_grad:
                param.normal_(0, 0.05)
    clip = torch.randn(2, 3, 4, SPEC.image_size, SPEC.image_size)
    with torch.no_grad():
        expected = model(clip)
        merged = merge(model)
        torch.testing.assert_close(merged(clip), expected, rtol=1e-5, atol=1e-5)
    plain = build_model(from_dict(raw, {"adapt.strategy": "linear_probe"}))
    shapes = {k: tuple(v.shape) for k, v in merged.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in plain.state_dict().items()}
