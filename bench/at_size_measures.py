"""What `bench/at_size.py` measures of a finished full-size run, and the process groups of
what it starts (a training launch, `mlflow models serve`), which a kill must take whole."""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]

# ----------------------------------------------------------------------------- processes


GROUPS: set[int] = set()  # process groups of the runs and servers alive now


def stop_groups(signum: int, frame: Any) -> None:
    """On SIGTERM / SIGINT (e.g. gpu.sh's time limit): the runs and servers, which live in
    their own process groups so that a kill takes their workers along, go too."""
    for group in list(GROUPS):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
    sys.exit(128 + signum)


def kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    GROUPS.discard(proc.pid)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------- measures


def checkpoint_bytes(folder: Path, trainable: set[str]) -> dict[str, int]:
    """The checkpoint folder's bytes: tensors of frozen / trainable parameters in the model
    state files, the optimizer state files, and everything else (run state, RNG, metadata)."""
    parts = {"frozen": 0, "trainable": 0, "optimizer": 0, "other": 0, "total": 0}
    for path in folder.rglob("*"):
        if not path.is_file():
            continue
        size = path.stat().st_size
        parts["total"] += size
        if "optim_states" in path.name:
            parts["optimizer"] += size
            continue
        if not path.name.endswith("model_states.pt"):
            parts["other"] += size
            continue
        state = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        tensors = 0
        for key, value in (state.get("module") or {}).items():
            if isinstance(value, torch.Tensor):  # (views of one flat buffer share a storage)
                nbytes = value.numel() * value.element_size()
                parts["trainable" if key in trainable else "frozen"] += nbytes
                tensors += nbytes
        parts["other"] += size - tensors
    return parts


def merge_error(checkpoint: Path) -> dict[str, float]:
    """max |merged − unmerged| / max |unmerged fp32| over one val clip's logits, in fp32 and
    both under bf16 autocast; and bf16's own rounding (unmerged bf16 vs fp32) to compare with."""
    from zeroi2v import merge
    from zeroi2v.engine import release

    model, cfg = release.load_checkpoint_model(checkpoint)
    merged = merge(model).eval()
    clip = release.example_clips(cfg, batch=1)
    logits = {}
    with torch.no_grad():
        for name, bf16 in (("fp32", False), ("bf16", True)):
            with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                logits[name] = model(clip).float(), merged(clip).float()
    reference = logits["fp32"][0]

    def error(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a - b).abs().max() / reference.abs().max())

    return {
        "fp32": error(*logits["fp32"]),
        "bf16": error(*logits["bf16"]),
        "bf16_rounding": error(logits["bf16"][0], reference),
    }


def registered(name: str, tracking_uri: str, video: Path | None, work: Path) -> dict[str, Any]:
    """Bytes of the registered model's artifacts, its load time through the registry and one
    video predicted over the config's test views (none for a detector: it needs boxes)."""
    import mlflow

    from zeroi2v.config import from_dict
    from zeroi2v.engine import release
    from zeroi2v.use.inference import VideoPredictor, class_names

    uri = f"models:/{name}@champion"
    mlflow.set_tracking_uri(tracking_uri)
    copy = Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(work / f"dl_{name}")))
    size = sum(p.stat().st_size for p in copy.rglob("*") if p.is_file())
    shutil.rmtree(copy, ignore_errors=True)
    start = time.perf_counter()
    model, cfg = release.load_model(uri, from_dict({"tracking": {"tracking_uri": tracking_uri}}))
    row = {"model_bytes": size, "load_s": time.perf_counter() - start}
    if video is None:
        return row
    predictor = VideoPredictor(model, cfg, class_names(cfg, uri))
    start = time.perf_counter()
    predictions = predictor.predict([video])
    return {
        **row,
        "predict_s": time.perf_counter() - start,
        "views": cfg.data.num_clips * cfg.data.num_crops,
        "label": predictions[0].labels[0] if predictions else None,
    }


def serve_once(name: str, tracking_uri: str, video: Path, log: Path) -> dict[str, Any]:
    """One request to ``mlflow models serve`` on 127.0.0.1 (`serving_load.served`, which
    always stops it): seconds until it answers /ping, the request's seconds and its label."""
    from serving_load import post, served

    start = time.perf_counter()
    with served(f"models:/{name}@champion", tracking_uri, {}, log) as (port, _):
        ready = time.perf_counter() - start
        payload = {"dataframe_records": [{"video": base64.b64encode(video.read_bytes()).decode()}]}
        status, reply, seconds = post(port, payload)
    if status != 200:
        raise RuntimeError(f"mlflow models serve answered {status}: {str(reply)[:300]}")
    return {"ready_s": ready, "request_s": seconds, "label": reply["predictions"][0]["label"]}


def projected_memory(model: torch.nn.Module, cfg: Any, micro_batch: int) -> dict[str, float]:
    """A bf16 step's projected peak (`memory_estimate`); `model` is spent (its tensors fake)."""
    from zeroi2v.engine.memory_estimate import training_step_memory

    step = training_step_memory(model, cfg, micro_batch, bf16=True)
    return {
        "micro_batch": micro_batch,
        "peak_gib": step.peak,
        "weights_gib": step.weights,
        "optimizer_gib": step.optimizer,
    }
