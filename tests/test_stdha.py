"""STDHA and the other temporal operators against slow references; zero params, zero FLOPs."""

from __future__ import annotations

import copy
import random

import pytest
import torch
from open_clip.transformer import VisionTransformer as OpenClipViT
from timm.models.vision_transformer import VisionTransformer as TimmViT
from torch.utils.flop_counter import FlopCounterMode

from zeroi2v.config import from_dict
from zeroi2v.models.stdha import OpenClipSTDHA, TimmSTDHA, install_temporal_attention
from zeroi2v.models.stdha_shift import HeadRuns, reference_shift, shift_kv, time_index
from zeroi2v.models.video import build_model

HEADS, WIDTH = 4, 64


def _open_clip_vit() -> OpenClipViT:
    torch.manual_seed(0)
    return OpenClipViT(32, 8, WIDTH, 2, HEADS, 4.0, output_dim=WIDTH).eval()


def _timm_vit() -> TimmViT:
    torch.manual_seed(0)
    vit = TimmViT(img_size=32, patch_size=8, embed_dim=WIDTH, depth=2, num_heads=HEADS)
    return vit.eval()


def _qkv_out(attn):
    """(W_qkv, b_qkv, W_o, b_o) of either attention module."""
    if isinstance(attn, OpenClipSTDHA):
        out = attn.out_proj
        return attn.in_proj_weight, attn.in_proj_bias, out.weight, out.bias
    return attn.qkv.weight, attn.qkv.bias, attn.proj.weight, attn.proj.bias


