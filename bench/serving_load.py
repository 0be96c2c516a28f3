"""`mlflow models serve` under load, a quarter of the requests hostile: answers, latency, memory.

    python bench/serving_load.py [--requests 200] [--clients 8] [--rounds 2] [--json out.json]

Registers a tiny random model (configs/tiny_cpu.json, 4 classes, the synthetic motion videos)
in a temporary SQLite MLflow store, serves it with ``mlflow models serve --env-manager local
-h 127.0.0.1 -w 1`` (files readable under the val videos, ``max_request_bytes`` 2 MB) and sends
``--requests`` requests per round from ``--clients`` threads. Three in four are good (one or
two videos, base64 or a path); the rest cycle through the hostile kinds of `hostile_requests`.
A good request must come back 200 with the labels and scores the same model gives in this
process; a hostile one must be refused (HTTP 400 naming the problem) or answered with an
``error`` on every bad row (and the right prediction on a good row beside it). Latency is per
request, client side; memory is the RSS of the server's processes (psutil) after start-up and
a warm-up, then after each round: growth between rounds means a leak. Prints a Markdown table;
``--json`` also writes every figure. tests/test_serving_load.py (slow) runs `run_bench`.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MODEL_NAME = "tiny_serving_load"
MAX_REQUEST_BYTES = 2_000_000
START_TIMEOUT_S = 180
REQUEST_TIMEOUT_S = 120


def hostile_videos(good: bytes) -> dict[str, bytes]:
    """Bytes that are not a decodable video, each of a kind a client has sent."""
    return {
        "text": b"this is a text file, not a video\n" * 8,
        "truncated mp4": good[: len(good) // 3],
        "random bytes": np.random.default_rng(0).bytes(4096),
        "png signature": b"\x89PNG\r\n\x1a\n" + bytes(64),
    }


def hostile_requests(good: bytes, outside: Path) -> list[tuple[str, dict, str]]:
    """(kind, JSON payload, what must come back): "row errors" (200, every row an error
    naming it), "mixed" (row 0 the good video's prediction, row 1 an error) or "400: TEXT"
    (refused, the reply saying TEXT)."""
    b64 = _b64(good)
    bad = [
        (f"undecodable: {name}", {"dataframe_records": [{"video": _b64(data)}]}, "row errors")
        for name, data in hostile_videos(good).items()
    ]
    over = f"over the limit of {MAX_REQUEST_BYTES} bytes"
    return [
        *bad,
        ("mixed good + text", {"inputs": {"video": [b64, _b64(b"not a video")]}}, "mixed"),
        ("invalid base64", {"dataframe_records": [{"video": "not base64 at all!"}]}, "row errors"),
        ("path outside root", {"dataframe_records": [{"path": str(outside)}]}, "row errors"),
        ("over-long path", {"dataframe_records": [{"path": "a/" * 40_000}]}, "row errors"),
        ("wrong column", {"dataframe_records": [{"vid": b64}]}, "400: got columns ['vid']"),
        (
            "body over limit",
            {"inputs": {"video": [_b64(bytes(MAX_REQUEST_BYTES))]}},
            f"400: {over}",
        ),
    ]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# ----------------------------------------------------------------------------- the model


def register_tiny(work: Path) -> tuple[str, list[Path], Path]:
    """A random tiny model registered as ``models:/MODEL_NAME@champion`` in ``work``;
    returns (tracking URI, good videos, a video outside the served root)."""
    import mlflow
    import torch

    import zeroi2v
    from data_prep.synthetic import CLASSES, make_synthetic
    from zeroi2v.config import load
    from zeroi2v.engine.tracking.model_format import log_pyfunc_model

    videos = make_synthetic(work / "videos", per_class=1, val_per_class=4)
    uri = f"sqlite:///{work / 'mlflow.db'}"
    cfg = load("configs/tiny_cpu.json", {"model.pretrained": None, "data.num_workers": 0})
    torch.manual_seed(0)
    model = zeroi2v.build_model(cfg).eval()
    with torch.no_grad():  # adapters and head perturbed, so predictions differ per video
        for name, param in model.named_parameters():
            if "adaptation" in name or name.startswith("head"):
                param.normal_(0, 0.5)
    mlflow.set_tracking_uri(uri)
    # artifacts under `work` too (a SQLite store's default is ./mlruns in the working directory)
    mlflow.create_experiment("serving_load", artifact_location=str(work / "mlartifacts"))
    mlflow.set_experiment("serving_load")
    with mlflow.start_run():
        info = log_pyfunc_model(
            zeroi2v.merge(model), cfg, list(CLASSES), registered_model_name=MODEL_NAME
        )
    mlflow.MlflowClient().set_registered_model_alias(
        MODEL_NAME, "champion", info.registered_model_version
    )
    good = sorted((videos / "val").glob("*/*.mp4"))
    outside = sorted((videos / "train").glob("*/*.mp4"))[0]
    return uri, good, outside


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def served(
    model_uri: str, tracking_uri: str, model_config: dict[str, Any], log: Path
) -> Iterator[tuple[int, int]]:
    """(port, pid) of `mlflow models serve` on 127.0.0.1 with `model_config` (the pyfunc's
    ``SERVING_MODEL_CONFIG``), its output in `log`; stopped (its process group) on exit."""
    port = _free_port()
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking_uri,
        "SERVING_MODEL_CONFIG": json.dumps(model_config),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri]
    command += ["--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"]
    with log.open("w") as out:
        server = subprocess.Popen(
            command,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=log.parent,
            start_new_session=True,  # its own process group: uvicorn is a grandchild
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"mlflow models serve exited: {log.read_text()[-2000:]}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"server not up after {START_TIMEOUT_S} s") from None
                time.sleep(0.5)
        yield port, server.pid
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=20)


def rss_mib(pid: int) -> float:
    """Resident memory of a process and all its descendants (the uvicorn worker), MiB."""
    import psutil

    root = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]) / 2**20


# ----------------------------------------------------------------------------- the load


def post(port: int, payload: dict) -> tuple[int, Any, float]:
    """(HTTP status, parsed reply or its text, seconds)."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations",
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
    )
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as reply:
            status, body = reply.status, reply.read()
    except urllib.error.HTTPError as error:
        status, body = error.code, error.read()
    elapsed = time.perf_counter() - start
    try:
        return status, json.loads(body), elapsed
    except ValueError:
        return status, body.decode(errors="replace"), elapsed


