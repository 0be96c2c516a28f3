"""After training: merge and verify, save a plain state dict, evaluate (models are read back by
`loading`, re-exported here).

Shared by the end of `trainer.train`, `launch/merge.py` and `launch/evaluate.py`, so that the
model a user evaluates is built exactly the way training registered it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from zeroi2v import config as config_lib
from zeroi2v.config import Config
from zeroi2v.engine import parallel, tracking

# re-exported: where launchers, tools and users have found them (`loading` says why they moved)
from zeroi2v.engine.loading import load_checkpoint_model as load_checkpoint_model
from zeroi2v.engine.loading import load_model as load_model
from zeroi2v.engine.tasks import task_for
from zeroi2v.models.compilation import compile_for_inference
from zeroi2v.models.merge import merge
from zeroi2v.models.video import build_model

MERGE_TOLERANCE = 1e-4  # fp32 re-association error only, relative to max(1, |logits|)


def example_clips(cfg: Config, batch: int = 2) -> torch.Tensor:
    """(B, C, T, H, W) of the first view of the first val clips: the merge check's input."""
    from zeroi2v.data.pipeline import build_eval_loader  # lazy: webdataset ([data] extra)

    videos = next(iter(build_eval_loader(cfg, rank=0, world_size=1, batch_size=batch)))[0]
    return videos[:, 0].float()  # (B, V, C, T, H, W) → (B, C, T, H, W)


def unmerged_from_state_dict(cfg: Config, state: dict[str, torch.Tensor]) -> nn.Module:

    model = build_model(cfg)
    model.load_state_dict(state)
    return model.float().eval()


def merge_checked(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """`model` merged in place (`zeroi2v.merge`), failing loudly when its logits on `example`
    drift from the unmerged ones.

    In place, with the unmerged logits taken first: a merged copy would be a second fp32 model
    on rank 0 at the end of training (1.4 GB for ViT-L/14) and a second unmerged forward.
    """
    with torch.no_grad():
        unmerged = model.eval()(example)
        merged = merge(model, inplace=True).eval()
        diff = (merged(example) - unmerged).abs().max().item()
    scale = unmerged.abs().max().item()
    if not diff <= MERGE_TOLERANCE * max(1.0, scale):
        raise RuntimeError(
            f"merged logits differ from the unmerged model's by {diff:.3g} (tolerance "
            f"{MERGE_TOLERANCE:g} × max(1, |logits|)); the merge is wrong, not saving it"
        )
    return merged


def save_merged(merged: nn.Module, cfg: Config, path: Path) -> Path:
    """A plain state dict (backbone + head keys only) with the config that rebuilds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": merged.state_dict(), "config": config_lib.to_dict(cfg)}, path)
    return path


def release_trained(engine: Any, cfg: Config, tracker: Any, score: float) -> str | None:
    """The end of `trainer.train`, on every rank: the trained weights gathered (collective),
    then on rank 0 the model rebuilt in fp32, merged, the merge checked, saved as
    ``merged.pt`` and registered; the registered model's URI, or None (other ranks, no tracker)."""
    from zeroi2v.data.shards import read_manifest  # lazy: webdataset ([data] extra)

    state = parallel.full_state_dict(engine)  # collective (ZeRO-3 gathers); None off rank 0
    if state is None:
        return None
    model = unmerged_from_state_dict(cfg, state)
    del state  # its copy of the weights is in `model` now: one fp32 model less on rank 0
    example = example_clips(cfg)
    merged = merge_checked(model, example)
    saved = save_merged(merged, cfg, Path(cfg.train.output_dir) / "merged.pt")
    if tracker is None:
        return None
    classes = read_manifest(cfg.data.train_shards)["classes"]
    return tracker.log_model(merged, example[:1], score, classes, saved=saved)


def merge_checkpoint(
    cfg: Config, checkpoint: Path, out: Path | None = None, register: bool = False
) -> dict[str, Any]:
    """DeepSpeed checkpoint → verified merged `.pt` (and, optionally, a registered model)."""
    model, cfg = load_checkpoint_model(Path(checkpoint), cfg)
    example = example_clips(cfg)
    merged = merge_checked(model, example)
    folder = Path(checkpoint) if Path(checkpoint).is_dir() else Path(checkpoint).parent
    out = save_merged(merged, cfg, out or folder / "merged.pt")
    result: dict[str, Any] = {"merged": str(out), "model_uri": None}
    if register:
        from zeroi2v.data.shards import read_manifest  # lazy: webdataset ([data] extra)

        classes = read_manifest(cfg.data.train_shards)["classes"]
        tracker = tracking.Tracker(cfg)
        try:
            result["model_uri"] = tracker.log_model(merged, example[:1], None, classes, saved=out)
        finally:
            tracker.finish()
    return result


def evaluate_model(
    model: nn.Module, cfg: Config, *, progress: bool = True, compile: bool = False
) -> Any:
    """Multi-view top-1/top-5 of a plain (non-DeepSpeed) model on data.val_shards, one process
    (`metrics.EvalResult`); for ``model.task`` "detection", the frame-level mAP (`MapResult`)."""
    from zeroi2v.data.pipeline import build_eval_loader  # lazy: webdataset ([data] extra)

    if compile:
        compile_for_inference(model.eval(), "cpu")

    loader = build_eval_loader(cfg, rank=0, world_size=1, batch_size=cfg.data.eval_batch_size)
    task = task_for(cfg)
    return task.evaluate(model.eval(), loader, device=torch.device("cpu"), progress=progress)
