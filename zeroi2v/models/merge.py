"""Merge a trained model into the plain architecture (structural re-parameterisation).

After `merge`, every adapter / LoRA / temporal-head delta is folded into the frozen weights,
adapter modules are gone, and ``state_dict()`` has exactly the keys and shapes of the
unmodified backbone + linear head: zero extra parameters and FLOPs at inference. The
temporal operator (STDHA) stays: it has no parameters and is part of the video model.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from zeroi2v.config import MERGEABLE_STRATEGIES
from zeroi2v.models.adapters import merge_adapters


def merge(model: nn.Module, inplace: bool = False) -> nn.Module:
    """The merged model: a deep copy by default (so the original stays to `verify_merge`
    against), or `model` itself with ``inplace=True`` (the release does that, having kept the
    unmerged logits: no second copy of a large model). Idempotent.

    Raises ValueError for strategies with non-linear adapters (gelu_adapter, st_adapter).
    """
    strategy = getattr(model, "strategy", None)
    if strategy is not None and strategy not in MERGEABLE_STRATEGIES:
        raise ValueError(
            f"adapt.strategy '{strategy}' cannot be merged: its adapters are not linear per "
            f"frame (mergeable strategies: {', '.join(MERGEABLE_STRATEGIES)})"
        )
    merged = model if inplace else copy.deepcopy(model)
    merge_adapters(merged)
    return merged


@torch.no_grad()
def verify_merge(model: nn.Module, merged: nn.Module, example: torch.Tensor) -> float:
    """Max |logits(model) − logits(merged)| on `example`, both in eval mode."""
    modes = [(m, m.training) for m in (model, merged)]
    try:
        return (model.eval()(example) - merged.eval()(example)).abs().max().item()
    finally:
        for module, training in modes:
            module.train(training)
