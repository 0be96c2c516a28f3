"""Does STDHA cost anything at run time? Two ratios, measured in one run (CPU, and GPU if any).

1. Attention forward+backward, ViT-B/16 shapes (8 clips x 8 frames on GPU, 2 clips on CPU;
   197 tokens, 12 heads):
   STDHA {1·1, -1·1, 0·10} / timm's plain attention. Target <= 1.03 (the K/V gather only).
2. Inference latency, batch 1 x 3 views of 8 frames at 224²: merged ZeroI2V ViT-B/16 /
   the plain backbone + head. Target <= 1.01 (paper: 28.89 ms vs 28.72 ms on a V100).

Repetitions of the two variants are interleaved (ABAB...) so that clock and thermal drift
hit both alike; each ratio is the median of per-pair ratios. Random weights: timing only.

    python bench/stdha.py [--quick] [--device cpu|cuda|all] [--small]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from timm.layers import Attention

from zeroi2v import build_model, merge
from zeroi2v.config import load
from zeroi2v.models.stdha import TimmSTDHA
from zeroi2v.offsets import expand

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "k400_b16_8f.json"
OFFSETS = expand([(1, 1), (-1, 1), (0, 10)])


def _timed(fn: Callable[[], None], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def interleaved_ratio(
    new: Callable[[], None], base: Callable[[], None], reps: int, device: torch.device
) -> dict[str, float]:
    """Median of time(new)/time(base) over `reps` interleaved pairs (after one warm-up each)."""
    new(), base()
    ratios, t_new, t_base = [], [], []
    for i in range(reps):
        order = (new, base) if i % 2 == 0 else (base, new)  # alternate who goes first
        times = {id(fn): _timed(fn, device) for fn in order}
        t_new.append(times[id(new)])
        t_base.append(times[id(base)])
        ratios.append(t_new[-1] / t_base[-1])
    return {
        "ratio_median": round(statistics.median(ratios), 4),
        "new_ms_median": round(1e3 * statistics.median(t_new), 3),
        "base_ms_median": round(1e3 * statistics.median(t_base), 3),
        "reps": reps,
    }


# --small: the tiny ViT's shapes (width 64, 4 heads, 17 tokens, 32²): the CI smoke run
SMALL = {
    "model.backbone": "tiny_vit",
    "model.image_size": 32,
    "model.num_classes": 5,
    "model.head_offsets": "{1·1, -1·1, 0·2}",
}


def bench_attention(
    device: torch.device, reps: int, clips: int = 8, frames: int = 8, small: bool = False
) -> dict:
    torch.manual_seed(0)
    width, heads, tokens, offsets = (64, 4, 17, [1, -1, 0, 0]) if small else (768, 12, 197, OFFSETS)
    plain = Attention(width, num_heads=heads, qkv_bias=True).to(device)
    stdha = TimmSTDHA(copy.deepcopy(plain), offsets, num_frames=frames).to(device)
    x = torch.randn(clips * frames, tokens, width, device=device, requires_grad=True)  # (B*T, N, C)
    grad = torch.randn_like(x)

    def step(module: torch.nn.Module) -> Callable[[], None]:
        def run() -> None:
            module(x).backward(grad)
            x.grad = None
            module.zero_grad(set_to_none=True)

        return run

    return interleaved_ratio(step(stdha), step(plain), reps, device)


@torch.no_grad()
def bench_latency(device: torch.device, reps: int, views: int = 3, small: bool = False) -> dict:
    overrides = {"model.pretrained": None, **(SMALL if small else {})}
    cfg = load(CONFIG, overrides)
    torch.manual_seed(0)
    merged = merge(build_model(cfg), inplace=True).eval().to(device)
    plain_cfg = load(
        CONFIG, {**overrides, "model.temporal_op": "none", "adapt.strategy": "linear_probe"}
    )
    plain = build_model(plain_cfg).eval().to(device)
    assert merged.state_dict().keys() == plain.state_dict().keys()
    size = cfg.model.image_size
    clip = torch.randn(views, 3, cfg.model.num_frames, size, size, device=device)  # 1 video x 3
    return interleaved_ratio(lambda: merged(clip), lambda: plain(clip), reps, device)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    parser.add_argument("--small", action="store_true", help="tiny ViT shapes (CI smoke run)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    devices = [torch.device("cpu")] if args.device in ("cpu", "all") else []
    if args.device in ("cuda", "all") and torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    results = {}
    for device in devices:
        gpu = device.type == "cuda"
        # 2 CPU cores: fewer clips in the attention bench (same per-frame shapes), fewer reps
        attn_reps = (20 if args.quick else 60) if gpu else (3 if args.quick else 8)
        attn_clips = 8 if gpu else 2
        lat_reps = (20 if args.quick else 50) if gpu else (2 if args.quick else 3)
        name = torch.cuda.get_device_name(device) if gpu else f"cpu x{torch.get_num_threads()}"
        results[device.type] = {
            "device": name,
            "attention_fwd_bwd_stdha_over_plain": bench_attention(
                device, attn_reps, clips=attn_clips, small=args.small
            ),
            "latency_merged_over_plain": bench_latency(device, lat_reps, small=args.small),
        }
        r = results[device.type]
        print(
            f"[{name}] STDHA/plain attention fwd+bwd: "
            f"{r['attention_fwd_bwd_stdha_over_plain']['ratio_median']:.3f} (target <= 1.03)"
        )
        print(
            f"[{name}] merged ZeroI2V / plain ViT-B/16 latency, 8 frames x 3 views: "
            f"{r['latency_merged_over_plain']['ratio_median']:.3f} (target <= 1.01)"
        )
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
