"""Table 9 in one run: merged ZeroI2V costs exactly what the plain image model costs."""

from __future__ import annotations

import math

from launch.profile_model import main
from zeroi2v.config import load
from zeroi2v.use.efficiency import format_table, interleaved_median


def test_profile_latency_table(capsys):
    result = main(
        [
            "--config",
            "configs/tiny_cpu.json",
            "--merged",
            "--latency",
            "--reps",
            "3",
            "--max-batch",
            "2",
            "--device",
            "cpu",
            "data.num_clips=2",
            "model.pretrained=null",  # random weights: costs only
        ]
    )
    rows = {row["name"]: row for row in result["latency"]["rows"]}
    assert list(rows) == ["plain", "unmerged", "merged"]
    plain, unmerged, merged = rows["plain"], rows["unmerged"], rows["merged"]
    # zero extra cost after merging: exactly equal, not approximately
    assert merged["params_m"] == plain["params_m"]
    assert merged["gflops"] == plain["gflops"]
    assert unmerged["params_m"] > plain["params_m"] and unmerged["gflops"] > plain["gflops"]
    # GFLOPs cover the 2 views of one video, as the profile JSON line (merged) counts them
    assert result["views"] == 2 and abs(merged["gflops"] - result["gflops_total"]) <= 5e-4
    assert all(row["batch"] == 2 and row["latency_ms"] > 0 for row in rows.values())
    ratio = result["latency"]["merged_over_plain"]
    assert math.isclose(ratio, merged["latency_ms"] / plain["latency_ms"])
    out = capsys.readouterr().out
    assert "latency ratio merged / plain" in out and "ZeroI2V merged" in out


def test_interleaved_median_rotates_and_takes_medians():
    calls: list[str] = []

    def recorder(name):
        return lambda clips: calls.append(name)

    runs = {name: recorder(name) for name in ("a", "b", "c")}
    medians = interleaved_median(runs, clips=__import__("torch").zeros(1), reps=3, warmup=0)
    assert calls == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]  # each goes first once
    assert set(medians) == {"a", "b", "c"}


def test_table_lists_views_and_ratio():
    from zeroi2v.use.efficiency import EfficiencyRow

    cfg = load("configs/k400_b16_8f.json")
    rows = [
        EfficiencyRow("plain", 86.0, 422.0, 28.72, 40.0, 16),
        EfficiencyRow("unmerged", 100.0, 450.0, 35.0, 30.0, 16),
        EfficiencyRow("merged", 86.0, 422.0, 28.89, 39.6, 16),
    ]
    text = format_table(rows, cfg, "V100")
    assert "8×3" in text and "1.006" in text
    assert "throughput ratio merged / plain at batch 16: 0.990" in text
    # a compiled batch that ran out of memory (throughput NaN) reads OOM, the latency stays
    rows = [EfficiencyRow(r.name, r.params_m, r.gflops, r.latency_ms, math.nan, 64) for r in rows]
    lines = format_table(rows, cfg, "H100").splitlines()
    assert [line.split()[-2:] for line in lines[3:6]] == [["OOM", "64"]] * 3
    assert "28.89" in lines[5] and "nan" not in "\n".join(lines[:6])
