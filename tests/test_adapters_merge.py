"""Adapters merge into the frozen weights exactly; what trains is exactly what should."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from zeroi2v import build_model, merge, verify_merge
from zeroi2v.config import from_dict
from zeroi2v.models.adapters import (
    Adaptation,
    AdaptedLinear,
    LinearAdapter,
    LoRA,
    SliceDelta,
    adaptations,
)

FRAMES, CLASSES = 4, 5
SWIN_OFFSETS = [[[1, 1], [0, 1]], [[1, 1], [-1, 1], [0, 2]]]  # tiny_swin: heads (2, 4)


def _cfg(strategy: str, backbone: str = "tiny_vit", num_adapters: int = 4, **model):
    model_cfg = {
        "backbone": backbone,
        "image_size": 32,
        "num_frames": FRAMES,
        "num_classes": CLASSES,
        "head_offsets": SWIN_OFFSETS if backbone == "tiny_swin" else [[1, 1], [-1, 1], [0, 2]],
        **model,
    }
    adapt = {"strategy": strategy, "num_adapters": num_adapters, "lora_rank": 4}
    return from_dict({"model": model_cfg, "adapt": adapt})


def _build(strategy, backbone="tiny_vit", num_adapters=4, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    model = build_model(_cfg(strategy, backbone, num_adapters)).to(dtype).eval()
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # non-zero adapters: the default init (up = 0) would merge trivially
        for adaptation in adaptations(model):
            for p in adaptation.parameters():
                p.copy_(torch.randn(p.shape, generator=generator, dtype=dtype) * 0.1)
    return model


def _clip(dtype=torch.float32, seed=2):
    return torch.randn(2, 3, FRAMES, 32, 32, generator=torch.Generator().manual_seed(seed)).to(
        dtype
    )


MERGEABLE = [
    ("zeroi2v", "tiny_vit", 4),
    ("zeroi2v", "tiny_vit", 6),
    ("zeroi2v", "tiny_vit_timm", 4),
    ("zeroi2v", "tiny_vit_timm", 6),
    ("zeroi2v", "tiny_swin", 4),
    ("lora", "tiny_vit", 4),
    ("lora", "tiny_vit_timm", 4),
    ("temporal_heads_only", "tiny_vit", 4),
    ("temporal_heads_only", "tiny_vit_timm", 4),
    ("temporal_heads_only", "tiny_swin", 4),
    ("full_finetune", "tiny_vit", 4),
    ("linear_probe", "tiny_vit_timm", 4),
]


@pytest.mark.parametrize(("strategy", "backbone", "num_adapters"), MERGEABLE)
def test_merge_is_exact_and_gives_the_plain_architecture(strategy, backbone, num_adapters):
    model = _build(strategy, backbone, num_adapters, torch.float64)
    clip = _clip(torch.float64)
    merged = merge(model)
    assert not adaptations(merged) and not any(
        isinstance(m, AdaptedLinear) for m in merged.modules()
    )
    assert verify_merge(model, merged, clip) <= 1e-10

    # float32: relative error
    model32 = _build(strategy, backbone, num_adapters, torch.float32)
    merged32 = merge(model32)
    with torch.no_grad():
        want, got = model32(_clip()), merged32(_clip())
    assert (got - want).abs().max() <= 1e-5 * want.abs().max()

    # same keys and shapes as the backbone + head without any adaptation
    torch.manual_seed(7)
    plain = build_model(_cfg("linear_probe", backbone)).eval()
    shapes = {k: v.shape for k, v in merged32.state_dict().items()}
    assert shapes == {k: v.shape for k, v in plain.state_dict().items()}
    plain.load_state_dict(merged32.state_dict(), strict=True)
    with torch.no_grad():
        assert (plain(_clip()) - got).abs().max() <= 1e-5 * want.abs().max()

    # idempotent
    again = merge(merged32)
    assert verify_merge(merged32, again, _clip()) == 0.0


@pytest.mark.parametrize("strategy", ["gelu_adapter", "st_adapter"])
def test_non_mergeable_strategies_refuse_to_merge(strategy):
    model = _build(strategy)
    with pytest.raises(ValueError, match=strategy):
        merge(model)
    adaptation = next(a for a in adaptations(model) if a.pre is not None)
    with pytest.raises(ValueError, match="cannot be merged"):
        adaptation.fold(torch.zeros(192, 64), torch.zeros(192))


ADAPTER = 64 * 16 + 16 + 16 * 64 + 64  # width 64, bottleneck round(0.25 * 64) = 16
HEAD = 64 * CLASSES + CLASSES


def _total_tiny_vit_params() -> int:
    return sum(p.numel() for p in build_model(_cfg("linear_probe")).parameters())


TRAINABLE = {  # tiny ViT: 2 blocks, width 64, 4 heads of 16 dims, MLP 256, 2 temporal heads
    ("zeroi2v", 4): 2 * 4 * ADAPTER + HEAD,
    ("zeroi2v", 6): 2 * 6 * ADAPTER + HEAD,
    ("gelu_adapter", 4): 2 * 4 * ADAPTER + HEAD,
    ("st_adapter", 4): 2 * 4 * (ADAPTER + 16 * 3 + 16) + HEAD,  # + depth-wise (3,1,1) conv
    ("lora", 4): 2 * (4 * (64 + 192) + 4 * (64 + 64)) + HEAD,  # rank 4 on QKV and W_O
    ("temporal_heads_only", 4): 2 * (3 * 32 * 64 + 64 * 32) + HEAD,  # rows of QKV, cols of W_O
    ("linear_probe", 4): HEAD,
    ("full_finetune", 4): None,  # everything
}


@pytest.mark.parametrize("backbone", ["tiny_vit", "tiny_vit_timm"])
@pytest.mark.parametrize(("strategy", "num_adapters"), list(TRAINABLE))
def test_exactly_the_trainable_params_get_gradients(backbone, strategy, num_adapters):
    model = _build(strategy, backbone, num_adapters).train()
    expected = TRAINABLE[(strategy, num_adapters)]
    if expected is None:
        expected = sum(p.numel() for p in model.parameters())
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert sum(p.numel() for p in trainable.values()) == expected
    loss = nn.functional.cross_entropy(model(_clip()), torch.tensor([1, 3]))
    loss.backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name


def test_linear_adapter_fold_formulas_and_idempotent_merge():
    torch.manual_seed(0)
    for bias in (True, False):
        layer = AdaptedLinear(nn.Linear(6, 9, bias=bias)).double()
        pre = [LinearAdapter(6, 2, bias=bias).double() for _ in range(3)]
        post = LinearAdapter(9, 3, bias=bias).double()
        layer.adaptation = Adaptation(
            pre=pre,
            post=post,
            lora=LoRA(6, 9, 2).double(),
            delta=SliceDelta((9, 6), torch.tensor([0, 4]), dim=0).double(),
        )
        for p in layer.adaptation.parameters():
            nn.init.normal_(p, std=0.3)
        x = torch.randn(5, 6, dtype=torch.float64)
        with torch.no_grad():
            want = layer(x)
            layer.merge()
            assert layer.adaptation is None and set(layer.state_dict()) == (
                {"weight", "bias"} if bias else {"weight"}
            )
            assert (layer(x) - want).abs().max() < 1e-12
            layer.merge()  # no-op
            assert (layer(x) - want).abs().max() < 1e-12


def test_temporal_heads_only_leaves_spatial_slices_exactly_frozen():
    model = _build("temporal_heads_only")
    attn = model.backbone.transformer.resblocks[0].attn
    w = attn.in_proj_weight.detach().clone()
    merged = merge(model)
    w_new = merged.backbone.transformer.resblocks[0].attn.in_proj_weight
    changed = (w_new != w).any(dim=1)  # rows that moved
    rows = torch.zeros(192, dtype=torch.bool)
    for part in range(3):
        rows[part * 64 : part * 64 + 32] = True  # heads 0 and 1 (Δt = 1, −1) of Q, K, V
    assert torch.equal(changed, rows)


def test_st_adapter_matches_a_per_token_temporal_conv_reference():
    """Default kernel (3, 1, 1): every token (incl. [cls]) mixes its own 3 neighbouring frames."""
    from zeroi2v.models.adapters import STAdapter

    torch.manual_seed(0)
    frames, dim, k = 3, 8, 4
    adapter = STAdapter(dim, k, frames, grid=(2, 3), num_prefix_tokens=1).double()
    for p in adapter.parameters():
        nn.init.normal_(p, std=0.3)
    x = torch.randn(2 * frames, 7, dim, dtype=torch.float64)  # (B*T, 1 + 2*3, C)
    z = adapter.down(x).view(2, frames, 7, k)
    w, b = adapter.conv.weight[:, 0, :, 0, 0], adapter.conv.bias  # (k, 3), (k,)
    mixed = torch.zeros_like(z)
    for t in range(frames):
        mixed[:, t] = b
        for tap, dt in enumerate((-1, 0, 1)):
            if 0 <= t + dt < frames:
                mixed[:, t] += z[:, t + dt] * w[:, tap]
    want = x + adapter.up(mixed.flatten(0, 1))
    assert (adapter(x) - want).abs().max() < 1e-12


def test_merge_checked_merges_in_place_from_two_forwards() -> None:
    """The release's merge: the model itself (no second fp32 copy on rank 0 at the end of
    training), one unmerged and one merged forward, logits as the unmerged model's."""
    from zeroi2v.engine.release import merge_checked

    model, clip = _build("zeroi2v"), _clip()
    with torch.no_grad():
        unmerged = model(clip)
    forwards = []
    model.register_forward_hook(lambda *_: forwards.append(1))
    merged = merge_checked(model, clip)
    assert merged is model and not adaptations(merged) and len(forwards) == 2
    with torch.no_grad():
        assert (merged(clip) - unmerged).abs().max() <= 1e-5


def test_merge_checked_refuses_a_wrong_merge(monkeypatch: pytest.MonkeyPatch) -> None:
    from zeroi2v.engine import release

    def merge_and_spoil(model: nn.Module, inplace: bool = False) -> nn.Module:
        merged = merge(model, inplace)
        with torch.no_grad():
            list(merged.parameters())[-1].add_(1.0)  # the head's bias: every logit moves by 1
        return merged

    monkeypatch.setattr(release, "merge", merge_and_spoil)
    with pytest.raises(RuntimeError, match="the merge is wrong, not saving it"):
        release.merge_checked(_build("zeroi2v"), _clip())
