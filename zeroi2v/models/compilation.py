"""`torch.compile` for inference, applied from outside the model (evaluate, predict, serving,
`profile --latency`).

`nn.Module.compile` compiles in place, so parameter names and the state dict stay those of
the plain model (``torch.compile(model)`` would return a wrapper whose keys gain an
``_orig_mod.`` prefix). ``fullgraph=True``: STDHA, the adapters and the merged model trace
without graph breaks (tested), so a break is a bug to surface, not to hide. Shapes are
static (one graph per input shape: the test views of a video are fixed by the config); on
CUDA ``mode="reduce-overhead"`` replays each graph as a CUDA graph, which removes the kernel
launch cost that dominates a one-video batch on a fast GPU. Training compiles through
DeepSpeed instead (`zeroi2v.engine.parallel.build_engine`).
"""

from __future__ import annotations

import torch
from torch import nn


def compile_for_inference(model: nn.Module, device: str | torch.device) -> nn.Module:
    """Compile `model` in place for fixed-shape inference on `device`; returns `model`."""
    mode = "reduce-overhead" if torch.device(device).type == "cuda" else None
    model.compile(mode=mode, fullgraph=True, dynamic=False)
    return model
