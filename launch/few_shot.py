r"""Few-shot protocol: N seeds × K shots, each a training on a K-shot subset; mean ± std top-1.

    python launch/few_shot.py --config configs/tiny_cpu.json --shots 2 4 8 --seeds 0 1 2 \
        [--workdir runs/few_shot] [--launcher "deepspeed --num_gpus 8"] [section.key=value ...]

For each (K, seed): `python -m data_prep subset` of the config's training shards (the folder of
`data.train_shards`; `--source` overrides it) into `<workdir>/<K>shot_seed<S>/`, then
`launch/train.py` on it with `train.seed=S`, evaluated on the config's full `data.val_shards`.
MLflow: one parent run (the base config, then `few_shot/<K>shot/top1_mean` and `_std` and the
table as `few_shot.md`) with every training nested under it (`tracking.parent_run_id`);
trained models are not registered. The table (Markdown) is printed and written to the workdir.
Tiny subsets have few batches: set `train.steps_per_epoch` in the config or as an override.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

from zeroi2v import logs
from zeroi2v.config import ConfigError, load, parse_args_with_overrides
from zeroi2v.redact import run_cli

TRAIN = Path(__file__).resolve().parent / "train.py"


def final_top1(output_dir: Path) -> float:
    evals = [json.loads(x) for x in (output_dir / "metrics.jsonl").read_text().splitlines()]
    return [e["val/top1"] for e in evals if "val/top1" in e][-1]


def table(results: dict[int, list[float]], seeds: list[int]) -> str:
    lines = [
        "| shots | top-1 mean ± std | " + " | ".join(f"seed {s}" for s in seeds) + " |",
        "|---|---|" + "---|" * len(seeds),
    ]
    for shots, values in results.items():
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        cells = " | ".join(f"{100 * v:.1f}" for v in values)
        lines.append(
            f"| {shots} | {100 * statistics.fmean(values):.1f} ± {100 * std:.1f} | {cells} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[int, list[float]]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True)
    parser.add_argument("--shots", nargs="+", type=int, required=True)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--source", type=Path, help="shard folder to draw from")
    parser.add_argument("--workdir", type=Path, default=Path("runs/few_shot"))
    parser.add_argument("--launcher", default="", help='e.g. "deepspeed --num_gpus 8"')
    parser.add_argument("overrides", nargs="*", help="section.key=value or --section.key=value")
    args, overrides = parse_args_with_overrides(parser, argv)
    cfg = load(args.config, overrides)
    source = args.source or Path(cfg.data.train_shards).parent
    if not (source / "manifest.json").is_file():
        raise ConfigError(f"no manifest.json in {source} (the folder of data.train_shards)")
    # lazy: torch and the extras load once work starts: a fast --help
    from data_prep.subset import make_subset
    from zeroi2v.engine.tracking import Tracker, run_ends_with

    tracker = None
    if cfg.tracking.enabled:
        tracker = Tracker(cfg)
    results: dict[int, list[float]] = {}
    with run_ends_with(tracker):
        for shots in args.shots:
            for seed in args.seeds:
                name = f"{shots}shot_seed{seed}"
                subset = args.workdir / name / "shards"
                try:
                    make_subset(source, subset, shots, seed)
                except ValueError as error:  # e.g. a class with fewer than K clips
                    raise ConfigError(f"--shots {shots}: {error}") from None
                run = [
                    f"data.train_shards={subset / 'train-*.tar'}",
                    f"train.seed={seed}",
                    f"train.output_dir={args.workdir / name / 'run'}",
                    "tracking.register_model=false",
                ]
                if tracker is not None:
                    run.append(f"tracking.parent_run_id={tracker.run_id}")
                launcher = shlex.split(args.launcher) or [sys.executable]
                cmd = [*launcher, str(TRAIN), "--config", args.config, *overrides, *run]
                if subprocess.run(cmd).returncode != 0:
                    raise ConfigError(f"training {name} failed (its output is above): {cmd}")
                results.setdefault(shots, []).append(final_top1(args.workdir / name / "run"))
        text = table(results, args.seeds)
        print(text)
        (args.workdir / "few_shot.md").write_text(text)
        if tracker is not None:
            # lazy: MLflow ([train] extra)
            import mlflow

            for shots, values in results.items():
                std = statistics.stdev(values) if len(values) > 1 else 0.0
                metrics = {"top1_mean": statistics.fmean(values), "top1_std": std}
                tracker.log_metrics({f"few_shot/{shots}shot/{k}": v for k, v in metrics.items()}, 0)
            mlflow.log_text(text, "few_shot.md")
    return results


if __name__ == "__main__":
    logs.setup()
    run_cli(main)
