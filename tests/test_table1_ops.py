"""Every Table 1 operator inside a real attention equals a float64 slow loop over (clip,
frame, head) written from the paper's released ablation code (`stdha_ablation.py`,
`TemporalShift`), not from our implementation: ``fold = channels // shift_div`` with
``shift_div = 2 / R_c``; channels [0, fold) read frame t−1, [fold, 2 fold) read t+1; a frame
whose t∓1 is outside the clip keeps its own values (TSM's zeros only with shift_fill "zeros").
"""

from __future__ import annotations

import copy

import pytest
import torch
from open_clip.transformer import VisionTransformer as OpenClipViT
from timm.models.vision_transformer import VisionTransformer as TimmViT

from zeroi2v.config import ConfigError, from_dict
from zeroi2v.models.stdha import OpenClipSTDHA, install_temporal_attention

HEADS, WIDTH, FRAMES, TOKENS = 4, 96, 4, 5
D = WIDTH // HEADS
OFFSETS = [1, -2, 0, 1]
RATIO, SHIFT_DIV = 1 / 6, 12  # the paper's R_c; per head (d = 24): fold 2; per width (96): 8


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


def _source(t: int, c: int, fold: int, fill: str) -> int | None:
    """The frame channel c of frame t reads; None: a zero (TSM's rule, fill "zeros")."""
    src = t - 1 if c < fold else t + 1 if c < 2 * fold else t
    if 0 <= src < FRAMES:
        return src
    return t if fill == "own" else None


def _shift_channels(x: torch.Tensor, fold: int, fill: str) -> torch.Tensor:
    """x: (B, T, ..., C): channel c of frame t from frame `_source`, one at a time."""
    out = torch.zeros_like(x)
    for t in range(FRAMES):
        for c in range(x.shape[-1]):
            src = _source(t, c, fold, fill)
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


