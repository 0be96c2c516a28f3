"""The paper configs at the size they exist for: train, kill, resume, merge, register, serve.

    python bench/at_size.py                      # the four paper configs, ZeRO 1 and 3 (hours)
    python bench/at_size.py --configs k400_b16_8f --zero 1 --json row.json   # ~10 min
    python bench/at_size.py --procs 1 --bf16 --micro-batch 8                 # one GPU

For each config (cheapest first) and ZeRO stage, with ``model.pretrained=null`` (no weights
can be downloaded here; random weights exercise the same shapes) and synthetic videos at full
size (short side 256, crops of 224², the config's frames, sampling and test views; the head
has the synthetic set's 4 classes, or 3 for AVA, instead of 400 / 174 / 60):

1. ``deepspeed --num_gpus 2 launch/train.py`` trains 4 steps of 2 ranks × micro-batch 1 with
   the config's activation checkpointing, saving every 2 steps; the run is SIGKILLed (the
   whole process group) as soon as step 3's loss is written;
2. ``--resume`` continues from step 2: its step 3 must have the killed run's loss, bit for
   bit; it then evaluates, merges (with the trainer's own merge check) and registers;
3. the last checkpoint's bytes are split into frozen weights, trainable weights, optimizer
   state and the rest, next to 16 bytes per trainable parameter (fp32 weights + master copy
   + AdamW's two moments);
4. merged vs unmerged logits on one clip (max |Δ| / max |logit|), fp32 and bf16 autocast;
5. the registered model: its bytes, the time ``models:/NAME@champion`` takes to load, one
   full-size video predicted over the config's test views; for ViT-B/16 8f also one request
   through ``mlflow models serve`` on 127.0.0.1;
6. the projected peak accelerator memory of a step at the config's own micro-batch, bf16
   (`zeroi2v.engine.memory_estimate`: fake tensors, no data), next to the paper's Table 10.

Peak resident memory is each rank's (not its loader workers'), sampled every 0.5 s. Rows go
to stdout as JSON lines and, at the end, as a Markdown table (``--out`` appends it to a file).
A case that fails is reported with its error and the next one runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import repo_path  # noqa: F401  (bench/ is sys.path[0]): the checkout's data_prep
import torch
from at_size_measures import (  # beside this script, which Python puts first on sys.path
    GROUPS,
    checkpoint_bytes,
    free_port,
    kill_group,
    merge_error,
    projected_memory,
    registered,
    serve_once,
    stop_groups,
)

REPO = Path(__file__).resolve().parents[1]
CONFIGS = ["k400_b16_8f", "ava_b16_8f", "ssv2_swinb_32f", "k400_l14_32f"]  # cheapest first
SERVED = {"k400_b16_8f"}  # configs also served through `mlflow models serve`
PAPER_MEMORY_GB = {"k400_b16_8f": 7.6}  # Table 10: V100-32G, PyTorch AMP, batch 8
STEPS, SAVE_EVERY, KILL_AT = 4, 2, 3
BYTES_PER_TRAINABLE = 16  # fp32 weight + fp32 master copy + AdamW's exp_avg and exp_avg_sq
GIB = 2**30


# ----------------------------------------------------------------------------- data


def frames_needed(cfg: Any) -> int:
    """Frames one video needs so that the config's sampling never runs past its end."""
    d = cfg.data
    if d.sampling == "dense":
        return cfg.model.num_frames * d.frame_interval
    return cfg.model.num_frames * 2


def make_shards(cfg: Any, work: Path) -> Path:
    """Synthetic classification videos at full size (4 classes × 2 train + 1 val), sharded."""
    from data_prep.shard import shard_split
    from data_prep.sources import folder
    from data_prep.synthetic import make_synthetic

    frames = frames_needed(cfg)
    out = work / f"shards_{frames}f"
    if (out / "manifest.json").is_file():
        return out
    videos = make_synthetic(
        work / f"videos_{frames}f",
        per_class=2,
        frames=frames,
        size=cfg.data.short_side,
        seed=0,
        val_per_class=1,
    )
    for split in ("train", "val"):
        shard_split(folder(videos, split), out, split, root=videos, seed=0, progress_bar=False)
    return out