def _reference(attn, x: torch.Tensor, offsets: list[int], frames: int) -> torch.Tensor:
    """softmax(q kᵀ/√d) v one (clip, frame, head) at a time, with the own-frame boundary rule."""
    w_qkv, b_qkv, w_o, b_o = _qkv_out(attn)
    BT, N, C = x.shape
    d = C // HEADS
    q, k, v = (x @ w_qkv.T + b_qkv).view(BT // frames, frames, N, 3, HEADS, d).unbind(3)
    out = torch.zeros(BT // frames, frames, N, C, dtype=x.dtype)
    for b in range(BT // frames):
        for t in range(frames):
            for h in range(HEADS):
                src = t + offsets[h]
                src = src if 0 <= src < frames else t
                scores = q[b, t, :, h] @ k[b, src, :, h].T / d**0.5  # (N, N)
                out[b, t, :, h * d : (h + 1) * d] = scores.softmax(-1) @ v[b, src, :, h]
    return out.flatten(0, 1) @ w_o.T + b_o


def _attention_input(backbone, frames: int, clips: int = 2) -> torch.Tensor:
    torch.manual_seed(1)
    n_tokens = 1 + (32 // 8) ** 2
    return torch.randn(clips * frames, n_tokens, WIDTH)


def _call(attn, x):
    return attn(x, x, x, need_weights=False)[0] if isinstance(attn, OpenClipSTDHA) else attn(x)


@pytest.mark.parametrize("make", [_open_clip_vit, _timm_vit], ids=["open_clip", "timm"])
@pytest.mark.parametrize("frames", [1, 2, 3, 8])
def test_stdha_matches_slow_reference(make, frames):
    rng = random.Random(frames)
    backbone = make()
    for trial in range(3):
        offsets = [rng.randint(-(frames - 1), frames - 1) for _ in range(HEADS)]
        model = install_temporal_attention(copy.deepcopy(backbone), [offsets] * 2, frames)
        attn = (model.transformer.resblocks if hasattr(model, "transformer") else model.blocks)[0]
        attn = attn.attn
        x = _attention_input(model, frames)
        with torch.no_grad():
            got, want = _call(attn, x), _reference(attn, x, offsets, frames)
        assert (got - want).abs().max() < 1e-5, (trial, offsets)


@pytest.mark.parametrize("make", [_open_clip_vit, _timm_vit], ids=["open_clip", "timm"])
def test_zero_offsets_equal_the_original_attention_and_backbone(make):
    frames = 3
    plain = make()
    video = install_temporal_attention(copy.deepcopy(plain), [[0] * HEADS] * 2, frames)
    blocks_plain = plain.transformer.resblocks if hasattr(plain, "transformer") else plain.blocks
    blocks_video = video.transformer.resblocks if hasattr(video, "transformer") else video.blocks
    assert isinstance(blocks_video[0].attn, (OpenClipSTDHA, TimmSTDHA))
    x = _attention_input(plain, frames)
    images = torch.randn(2 * frames, 3, 32, 32)
    with torch.no_grad():
        # the original attention, as the library's block calls it
        orig = blocks_plain[0].attn
        want = orig(x, x, x, need_weights=False)[0] if hasattr(orig, "in_proj_weight") else orig(x)
        assert (_call(blocks_video[0].attn, x) - want).abs().max() < 1e-6
        assert (video(images) - plain(images)).abs().max() < 1e-5
    # same parameter names: the plain checkpoint loads strictly
    video.load_state_dict(plain.state_dict(), strict=True)


def test_shift_kv_generic_layout_matches_index_rule():
    """Any axis order (e.g. Swin windows (B, T, nW, heads, N, d)) follows the same rule."""
    torch.manual_seed(0)
    frames, offsets = 5, [2, -1, 0, 4]
    x = torch.randn(2, frames, 3, len(offsets), 6, 2)  # (B, T, nW, heads, N, d)
    got = shift_kv(x, offsets, time_dim=1, head_dim=3)
    src = time_index(offsets, frames)  # (T, heads)
    assert src[4, 0] == 4 and src[0, 1] == 0 and src[1, 1] == 0 and src[0, 3] == 4
    for t in range(frames):
        for h in range(len(offsets)):
            assert torch.equal(got[:, t, :, h], x[:, src[t, h], :, h])
    assert torch.equal(reference_shift(x, offsets, time_dim=1, head_dim=3), got)
    # heads before time works too
    y = x.transpose(1, 3)  # (B, heads, nW, T, N, d)
    assert torch.equal(shift_kv(y, offsets, time_dim=3, head_dim=1), got.transpose(1, 3))
    assert torch.equal(reference_shift(y, offsets, time_dim=3, head_dim=1), got.transpose(1, 3))


@pytest.mark.parametrize(
    "model",
    [
        {"backbone": "tiny_vit", "temporal_op": "stdha"},
        {"backbone": "tiny_vit_timm", "temporal_op": "hr_qkv"},
        {"backbone": "tiny_swin", "head_offsets": [[[1, 1], [0, 1]], [[1, 1], [-1, 1], [0, 2]]]},
    ],
    ids=["stdha", "hr_qkv", "swin"],
)
def test_head_runs_are_found_once_when_the_attention_is_built(monkeypatch, model):
    """The forward passes (training, inference) reuse the runs each attention built."""
    cfg = from_dict({"model": {**model, "image_size": 32, "num_frames": 3, "num_classes": 3}})
    video = build_model(cfg).train()
    clip = torch.randn(2, 3, 3, 32, 32)
    with torch.no_grad():
        want = video.eval()(clip)

    def again(cls, offsets):
        raise AssertionError(f"head runs of {offsets} computed again in a forward pass")

    monkeypatch.setattr(HeadRuns, "of", classmethod(again))
    video.train()(clip).sum().backward()
    with torch.no_grad():
        assert torch.equal(video.eval()(clip), want)


def test_shift_kv_values_and_gradients_equal_the_reference_rule():
    """Slice-copy shift == `reference_shift`, the rule as a full gather (values and
    gradients); overwrite=True in inference
    rewrites the input in place with the same values; Δt ≥ T reads the own frame."""
    rng = random.Random(0)
    for trial in range(60):
        frames, heads = rng.randint(1, 6), rng.randint(1, 5)
        offsets = [rng.choice([0, 0, rng.randint(-frames, frames)]) for _ in range(heads)]
        time_dim, head_dim = (1, 3) if trial % 2 else (3, 1)
        shape = [2, 3, 3, 3, 4]
        shape[time_dim], shape[head_dim] = frames, heads
        x = torch.randn(shape, dtype=torch.double, requires_grad=True)
        grad_out = torch.randn(shape, dtype=torch.double)
        got = shift_kv(x, offsets, time_dim, head_dim, overwrite=True)  # autograd: a new tensor
        want = reference_shift(x, offsets, time_dim, head_dim)
        assert torch.equal(got, want), offsets
        (grad_got,) = torch.autograd.grad(got, x, grad_out)
        (grad_want,) = torch.autograd.grad(want, x, grad_out)
        assert torch.equal(grad_got, grad_want), offsets
        with torch.no_grad():
            y = x.detach().clone()
            assert torch.equal(shift_kv(y, offsets, time_dim, head_dim), want)  # y untouched
            assert torch.equal(shift_kv(y, offsets, time_dim, head_dim, overwrite=True), want)
            assert torch.equal(y, want) or not any(offsets), offsets  # rewritten in place
    x = torch.randn(1, 4, 3, 2, 2, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda t: shift_kv(t, [1, -2, 0]), (x,))


@pytest.mark.parametrize("make", [_open_clip_vit, _timm_vit], ids=["open_clip", "timm"])
def test_stdha_gradients_match_slow_reference(make):
    """Training path: input and weight gradients equal autograd through the slow reference."""
    frames, offsets = 4, [1, -2, 0, 1]
    model = install_temporal_attention(make(), [offsets] * 2, frames).train()
    attn = (model.transformer.resblocks if hasattr(model, "transformer") else model.blocks)[0]
    attn = attn.attn
    x = _attention_input(model, frames).requires_grad_()
    grad_out = torch.randn(x.shape)
    grads = []
    for fn in (_call, lambda a, t: _reference(a, t, offsets, frames)):
        w_qkv = _qkv_out(attn)[0]
        grads.append(torch.autograd.grad(fn(attn, x), (x, w_qkv), grad_out))
    for got, want in zip(*grads, strict=True):
        assert (got - want).abs().max() < 1e-4


def test_channel_operators_move_only_their_channels():
    from zeroi2v.models.temporal_baselines import (
        cls_head_shift,
        head_channel_shift,
        token_channel_shift,
    )

    torch.manual_seed(0)
    frames = 3
    x = torch.randn(2 * frames, 5, 12)  # (B*T, N, C); ratio 1/3 → fold 2
    xv = x.view(2, frames, 5, 12)
    for fill in ("own", "zeros"):
        y = token_channel_shift(x, frames, 1 / 3, fill).view(2, frames, 5, 12)
        assert torch.equal(y[:, 1:, :, :2], xv[:, :-1, :, :2])
        assert torch.equal(y[:, :-1, :, 2:4], xv[:, 1:, :, 2:4])
        assert torch.equal(y[..., 4:], xv[..., 4:])
        edges = (y[:, 0, :, :2], y[:, -1, :, 2:4])
        if fill == "own":  # the released code: the frame's own values where t∓1 is outside
            assert torch.equal(edges[0], xv[:, 0, :, :2])
            assert torch.equal(edges[1], xv[:, -1, :, 2:4])
        else:
            assert not edges[0].any() and not edges[1].any()
    k = x.view(2 * frames, 5, 3, 4).transpose(1, 2)  # (B*T, heads, N, d)
    kv = k.unflatten(0, (2, frames))
    s = head_channel_shift(k, frames, 1 / 2).unflatten(0, (2, frames))  # fold 1 per head
    assert torch.equal(s[:, 1:, ..., 0], kv[:, :-1, ..., 0]) and torch.equal(
        s[..., 2:], kv[..., 2:]
    )
    c = cls_head_shift(k, frames, 1 / 3).unflatten(0, (2, frames))  # fold 2 of width 12
    assert torch.equal(c[:, :, :, 1:], kv[:, :, :, 1:])  # only token 0 moves
    assert torch.equal(c[:, 1:, 0, 0, :2], kv[:, :-1, 0, 0, :2])  # head 0's first 2: t−1
    assert torch.equal(c[:, :-1, 0, 0, 2:4], kv[:, 1:, 0, 0, 2:4])  # next 2: t+1
    assert torch.equal(c[:, :, 1:, 0], kv[:, :, 1:, 0])  # heads 1, 2 untouched


def _tiny_cfg(**model):
    raw = {"backbone": "tiny_vit", "image_size": 32, "num_frames": 4, "num_classes": 5}
    return from_dict({"model": {**raw, **model}, "adapt": {"strategy": "linear_probe"}})


@pytest.mark.parametrize("backbone", ["tiny_vit", "tiny_vit_timm"])
def test_time_reversal_blind_without_temporal_op_and_not_with_stdha(backbone):
    torch.manual_seed(0)
    clip = torch.randn(2, 3, 4, 32, 32)
    reversed_clip = clip.flip(2)
    for op, blind in [("none", True), ("stdha", False), ("kv_shift", False)]:
        torch.manual_seed(0)
        model = build_model(_tiny_cfg(backbone=backbone, temporal_op=op)).eval()
        with torch.no_grad():
            diff = (model(clip) - model(reversed_clip)).abs().max().item()
        assert (diff < 1e-5) == blind, (op, diff)


@pytest.mark.parametrize(
    "op", ["stdha", "cls_shift", "channel_shift", "kv_shift", "qkv_shift", "hr_qkv"]
)
def test_temporal_operators_add_no_params_and_no_flops(op):
    def count(model):
        clip = torch.randn(1, 3, 4, 32, 32)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(clip)
        return sum(p.numel() for p in model.parameters()), counter.get_total_flops()

    torch.manual_seed(0)
    plain = count(build_model(_tiny_cfg(temporal_op="none")))
    torch.manual_seed(0)
    video = count(build_model(_tiny_cfg(temporal_op=op)))
    assert plain[1] > 0 and video == plain
