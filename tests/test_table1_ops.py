"""Every Table 1 operator inside a real attention equals a slow loop over (clip, frame, head)."""

from __future__ import annotations

import copy

import pytest
import torch
from open_clip.transformer import VisionTransformer as OpenClipViT
from timm.models.vision_transformer import VisionTransformer as TimmViT

from zeroi2v.config import ConfigError, from_dict
from zeroi2v.models.stdha import OpenClipSTDHA, install_temporal_attention

HEADS, WIDTH, FRAMES, TOKENS = 4, 64, 4, 5
D = WIDTH // HEADS
OFFSETS = [1, -2, 0, 1]
RATIO = 1 / 4  # of d = 16 channels per head: 2 read t−1, 2 read t+1; of 64 token channels: 8, 8


def _open_clip() -> OpenClipViT:
    torch.manual_seed(0)
    return OpenClipViT(32, 8, WIDTH, 1, HEADS, 4.0, output_dim=WIDTH).eval()


def _timm() -> TimmViT:
    torch.manual_seed(0)
    return TimmViT(img_size=32, patch_size=8, embed_dim=WIDTH, depth=1, num_heads=HEADS).eval()


def _weights(attn):
    if isinstance(attn, OpenClipSTDHA):
        return attn.in_proj_weight, attn.in_proj_bias, attn.out_proj.weight, attn.out_proj.bias
    return attn.qkv.weight, attn.qkv.bias, attn.proj.weight, attn.proj.bias


def _channel_source(t: int, c: int, fold: int) -> int | None:
    """TSM rule, one channel at a time: [0, fold) reads t−1, [fold, 2 fold) t+1; None = zero."""
    src = t - 1 if c < fold else t + 1 if c < 2 * fold else t
    return src if 0 <= src < FRAMES else None


def _shift_channels(x: torch.Tensor, fold: int) -> torch.Tensor:
    """x: (B, T, ..., C): channel c of frame t from frame `_channel_source`, looped."""
    out = torch.zeros_like(x)
    for t in range(FRAMES):
        for c in range(x.shape[-1]):
            src = _channel_source(t, c, fold)
            if src is not None:
                out[:, t, ..., c] = x[:, src, ..., c]
    return out


def _relocate_heads(x: torch.Tensor) -> torch.Tensor:
    """x: (B, T, N, heads, d): head h of frame t from frame t + Δt (own frame outside)."""
    out = torch.empty_like(x)
    for t in range(FRAMES):
        for h, dt in enumerate(OFFSETS):
            src = t + dt if 0 <= t + dt < FRAMES else t
            out[:, t, :, h] = x[:, src, :, h]
    return out


def _reference(attn, op: str, x: torch.Tensor) -> torch.Tensor:
    """The operator written out: token shifts on x, then per-head shifts on q/k/v, then
    softmax(q kᵀ/√d) v one (clip, frame, head) at a time."""
    w_qkv, b_qkv, w_o, b_o = _weights(attn)
    x = x.unflatten(0, (-1, FRAMES))  # (B, T, N, C)
    if op == "channel_shift":
        x = _shift_channels(x, round(WIDTH * RATIO / 2))
    elif op == "cls_shift":
        x = torch.cat([_shift_channels(x[:, :, :1], round(WIDTH * RATIO / 2)), x[:, :, 1:]], 2)
    q, k, v = (x @ w_qkv.T + b_qkv).unflatten(-1, (3, HEADS, D)).unbind(-3)  # (B, T, N, h, d)
    head_fold = round(D * RATIO / 2)
    if op in ("qkv_shift", "kv_shift"):
        k, v = _shift_channels(k, head_fold), _shift_channels(v, head_fold)
        if op == "qkv_shift":
            q = _shift_channels(q, head_fold)
    elif op in ("stdha", "hr_qkv"):
        k, v = _relocate_heads(k), _relocate_heads(v)
        if op == "hr_qkv":
            q = _relocate_heads(q)
    B = x.shape[0]
    out = torch.zeros(B, FRAMES, TOKENS, WIDTH)
    for b in range(B):
        for t in range(FRAMES):
            for h in range(HEADS):
                scores = q[b, t, :, h] @ k[b, t, :, h].T / D**0.5
                out[b, t, :, h * D : (h + 1) * D] = scores.softmax(-1) @ v[b, t, :, h]
    return out.flatten(0, 1) @ w_o.T + b_o


OPS = ["none", "cls_shift", "channel_shift", "qkv_shift", "kv_shift", "hr_qkv", "stdha"]


@pytest.mark.parametrize("make", [_open_clip, _timm], ids=["open_clip", "timm"])
@pytest.mark.parametrize("op", OPS)
def test_operator_matches_slow_loop_reference(make, op):
    offsets = [OFFSETS] if op in ("stdha", "hr_qkv") else None
    model = install_temporal_attention(make(), offsets, FRAMES, op, RATIO)
    blocks = model.transformer.resblocks if hasattr(model, "transformer") else model.blocks
    attn = blocks[0].attn
    x = torch.randn(2 * FRAMES, TOKENS, WIDTH, generator=torch.Generator().manual_seed(1))
    for grad in (False, True):  # inference (in place where allowed) and training paths
        with torch.set_grad_enabled(grad):
            got = attn(x, x, x, need_weights=False)[0] if hasattr(attn, "out_proj") else attn(x)
        assert (got - _reference(attn, op, x)).abs().max() < 1e-5, (op, grad)


def test_hr_qkv_relocates_whole_head_outputs():
    """HR QKV = the spatial attention of frame t + Δt, per head: nothing mixes across time."""
    plain = _timm()
    hr = install_temporal_attention(copy.deepcopy(plain), [OFFSETS], FRAMES, "hr_qkv")
    spatial = install_temporal_attention(copy.deepcopy(plain), None, FRAMES, "none")
    x = torch.randn(2 * FRAMES, TOKENS, WIDTH, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        heads = {}
        for name, model in (("hr", hr), ("spatial", spatial)):
            attn = model.blocks[0].attn
            captured: list[torch.Tensor] = []
            hook = lambda m, a, out=captured: out.append(a[0])  # noqa: E731
            handle = attn.proj.register_forward_pre_hook(hook)
            attn(x)
            handle.remove()
            heads[name] = captured[0].unflatten(0, (2, FRAMES)).unflatten(-1, (HEADS, D))
        assert torch.allclose(heads["hr"], _relocate_heads(heads["spatial"]), atol=1e-6)


def test_only_head_relocation_ops_take_offsets():
    base = {"backbone": "tiny_vit", "image_size": 32, "num_frames": 4, "num_classes": 3}
    cfg = from_dict({"model": {**base, "temporal_op": "hr_qkv", "shift_ratio": 0.5}})
    assert (cfg.model.temporal_op, cfg.model.shift_ratio) == ("hr_qkv", 0.5)
    with pytest.raises(ConfigError, match="model.head_offsets"):
        from_dict({"model": {**base, "temporal_op": "hr_qkv", "head_offsets": "{1·1, 0·1}"}})
    with pytest.raises(ValueError, match="need temporal_op 'stdha' or 'hr_qkv'"):
        install_temporal_attention(_timm(), [OFFSETS], FRAMES, "qkv_shift")
