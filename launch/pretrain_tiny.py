"""Make image-pre-trained weights for a tiny backbone (see `zeroi2v.models.tiny_pretrain`).

python launch/pretrain_tiny.py --config configs/tiny_cpu.json --out data/tiny_vit_image.pt
"""

from __future__ import annotations

import argparse

from zeroi2v import config, logs
from zeroi2v.redact import run_cli


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--out", required=True, help="where to save the backbone state dict")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--task",
        choices=["location", "digits"],
        default="location",
        help="location: where the sprite is (the motion demo); digits: which digit (table1)",
    )
    args, overrides = parser.parse_known_args(argv)
    cfg = config.load(args.config, overrides)
    # lazy: torch and the extras load once work starts: a fast --help
    from zeroi2v.models.tiny_pretrain import pretrain_tiny_backbone

    accuracy = pretrain_tiny_backbone(
        cfg, args.out, steps=args.steps, seed=args.seed, task=args.task
    )
    print(f"saved {args.out} ({args.task} accuracy on the last batch: {accuracy:.2f})")
    return accuracy


if __name__ == "__main__":
    logs.setup()
    run_cli(main)
