"""Training-step benchmark, every ratio measured in one run on one machine.

    python bench/train_step.py [--steps 3] [--models tiny,vit_b16] [--out bench/RESULTS.md]

Per model (tiny: 2 blocks / width 64 / 32² / 8 frames, batch 8; ViT-B/16-shaped CLIP: 224²,
8 frames, batch 1 on CPU, 8 on GPU; random weights):
  * DeepSpeed (ZeRO 0, fp32) step time ÷ plain PyTorch (same AdamW, same model) — target ≤ 1.15
  * activation checkpointing on ÷ off: step time (target ≤ 1.4) and peak memory (≤ 0.5).
    Peak memory: CUDA max allocated on GPU; on CPU the peak of the autograd graph's saved
    tensors (torch.autograd.graph.saved_tensors_hooks counts bytes alive), because process RSS
    on CPU is dominated by the allocator's caching and does not drop when tensors are freed.
With CUDA also ViT-B/16 8-frame bf16 clips/s, MFU (vs. the GPU's dense bf16 peak) and memory
at batch 8.
"""

from __future__ import annotations

import argparse
import copy
import functools
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch
from torch import nn

from zeroi2v import config
from zeroi2v.engine import parallel

MODELS = {
    "tiny": {
        "model.backbone": "tiny_vit",
        "model.image_size": 32,
        "model.num_classes": 4,
        "model.head_offsets": "{1·1, -1·1, 0·2}",
    },
    "vit_b16": {
        "model.backbone": "clip_vit_b16",
        "model.image_size": 224,
        "model.num_classes": 400,
        "model.head_offsets": "{1·1, -1·1, 0·10}",
    },
}
PEAK_BF16_TFLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


class SavedBytes:
    """Peak bytes of tensors saved for backward (the activations checkpointing removes)."""

    def __init__(self) -> None:
        self.now = self.peak = 0

    def pack(self, tensor: torch.Tensor):
        size = tensor.numel() * tensor.element_size()
        self.now += size
        self.peak = max(self.peak, self.now)
        return _Counted(tensor, size, self)

    def unpack(self, packed):
        return packed.tensor


class _Counted:
    def __init__(self, tensor, size, owner):
        self.tensor, self.size, self.owner = tensor, size, owner

    def __del__(self):
        self.owner.now -= self.size


def _cfg(name: str, checkpointing: bool, bf16: bool, micro: int):
    return config.from_dict(
        {},
        {
            **MODELS[name],
            "model.num_frames": 8,
            "model.pretrained": None,
            "train.activation_checkpointing": checkpointing,
            "deepspeed.train_micro_batch_size_per_gpu": micro,
            "deepspeed.bf16.enabled": bf16,
        },
    )


def _time_steps(step, batch, steps: int, device) -> float:
    step(*batch)  # warm-up (allocations, kernels)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step(*batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def bench_model(name: str, steps: int, micro: int, bf16: bool = False) -> dict[str, float]:
    from zeroi2v.engine.trainer import _build_model, train_step

    device = parallel.device()
    dtype = torch.bfloat16 if bf16 else torch.float32
    criterion = nn.CrossEntropyLoss()
    results: dict[str, float] = {}
    for checkpointing in (False, True):
        cfg = _cfg(name, checkpointing, bf16, micro)
        torch.manual_seed(0)
        model = _build_model(cfg)
        clips = torch.randn(micro, 3, 8, cfg.model.image_size, cfg.model.image_size)
        labels = torch.randint(0, cfg.model.num_classes, (micro,))
        if not checkpointing:  # plain PyTorch baseline, same optimizer and model
            plain = copy.deepcopy(model).to(device, dtype)
            optim = torch.optim.AdamW(parallel.param_groups(plain, 0.05), lr=1e-4)

            def plain_step(x, y, plain=plain, optim=optim):
                loss = criterion(plain(x), y)
                loss.backward()
                optim.step()
                optim.zero_grad(set_to_none=True)

            results["plain_s"] = _time_steps(
                plain_step, (clips.to(device, dtype), labels.to(device)), steps, device
            )
            del plain, optim
        ds = parallel.deepspeed_config(cfg, 1)
        engine = parallel.build_engine(model, cfg, ds, 1000, 100)
        batch = (clips.to(device, dtype), labels.to(device))
        key = "ac" if checkpointing else "ds"
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        results[f"{key}_s"] = _time_steps(
            functools.partial(train_step, engine, criterion), batch, steps, device
        )
        if device.type == "cuda":
            results[f"{key}_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
        else:
            counter = SavedBytes()
            with torch.autograd.graph.saved_tensors_hooks(counter.pack, counter.unpack):
                loss = criterion(engine(batch[0]), batch[1])
            results[f"{key}_mem_mb"] = counter.peak / 2**20
            del loss
        engine.destroy()
        del engine, model
    results["ds_over_plain"] = results["ds_s"] / results["plain_s"]
    results["ac_time_ratio"] = results["ac_s"] / results["ds_s"]
    results["ac_mem_ratio"] = results["ac_mem_mb"] / results["ds_mem_mb"]
    results["clips_per_s"] = micro / results["ds_s"]
    return results


def mfu(name: str, clips_per_s: float) -> float | None:
    """Model FLOPs utilisation: 3 × forward FLOPs (fwd + 2× bwd) × clips/s ÷ peak."""
    gpu = torch.cuda.get_device_name(0)
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in gpu), None)
    if peak is None:
        return None
    from torch.utils.flop_counter import FlopCounterMode

    cfg = _cfg(name, False, False, 1)
    from zeroi2v import build_model

    model = build_model(cfg).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, 3, 8, cfg.model.image_size, cfg.model.image_size))
    return 3 * counter.get_total_flops() * clips_per_s / peak


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--models", default="tiny,vit_b16")
    parser.add_argument("--out", type=Path, help="append a Markdown table here")
    args = parser.parse_args(argv)
    parallel.select_accelerator()
    parallel.init_distributed()
    cuda = torch.cuda.is_available()
    device_name = torch.cuda.get_device_name(0) if cuda else f"CPU x{os.cpu_count()}"
    rows = {}
    for name in args.models.split(","):
        micro = 8 if (name == "tiny" or cuda) else 1
        rows[name] = bench_model(name, args.steps, micro)
        if cuda and name == "vit_b16":
            bf16 = bench_model(name, args.steps, 8, bf16=True)
            rows["vit_b16_bf16"] = bf16
            bf16["mfu"] = mfu(name, bf16["clips_per_s"]) or float("nan")
    lines = [
        f"### train step, {device_name}, torch {torch.__version__}",
        "",
        "| model | batch | plain s/step | DeepSpeed s/step | DS÷plain | AC time ratio | "
        "AC mem ratio | mem off / on (MB) | clips/s | MFU |",
        "|" + "---|" * 10,
    ]
    for name, r in rows.items():
        batch = 8 if (name.startswith("tiny") or cuda) else 1
        lines.append(
            f"| {name} | {batch} | {r['plain_s']:.3f} | {r['ds_s']:.3f} | "
            f"{r['ds_over_plain']:.2f} | {r['ac_time_ratio']:.2f} | {r['ac_mem_ratio']:.2f} | "
            f"{r['ds_mem_mb']:.0f} / {r['ac_mem_mb']:.0f} | {r['clips_per_s']:.2f} | "
            f"{r.get('mfu', float('nan')):.1%} |"
        )
    text = "\n".join(lines)
    print(text)
    if args.out:
        with args.out.open("a") as handle:
            handle.write(text + "\n\n")
    return rows


if __name__ == "__main__":
    main()
