"""Parameter and FLOP counts of a configured model (paper Tables 2-5, SPEC §4).

Everything is counted on the meta device: the model is built without weights (pretrained is
forced to None) and FLOPs come from `torch.utils.flop_counter.FlopCounterMode`, which counts
matmuls, convolutions and the attention of `scaled_dot_product_attention` from shapes alone.
So ViT-L/14 at 32 frames costs a fraction of a second and no memory. FlopCounterMode counts
2 FLOPs per multiply-add; the paper (fvcore convention) counts 1, hence the division by 2.
Meta also matters for correctness: on meta, SDPA decomposes into two counted matmuls, while on
CPU tensors torch 2.14 runs a fused kernel that FlopCounterMode does not count at all.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from zeroi2v.config import MERGEABLE_STRATEGIES, Config, from_dict, to_dict
from zeroi2v.models.merge import merge
from zeroi2v.models.video import build_model

MACS_PER_FLOP_COUNT = 2  # FlopCounterMode: one multiply-add = 2 FLOPs; the paper: 1


def count_params(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def count_macs(model: nn.Module, clip: torch.Tensor) -> int:
    """Multiply-adds of one forward pass of `model` on `clip`; give meta tensors (module doc)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(clip)
    return counter.get_total_flops() // MACS_PER_FLOP_COUNT


def _without_weights(cfg: Config, **adapt: Any) -> Config:
    raw = to_dict(cfg)
    raw["model"]["pretrained"] = None
    raw["adapt"].update(adapt)
    return from_dict(raw)


def _build_on_meta(cfg: Config) -> nn.Module:

    with torch.device("meta"):
        model = build_model(cfg)
    return model.eval()


def _classifier(model: nn.Module) -> nn.Module:
    head = getattr(model, "head", None)
    if not isinstance(head, nn.Module):
        raise RuntimeError(
            f"{type(model).__name__} has no `head` module to count as the classifier"
        )
    return head


def profile(cfg: Config, merged: bool = False) -> dict[str, Any]:
    """Params (M), tunable params, new params after merging and GFLOPs of the configured model.

    `trainable_params_m` excludes the classifier (the paper's "tunable params": adapters and,
    where configured, temporal-head or LoRA weights); `classifier_params_m` is given apart
    (for detection: the RoI head, ``head``: "RoIHead", the only module the backbone gains).
    `new_params_after_merge` is params(merged model) − params(plain backbone + head): 0 for the
    mergeable strategies, None for the others. With `merged`, FLOPs and params are those of the
    merged (deployed) model, else of the model as trained.
    """

    cfg = _without_weights(cfg)
    model = _build_on_meta(cfg)
    head = _classifier(model)
    trainable = count_params(model, trainable_only=True) - count_params(head, trainable_only=True)
    plain = _build_on_meta(_without_weights(cfg, strategy="linear_probe"))

    mergeable = cfg.adapt.strategy in _mergeable()
    merged_model = merge(model) if mergeable else None
    new_after_merge = (
        None if merged_model is None else count_params(merged_model) - count_params(plain)
    )
    if merged and merged_model is None:
        raise ValueError(f"adapt.strategy '{cfg.adapt.strategy}' is not mergeable; drop --merged")
    profiled = merged_model if merged else _build_on_meta(cfg)

    frames, size = cfg.model.num_frames, cfg.model.image_size
    clip = torch.empty(1, 3, frames, size, size, device="meta")  # one view: (B, C, T, H, W)
    macs_per_view = count_macs(profiled, clip)
    gflops_per_view = macs_per_view / 1e9
    views = cfg.data.num_clips * cfg.data.num_crops
    return {
        "backbone": cfg.model.backbone,
        "strategy": cfg.adapt.strategy,
        "merged": merged,
        "num_frames": frames,
        "params_m": round(count_params(profiled) / 1e6, 3),
        "plain_params_m": round(count_params(plain) / 1e6, 3),
        "trainable_params_m": round(trainable / 1e6, 3),
        "classifier_params_m": round(count_params(head) / 1e6, 3),
        "head": type(head).__name__,  # Linear, or RoIHead for detection: the one added module
        "new_params_after_merge": new_after_merge,
        "macs_per_view": macs_per_view,
        "gflops_per_view": round(gflops_per_view, 3),
        "views": views,
        "gflops_total": round(gflops_per_view * views, 3),
    }


def _mergeable() -> tuple[str, ...]:

    return MERGEABLE_STRATEGIES
