"""The benchmark scripts keep working: their CPU smoke modes (small shapes) run and report.

Timings on a shared CPU are noise; these tests check that every phase and ratio is measured
and printed, so `bench/gpu.sh` on a GPU machine does not fail on a broken script.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch
from engine_helpers import REPO, clean_env


def _run(*args: str, timeout: int = 600) -> str:
    done = subprocess.run(
        [*args],
        cwd=REPO,
        env=clean_env(PYTHONPATH=str(REPO)),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_train_step_bench_small_breaks_the_step_down():
    out = _run(
        sys.executable,
        "bench/train_step.py",
        *("--device", "cpu", "--small", "--steps", "1", "--precisions", "fp32"),
    )
    assert "SDPA: aten::_scaled_dot_product_flash_attention_for_cpu" in out
    rows = [
        line.split("|")[1:-1]
        for line in out.splitlines()
        if line.startswith("| plain") or line.startswith("| deepspeed")
    ]
    assert [r[0].strip() for r in rows] == ["plain", "deepspeed", "deepspeed-defaults"]
    for row in rows:
        data, forward, backward, optimizer, _, total = (float(v) for v in row[3:9])
        assert min(forward, backward, optimizer) > 0
        assert data + forward + backward + optimizer <= total * 1.05  # phases tile the step
    for engine in ("deepspeed", "deepspeed-defaults"):
        assert f"\n{engine} ÷ plain step, fp32: batch 2:" in out
    assert "ZeRO 1" in out and "Projected K400" in out


def test_train_step_out_of_memory_batch_gets_oom_rows_and_the_next_batch_runs(monkeypatch):
    """A batch size that runs out of CUDA memory gets OOM rows; the smaller one after it is
    still measured, and the ratios and the K400 projection come from the measured rows."""
    spec = importlib.util.spec_from_file_location("train_step", REPO / "bench/train_step.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    tried = []

    def measure_batch(model, batch, bf16, stage, steps, device):  # the engines' step times
        tried.append(batch)
        if batch == 64:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        ms = {"plain": 100.0, "deepspeed": 110.0, "deepspeed-defaults": 150.0}
        phases = dict.fromkeys(("data", "forward", "backward", "optimizer", "all_reduce"), 1.0)
        rows = [
            {"engine": name, "precision": "bf16", "batch": batch, **phases, "total": step,
             "step": step, "clips_per_s": batch / step * 1e3, "gflop_per_step": 1.0, "mfu": 0.1}
            for name, step in ms.items()
        ]  # fmt: skip
        return rows, ["aten::_scaled_dot_product_flash_attention"]

    monkeypatch.setattr(bench, "measure_batch", measure_batch)
    args = argparse.Namespace(device="cpu", model=None, small=True, memory_only=False,
                              batches="64,32", precisions="bf16", stage=1, steps=1,
                              memory_configs="")  # fmt: skip
    result = bench.run(args)
    assert tried == [64, 32]
    assert [(r["batch"], r["step"]) for r in result["rows"]][:3] == [(64, "OOM")] * 3
    text = bench.markdown(result)
    assert "| deepspeed | bf16 | 64 |" + " OOM |" * 10 in text
    assert "\ndeepspeed ÷ plain step, bf16: batch 32: 1.10\n" in text
    assert result["sdpa_kernels"] == ["aten::_scaled_dot_product_flash_attention"]
    assert result["k400_hours_40_epochs"] == round(240_436 * 40 / 320 / 3600, 2)


def test_loader_bench_small_measures_every_stage():
    out = _run(
        sys.executable,
        "bench/loader.py",
        *("--clips", "8", "--rounds", "1", "--workers", "1", "--size", "96x64", "--frames", "24"),
        *("--interval", "2"),
    )
    assert "'device' = the CPU itself" in out or "'device' = CUDA" in out
    rows = [line.split("|")[1:-1] for line in out.splitlines() if line[:4] in ("| 1.", "| 2.",
            "| 3.", "| 3r", "| 3b", "| 4.")]  # fmt: skip
    assert [r[0].split()[0] for r in rows] == ["1.", "2.", "3.", "3r.", "3b.", "4.", "4."]
    assert rows[0][3].strip() == "1.00"  # ratios are to raw decode
    assert all(float(r[1]) > 0 and float(r[2]) > 0 for r in rows)
    assert [r[4].strip() == "—" for r in rows] == [True] * 5 + [False] * 2  # workers measured


def test_feed_bench_takes_encoding_specs_and_prints_their_bytes():
    """``--encodings`` names data_prep's default or any ``kf<N>[-bf<M>]``: each is encoded as
    it says, its bytes printed, and it gets a row per recipe; a spec it cannot read is one
    sentence naming the accepted forms."""
    out = _run(sys.executable, "bench/loader.py", "--feed",
               *("--clips", "4", "--rounds", "1", "--size", "96x64", "--frames", "24"),
               *("--decoders", "decord", "--clips-per-decode", "2"),
               *("--encodings", "data_prep", "kf8-bf3"))  # fmt: skip
    assert (
        "96x64 data_prep: Encoding(crf=18, keyframe_interval=4, fast_decode=True, bframes=0)" in out
    )
    assert (
        "96x64 kf8-bf3: Encoding(crf=18, keyframe_interval=8, fast_decode=True, bframes=3)" in out
    )
    rows = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| ViT")]
    assert [(r[0].strip(), r[3].strip()) for r in rows] == [
        (recipe, encoding)
        for encoding in ("data_prep", "kf8-bf3")
        for recipe in ("ViT-B/16 8f", "ViT-L/14 32f")
    ]
    assert all(float(r[6]) > 0 for r in rows)  # clips/s per worker core
    bad = subprocess.run(
        [sys.executable, "bench/loader.py", "--feed", "--encodings", "kf8-b3"],
        cwd=REPO, env=clean_env(PYTHONPATH=str(REPO)), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert bad.returncode == 2
    assert "--encodings 'kf8-b3': one of ['data_prep', 'intra', 'x264'] or kf" in bad.stderr


def test_encodings_bench_small_times_every_setting():
    out = _run(sys.executable, "bench/encodings.py",
               *("--clips", "2", "--intervals", "250", "8", "--size", "96x64"))  # fmt: skip
    rows = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| ")][1:]
    sources = sorted({r[0].strip() for r in rows})
    assert "synthetic" in sources and len(rows) == 8 * len(sources)  # 2 intervals × 2 × 2
    for row in rows[::8]:  # each source's first row is x264's defaults, the ratios' base
        assert [v.strip() for v in row[1:4]] == ["250", "x264", "no"] and row[5].strip() == "1.00"
    assert all(float(r[4]) > 0 and float(r[6]) > 0 for r in rows)


def _processes_with(token: str) -> list[int]:
    """Pids of live processes whose environment holds GPU_BENCH_TEST_TOKEN=token."""
    pids = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if f"GPU_BENCH_TEST_TOKEN={token}".encode() in environ.read_bytes().split(b"\0"):
                pids.append(int(environ.parent.name))
        except OSError:  # gone meanwhile, or another user's
            continue
    return pids


def _left_after(token: str, grace_s: float = 30.0) -> list[int]:
    """`_processes_with(token)` once they are gone, or after `grace_s`: a process that got its
    SIGTERM with the rest of the section's group may still be exiting when gpu.sh has ended
    (seen under load); one still there after the grace is one left behind."""
    deadline = time.monotonic() + grace_s
    while (left := _processes_with(token)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def test_gpu_sh_records_each_failure_and_keeps_what_ran(tmp_path):
    """One `bench/gpu.sh --cpu` run over five sections: stdha runs (its CPU smoke mode: both
    ratios), eager fails (forced), compiled times out (1 s), memory-l14 still runs after two
    failures, and SIGTERM arrives while step-fp32 runs. The results file keeps every finished
    section's output, one line per failure, and a summary; the exit status says the run was
    terminated; no process is left."""
    results, stderr, token = tmp_path / "RESULTS.md", tmp_path / "stderr", uuid.uuid4().hex
    env = clean_env(
        OUT=str(results),
        PYTHON=sys.executable,
        GPU_BENCH_SECTIONS="stdha,eager,compiled,memory-l14,step-fp32",
        GPU_BENCH_FAIL="eager",
        GPU_BENCH_LIMITS="compiled=1",
        GPU_BENCH_TEST_TOKEN=token,
    )
    with stderr.open("w") as err:
        run = subprocess.Popen(
            ["bash", "bench/gpu.sh", "--cpu"], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
            stderr=err,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 600
            while "step-fp32: started" not in stderr.read_text():
                assert run.poll() is None, stderr.read_text()[-3000:]
                assert time.monotonic() < deadline
                time.sleep(0.2)
            run.send_signal(signal.SIGTERM)
            assert run.wait(timeout=60) == 128 + signal.SIGTERM
        finally:
            if run.poll() is None:
                run.kill()
                run.wait()
    assert _left_after(token) == []  # the section's python went with it
    text = results.read_text()
    expected = [
        "bench/gpu.sh --cpu (budget 1800 s)",
        "torch 2.",  # the versions line
        "### stdha (",
        "STDHA/plain attention fwd+bwd:",
        "merged ZeroI2V / plain",
        "section eager: exit status 1: RuntimeError: forced failure of section eager",
        "section compiled: timed out after 1 s",
        "### memory-l14 (",
        "| k400_l14_32f.json | 8 | 1 | True (1) | not measured (CPU) |",
        "section step-fp32: interrupted by SIGTERM after ",
        "gpu.sh: 3 of 6 sections done in ",
    ]
    positions = [text.find(line) for line in expected]
    assert -1 not in positions and positions == sorted(positions), (positions, text)
    summary = text.strip().splitlines()[-1]
    assert re.fullmatch(
        r"gpu.sh: 3 of 6 sections done in \d+ s; not done: eager \(exit status 1: "
        r"RuntimeError: forced failure of section eager \(GPU_BENCH_FAIL\)\); "
        r"compiled \(timed out after 1 s\); step-fp32 \(interrupted by SIGTERM after \d+ s\)",
        summary,
    ), summary


def test_gpu_sh_skips_sections_the_budget_has_no_time_for(tmp_path):
    results = tmp_path / "RESULTS.md"
    env = clean_env(OUT=str(results), GPU_BENCH_BUDGET="10", GPU_BENCH_SECTIONS="stdha")
    done = subprocess.run(
        ["bash", "bench/gpu.sh", "--cpu"], cwd=REPO, env=env, capture_output=True, timeout=60
    )
    assert done.returncode == 1
    lines = [line for line in results.read_text().splitlines() if line]
    skipped = r"skipped: only \d+ s of the 10 s budget left"
    assert len(lines) == 4 and lines[0].endswith("bench/gpu.sh --cpu (budget 10 s)")
    assert re.fullmatch(f"section versions: {skipped}", lines[1])
    assert re.fullmatch(f"section stdha: {skipped}", lines[2])
    assert re.fullmatch(
        rf"gpu.sh: 0 of 2 sections done in \d+ s; not done: versions \({skipped}\); "
        rf"stdha \({skipped}\)",
        lines[3],
    )


@pytest.mark.slow
def test_gpu_sh_cpu_mode_appends_a_dated_section(tmp_path):
    """Every section of `bench/gpu.sh` with the CPU's small shapes: each one completes."""
    results = tmp_path / "RESULTS.md"
    subprocess.run(
        ["bash", "bench/gpu.sh", "--cpu"],
        cwd=REPO,
        env=clean_env(OUT=str(results), PYTHON=sys.executable),
        check=True,
        timeout=1800,
    )
    text = results.read_text()
    for expected in (
        "bench/gpu.sh --cpu",
        "torch ",
        "### stdha (",
        "STDHA/plain",
        "### eager (",
        "### compiled (",
        "latency ratio merged / plain",
        "throughput ratio merged / plain at batch 1",
        "CUDA graph skips",
        "### step-bf16 (",
        "bf16 | 2 |",
        "### memory-l14 (",
        "| k400_l14_32f.json | 8 | 1 |",
        "### memory-swinb (",
        "| ssv2_swinb_32f.json | 8 | 1 |",
        "### loader (",
        "### decode-gpu (",
        "cores per H100",
        "### compiled-b64 (",
        "throughput ratio merged / plain at batch 2",
        "### step-fp32 (",
        "deepspeed ÷ plain step, fp32: batch 2:",
        "Projected K400",
        "gpu.sh: 11 of 11 sections done in ",  # at-size runs on CUDA only
    ):
        assert expected in text, expected
    assert "not done" not in text


