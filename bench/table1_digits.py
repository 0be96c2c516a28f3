"""Paper Table 1 (a) on the digits task: what *and* when (`zeroi2v/data/digits.py`).

    python bench/table1.py --task digits [--seeds 0 1 2] [--budgets 300 1200] [--batch 16]

Every run: `tiny_vit12` (2 blocks, width 144, 12 heads of 12 channels) pre-trained once to
classify single digit frames (`pretrain_tiny_backbone(task="digits")`, seed 0, kept in the
work folder), frozen, 6 linear adapters per block and the linear head trained, 4-frame
clips (2 per digit), only `model.temporal_op` changed. R_c = 1/6 as in the paper: STDHA /
HR QKV move 2 of 12 heads ({1·1, −1·1, 0·10}), the channel shifts 2 of every head's 12
channels (Shift QKV / KV) or 24 of the [cls] token's 144 (the released code's `shift_div` 12).

Training is an in-process AdamW loop (lr 1e-3, weight decay 0.05, 10 % warm-up then cosine,
2 threads; at 3e-3 every 1200-step run ended at chance, and the one traced kept its training
loss at ln 2) on clips generated in memory, not `launch/train.py`: the clips never go through
shards or a video codec, so the operators are compared on exactly the same pixels; the model,
adapters and trainable flags are `build_model`'s. Top-1 on 512 validation clips made of
digit images no training clip shows; chance 50 %.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch

from zeroi2v import build_model
from zeroi2v.config import from_dict
from zeroi2v.data.digits import digit_clips
from zeroi2v.models.tiny_pretrain import pretrain_tiny_backbone
from zeroi2v.specs import BACKBONES

BACKBONE, FRAMES, THREADS = "tiny_vit12", 4, 2  # 4 frames: 2 per digit (CPU budget)
# 512 validation clips: one clip is 0.2 %, the binomial std at chance 2.2 % (128 gave 4.4 %).
TRAIN_CLIPS, VAL_CLIPS, DATA_SEED = 2048, 512, 1234
HEAD_OFFSETS = "{1·1, -1·1, 0·10}"  # 2 of 12 heads: R_c = 1/6
LR = 1e-3


def _config(op: str, pretrained: Path | None, num_classes: int = 2):
    model = {
        "backbone": BACKBONE,
        "pretrained": None if pretrained is None else str(pretrained),
        "num_frames": FRAMES,
        "image_size": 32,
        "num_classes": num_classes,
        "temporal_op": op,
        "shift_ratio": 1 / 6,
    }
    if op in ("stdha", "hr_qkv"):
        model["head_offsets"] = HEAD_OFFSETS
    return from_dict({"model": model, "adapt": {"strategy": "zeroi2v", "num_adapters": 6}})


def _tensor(clips: np.ndarray) -> torch.Tensor:
    """(n, T, H, W, 3) uint8 → (n, 3, T, H, W) normalised as the backbone expects."""
    spec = BACKBONES[BACKBONE]
    mean = torch.tensor(spec.mean).view(1, 3, 1, 1, 1)
    std = torch.tensor(spec.std).view(1, 3, 1, 1, 1)
    x = torch.from_numpy(clips).permute(0, 4, 1, 2, 3).float() / 255
    return (x - mean) / std


def pretrained_backbone(workdir: Path, steps: int = 3000, batch: int = 64) -> Path:
    """The digit-classifying backbone every run starts from (made once, seed 0).

    3000 steps × 64 frames (~2.5 min on 2 cores) classify the digits (0.98 on the last batch):
    the task asks whether the operators keep frozen features that carry appearance intact, and
    400 × 32 (0.66) gave features that barely told the digits apart.
    """
    out = workdir / f"{BACKBONE}_digits_{steps}x{batch}.pt"
    if not out.is_file():
        accuracy = pretrain_tiny_backbone(
            _config("none", None, 10), out, steps=steps, batch=batch, seed=0, task="digits"
        )
        print(f"pre-trained {out} (digit accuracy on the last batch: {accuracy:.2f})")
    return out


def data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The same training and validation clips for every run."""
    rng = np.random.default_rng(DATA_SEED)
    train, train_y, _ = digit_clips(rng, TRAIN_CLIPS, "train", FRAMES)
    val, val_y, _ = digit_clips(rng, VAL_CLIPS, "val", FRAMES)
    return _tensor(train), torch.from_numpy(train_y), _tensor(val), torch.from_numpy(val_y)


def train_one(op: str, seed: int, steps: int, batch: int, pretrained: Path, clips) -> float:
    """Top-1 on the validation clips after `steps` AdamW steps of `batch` clips."""
    train, train_y, val, val_y = clips
    torch.set_num_threads(THREADS)
    torch.manual_seed(seed)
    model = build_model(_config(op, pretrained))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=LR, weight_decay=0.05)
    warmup = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (
            (s + 1) / warmup
            if s < warmup
            else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, steps - warmup)))
        ),
    )
    order = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        pick = torch.randint(0, len(train), (batch,), generator=order)
        loss = torch.nn.functional.cross_entropy(model(train[pick]), train_y[pick])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    model.eval()
    with torch.no_grad():
        predicted = torch.cat([model(val[i : i + 64]).argmax(1) for i in range(0, len(val), 64)])
    return (predicted == val_y).float().mean().item()


def run(ops: list[str], seeds: list[int], budgets: list[int], batch: int, workdir: Path):
    """{budget: {op: [top-1 per seed]}}, printing each run as it finishes."""
    workdir.mkdir(parents=True, exist_ok=True)
    pretrained = pretrained_backbone(workdir)
    clips = data()
    results = {b: {op: [] for op in ops} for b in budgets}
    for budget in budgets:
        for seed in seeds:
            for op in ops:
                start = time.perf_counter()
                top1 = train_one(op, seed, budget, batch, pretrained, clips)
                results[budget][op].append(top1)
                seconds = time.perf_counter() - start
                print(
                    f"{budget:5d} steps {op:10s} seed {seed}: top-1 {100 * top1:.1f}% "
                    f"({seconds:.0f} s)",
                    flush=True,
                )
    return results