def make_ava_shards(work: Path) -> Path:
    """AVA-format shards of synthetic movies: the official annotation files, then ``python -m
    data_prep shard --source ava`` as a user runs it. The movies are 64² (their people are
    drawn in pixels); the loader resizes every frame to the model's 224², so the model's work
    is full size all the same."""
    from data_prep.__main__ import main as data_prep
    from data_prep.synthetic_ava import shard_args, write_set

    out = work / "ava_shards"
    if (out / "manifest.json").is_file():
        return out
    for split, videos, seed in (("train", 2, 1), ("val", 1, 2)):
        paths = write_set(work / "ava_raw", videos, keyframes=2, seed=seed, prefix=split)
        if data_prep(shard_args(paths, out, split)) != 0:
            raise RuntimeError(f"data_prep shard --source ava failed for {split}")
    return out


# ----------------------------------------------------------------------------- runs


def overrides(args: argparse.Namespace, name: str, zero: int, shards: Path, out: Path) -> list:
    micro = args.micro_batch
    classes = json.loads((shards / "manifest.json").read_text())["classes"]
    return [
        "model.pretrained=null",
        f"model.num_classes={len(classes)}",  # the shards' (a 400-way head: +0.3 M elements)
        f"data.train_shards={shards}/train-*.tar",
        f"data.val_shards={shards}/val-*.tar",
        "data.num_workers=1",
        "data.eval_batch_size=1",
        f"deepspeed.train_batch_size={args.procs * micro}",
        f"deepspeed.train_micro_batch_size_per_gpu={micro}",
        "deepspeed.gradient_accumulation_steps=1",
        f"deepspeed.bf16.enabled={'true' if args.bf16 else 'false'}",
        f"deepspeed.zero_optimization.stage={zero}",
        "train.epochs=1",
        f"train.steps_per_epoch={STEPS}",
        f"train.checkpoint_every_steps={SAVE_EVERY}",
        "train.log_every_steps=1",
        f"train.output_dir={out}",
        f"tracking.tracking_uri=sqlite:///{args.work / 'mlflow.db'}",
        "tracking.experiment=at_size",
        f"tracking.model_name=at_size_{name}_zero{zero}",
    ]