def verdict(expect: str, status: int, reply: Any, truth: list[dict]) -> str | None:
    """None when the reply is what `expect` says it must be, else what went wrong."""
    if expect.startswith("400: "):
        text = " ".join(map(str, reply.values())) if isinstance(reply, dict) else str(reply)
        if status == 400 and expect.removeprefix("400: ") in text:
            return None
        return f"expected {expect}, got {status}: {text[-300:]}"
    if status != 200 or not isinstance(reply, dict):
        return f"expected 200, got {status}: {str(reply)[:300]}"
    rows = reply.get("predictions", [])
    if len(rows) != len(truth) or [r.get("row") for r in rows] != list(range(len(truth))):
        return f"{len(truth)} rows sent, got {len(rows)} rows: {str(rows)[:300]}"
    for row, want in zip(rows, truth, strict=True):
        if want is None:  # this row must be an error naming it
            if not str(row.get("error") or "").startswith(f"row {row['row']}: "):
                return f"row {row['row']} should be an error, got {row}"
        elif row.get("error") is not None or row["label"] != want["label"]:
            return f"row {row['row']}: expected {want['label']}, got {row}"
        elif abs(row["score"] - want["score"]) > 1e-5:
            return f"row {row['row']}: score {row['score']} != {want['score']}"
    return None


