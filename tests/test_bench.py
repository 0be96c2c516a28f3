"""The benchmark scripts keep working: their CPU smoke modes (small shapes) run and report.

Timings on a shared CPU are noise; these tests check that every phase and ratio is measured
and printed, so `bench/gpu.sh` on a GPU machine does not fail on a broken script.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
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


def test_stdha_bench_small_reports_both_ratios():
    out = _run(sys.executable, "bench/stdha.py", "--device", "cpu", "--small", "--quick")
    assert "STDHA/plain attention fwd+bwd:" in out and "merged ZeroI2V / plain" in out


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


def test_encodings_bench_small_times_every_setting():
    out = _run(sys.executable, "bench/encodings.py",
               *("--clips", "2", "--intervals", "250", "8", "--size", "96x64"))  # fmt: skip
    rows = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| ")][1:]
    sources = sorted({r[0].strip() for r in rows})
    assert "synthetic" in sources and len(rows) == 8 * len(sources)  # 2 intervals × 2 × 2
    for row in rows[::8]:  # each source's first row is x264's defaults, the ratios' base
        assert [v.strip() for v in row[1:4]] == ["250", "x264", "no"] and row[5].strip() == "1.00"
    assert all(float(r[4]) > 0 and float(r[6]) > 0 for r in rows)


@pytest.mark.slow
def test_gpu_sh_cpu_mode_appends_a_dated_section(tmp_path):
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
        "STDHA/plain",
        "Table 9, compiled:",
        "latency ratio merged / plain",
        "Train step breakdown",
        "k400_l14_32f.json",
    ):
        assert expected in text, expected
