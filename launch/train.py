"""Train a config with DeepSpeed; at the end the model is merged and registered in MLflow.

    python launch/train.py --config configs/tiny_cpu.json [--resume] [section.key=value ...]
    deepspeed --num_gpus 2 launch/train.py --config configs/tiny_cpu.json --optim.lr=3e-4
    deepspeed --hostfile hosts --num_nodes 2 --num_gpus 8 launch/train.py --config X

Without CUDA, DeepSpeed's CPU accelerator is selected (DS_ACCELERATOR=cpu) before it is imported.
"""

from __future__ import annotations

import argparse
import json
import sys

from zeroi2v import logs, redact
from zeroi2v.config import load, parse_args_with_overrides, to_dict


def main(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True, help="experiment JSON (configs/*.json)")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from the latest checkpoint in train.output_dir",
    )
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved config and exit"
    )
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="section.key=value or --section.key=value")
    args, overrides = parse_args_with_overrides(parser, argv)
    cfg = load(args.config, overrides)
    if args.print_config:
        print(json.dumps(redact.mask_config(to_dict(cfg)), indent=2))
        return None
    redact.install()  # no credentials in any log line or traceback
    logs.setup()  # INFO on rank 0, WARNING elsewhere ($ZEROI2V_LOG_ALL_RANKS=1: all INFO)
    # lazy: torch and the extras load once work starts: a fast --help
    from zeroi2v.engine import parallel

    parallel.select_accelerator()  # before anything imports deepspeed
    # lazy: imports deepspeed, so only after select_accelerator
    from zeroi2v.engine.trainer import train

    return train(cfg, resume=args.resume)


if __name__ == "__main__":
    try:
        redact.run_cli(main)
    except SystemExit as end:
        if "torch" not in sys.modules:  # --help, a config error: no thread to race with
            raise
        from zeroi2v.engine.process_exit import exit_without_teardown

        exit_without_teardown(end.code)  # gloo's threads vs. finalization: see that module
