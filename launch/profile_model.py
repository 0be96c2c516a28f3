"""Print one JSON line of params / tunable params / GFLOPs for a config (no weights needed).

python launch/profile_model.py --config configs/k400_b16_8f.json --merged [section.key=value ...]
python launch/profile_model.py --config configs/k400_b16_8f.json --latency [--reps 20]
    [--max-batch N] [--compile] [--no-unmerged]
  (--latency: also time plain / unmerged / merged models in one run, Table 9; see
  zeroi2v/use/efficiency.py; random weights, but real tensors: minutes on CPU for ViT-B)
python launch/profile_model.py --config configs/k400_l14_32f.json --train-memory [--batch 8]
  (--train-memory: peak accelerator memory of one training step at the config's micro-batch,
  bf16, with its activation checkpointing; fake tensors, seconds on any machine; see
  zeroi2v/engine/memory_estimate.py for what it leaves out)
"""

from __future__ import annotations

import argparse
import json

from zeroi2v import logs
from zeroi2v.config import load, parse_args_with_overrides
from zeroi2v.redact import run_cli


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--config", required=True, help="experiment JSON (configs/*.json)")
    parser.add_argument("--merged", action="store_true", help="count the merged (deployed) model")
    parser.add_argument(
        "overrides",
        nargs="*",
        help="dotted overrides: adapt.bottleneck_ratio=0.5 or --optim.lr=3e-4",
    )
    parser.add_argument(
        "--latency",
        action="store_true",
        help="also measure latency / throughput: plain vs unmerged vs merged",
    )
    parser.add_argument("--reps", type=int, default=20, help="--latency: timed repetitions")
    parser.add_argument(
        "--max-batch",
        type=int,
        default=None,
        help="--latency: largest batch of videos tried (default 64 CUDA, 4 CPU)",
    )
    parser.add_argument(
        "--device", default=None, help="--latency: cpu or cuda (default: cuda if any)"
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="--latency: torch.compile the three models (CUDA graphs on cuda)",
    )
    parser.add_argument(
        "--no-unmerged",
        action="store_true",
        help="--latency: leave the unmerged model out (one model less to compile)",
    )
    parser.add_argument(
        "--train-memory",
        action="store_true",
        help="also project one training step's peak accelerator memory (bf16)",
    )
    parser.add_argument(
        "--batch",
        type=int,
        default=None,
        help="--train-memory: clips per device (default deepspeed.train_micro_batch_size_per_gpu)",
    )
    args, overrides = parse_args_with_overrides(parser, argv)
    cfg = load(args.config, overrides)
    # lazy: torch and the extras load once work starts: a fast --help
    from zeroi2v.models.profile import profile

    result = profile(cfg, merged=args.merged)
    if args.train_memory:
        # lazy: torch and the extras load once work starts: a fast --help
        from zeroi2v import build_model
        from zeroi2v.engine.memory_estimate import training_step_memory

        batch = args.batch or cfg.deepspeed["train_micro_batch_size_per_gpu"]
        step = training_step_memory(build_model(cfg), cfg, batch)
        result["train_memory_gib"] = {
            "micro_batch": batch,
            "peak": round(step.peak, 3),
            "weights": round(step.weights, 3),
            "optimizer": round(step.optimizer, 3),
            "activations_and_gradients": round(step.activations, 3),
        }
    print(json.dumps(result))
    if args.latency:
        # lazy: torch and the extras load once work starts: a fast --help
        from zeroi2v.use.efficiency import (
            VARIANTS,
            describe_compilation,
            describe_device,
            efficiency_table,
            format_table,
            latency_ratio,
        )

        rows = efficiency_table(
            cfg,
            reps=args.reps,
            max_batch=args.max_batch,
            device=args.device,
            compile=args.compile,
            variants=("plain", "merged") if args.no_unmerged else VARIANTS,
        )
        device = describe_device(args.device, compile=args.compile)
        print(format_table(rows, cfg, device))
        if args.compile:
            print(describe_compilation())
        result["latency"] = {
            "rows": [row.as_dict() for row in rows],
            "merged_over_plain": latency_ratio(rows),
            "device": device,
        }
    return result


if __name__ == "__main__":
    logs.setup()
    run_cli(main)
