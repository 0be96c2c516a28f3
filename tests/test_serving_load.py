"""`mlflow models serve` holds under load: 8 clients, 200 requests a round, a quarter hostile.

Runs `bench/serving_load.py` (the bench behind bench/RESULTS.md) in-process: every good
request gets the labels and scores the model gives locally, every hostile one is refused with
its reason or answered with an error on each bad row, and the server's memory does not grow
from one round to the next.
"""

from __future__ import annotations

import pytest

from bench.serving_load import run_bench, summary

GROWTH_MIB = 25  # a leak of one decoded clip per request would be ~2 MiB × 200


@pytest.mark.slow
def test_served_model_answers_every_request_under_load():
    run = run_bench(requests=200, clients=8, rounds=2)
    print(summary(run))
    results = run["results"]
    assert len(results) == 400 and sum(r["hostile"] for r in results) == 100
    wrong = [(r["kind"], r["wrong"]) for r in results if r["wrong"]]
    assert wrong == [], run["log_tail"]
    _, first, second = run["rss_mib"]
    assert second - first < GROWTH_MIB, run["rss_mib"]
