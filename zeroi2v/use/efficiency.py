"""Inference cost of ZeroI2V against the plain image model, measured in one run (paper Table 9).

Three models from one config (same backbone, same clip length, random weights — cost does not
depend on their values):

- ``plain``: the image backbone run per frame, features averaged over time (``temporal_op
  none``, no adapters): the ViT-B/16 row of Table 9;
- ``unmerged``: ZeroI2V as trained (STDHA + linear adapters);
- ``merged``: ZeroI2V after `zeroi2v.merge` (STDHA kept, adapters folded): what is deployed.

Params and GFLOPs use `zeroi2v.models.profile`'s counter (FLOPs of all V test views of one video,
fvcore convention). Latency: batch 1 = the V views of one video, the three models timed in
turn within every repetition (rotating which goes first), median over repetitions, so drift
of the machine hits all three alike. Throughput: videos per second at the largest batch of
videos (powers of two up to `max_batch`) that all three models fit in memory. On CUDA the
forward runs under bf16 autocast (the paper used PyTorch AMP on a V100).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from zeroi2v import logs
from zeroi2v.config import Config, from_dict, to_dict
from zeroi2v.models.compilation import compile_for_inference
from zeroi2v.models.merge import merge
from zeroi2v.models.profile import count_macs
from zeroi2v.models.video import build_model

VARIANTS = ("plain", "unmerged", "merged")


@dataclass
class EfficiencyRow:
    name: str
    params_m: float
    gflops: float  # all views of one video
    latency_ms: float  # batch 1 (one video's views), median
    throughput: float  # videos / s at `batch`
    batch: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def variant_configs(cfg: Config) -> dict[str, Config]:
    """Configs of the three models: no pretrained weights, the plain one without STDHA/adapters."""
    raw = to_dict(cfg)
    raw["model"]["pretrained"] = None
    plain = to_dict(from_dict(raw))
    plain["model"]["temporal_op"] = "none"
    plain["adapt"]["strategy"] = "linear_probe"
    return {"plain": from_dict(plain), "zeroi2v": from_dict(raw)}


def build_variants(
    cfg: Config,
    device: torch.device,
    compile: bool = False,
    variants: tuple[str, ...] = VARIANTS,
) -> dict[str, nn.Module]:

    configs = variant_configs(cfg)
    plain = build_model(configs["plain"]).eval()
    unmerged = build_model(configs["zeroi2v"]).eval()
    merged = merge(unmerged).eval()
    models = {"plain": plain, "unmerged": unmerged, "merged": merged}
    models = {name: models[name].to(device) for name in variants}
    if compile:
        for model in models.values():
            compile_for_inference(model, device)
    return models


def _count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _forward(
    model: nn.Module, device: torch.device, compiled: bool = False
) -> Callable[[torch.Tensor], torch.Tensor]:
    def run(clips: torch.Tensor) -> torch.Tensor:
        if compiled:  # each call is a new step for CUDA graph trees: the models are timed in
            # turn, and no output of a replay is read after the next one overwrites it
            torch.compiler.cudagraph_mark_step_begin()
        with (
            torch.inference_mode(),
            torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"),
        ):
            return model(clips)

    return run


def _timed(run: Callable[[torch.Tensor], torch.Tensor], clips: torch.Tensor) -> float:
    if clips.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    run(clips)
    if clips.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def interleaved_median(
    runs: dict[str, Callable[[torch.Tensor], torch.Tensor]],
    clips: torch.Tensor,
    reps: int,
    warmup: int = 2,
    desc: str = "timing",
) -> dict[str, float]:
    """Median seconds per call of every run, the runs interleaved within each repetition."""
    names = list(runs)
    for _ in range(warmup):
        for name in names:
            runs[name](clips)
    times: dict[str, list[float]] = {name: [] for name in names}
    for rep in logs.progress(range(reps), desc=desc, leave=False):
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:  # rotate who goes first
            times[name].append(_timed(runs[name], clips))
    return {name: statistics.median(values) for name, values in times.items()}


def _fits(runs: dict[str, Callable], clips: torch.Tensor) -> bool:
    try:
        for run in runs.values():
            run(clips)
        return True
    except torch.OutOfMemoryError:
        return False
    finally:
        if clips.device.type == "cuda":
            torch.cuda.empty_cache()


def largest_batch(
    runs: dict[str, Callable], make_clips: Callable[[int], torch.Tensor], max_batch: int
) -> int:
    """Largest power of two ≤ `max_batch` (videos) at which every run fits in memory."""
    best, batch = 0, 1
    while batch <= max_batch:
        try:
            clips = make_clips(batch)
        except torch.OutOfMemoryError:
            break
        fits = _fits(runs, clips)
        del clips
        if not fits:
            break
        best, batch = batch, batch * 2
    if best == 0:
        raise RuntimeError("one video's views do not fit in memory; lower the clip length or size")
    return best


def efficiency_table(
    cfg: Config,
    reps: int = 20,
    max_batch: int | None = None,
    device: str | torch.device | None = None,
    throughput_reps: int | None = None,
    compile: bool = False,
    variants: tuple[str, ...] = VARIANTS,
) -> list[EfficiencyRow]:
    """Rows of `variants` (plain / unmerged / merged) for `cfg` (see the module docstring).

    `compile`: every model compiled (`zeroi2v.models.compilation`, CUDA graphs on CUDA);
    throughput is then measured at `max_batch` directly, as a search would compile every
    batch size it tries; if that batch runs out of memory, throughput is NaN (the latency
    stays). `variants`: fewer models, fewer compilations (the ratio needs plain and merged).
    """

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    max_batch = max_batch or (64 if device.type == "cuda" else 4)
    frames, size = cfg.model.num_frames, cfg.model.image_size
    views = cfg.data.num_clips * cfg.data.num_crops

    def make_clips(videos: int) -> torch.Tensor:
        return torch.randn(
            videos * views, 3, frames, size, size, device=device
        )  # (B*V, C, T, H, W)

    with torch.device("meta"):  # FLOPs from shapes alone, as zeroi2v.models.profile counts them
        shapes_only = build_variants(cfg, torch.device("meta"), variants=variants)
    one_view = torch.empty(1, 3, frames, size, size, device="meta")
    gflops = {name: count_macs(m, one_view) * views / 1e9 for name, m in shapes_only.items()}
    torch.manual_seed(0)
    models = build_variants(cfg, device, compile=compile, variants=variants)
    runs = {name: _forward(model, device, compile) for name, model in models.items()}

    latency = interleaved_median(runs, make_clips(1), reps, desc="latency (batch 1)")
    batch = max_batch if compile else largest_batch(runs, make_clips, max_batch)
    try:
        seconds = interleaved_median(
            runs,
            make_clips(batch),
            throughput_reps or max(3, reps // 4),
            warmup=1,
            desc=f"throughput (batch {batch})",
        )
    except torch.OutOfMemoryError:  # only compiled: the eager search stops below this batch
        seconds = dict.fromkeys(runs, math.nan)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return [
        EfficiencyRow(
            name=name,
            params_m=_count_params(models[name]) / 1e6,
            gflops=gflops[name],
            latency_ms=latency[name] * 1e3,
            throughput=batch / seconds[name],
            batch=batch,
        )
        for name in VARIANTS
        if name in models
    ]


def latency_ratio(rows: list[EfficiencyRow]) -> float:
    """Latency of the merged model over the plain one (paper: 28.89 / 28.72 = 1.006)."""
    by_name = {row.name: row for row in rows}
    return by_name["merged"].latency_ms / by_name["plain"].latency_ms


def format_table(rows: list[EfficiencyRow], cfg: Config, device: str) -> str:
    """A Table-9-like text table plus the merged/plain latency ratio."""
    views = cfg.data.num_clips * cfg.data.num_crops
    labels = {
        "plain": f"{cfg.model.backbone} (plain, frame avg)",
        "unmerged": "ZeroI2V unmerged",
        "merged": "ZeroI2V merged",
    }
    width = max(len(v) for v in labels.values())
    header = (
        f"{'model':<{width}}  {'views':>6}  {'params (M)':>10}  {'GFLOPs':>9}  "
        f"{'latency (ms)':>12}  {'throughput (V/s)':>16}  {'batch':>5}"
    )
    lines = [f"device: {device}", header, "-" * len(header)]
    for row in rows:
        throughput = "OOM" if math.isnan(row.throughput) else f"{row.throughput:.2f}"
        lines.append(
            f"{labels[row.name]:<{width}}  {cfg.model.num_frames}×{views:<4}  "
            f"{row.params_m:>10.3f}  {row.gflops:>9.3f}  {row.latency_ms:>12.2f}  "
            f"{throughput:>16}  {row.batch:>5}"
        )
    by_name = {row.name: row for row in rows}
    lines.append(f"latency ratio merged / plain: {latency_ratio(rows):.3f} (target ≤ 1.01)")
    throughput_ratio = by_name["merged"].throughput / by_name["plain"].throughput
    lines.append(
        f"throughput ratio merged / plain at batch {by_name['plain'].batch}: "
        f"{throughput_ratio:.3f} (target ≥ 0.99)"
    )
    return "\n".join(lines)


def describe_device(device: str | torch.device | None = None, compile: bool = False) -> str:
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    mode = "compiled" if compile else "eager"
    if device.type == "cuda":
        graphs = ", CUDA graphs" if compile else ""
        return f"{torch.cuda.get_device_name(device)} (bf16 autocast, {mode}{graphs})"
    return f"CPU, {torch.get_num_threads()} threads (float32, {mode})"


def describe_compilation() -> str:
    """What torch.compile did in this process. A CUDA graph skip (a CPU tensor or an input
    mutation in a graph) means "compiled" timings ran without CUDA graphs, launch-bound again:
    the reason is in the log with ``TORCH_LOGS=cudagraphs``."""
    from torch._dynamo.utils import counters  # lazy: torch._dynamo is slow to import

    graphs = counters["stats"]["unique_graphs"]
    skips = counters["inductor"]["cudagraph_skips"]
    return f"compilation: {graphs} graphs compiled, {skips} CUDA graph skips"
