r"""Merge a DeepSpeed checkpoint into the plain backbone: verified, saved as a state dict `.pt`.

    python launch/merge.py --config configs/tiny_cpu.json --checkpoint runs/tiny_cpu/checkpoints \
        [--out merged.pt] [--register]

`--checkpoint` is the checkpoints folder (its `latest` tag) or one tag folder inside it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from zeroi2v import logs
from zeroi2v.config import load, parse_args_with_overrides
from zeroi2v.redact import run_cli


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config",
        required=True,
        help="the training config (fallback when "
        "the checkpoint has no config.json beside it; tracking settings)",
    )
    parser.add_argument("--checkpoint", required=True, type=Path)
    parser.add_argument("--out", type=Path, help="default: merged.pt in the checkpoint folder")
    parser.add_argument(
        "--register", action="store_true", help="log the merged model to MLflow and register it"
    )
    parser.add_argument("overrides", nargs="*", help="section.key=value or --section.key=value")
    args, overrides = parse_args_with_overrides(parser, argv)
    cfg = load(args.config, overrides)
    # lazy: torch and the extras load once work starts: a fast --help
    from zeroi2v.engine.parallel import select_accelerator

    select_accelerator()
    # lazy: torch and the extras load once work starts: a fast --help
    from zeroi2v.engine.release import merge_checkpoint

    result = merge_checkpoint(cfg, args.checkpoint, args.out, register=args.register)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    logs.setup()
    run_cli(main)
