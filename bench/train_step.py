"""Where a training step's time goes, and what a step costs in memory, measured in one run.

    PYTHONPATH=. python bench/train_step.py [--device cpu|cuda] [--small] [--batches 16,32]
        [--steps 5] [--stage 1] [--memory-configs configs/k400_l14_32f.json,...] [--out FILE]

1. Breakdown, ViT-B/16 CLIP 8 frames 224² (``--small``: the tiny ViT, 32², batch 2): for
   plain PyTorch, DeepSpeed as we configure it (`--stage`, default 1 as the paper configs;
   buckets, overlap and bf16's overflow test sized by `zero_comm.fit`) and DeepSpeed with
   its own defaults for those (5e8-element buckets, as before `zero_comm`), bf16 or fp32,
   every batch size:
   data wait (next batch + host-to-device copy), forward, backward, optimizer, gradient
   all-reduce (collective kernels inside backward/step, as torch.profiler sees them), and
   clips/s. Phases are torch.profiler `record_function` ranges closed after a device sync.
   The step time that clips/s, MFU and the engine ratios use is the median of steps timed
   round-robin over the engines without the profiler (`interleaved`).
2. MFU: FLOPs of the step as it really runs, counted by FlopCounterMode around forward +
   backward of the same model on the meta device (frozen weights get no weight gradient, so
   their backward matmuls are not counted; on meta SDPA decomposes into counted matmuls),
   divided by step time and the GPU's dense bf16 peak. Printed for bf16 rows on known GPUs.
3. The SDPA kernel STDHA's attention runs (flash / efficient / cudnn / math, or the CPU one).
4. ``--memory-configs``: peak memory of one DeepSpeed step of each config at its own per-GPU
   batch, ZeRO stage and activation checkpointing (CUDA max allocated; CPU: not measured).
5. Projected K400 hours: 240k clips × epochs ÷ best clips/s (model only; divide by the data
   loader's clips/s from bench/loader.py when that is lower).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import time
from pathlib import Path

import torch
from torch import nn
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile, record_function
from torch.utils.flop_counter import FlopCounterMode

from zeroi2v import config
from zeroi2v.engine import parallel, zero_comm

REPO = Path(__file__).resolve().parents[1]
PHASES = ("data", "forward", "backward", "optimizer")
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}
K400_TRAIN_CLIPS = 240_436
OOM = "OOM"  # a row or memory figure of a configuration that ran out of CUDA memory
MODELS = {
    "vit_b16": {
        "model.backbone": "clip_vit_b16",
        "model.image_size": 224,
        "model.num_frames": 8,
        "model.num_classes": 400,
        "model.head_offsets": "{1·1, -1·1, 0·10}",
    },
    "vit_b16_32px": {  # ViT-B/16's trainable and frozen sets, CPU-sized input (4 patches)
        "model.backbone": "clip_vit_b16",
        "model.num_classes": 400,
        "model.image_size": 32,
        "model.num_frames": 2,
        "model.head_offsets": "{1·1, -1·1, 0·10}",
    },
    "tiny": {
        "model.backbone": "tiny_vit",
        "model.image_size": 32,
        "model.num_frames": 4,
        "model.num_classes": 5,
    },
}
COLLECTIVES = ("all_reduce", "allreduce", "reduce_scatter", "all_gather", "nccl")
ENGINES = {  # row name: (engine, config overrides)
    "plain": ("plain", {}),
    "deepspeed": ("deepspeed", {}),
    "deepspeed-defaults": ("deepspeed", zero_comm.DEEPSPEED_DEFAULTS),
}


def make_cfg(model: str, batch: int, bf16: bool, extra: dict | None = None) -> config.Config:
    return config.from_dict(
        {},
        {
            **MODELS[model],
            "model.pretrained": None,
            "deepspeed.train_micro_batch_size_per_gpu": batch,
            "deepspeed.bf16.enabled": bf16,
            **(extra or {}),
        },
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class Step:
    """One training step of plain PyTorch or DeepSpeed, split into profiled phases."""

    def __init__(self, cfg: config.Config, engine_kind: str, device: torch.device) -> None:
        from zeroi2v.engine.trainer import _build_model

        torch.manual_seed(0)
        model = _build_model(cfg)
        self.device, self.kind = device, engine_kind
        ds = parallel.deepspeed_config(cfg, 1)
        self.dtype = parallel.input_dtype(ds)
        self.criterion = nn.CrossEntropyLoss()
        if engine_kind == "deepspeed":
            self.engine = parallel.build_engine(model, cfg, ds, 1000, 100)
            self.model = self.engine
        else:  # the same fused AdamW and param groups, no engine; bf16: cast weights as DeepSpeed
            # does, but no fp32 master copy (DeepSpeed keeps one of the trainable weights)
            self.engine = None
            self.model = model.to(device, self.dtype)
            groups = parallel.param_groups(self.model, cfg.optim.weight_decay)
            self.optim = torch.optim.AdamW(groups, lr=cfg.optim.lr, fused=True)
        size, frames = cfg.model.image_size, cfg.model.num_frames
        batch = cfg.deepspeed["train_micro_batch_size_per_gpu"]
        self.clips = torch.randn(batch, 3, frames, size, size)
        if device.type == "cuda":  # as the training loader's pin_memory does
            self.clips = self.clips.pin_memory()
        self.labels = torch.randint(0, cfg.model.num_classes, (batch,))

    def __call__(self) -> None:
        with record_function("data"):
            clips = self.clips.to(self.device, self.dtype, non_blocking=True)
            labels = self.labels.to(self.device, non_blocking=True)
            _sync(self.device)
        with record_function("forward"):
            loss = self.criterion(self.model(clips), labels)
            _sync(self.device)
        with record_function("backward"):
            self.engine.backward(loss) if self.engine else loss.backward()
            _sync(self.device)
        with record_function("optimizer"):
            if self.engine:
                self.engine.step()
            else:
                self.optim.step()
                self.optim.zero_grad(set_to_none=True)
            _sync(self.device)

    def close(self) -> None:
        if self.engine is not None:
            self.engine.destroy()


def breakdown(step: Step, steps: int) -> dict[str, float]:
    """Milliseconds per step of every phase (+ collectives, + total) after one warm-up step."""
    step()
    activities = [ProfilerActivity.CPU] + (
        [ProfilerActivity.CUDA] if torch.cuda.is_available() else []
    )
    start = time.perf_counter()
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
    total = (time.perf_counter() - start) / steps
    # With CUDA activity every record_function range also appears as a GPU annotation of the
    # same name (device CUDA, CPU time 0): phases are read from the CPU ranges only. Collective
    # time is the kernels' own device time on CUDA (the CPU op that launched one also reports
    # it, which would count it twice), the ops' CPU time on the CPU (gloo).
    collective_device = DeviceType.CUDA if torch.cuda.is_available() else DeviceType.CPU
    ms = {name: 0.0 for name in (*PHASES, "all_reduce")}
    for event in prof.key_averages():
        if event.key in PHASES and event.device_type == DeviceType.CPU:
            ms[event.key] = event.cpu_time_total / 1e3 / steps
        elif event.device_type == collective_device and any(
            c in event.key.lower() for c in COLLECTIVES
        ):
            on_cuda = collective_device == DeviceType.CUDA
            us = event.device_time_total if on_cuda else event.cpu_time_total
            ms["all_reduce"] += us / 1e3 / steps
    ms["total"] = total * 1e3
    return ms


def interleaved(steps: dict[str, Step], reps: int) -> dict[str, float]:
    """Median ms per step of each engine, timed round-robin (one step of each in turn, no
    profiler), so that load on a shared machine falls on every engine alike; ratios use it."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(reps):
        for name, step in steps.items():
            start = time.perf_counter()
            step()  # ends with a device sync
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def step_flops(cfg: config.Config) -> int:
    """FLOPs of forward + backward of one micro-batch as autograd runs it (meta device)."""
    from zeroi2v.engine.trainer import _build_model

    with torch.device("meta"):
        model = _build_model(cfg)
    size, frames = cfg.model.image_size, cfg.model.num_frames
    batch = cfg.deepspeed["train_micro_batch_size_per_gpu"]
    clips = torch.empty(batch, 3, frames, size, size, device="meta")
    labels = torch.zeros(batch, dtype=torch.long, device="meta")
    with FlopCounterMode(display=False) as counter:
        nn.functional.cross_entropy(model(clips), labels).backward()
    return counter.get_total_flops()