def launch(config: Path, extra: list[str], procs: int, log: Path) -> subprocess.Popen:
    """``deepspeed --num_gpus N launch/train.py`` in its own process group (killed whole)."""
    cmd = ["deepspeed", "--num_gpus", str(procs), "--master_addr", "127.0.0.1"]
    cmd += ["--master_port", str(free_port()), "launch/train.py", "--config", str(config)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    with log.open("ab") as handle:
        proc = subprocess.Popen(
            cmd + extra,
            cwd=REPO,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    GROUPS.add(proc.pid)  # so that SIGTERM / SIGINT of this script stops the run too
    return proc


def rank_processes(launcher: psutil.Process) -> dict[str, psutil.Process]:
    """The training ranks under the launcher (`--local_rank=N` in their command line), not
    their loader workers (forked children with the same command line)."""
    ranks = {}
    for proc in launcher.children(recursive=True):
        try:
            line = " ".join(proc.cmdline())
            parent = " ".join(proc.parent().cmdline()) if proc.parent() else ""
        except psutil.Error:
            continue
        if "--local_rank=" in line and "--local_rank=" not in parent:
            ranks[line.split("--local_rank=")[1].split()[0]] = proc
    return ranks


def metric_lines(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    lines = path.read_text().splitlines()
    return [json.loads(line) for line in lines if line.endswith("}")]


def watch(proc: subprocess.Popen, metrics: Path, timeout: float, kill_at: int | None) -> dict:
    """Wait for the run to end (or SIGKILL its group once step `kill_at` is logged); the
    ranks' peak RSS in GiB and the records seen, with the wall time each first appeared."""
    launcher, peak, seen, start = psutil.Process(proc.pid), {}, {}, time.monotonic()
    while proc.poll() is None:
        if time.monotonic() - start > timeout:
            kill_group(proc)
            proc.wait()
            raise TimeoutError(f"run did not end within {timeout:.0f} s; see its log")
        for rank, p in rank_processes(launcher).items():
            try:
                peak[rank] = max(peak.get(rank, 0.0), p.memory_info().rss / GIB)
            except psutil.Error:
                pass
        for record in metric_lines(metrics):
            if "loss" in record and record["step"] not in seen:
                seen[record["step"]] = {**record, "at": time.monotonic() - start}
        if kill_at is not None and kill_at in seen:
            kill_group(proc)
            proc.wait()
            break
        time.sleep(0.5)
    GROUPS.discard(proc.pid)
    for record in metric_lines(metrics):  # what the run wrote after the last look
        if "loss" in record and record["step"] not in seen:
            seen[record["step"]] = {**record, "at": time.monotonic() - start}
    return {
        "rss_gib": peak,
        "steps": seen,
        "returncode": proc.returncode,
        "seconds": time.monotonic() - start,
    }


# ----------------------------------------------------------------------------- measures


# ----------------------------------------------------------------------------- one case


def run_case(args: argparse.Namespace, name: str, zero: int) -> dict[str, Any]:
    from zeroi2v import build_model, config

    source = REPO / "configs" / f"{name}.json"
    base = config.load(source, ["model.pretrained=null"])
    work = args.work / f"{name}_zero{zero}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    if base.model.task == "detection":
        shards = make_ava_shards(args.work)
    else:
        shards = make_shards(base, args.work)
    out = work / "run"
    extra = overrides(args, name, zero, shards, out)
    config.load(source, extra)  # a combination the framework refuses says so here
    load_before = os.getloadavg()[1]  # the machine's load: what the timings ran beside
    row: dict[str, Any] = {
        "config": name,
        "zero": zero,
        "precision": "bf16" if args.bf16 else "fp32",
        "micro_batch": args.micro_batch,
    }

    killed = watch(
        launch(source, extra, args.procs, work / "killed.log"),
        out / "metrics.jsonl",
        args.timeout,
        kill_at=KILL_AT,
    )
    if KILL_AT not in killed["steps"]:
        raise RuntimeError(
            f"the run ended before step {KILL_AT} (status "
            f"{killed['returncode']}); see {work / 'killed.log'}"
        )
    resumed = watch(
        launch(source, [*extra, "--resume"], args.procs, work / "resumed.log"),
        out / "metrics.jsonl",
        args.timeout,
        kill_at=None,
    )
    if resumed["returncode"] != 0:
        raise RuntimeError(f"--resume exited {resumed['returncode']}; see {work / 'resumed.log'}")
    steps = killed["steps"]
    row["s_per_step"] = (steps[KILL_AT]["at"] - steps[1]["at"]) / (KILL_AT - 1)
    row["loss_step3_killed"] = steps[KILL_AT]["loss"]
    row["loss_step3_resumed"] = resumed["steps"][KILL_AT]["loss"]
    row["resume_exact"] = row["loss_step3_killed"] == row["loss_step3_resumed"]
    row["resumed_run_s"] = resumed["seconds"]
    row["rss_gib"] = max([*killed["rss_gib"].values(), *resumed["rss_gib"].values()])
    if torch.cuda.is_available():  # the ranks log CUDA's max allocated as memory_mb
        records = [*killed["steps"].values(), *resumed["steps"].values()]
        row["gpu_peak_gib"] = max(r.get("memory_mb", 0.0) for r in records) / 1024

    cfg = config.load(source, extra)
    model = build_model(cfg)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    row["trainable_params"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    row["frozen_params"] = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    checkpoint = out / "checkpoints" / (out / "checkpoints" / "latest").read_text().strip()
    row["checkpoint"] = checkpoint_bytes(checkpoint, trainable)
    row["checkpoint_vs_16B"] = row["checkpoint"]["total"] / (
        BYTES_PER_TRAINABLE * row["trainable_params"]
    )
    micro = base.deepspeed["train_micro_batch_size_per_gpu"]
    row["memory"] = projected_memory(model, cfg, micro)  # the model built above, spent there
    del model
    row["merge_error"] = merge_error(checkpoint)
    video = (
        next(args.work.glob("videos_*/val/*/*.mp4"), None)
        if (base.model.task != "detection")
        else None
    )
    tracking_uri = f"sqlite:///{args.work / 'mlflow.db'}"
    model_name = f"at_size_{name}_zero{zero}"
    row["registered"] = registered(model_name, tracking_uri, video, work)
    if video is not None:
        if name in SERVED and zero == args.zero[0] and args.serve:
            row["served"] = serve_once(model_name, tracking_uri, video, work / "serve.log")
    row["load_avg_5min"] = [load_before, os.getloadavg()[1]]
    if args.keep_runs is False:
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
    return row


# ----------------------------------------------------------------------------- report


def markdown(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        f"{time.strftime('%Y-%m-%d', time.gmtime())}, {platform.processor() or 'CPU'}, "
        f"{os.cpu_count()} cores, torch {torch.__version__}; {args.procs} DeepSpeed processes × "
        f"micro-batch {args.micro_batch}, {'bf16' if args.bf16 else 'fp32'}, random weights, "
        f"full-size synthetic clips. Command: `python bench/at_size.py "
        f"--configs {','.join(args.configs)} --zero {','.join(map(str, args.zero))}`",
        "",
        "| config | ZeRO | s/step (load avg) | peak RSS/rank (GiB) | step 3 resumed = killed | "
        "ckpt MB (frozen / trainable / optim / other) | ckpt ÷ 16 B/trainable | "
        "merge err fp32 / bf16 (bf16 alone) | "
        "registered MB, load s, predict s (views) | projected GPU GiB, bf16 (batch) | paper "
        "Table 10 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    mb = 1e6
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['config']} | {r['zero']} | failed: {r['error']} |" + " |" * 8)
            continue
        c, m, e = r["checkpoint"], r["memory"], r["merge_error"]
        reg = r.get("registered")
        reg_text = f"{reg['model_bytes'] / mb:.0f}, {reg['load_s']:.1f}, " + (
            f"{reg['predict_s']:.1f} ({reg['views']})" if "predict_s" in reg else "– (detection)"
        )
        if "served" in r:
            reg_text += f"; served in {r['served']['request_s']:.1f} s"
        paper = PAPER_MEMORY_GB.get(r["config"])
        lines.append(
            f"| {r['config']} | {r['zero']} | {r['s_per_step']:.0f} "
            f"({max(r['load_avg_5min']):.0f}) | {r['rss_gib']:.1f} | "
            f"{'yes' if r['resume_exact'] else 'NO'} ({r['loss_step3_resumed']:.6f}) | "
            f"{c['total'] / mb:.0f} ({c['frozen'] / mb:.0f} / {c['trainable'] / mb:.0f} / "
            f"{c['optimizer'] / mb:.0f} / {c['other'] / mb:.0f}) | {r['checkpoint_vs_16B']:.2f} | "
            f"{e['fp32']:.1e} / {e['bf16']:.1e} ({e['bf16_rounding']:.1e}) | {reg_text} | "
            f"{m['peak_gib']:.1f} ({m['micro_batch']})"
            f"{f'; measured {g:.1f}' if (g := r.get('gpu_peak_gib')) else ''} | "
            f"{f'{paper} GB (V100, AMP)' if paper else '–'} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default=",".join(CONFIGS), type=lambda s: s.split(","))
    parser.add_argument("--zero", default="1,3", type=lambda s: [int(z) for z in s.split(",")])
    parser.add_argument("--procs", type=int, default=2, help="DeepSpeed processes (GPUs)")
    parser.add_argument("--micro-batch", type=int, default=1)
    parser.add_argument("--bf16", action="store_true", help="bf16 (default fp32, as on CPU)")
    parser.add_argument("--timeout", type=float, default=7200, help="s per training launch")
    parser.add_argument("--work", type=Path, default=Path("runs/at_size"))
    parser.add_argument("--no-serve", dest="serve", action="store_false")
    parser.add_argument("--keep-runs", action="store_true", help="keep the checkpoints")
    parser.add_argument("--json", type=Path, help="write the rows to this JSON file")
    parser.add_argument("--out", type=Path, help="append the Markdown table to this file")
    args = parser.parse_args(argv)
    args.work = args.work.resolve()
    os.environ.setdefault("DS_ACCELERATOR", "cpu" if not torch.cuda.is_available() else "cuda")
    signal.signal(signal.SIGTERM, stop_groups)
    signal.signal(signal.SIGINT, stop_groups)
    rows = []
    for name in args.configs:
        for zero in args.zero:
            print(f"[at_size] {name} ZeRO {zero}: started", file=sys.stderr, flush=True)
            try:
                row = run_case(args, name, zero)
            except Exception as error:  # one case's failure is reported, the next runs
                row = {"config": name, "zero": zero, "error": f"{type(error).__name__}: {error}"}
            rows.append(row)
            print(json.dumps(row), flush=True)
            if args.json:
                args.json.write_text(json.dumps(rows, indent=2))
    table = markdown(rows, args)
    print(table)
    if args.out:
        with args.out.open("a") as handle:
            handle.write("\n" + table)
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
