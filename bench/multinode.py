"""2-node vs 1-node training step time for the tiny config on CPU, measured side by side.

    python bench/multinode.py [--steps 20]

Both runs train the tiny config (tiny_vit, 8 frames of 32², ZeRO-1, fp32) with the same global
batch of 16 on synthetic motion clips: one process with 2 accumulation steps of 8
(`python launch/train.py`), and two "nodes" of one process each with 8 per process
(`deepspeed --no_ssh --node_rank 0|1` on 127.0.0.1, gloo). Step time = 16 / the trainer's
clips/s, median over the logging intervals after the first (start-up excluded). On one machine
the two "nodes" share its cores (half the threads each), so the ratio shows the cost of the
split and gloo's all-reduce over loopback, not a real network.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from tiny_shards import make_shards  # bench/ is sys.path[0] when a bench runs

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "launch" / "train.py"
GLOBAL_BATCH = 16


def write_config(shards: Path, out: Path, steps: int, accumulation: int) -> Path:
    raw = json.loads((REPO / "configs" / "tiny_cpu.json").read_text())
    raw["model"]["pretrained"] = None
    raw["data"].update(
        train_shards=str(shards / "train-*.tar"), val_shards=str(shards / "val-*.tar")
    )
    raw["train"].update(
        output_dir=str(out),
        epochs=1,
        steps_per_epoch=steps,
        log_every_steps=5,
        checkpoint_every_steps=10**6,
    )
    raw["deepspeed"].update(gradient_accumulation_steps=accumulation)
    raw["tracking"]["enabled"] = False
    path = out.parent / f"{out.name}.json"
    path.write_text(json.dumps(raw))
    return path


def step_time(out: Path) -> float:
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    rates = [r["clips_per_s"] for r in records if "clips_per_s" in r][1:]
    return GLOBAL_BATCH / statistics.median(rates)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_one_node(config: Path, env: dict[str, str]) -> None:
    subprocess.run([sys.executable, str(TRAIN), "--config", str(config)], env=env, check=True)


def run_two_nodes(config: Path, env: dict[str, str]) -> None:
    hosts = config.parent / "hostfile"
    hosts.write_text("node0 slots=1\nnode1 slots=1\n")
    port, deepspeed = free_port(), str(Path(sys.executable).parent / "deepspeed")
    procs = [
        subprocess.Popen(
            [deepspeed, "--no_ssh", "--hostfile", str(hosts), "--num_nodes", "2"]
            + ["--node_rank", str(rank), "--master_addr", "127.0.0.1", "--master_port", str(port)]
            + [str(TRAIN), "--config", str(config)],
            env=env,
        )
        for rank in (0, 1)
    ]
    if any(proc.wait() for proc in procs):
        raise SystemExit("the 2-node run failed")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args(argv)
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(REPO)}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    with tempfile.TemporaryDirectory() as tmp:
        shards = make_shards(Path(tmp), val_per_class=4)
        one = write_config(shards, Path(tmp) / "one_node", args.steps, accumulation=2)
        two = write_config(shards, Path(tmp) / "two_nodes", args.steps, accumulation=1)
        cores = os.cpu_count() or 1
        run_one_node(one, {**env, "OMP_NUM_THREADS": str(cores)})
        run_two_nodes(two, {**env, "OMP_NUM_THREADS": str(max(1, cores // 2))})
        t1, t2 = step_time(Path(tmp) / "one_node"), step_time(Path(tmp) / "two_nodes")
    print(f"1 node  x 1 process, batch 16 = 8 x 2 accumulation: {t1 * 1000:7.1f} ms/step")
    print(f"2 nodes x 1 process, batch 16 = 8 x 2 processes   : {t2 * 1000:7.1f} ms/step")
    print(f"2-node / 1-node step time: {t2 / t1:.2f} ({os.cpu_count()} cores shared by the nodes)")


if __name__ == "__main__":
    main()
