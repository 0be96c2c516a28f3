"""Paper Table 1 (a): every zero-cost temporal operator, same budget, N seeds, on a task.

    python bench/table1.py --task digits [--seeds 0 1 2] [--budgets 300 1200] [--batch 16] \
        [--out t.md]
    python bench/table1.py [--task motion] [--seeds 0 1 2] [--epochs 3] [--steps-per-epoch 64] \
        [--batch 8] [--shards data/synthetic_shards] [--pretrained data/tiny_vit_image.pt]

`--task digits` (what and when: which of a low and a high handwritten digit comes first,
`zeroi2v/data/digits.py`) is described in `bench/table1_digits.py`: 12-head tiny model, R_c = 1/6
as in the paper, two budgets, an in-process training loop. The rest of this docstring is the
motion task (`--task motion`, the default), which cannot rank the operators (bench/RESULTS.md).

The demo's full budget is `--epochs 10 --steps-per-epoch 96 --batch 16` (960 steps of 16 clips).

Each run is `launch/train.py --config configs/tiny_cpu.json` (one process, DeepSpeed, the
image-pre-trained tiny backbone, 6 linear adapters, the same data, seed and steps) with only
`model.temporal_op` changed. All operators change the same fraction of attention channels:
STDHA / HR QKV move 2 of 4 heads ({1·1, −1·1, 0·2}), the shift operators move R_c = 1/2 of
each head's (or token's) channels (`model.shift_ratio=0.5`). Prints a Markdown table of mean ±
std (n − 1) top-1 on the held-out clips next to the paper's Table 1 (a) column (SSv2,
ViT-B/16, 8 frames, R_c = 1/6). Needs `make demo`'s data (or the commands in scripts/demo.sh).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# operator → (paper's row name, paper's top-1 on SSv2 at R_c = 1/6; None: not in Table 1)
PAPER = {
    "none": ("(no temporal operator)", None),
    "cls_shift": ("[cls] token shift", 61.4),
    "qkv_shift": ("Shift QKV", 64.5),
    "kv_shift": ("Shift KV", 64.6),
    "hr_qkv": ("HR QKV", 64.8),
    "stdha": ("HR KV (STDHA)", 66.0),
}


def _final_top1(out: Path, steps: int) -> float | None:
    """The final val top-1 of a finished run in `out`, None if it did not finish."""
    path = out / "metrics.jsonl"
    if not path.is_file():
        return None
    evals = [json.loads(line) for line in path.read_text().splitlines()]
    done = [e["val/top1"] for e in evals if "val/top1" in e and e["step"] == steps]
    return done[-1] if done else None


def run_one(op: str, seed: int, args: argparse.Namespace) -> tuple[float, float]:
    """Train one operator with one seed; returns (final val top-1, seconds). A run already
    finished in the work folder is reused (an interrupted benchmark resumes)."""
    out = args.workdir / f"{op}_seed{seed}"
    finished = _final_top1(out, args.epochs * args.steps_per_epoch)
    if finished is not None:
        return finished, 0.0
    shutil.rmtree(out, ignore_errors=True)
    overrides = {
        "model.temporal_op": op,
        "model.shift_ratio": 0.5,
        "model.pretrained": str(args.pretrained),
        "data.train_shards": str(args.shards / "train-*.tar"),
        "data.val_shards": str(args.shards / "val-*.tar"),
        "train.seed": seed,
        "train.epochs": args.epochs,
        "train.steps_per_epoch": args.steps_per_epoch,
        "train.eval_every_epochs": args.epochs,
        "train.checkpoint_every_steps": 10**6,  # only the final checkpoint
        "train.output_dir": str(out),
        "tracking.enabled": False,
        "deepspeed.zero_optimization.stage": 0,
        "deepspeed.train_micro_batch_size_per_gpu": args.batch,
    }
    cmd = [sys.executable, str(REPO / "launch" / "train.py"), "--config", str(args.config)]
    cmd += [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in overrides.items()]
    cmd += args.set  # last: e.g. model.shift_ratio=0.25 "model.head_offsets={1·1, 0·3}"
    env = dict(os.environ, DS_ACCELERATOR=os.environ.get("DS_ACCELERATOR", "cpu"))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"{op} seed {seed} failed:\n{proc.stderr[-2000:]}")
    top1 = _final_top1(out, args.epochs * args.steps_per_epoch)
    if top1 is None:
        raise RuntimeError(f"{op} seed {seed}: no final evaluation in {out}/metrics.jsonl")
    return top1, time.perf_counter() - start


def table(results: dict[str, list[float]], seeds: list[int]) -> str:
    lines = [
        "| operator | paper's name | paper Table 1 (a), SSv2 | ours: mean ± std top-1 | "
        + " | ".join(f"seed {s}" for s in seeds)
        + " |",
        "|---|---|---|---|" + "---|" * len(seeds),
    ]
    for op, values in results.items():
        name, paper = PAPER[op]
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        cells = " | ".join(f"{100 * v:.1f}" for v in values)
        paper_cell = "—" if paper is None else f"{paper:.1f}"
        mean = 100 * statistics.fmean(values)
        lines.append(f"| `{op}` | {name} | {paper_cell} | {mean:.1f} ± {100 * std:.1f} | {cells} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--task", choices=["motion", "digits"], default="motion")
    parser.add_argument(
        "--budgets", nargs="+", type=int, default=[300, 1200], help="digits: steps per run"
    )
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "tiny_cpu.json")
    parser.add_argument("--shards", type=Path, default=REPO / "data" / "synthetic_shards")
    parser.add_argument("--pretrained", type=Path, default=REPO / "data" / "tiny_vit_image.pt")
    parser.add_argument("--ops", nargs="+", default=list(PAPER), choices=list(PAPER))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--steps-per-epoch", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8, help="clips per step (one process)")
    parser.add_argument("--workdir", type=Path, default=REPO / "runs" / "table1")
    parser.add_argument("--out", type=Path, help="also write the table (Markdown) here")
    parser.add_argument(
        "--set", action="append", default=[], help="extra section.key=value for every run"
    )
    args = parser.parse_args(argv)
    if args.task == "digits":
        return _digits(args)
    for path in (args.shards / "manifest.json", args.pretrained):
        if not path.is_file():
            sys.exit(f"error: {path} not found; make the demo data first (scripts/demo.sh)")
    results: dict[str, list[float]] = {op: [] for op in args.ops}
    for seed in args.seeds:  # seed-major: an interrupted run still compares every operator
        for op in args.ops:
            top1, seconds = run_one(op, seed, args)
            results[op].append(top1)
            print(f"{op:10s} seed {seed}: top-1 {100 * top1:.1f}% ({seconds:.0f} s)", flush=True)
        done = args.seeds[: args.seeds.index(seed) + 1]
        text = (
            f"Budget: {args.epochs} epochs × {args.steps_per_epoch} steps × batch {args.batch} "
            "(1 process) "
            f"per run, seeds {done}.\n\n{table(results, done)}\n"
        )
        if args.out:  # after every seed, so an interrupted run leaves a complete table
            args.out.write_text(text)
    print(text)
    return text


def _digits(args: argparse.Namespace) -> str:
    sys.path.insert(0, str(REPO))
    from bench.table1_digits import run

    batch = args.batch
    text = ""
    for budget in args.budgets:  # one budget after the other: each finished table is written
        results = run(args.ops, args.seeds, [budget], batch, args.workdir / "digits")[budget]
        text += (
            f"Budget: {budget} steps × batch {batch} (1 process) per run, seeds {args.seeds}, "
            f"chance 50 %.\n\n{table(results, args.seeds)}\n\n"
        )
        if args.out:
            args.out.write_text(text)
    print(text)
    return text


if __name__ == "__main__":
    main()
