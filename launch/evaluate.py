"""Multi-view evaluation of a registered model or a checkpoint; prints top-1/top-5 (AVA: mAP).

    python launch/evaluate.py --model models:/zeroi2v_tiny_cpu@latest --config configs/tiny_cpu.json
    python launch/evaluate.py --model runs/tiny_cpu/merged.pt --config X --out metrics.json
    python launch/evaluate.py --config configs/ucf101_b16_8f_split{1,2,3}.json

Views and transforms come from the config stored with the model; `--config` supplies where the
data lives here (shards, workers, eval batch size) and the MLflow tracking URI. Several configs
(the 3 splits of UCF101 / HMDB51) evaluate one model each — the `--model`s in the same order,
by default each config's `models:/<tracking.model_name>@champion` — and report mean ± std.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from zeroi2v import logs
from zeroi2v.config import (
    Config,
    ConfigError,
    apply_overrides,
    from_dict,
    load,
    parse_args_with_overrides,
    to_dict,
)
from zeroi2v.redact import run_cli

_LOCAL_DATA_KEYS = ("train_shards", "val_shards", "num_workers", "eval_batch_size")


def evaluate_one(
    model_uri: str, local: Config | None, overrides: list[str], *, compile: bool = False
) -> dict:
    """Top-1/top-5 of one model on the val shards `local` names (or its own config's)."""
    # lazy: torch and the extras load once work starts: a fast --help
    from zeroi2v.engine.release import evaluate_model, load_model

    model, model_cfg = load_model(model_uri, local)
    raw = to_dict(model_cfg)
    if local is not None:
        raw["data"].update({k: getattr(local.data, k) for k in _LOCAL_DATA_KEYS})
    cfg = from_dict(apply_overrides(raw, overrides))
    result = evaluate_model(model, cfg, compile=compile)
    if cfg.model.task == "detection":
        print(f"{model_uri}: frame-mAP@0.5 {100 * result.mean_ap:.2f}  ({result.count} keyframes)")
        return {"model": model_uri, "mAP": result.mean_ap, "count": result.count}
    print(
        f"{model_uri}: top-1 {100 * result.top1:.2f}%  top-5 {100 * result.top5:.2f}%  "
        f"({result.count} clips, {cfg.data.num_clips}×{cfg.data.num_crops} views)"
    )
    return {"model": model_uri, "top1": result.top1, "top5": result.top5, "count": result.count}


def summarise(results: list[dict]) -> dict:
    """Mean and sample standard deviation (n − 1) of top-1/top-5 over splits."""
    summary: dict = {"splits": results}
    for key in ("top1", "top5"):
        values = [r[key] for r in results]
        summary[f"{key}_mean"] = statistics.fmean(values)
        summary[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
    return summary


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model",
        nargs="*",
        default=[],
        help="models:/NAME@ALIAS, runs:/…, a merged .pt or a checkpoint folder (one per config)",
    )
    parser.add_argument(
        "--config", nargs="*", default=[], help="data location and tracking URI (one per split)"
    )
    parser.add_argument("--out", type=Path, help="write the metrics as JSON here")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model first")
    parser.add_argument("overrides", nargs="*", help="section.key=value (applied last)")
    args, overrides = parse_args_with_overrides(parser, argv)
    locals_ = [load(path, overrides) for path in args.config] or [None]
    models = args.model or [f"models:/{c.tracking.model_name}@champion" for c in locals_ if c]
    if not models:
        raise ConfigError("give --model, or --config files whose registered models to evaluate")
    if len(locals_) > 1 and len(models) != len(locals_):
        raise ConfigError(f"got {len(models)} --model for {len(locals_)} --config; pair them")
    if len(locals_) == 1:
        locals_ = locals_ * len(models)
    results = [
        evaluate_one(uri, local, overrides, compile=args.compile)
        for uri, local in zip(models, locals_, strict=True)
    ]
    metrics = results[0] if len(results) == 1 else summarise(results)
    if len(results) > 1:
        print(
            f"mean over {len(results)}: top-1 {100 * metrics['top1_mean']:.2f} ± "
            f"{100 * metrics['top1_std']:.2f}%  top-5 {100 * metrics['top5_mean']:.2f} ± "
            f"{100 * metrics['top5_std']:.2f}%"
        )
    if args.out:
        args.out.write_text(json.dumps(metrics, indent=2))
    return metrics


if __name__ == "__main__":
    logs.setup()
    run_cli(main)