def schedule(good: list[Path], outside: Path, requests: int, local: Any) -> list[tuple]:
    """``requests`` (kind, payload, expect, truth): 3 good for each hostile one, fixed order."""
    truth = {p: local.predict([p.read_bytes()]).iloc[0].to_dict() for p in good}
    hostile = hostile_requests(good[0].read_bytes(), outside)
    plan = []
    for i in range(requests):
        if i % 4 == 3:
            kind, payload, expect = hostile[(i // 4) % len(hostile)]
            rows = {"row errors": [None], "mixed": [truth[good[0]], None]}
            plan.append((kind, payload, expect, rows.get(expect, [])))
        elif i % 8 == 5:  # a file under the served root, by path
            video = good[i % len(good)]
            payload = {"dataframe_records": [{"path": str(video)}]}
            plan.append(("good", payload, "good", [truth[video]]))
        else:
            videos = [good[i % len(good)], good[(i + 1) % len(good)]][: 1 + i % 2]
            payload = {"inputs": {"video": [_b64(v.read_bytes()) for v in videos]}}
            plan.append(("good", payload, "good", [truth[v] for v in videos]))
    return plan


def run_round(port: int, plan: list[tuple], clients: int) -> list[dict]:
    def one(item: tuple) -> dict:
        kind, payload, expect, truth = item
        status, reply, seconds = post(port, payload)
        return {
            "kind": kind,
            "hostile": kind != "good",
            "status": status,
            "seconds": seconds,
            "wrong": verdict(expect, status, reply, truth),
        }

    with ThreadPoolExecutor(clients) as pool:
        return list(pool.map(one, plan))


def run_bench(requests: int = 200, clients: int = 8, rounds: int = 2) -> dict[str, Any]:
    """Register, serve, load; every figure of the run (see the module docstring)."""
    import mlflow

    with tempfile.TemporaryDirectory(prefix="serving_load_") as tmp:
        work = Path(tmp)
        uri, good, outside = register_tiny(work)
        local = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@champion")
        plan = schedule(good, outside, requests, local)
        config = {"path_root": str(good[0].parents[1]), "max_request_bytes": MAX_REQUEST_BYTES}
        model = f"models:/{MODEL_NAME}@champion"
        with served(model, uri, config, work / "serve.log") as (port, pid):
            run_round(port, plan[: 4 * clients], clients)  # warm-up: threads, allocator pools
            memory = [rss_mib(pid)]
            results = []
            for _ in range(rounds):
                results += run_round(port, plan, clients)
                memory.append(rss_mib(pid))
            log_tail = (work / "serve.log").read_text()[-3000:]
    return {"results": results, "rss_mib": memory, "clients": clients, "log_tail": log_tail}


def summary(run: dict[str, Any]) -> str:
    """The Markdown table of bench/RESULTS.md."""
    lines = [
        "| requests | answered as required | p50 ms | p99 ms |",
        "|---|---|---|---|",
    ]
    results = run["results"]
    for label, chosen in (
        ("good", [r for r in results if not r["hostile"]]),
        ("hostile", [r for r in results if r["hostile"]]),
        ("all", results),
    ):
        ms = np.array([r["seconds"] for r in chosen]) * 1000
        ok = sum(r["wrong"] is None for r in chosen)
        lines.append(
            f"| {label} | {ok} / {len(chosen)} | {np.percentile(ms, 50):.0f} | "
            f"{np.percentile(ms, 99):.0f} |"
        )
    rss = " → ".join(f"{m:.0f}" for m in run["rss_mib"])
    lines.append(f"\nServer RSS (MiB) after warm-up, then after each round: {rss}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=200, help="requests per round")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", default=None, help="also write every figure here")
    args = parser.parse_args(argv)
    run = run_bench(args.requests, args.clients, args.rounds)
    print(summary(run))
    wrong = [r for r in run["results"] if r["wrong"]]
    for r in wrong[:10]:
        print(f"WRONG {r['kind']}: {r['wrong']}", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(run, indent=1))
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
