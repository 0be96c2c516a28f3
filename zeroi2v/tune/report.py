"""What a finished search leaves behind: trial table, plot, best config, registered model.

Kept apart from `search.py` so that the outputs can be rebuilt from a `ResultGrid` (e.g.
after `Tuner.restore`) without running anything.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from zeroi2v import config as config_lib
from zeroi2v.config import Config
from zeroi2v.specs import BACKBONES
from zeroi2v.tune.allocation import describe, trial_overrides


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def trial_rows(grid: Any, cfg: Config, raw: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per trial (allocation in paper notation, searched values, metric), best first."""
    metric, rows = cfg.tune.metric, []
    for result in grid:
        trial_config, metrics = result.config or {}, result.metrics or {}
        overrides = trial_overrides(trial_config, raw)
        model = config_lib.from_dict(raw, overrides).model
        row = {
            "trial": metrics.get("trial_id") or Path(result.path).name,
            "allocation": describe(model.offsets, BACKBONES[model.backbone]),
        }
        for name, value in (trial_config.get("head_allocation") or {}).items():
            row[name] = value
        for key, value in (trial_config.get("overrides") or {}).items():
            row[key] = value
        row[metric] = _number(metrics.get(metric))
        row["epochs"] = metrics.get("epoch")
        row["status"] = "error" if result.error else "ok"
        row["mlflow_run_id"] = metrics.get("mlflow_run_id", "")
        row["overrides"] = overrides
        row["checkpoint"] = result.checkpoint or _train_checkpoint(metrics)
        rows.append(row)
    sign = -1 if cfg.tune.mode == "max" else 1
    rows.sort(key=lambda r: (r[metric] is None, sign * (r[metric] or 0.0), r["trial"]))
    return rows


def _train_checkpoint(metrics: Mapping[str, Any]) -> Any:
    """A Ray Train trial's last checkpoint: Ray Train keeps it, Tune sees only its path."""
    # lazy: Ray ([tune] extra)
    from ray.train import Checkpoint
    from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY

    path = metrics.get(CHECKPOINT_PATH_KEY)
    return Checkpoint(path) if path else None


_HIDDEN = ("overrides", "checkpoint")


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(k for k in row if k not in _HIDDEN))
    return list(names)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    columns = _columns(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def write_table(rows: list[dict[str, Any]], out: Path) -> tuple[Path, Path]:
    """`trials.csv` and `trials.md` in `out`."""
    columns = _columns(rows)
    csv_path, md_path = out / "trials.csv", out / "trials.md"
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    md_path.write_text(markdown_table(rows) + "\n")
    return csv_path, md_path


def plot(rows: list[dict[str, Any]], metric: str, out: Path) -> Path:
    """Metric per trial, labelled by allocation; all-spatial trials in grey."""
    import matplotlib  # lazy: matplotlib ([train]/[serve] extra)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: matplotlib ([train]/[serve] extra)

    shown = [r for r in rows if r[metric] is not None][::-1]  # best at the top
    searched = [c for c in _columns(rows) if "." in c and c != "mlflow_run_id"]
    labels = [
        r["allocation"] + "".join(f"  {k.split('.')[-1]}={_cell(r[k])}" for k in searched)
        for r in shown
    ]
    colours = ["tab:grey" if r["allocation"].startswith("{0·") else "tab:blue" for r in shown]
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(shown) + 1.5))
    ax.barh(range(len(shown)), [r[metric] for r in shown], color=colours)
    ax.set_yticks(range(len(shown)), labels, fontsize=8)
    ax.set_xlabel(f"{metric} (last epoch)")
    ax.set_title("head allocations (grey: all heads spatial)")
    fig.tight_layout()
    path = out / "metric_by_allocation.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_best_config(
    raw: Mapping[str, Any], best: dict[str, Any], metric: str, source: str, out: Path
) -> Path:
    """The best trial's complete config, runnable as is with `launch/train.py --config`."""
    cfg = config_lib.from_dict(raw, best["overrides"])
    data = config_lib.to_dict(cfg)
    data.pop("tune", None)
    path = out / "best_config.json"
    data["_comment"] = (
        f"Best trial {best['trial']} of the search {source} ({metric}={_cell(best[metric])}, "
        f"STDHA {best['allocation']}). Launch: python launch/train.py --config {path}"
    )
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    config_lib.load(path)  # what launch/train.py will do: must pass unchanged
    return path


def register_best(
    raw: Mapping[str, Any], best: dict[str, Any], metric: str, checkpoint_subdir: str
) -> str | None:
    """Merge the best trial's last checkpoint (the trainer's, in `checkpoint_subdir` of the
    trial's Ray checkpoint) and log + register it in its own MLflow run."""
    trial_cfg = config_lib.from_dict(raw, best["overrides"])
    if not trial_cfg.tracking.enabled or best["checkpoint"] is None:
        return None
    # lazy: torch (this module stays torch-free)
    import torch

    from zeroi2v import merge
    from zeroi2v.data.shards import read_manifest
    from zeroi2v.engine.release import load_checkpoint_model
    from zeroi2v.engine.tracking import Tracker

    with best["checkpoint"].as_directory() as directory:
        model, _ = load_checkpoint_model(Path(directory) / checkpoint_subdir, trial_cfg)
    merged = merge(model)
    m = trial_cfg.model
    example = torch.randn(1, 3, m.num_frames, m.image_size, m.image_size)
    tracker = Tracker(trial_cfg, run_id=best["mlflow_run_id"] or None)
    try:
        classes = read_manifest(trial_cfg.data.train_shards)["classes"]  # as training registers
        return tracker.log_model(merged, example, best[metric], classes)
    finally:
        tracker.finish()
