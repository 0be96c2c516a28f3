"""Search hyper-parameters and STDHA head allocations with Ray Tune.

    python launch/tune.py --config configs/tune_tiny_cpu.json [section.key=value ...] [--resume]

Every trial is the training of launch/train.py with the config + the trial's overrides.
The search resumes by itself when `tune.storage_path/tune.name` holds an interrupted one;
`--resume` insists on it. Set $RAY_ADDRESS to run on a Ray cluster.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from zeroi2v import config as config_lib
from zeroi2v import logs, redact
from zeroi2v.tune.search import run_search


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True, type=Path, help="experiment JSON with 'tune'")
    parser.add_argument("--resume", action="store_true", help="resume an interrupted search")
    parser.add_argument("--print-config", action="store_true", help="print the config and exit")
    args, overrides = parser.parse_known_args(argv)
    logs.setup()
    redact.install()  # no credentials in any log line or traceback
    config_lib.load(args.config)  # readable errors for a bad file
    raw = config_lib.apply_overrides(json.loads(args.config.read_text()), overrides)
    cfg = config_lib.from_dict(raw)  # fail on bad overrides before Ray starts
    if args.print_config:
        print(json.dumps(redact.mask_config(config_lib.to_dict(cfg)), indent=2, ensure_ascii=False))
        return 0

    result = run_search(raw, resume=args.resume)
    print(f"{len(result.rows)} trials; outputs in {result.output_dir}")
    return 0


if __name__ == "__main__":
    redact.run_cli(main)