def test_at_size_interrupted_stops_the_training_run_it_launched(tmp_path, monkeypatch):
    """SIGTERM / SIGINT of `bench/at_size.py` (gpu.sh's time limit, Ctrl-C) kills the
    `deepspeed` launch it started, which lives in a process group of its own, and its children."""
    import psutil

    fake = tmp_path / "deepspeed"  # a launcher whose "rank" is a long sleep
    fake.write_text('#!/bin/sh\nsleep 300 &\necho $! > "$RANK_PID"\nwait\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.setenv("RANK_PID", str(tmp_path / "rank.pid"))
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    at_size = importlib.import_module("at_size")
    at_size_measures = importlib.import_module("at_size_measures")

    run = at_size.launch(tmp_path / "config.json", [], 2, tmp_path / "run.log")
    deadline = time.monotonic() + 30
    while not (tmp_path / "rank.pid").is_file() or not (tmp_path / "rank.pid").read_text():
        assert time.monotonic() < deadline, "the fake launcher never started its rank"
        time.sleep(0.05)
    rank = int((tmp_path / "rank.pid").read_text())
    with pytest.raises(SystemExit):
        at_size_measures.stop_groups(signal.SIGTERM, None)
    assert run.wait(timeout=10) == -signal.SIGKILL
    deadline = time.monotonic() + 10
    while psutil.pid_exists(rank) and psutil.Process(rank).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the launcher's rank outlived the interrupted bench"
        time.sleep(0.05)
