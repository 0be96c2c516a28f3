"""Multi-view evaluation of a registered model or a checkpoint; prints top-1/top-5.

    python launch/evaluate.py --model models:/zeroi2v_tiny_cpu@latest --config configs/tiny_cpu.json
    python launch/evaluate.py --model runs/tiny_cpu/merged.pt --config X --out metrics.json

Views and transforms come from the config stored with the model; `--config` supplies where the
data lives here (shards, workers, eval batch size) and the MLflow tracking URI.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from zeroi2v.config import apply_overrides, from_dict, load, to_dict
from zeroi2v.redact import run_cli

_LOCAL_DATA_KEYS = ("train_shards", "val_shards", "num_workers", "eval_batch_size")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model",
        required=True,
        help="models:/NAME@ALIAS, runs:/…, a merged .pt or a checkpoint folder",
    )
    parser.add_argument("--config", help="data location and tracking URI on this machine")
    parser.add_argument("--out", type=Path, help="write the metrics as JSON here")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model first")
    parser.add_argument("overrides", nargs="*", help="section.key=value (applied last)")
    args, dashed = parser.parse_known_args(argv)
    overrides = [*args.overrides, *dashed]
    local = load(args.config, overrides) if args.config else None
    from zeroi2v.engine.release import load_model

    model, model_cfg = load_model(args.model, local)
    raw = to_dict(model_cfg)
    if local is not None:
        raw["data"].update({k: getattr(local.data, k) for k in _LOCAL_DATA_KEYS})
    cfg = from_dict(apply_overrides(raw, overrides))
    from zeroi2v.engine.release import evaluate_model

    result = evaluate_model(model, cfg, compile=args.compile)
    metrics = {"model": args.model, "top1": result.top1, "top5": result.top5, "count": result.count}
    print(
        f"{args.model}: top-1 {100 * result.top1:.2f}%  top-5 {100 * result.top5:.2f}%  "
        f"({result.count} clips, {cfg.data.num_clips}×{cfg.data.num_crops} views)"
    )
    if args.out:
        args.out.write_text(json.dumps(metrics, indent=2))
    return metrics


if __name__ == "__main__":
    run_cli(main)
