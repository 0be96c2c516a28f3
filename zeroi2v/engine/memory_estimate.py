"""How much accelerator memory a training step of a config needs, worked out on any machine.

The step runs on fake tensors (`torch._subclasses.FakeTensorMode`: shapes, dtypes and
storages, no data, no arithmetic), so ViT-L/14 at 32 frames and the config's micro-batch of 8
costs seconds and no memory on a laptop. Every storage the step creates is counted while it
lives (`LiveBytes`), and the peak is what an accelerator must hold at once: the weights, the
activations that backward keeps (fewer with activation checkpointing), the gradients of the
trainable parameters, AdamW's two moments, and the temporaries of the largest operator.

What it does not count, so a real GPU shows more: the CUDA context and cuBLAS/cuDNN
workspaces (~0.5-1 GiB), the caching allocator's fragmentation, DeepSpeed's buffers (ZeRO's
gradient buckets), and kernel-specific scratch. The attention kernel is the CPU's fused
`scaled_dot_product_attention` (it saves the output and log-sum-exp, as flash attention on
CUDA does), not the math path that materialises the (N × N) attention matrix.

`torch.distributed._tools.mem_tracker.MemTracker` would do this per module, but it installs
a gradient hook on every parameter and fails on frozen ones, which are most of ours.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from zeroi2v.config import Config
from zeroi2v.engine.activation_checkpointing import apply_activation_checkpointing

GIB = 2**30


class LiveBytes(TorchDispatchMode):
    """Bytes of the storages alive now and at most, for every tensor an operator returns
    (plus those `track`ed by hand). A storage counts once, however many views share it, and
    stops counting when Python frees it (storages keep their Python object while alive)."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, int] = {}
        self.now = self.peak = 0

    def track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key = storage._cdata  # the C++ StorageImpl: one per allocation, shared by views
        if key in self.live:
            return
        self.live[key] = storage.nbytes()
        self.now += self.live[key]
        self.peak = max(self.peak, self.now)
        weakref.finalize(storage, self._free, key)

    def _free(self, key: int) -> None:
        self.now -= self.live.pop(key)

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self.track(leaf)
        return out


@dataclass(frozen=True)
class StepMemory:
    """GiB of one training step at `micro_batch` clips (`peak`), and its parts at rest."""

    micro_batch: int
    weights: float  # every parameter and buffer, as stored (fp32 here, as DeepSpeed keeps them)
    optimizer: float  # AdamW's moments of the trainable parameters (whole, ZeRO 0)
    peak: float  # everything alive at once during forward, backward and the optimizer step

    @property
    def activations(self) -> float:
        """What the peak holds beyond weights and optimizer state: saved activations,
        gradients and operator temporaries."""
        return self.peak - self.weights - self.optimizer


def _to_fake(model: nn.Module, mode: FakeTensorMode) -> nn.Module:
    """`model` with every parameter and buffer swapped for a fake copy (same shape, dtype and
    requires_grad). Built for real first: open_clip's factory cannot run under fake mode."""
    for module in model.modules():
        for name, param in list(module._parameters.items()):
            if param is not None:
                fake = mode.from_tensor(param.detach())
                module._parameters[name] = nn.Parameter(fake, requires_grad=param.requires_grad)
        for name, buffer in list(module._buffers.items()):
            if buffer is not None:
                module._buffers[name] = mode.from_tensor(buffer)
    return model


def _clips(cfg: Config, micro_batch: int) -> torch.Tensor:
    """(B, C, T, H, W). A detector given no boxes scores one whole-frame box per clip (the
    smallest RoI load; more boxes add little next to the backbone)."""
    m = cfg.model
    return torch.randn(micro_batch, 3, m.num_frames, m.image_size, m.image_size)


def _loss(cfg: Config, logits: torch.Tensor) -> torch.Tensor:
    if cfg.model.task == "detection":  # multi-label: binary cross-entropy per action
        return nn.functional.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits))
    return nn.functional.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long))


def training_step_memory(
    model: nn.Module, cfg: Config, micro_batch: int, bf16: bool = True
) -> StepMemory:
    """Peak memory of one AdamW step of `model` (built from `cfg`, e.g. with
    ``model.pretrained=null``) at `micro_batch` clips, bf16 autocast or fp32, with
    `cfg.train`'s activation checkpointing. `model` is spent: its tensors become fake."""
    mode = FakeTensorMode()
    _to_fake(model, mode)
    if cfg.train.activation_checkpointing:
        apply_activation_checkpointing(model, cfg.train.activation_checkpointing_every)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    with mode:
        optimizer = torch.optim.AdamW(trainable, lr=1e-4)
        counter = LiveBytes()
        for tensor in [*model.parameters(), *model.buffers()]:
            counter.track(tensor)
        weights = counter.now
        clips = _clips(cfg, micro_batch)
        counter.track(clips)
        with counter:
            for _ in range(2):  # the second step holds the optimizer's moments throughout
                with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                    loss = _loss(cfg, model(clips))
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                del loss
        moments = sum(
            t.untyped_storage().nbytes()
            for state in optimizer.state.values()
            for t in state.values()
            if isinstance(t, torch.Tensor) and t.dim() > 0
        )
    return StepMemory(micro_batch, weights / GIB, moments / GIB, counter.peak / GIB)
