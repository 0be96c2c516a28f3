r"""Convert a released ZeroI2V checkpoint (MCG-NJU/ZeroI2V, "before reparam"): map, merge, evaluate.

    python launch/convert.py --checkpoint k400_b16_8f.pth --config configs/k400_b16_8f.json \
        --out runs/official/k400_b16_8f_merged.pt [--evaluate] [--register]
    python launch/convert.py --checkpoint sthv2_b16_16f.pth --config configs/ssv2_b16_16f.json \
        --adapter-scale 1.0 --long-shift-div 12 --long-shift-right ...

Our config supplies the architecture (backbone, frames, `model.head_offsets` in our order, data
and tracking); the official recipe (`zeroi2v.models.convert.OFFICIAL_RECIPE`: temporal embedding,
768-d classifier, QuickGELU, adapter scale/dropout) is applied on top, then your overrides.
The `--shift-div`, `--long-shift-div`, `--long-shift-right` flags are the checkpoint's own
`stdha_cfg` (its mmaction config), from which its per-head Δt follow. The merge is our tested
one (no hard-coded scale or layer count), checked against the unmerged logits before saving.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from zeroi2v import logs
from zeroi2v.config import ConfigError, apply_overrides, from_dict, parse_args_with_overrides
from zeroi2v.redact import run_cli
from zeroi2v.specs import BACKBONES


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", required=True, type=Path, help="official .pth file")
    parser.add_argument("--config", required=True, type=Path, help="our config of that model")
    parser.add_argument("--out", required=True, type=Path, help="merged state dict (.pt)")
    parser.add_argument("--shift-div", type=int, default=12, help="stdha_cfg.shift_div")
    parser.add_argument("--long-shift-div", type=int, default=-1, help="stdha_cfg.long_shift_div")
    parser.add_argument("--long-shift-right", action="store_true")
    parser.add_argument("--adapter-scale", type=float, default=0.5, help="1.0 for SSv2 models")
    parser.add_argument("--evaluate", action="store_true", help="top-1/top-5 on data.val_shards")
    parser.add_argument("--register", action="store_true", help="log + register in MLflow")
    parser.add_argument("overrides", nargs="*", help="section.key=value or --section.key=value")
    args, overrides = parse_args_with_overrides(parser, argv)
    if not args.config.is_file():
        raise ConfigError(f"config file not found: {args.config}")
    # lazy: torch and the extras load once work starts: a fast --help
    import torch

    from zeroi2v.engine import release
    from zeroi2v.models.convert import (
        OFFICIAL_RECIPE,
        load_official,
        official_head_offsets,
        read_official,
    )

    raw = json.loads(args.config.read_text())
    raw = apply_overrides(raw, {**OFFICIAL_RECIPE, "adapt.adapter_scale": args.adapter_scale})
    cfg = from_dict(raw, overrides)
    official = read_official(args.checkpoint)
    width = official["backbone.class_embedding"].numel()
    heads = BACKBONES[cfg.model.backbone].heads[0]
    offsets = official_head_offsets(
        width, heads, args.shift_div, args.long_shift_div, args.long_shift_right
    )
    model = load_official(official, cfg, offsets)
    if args.evaluate or args.register:
        example = release.example_clips(cfg)
    else:  # no data needed: the merge check on a fixed random clip
        size, frames = cfg.model.image_size, cfg.model.num_frames
        generator = torch.Generator().manual_seed(0)
        example = torch.randn(2, 3, frames, size, size, generator=generator)
    merged = release.merge_checked(model, example)
    result: dict = {"merged": str(release.save_merged(merged, cfg, args.out)), "offsets": offsets}
    top1 = None
    if args.evaluate:
        metrics = release.evaluate_model(merged, cfg)
        top1 = metrics.top1
        result.update(top1=metrics.top1, top5=metrics.top5, count=metrics.count)
    if args.register:
        # lazy: torch and the extras load once work starts: a fast --help
        from zeroi2v.data.shards import read_manifest
        from zeroi2v.engine.tracking import Tracker

        tracker = Tracker(cfg)
        try:
            tracker.set_lineage({"lineage.parent_uri": str(args.checkpoint.resolve())})
            classes = read_manifest(cfg.data.train_shards)["classes"]
            result["model_uri"] = tracker.log_model(merged, example[:1], top1, classes)
        finally:
            tracker.finish()
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    logs.setup()
    run_cli(main)