def sdpa_kernels(step: Step) -> list[str]:
    """The scaled-dot-product-attention operators one forward dispatches (which backend)."""
    clips = step.clips[:1].to(step.device, step.dtype)
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        step.model(clips)
    names = {e.key for e in prof.key_averages()}
    return sorted(
        n for n in names if "scaled_dot_product" in n and n != "aten::scaled_dot_product_attention"
    )


def peak_bf16(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


def one_gpu_config(path: Path) -> config.Config:
    """`path` with random weights and DeepSpeed's batch identity for one GPU: the paper
    configs set train_batch_size for 8 GPUs, which `parallel.deepspeed_config` rejects for
    a world of 1; the per-GPU micro-batch (what memory depends on) stays as configured."""
    cfg = config.load(path, {"model.pretrained": None})
    ds = cfg.deepspeed
    one_gpu = ds["train_micro_batch_size_per_gpu"] * ds.get("gradient_accumulation_steps", 1)
    cfg = config.load(path, {"model.pretrained": None, "deepspeed.train_batch_size": one_gpu})
    parallel.deepspeed_config(cfg, 1)  # the engine's checks, also where no step runs (CPU)
    return cfg


def memory_row(path: Path, device: torch.device) -> dict:
    """Peak memory of one DeepSpeed step of a config, as configured (random weights); "OOM"
    when it does not fit, None on the CPU (not measured)."""
    cfg = one_gpu_config(path)
    row = {
        "config": path.name,
        "batch": cfg.deepspeed["train_micro_batch_size_per_gpu"],
        "stage": cfg.deepspeed.get("zero_optimization", {}).get("stage", 0),
        "checkpointing": cfg.train.activation_checkpointing,
        "every": cfg.train.activation_checkpointing_every,
        "peak_gib": None,
    }
    if device.type != "cuda":
        return row
    torch.cuda.reset_peak_memory_stats(device)
    step = None
    try:
        step = Step(cfg, "deepspeed", device)
        step()
        row["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    except torch.OutOfMemoryError:
        row["peak_gib"] = OOM
    finally:
        if step is not None:
            step.close()
        free_memory(device)
    return row


def free_memory(device: torch.device) -> None:
    """Give what a failed configuration left behind back to the CUDA allocator's pool."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def measure_batch(
    model: str, batch: int, bf16: bool, stage: dict, steps: int, device: torch.device
) -> tuple[list[dict], list[str]]:
    """Rows of every engine at one batch size and precision, and the SDPA kernels run."""
    flops = step_flops(make_cfg(model, batch, bf16, stage))
    built: dict[str, Step] = {}
    try:
        for name, (kind, extra) in ENGINES.items():
            built[name] = Step(make_cfg(model, batch, bf16, {**stage, **extra}), kind, device)
        sdpa = sdpa_kernels(built["plain"])
        phases = {name: breakdown(step, steps) for name, step in built.items()}
        medians = interleaved(built, steps)
    finally:
        for step in built.values():
            step.close()
    peak = peak_bf16(device) if bf16 else None
    rows = []
    for name, ms in phases.items():
        step_s = medians[name] / 1e3
        rows.append(
            {
                "engine": name,
                "precision": "bf16" if bf16 else "fp32",
                "batch": batch,
                **{k: round(v, 2) for k, v in ms.items()},
                "step": round(medians[name], 2),
                "clips_per_s": round(batch / step_s, 2),
                "gflop_per_step": round(flops / 1e9, 3),
                "mfu": None if peak is None else flops / step_s / peak,
            }
        )
    return rows, sdpa


def run(args: argparse.Namespace) -> dict:
    """The breakdown at every precision and batch size, then the memory table. A batch size
    that does not fit in memory gets an OOM row and the next one still runs."""
    device = torch.device(args.device)
    model = args.model or ("tiny" if args.small else "vit_b16")
    batches = [] if args.memory_only else [int(b) for b in args.batches.split(",")]
    precisions = [p == "bf16" for p in args.precisions.split(",")]
    rows, sdpa = [], []
    stage = {"deepspeed.zero_optimization.stage": args.stage}
    for bf16 in precisions:
        for batch in batches:
            try:
                measured, kernels = measure_batch(model, batch, bf16, stage, args.steps, device)
            except torch.OutOfMemoryError:
                precision = "bf16" if bf16 else "fp32"
                measured = [
                    {"engine": name, "precision": precision, "batch": batch, "step": OOM}
                    for name in ENGINES
                ]
                kernels = []
            free_memory(device)
            sdpa = sdpa or kernels
            for row in measured:
                rows.append(row)
                print(json.dumps(row), flush=True)
    memory = []
    for path in [p for p in args.memory_configs.split(",") if p]:
        memory.append(memory_row(REPO / path, device))
        print(json.dumps(memory[-1]), flush=True)
    speeds = [r["clips_per_s"] for r in rows if r["step"] != OOM]
    return {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU x{os.cpu_count()}",
        "model": model,
        "stage": args.stage,
        "sdpa_kernels": sdpa,
        "rows": rows,
        "memory": memory,
        "k400_hours_40_epochs": round(K400_TRAIN_CLIPS * 40 / max(speeds) / 3600, 2)
        if speeds
        else None,
    }


def markdown(result: dict) -> str:
    lines = []
    if result["rows"]:
        lines += [
            f"Train step breakdown, {result['model']}, ZeRO {result['stage']}, ms per step "
            f"(SDPA: {', '.join(result['sdpa_kernels']) or 'none'}):",
            "",
            "| engine | precision | batch | data | forward | backward | optimizer | all-reduce | "
            "total | step (interleaved median) | clips/s | GFLOP/step | MFU |",
            "|" + "---|" * 13,
        ]
    for r in result["rows"]:
        if r["step"] == OOM:
            lines.append(f"| {r['engine']} | {r['precision']} | {r['batch']} |" + " OOM |" * 10)
            continue
        mfu = "–" if r["mfu"] is None else f"{r['mfu']:.1%}"
        lines.append(
            f"| {r['engine']} | {r['precision']} | {r['batch']} | {r['data']} | {r['forward']} | "
            f"{r['backward']} | {r['optimizer']} | {r['all_reduce']} | {r['total']} | "
            f"{r['step']} | {r['clips_per_s']} | {r['gflop_per_step']} | {mfu} |"
        )
    for kind in ("fp32", "bf16"):
        rows = [r for r in result["rows"] if r["precision"] == kind and r["step"] != OOM]
        plain = {r["batch"]: r["step"] for r in rows if r["engine"] == "plain"}
        for engine in [e for e in ENGINES if e != "plain"]:
            ratios = [
                f"batch {r['batch']}: {r['step'] / plain[r['batch']]:.2f}"
                for r in rows
                if r["engine"] == engine and r["batch"] in plain
            ]
            if ratios:
                lines.append(f"\n{engine} ÷ plain step, {kind}: {'; '.join(ratios)}")
    if result["memory"]:
        lines += [
            "",
            "Peak memory of one DeepSpeed step per config (CUDA max allocated):",
            "",
            "| config | batch/GPU | ZeRO | checkpointing (every) | peak GiB |",
            "|---|---|---|---|---|",
        ]
        for m in result["memory"]:
            peak = m["peak_gib"]
            if peak is None:
                peak = "not measured (CPU)"
            elif peak != OOM:
                peak = f"{peak:.1f}"
            lines.append(
                f"| {m['config']} | {m['batch']} | {m['stage']} | {m['checkpointing']} "
                f"({m['every']}) | {peak} |"
            )
    if result["k400_hours_40_epochs"] is not None:
        lines.append(
            f"\nProjected K400 (240k clips) × 40 epochs at the best clips/s, model only: "
            f"{result['k400_hours_40_epochs']} h"
        )
    return "\n".join(lines).strip("\n")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--small", action="store_true", help="tiny ViT, 32², seconds on CPU")
    parser.add_argument("--model", choices=MODELS, help="instead of --small's choice")
    parser.add_argument(
        "--batches", default=None, help="comma-separated (default 16,32,64; small: 2)"
    )
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--precisions", default="fp32,bf16", help="comma-separated fp32,bf16")
    parser.add_argument("--stage", type=int, default=1, help="ZeRO stage of the DeepSpeed rows")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--memory-configs", default="", help="comma-separated config paths")
    parser.add_argument(
        "--memory-only", action="store_true", help="no breakdown: only --memory-configs' table"
    )
    parser.add_argument("--out", type=Path, help="append the Markdown table here")
    args = parser.parse_args(argv)
    args.batches = args.batches or ("2" if args.small else "16,32,64")
    parallel.select_accelerator()
    parallel.init_distributed()
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run(args)
    text = markdown(result)
    print(text)
    if args.out:
        with args.out.open("a") as handle:
            handle.write(text + "\n\n")
    return result


if __name__ == "__main__":
    main()