def _per_head(x: torch.Tensor, fill: str) -> torch.Tensor:
    """The released ``tcs``: every head's first 2·fold channels, fold = d // shift_div."""
    return _shift_channels(x, D // SHIFT_DIV, fill)  # x: (B, T, N, heads, d)


def _cls_token(x: torch.Tensor, fill: str) -> torch.Tensor:
    """The released ``token_shift``: token 0 only, fold = width // shift_div over all heads."""
    out = x.clone()  # (B, T, N, heads, d)
    cls = x[:, :, 0].flatten(-2)  # (B, T, heads·d): channel h·d + j
    out[:, :, 0] = _shift_channels(cls, WIDTH // SHIFT_DIV, fill).unflatten(-1, (HEADS, D))
    return out


def _reference(attn, op: str, x: torch.Tensor, fill: str = "own") -> torch.Tensor:
    """The operator written out: token shifts on x, then shifts of the projected q/k/v, then
    softmax(q kᵀ/√d) v one (clip, frame, head) at a time."""
    w_qkv, b_qkv, w_o, b_o = _weights(attn)
    x = x.unflatten(0, (-1, FRAMES))  # (B, T, N, C)
    if op == "channel_shift":
        x = _shift_channels(x, WIDTH // SHIFT_DIV, fill)
    q, k, v = (x @ w_qkv.T + b_qkv).unflatten(-1, (3, HEADS, D)).unbind(-3)  # (B, T, N, h, d)
    if op in ("qkv_shift", "kv_shift"):
        k, v = _per_head(k, fill), _per_head(v, fill)
        if op == "qkv_shift":
            q = _per_head(q, fill)
    elif op == "cls_shift":  # the released shift_pattern "kv": Q untouched
        k, v = _cls_token(k, fill), _cls_token(v, fill)
    elif op in ("stdha", "hr_qkv"):
        k, v = _relocate_heads(k), _relocate_heads(v)
        if op == "hr_qkv":
            q = _relocate_heads(q)
    B = x.shape[0]
    out = torch.zeros(B, FRAMES, TOKENS, WIDTH, dtype=x.dtype)
    for b in range(B):
        for t in range(FRAMES):
            for h in range(HEADS):
                scores = q[b, t, :, h] @ k[b, t, :, h].T / D**0.5
                out[b, t, :, h * D : (h + 1) * D] = scores.softmax(-1) @ v[b, t, :, h]
    return out.flatten(0, 1) @ w_o.T + b_o


OPS = ["none", "cls_shift", "channel_shift", "qkv_shift", "kv_shift", "hr_qkv", "stdha"]
CHANNEL_OPS = ["cls_shift", "channel_shift", "qkv_shift", "kv_shift"]


def _check(make, op: str, fill: str) -> None:
    offsets = [OFFSETS] if op in ("stdha", "hr_qkv") else None
    model = install_temporal_attention(make().double(), offsets, FRAMES, op, RATIO, fill)
    blocks = model.transformer.resblocks if hasattr(model, "transformer") else model.blocks
    attn = blocks[0].attn
    x = torch.randn(2 * FRAMES, TOKENS, WIDTH, generator=torch.Generator().manual_seed(1))
    x = x.double()
    for grad in (False, True):  # inference (in place where allowed) and training paths
        with torch.set_grad_enabled(grad):
            got = attn(x, x, x, need_weights=False)[0] if hasattr(attn, "out_proj") else attn(x)
        assert (got - _reference(attn, op, x, fill)).abs().max() < 1e-12, (op, fill, grad)


@pytest.mark.parametrize("make", [_open_clip, _timm], ids=["open_clip", "timm"])
@pytest.mark.parametrize("op", OPS)
def test_operator_matches_the_released_definition(make, op):
    _check(make, op, "own")


@pytest.mark.parametrize("op", CHANNEL_OPS)
def test_zeros_fill_is_tsm_rule(op):
    _check(_open_clip, op, "zeros")


def test_the_fill_rule_matters_at_the_clip_ends():
    """Own-frame and zero fill differ (the issue measured 1.8–3.1 on features): a test of
    one of them cannot pass for the other."""
    x = torch.randn(2 * FRAMES, TOKENS, WIDTH, dtype=torch.float64)
    outs = []
    for fill in ("own", "zeros"):
        model = install_temporal_attention(_timm().double(), None, FRAMES, "kv_shift", RATIO, fill)
        with torch.no_grad():
            outs.append(model.blocks[0].attn(x))
    assert (outs[0] - outs[1]).abs().max() > 1e-3


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
    assert from_dict({"model": {**base, "temporal_op": "kv_shift"}}).model.shift_fill == "own"
    with pytest.raises(ConfigError, match="model.shift_fill"):
        from_dict({"model": {**base, "temporal_op": "kv_shift", "shift_fill": "wrap"}})
    with pytest.raises(ConfigError, match="model.shift_fill 'zeros' is read by the channel"):
        from_dict({"model": {**base, "temporal_op": "stdha", "shift_fill": "zeros"}})
    with pytest.raises(ValueError, match="model.shift_ratio 0.01 moves no channel of 24"):
        install_temporal_attention(_timm(), None, FRAMES, "kv_shift", 0.01)
    with pytest.raises(ConfigError, match="model.head_offsets"):
        from_dict({"model": {**base, "temporal_op": "hr_qkv", "head_offsets": "{1·1, 0·1}"}})
    with pytest.raises(ValueError, match="need temporal_op 'stdha' or 'hr_qkv'"):
        install_temporal_attention(_timm(), [OFFSETS], FRAMES, "qkv_shift")


def test_the_operator_table_speaks_the_config_vocabulary():
    """Every `model.temporal_op` has one class in the table, and the classes' own flags say
    which read head offsets and which read the channel-shift settings, as the config does."""
    import typing

    from zeroi2v.config import CHANNEL_SHIFT_OPS, HEAD_RELOCATION_OPS, TemporalOp
    from zeroi2v.models.stdha import TEMPORAL_OPS, create_temporal_op

    assert sorted(TEMPORAL_OPS) == sorted(typing.get_args(TemporalOp))
    assert all(name == op.name for name, op in TEMPORAL_OPS.items())
    reads_offsets = {name for name, op in TEMPORAL_OPS.items() if op.reads_offsets}
    assert reads_offsets == set(HEAD_RELOCATION_OPS)
    shifts = {name for name, op in TEMPORAL_OPS.items() if "shift_ratio" in repr(op(4, 4, 12))}
    assert shifts == set(CHANNEL_SHIFT_OPS)
    with pytest.raises(ValueError, match="unknown temporal_op 'tsm'; choose one of"):
        create_temporal_op("tsm", 4, 4, 12)
