"""ZeRO-3 evaluation in lockstep (`metrics.in_lockstep`), on two real gloo ranks: uneven shares
end together, and a rank with no evaluation sample stops in one sentence without hanging the
other rank."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from engine_helpers import become_rank, free_port

from zeroi2v.engine.evaluation.metrics import in_lockstep
from zeroi2v.engine.process_exit import exit_without_teardown

CPU = torch.device("cpu")


def _rank(rank: int, port: int, shares: list[list[str]], out: Path) -> None:
    become_rank(rank, 2, port)
    dist.init_process_group("gloo", timeout=timedelta(seconds=20))
    seen: list[str | None] = []
    try:
        for batch in in_lockstep(shares[rank], CPU):
            seen.append(batch)
        outcome = {"seen": seen}
    except RuntimeError as error:  # the rank without a sample, or its peer once it left
        outcome = {"seen": seen, "error": str(error)}
    (out / f"rank{rank}.json").write_text(json.dumps(outcome))
    exit_without_teardown(0)  # no barrier: in the second case one rank has left the group


def _run(tmp_path: Path, shares: list[list[str]]) -> list[dict]:
    mp.spawn(_rank, args=(free_port(), shares, tmp_path), nprocs=2)
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]


def test_uneven_shares_end_together(tmp_path: Path) -> None:
    ranks = _run(tmp_path, [["a", "b", "c"], ["d"]])
    assert ranks == [{"seen": ["a", "b", "c"]}, {"seen": ["d", None, None]}]


def test_a_rank_without_a_sample_stops_in_one_sentence_and_its_peer_is_not_left_hanging(
    tmp_path: Path,
) -> None:
    ranks = _run(tmp_path, [["a"], []])
    assert ranks[1] == {
        "seen": [],
        "error": "rank 1 has no evaluation sample to run ZeRO-3's collective forwards with; "
        "give data.val_shards at least one sample per process",
    }
    # rank 0 ran its batch; its next collective failed at once, not after the 20 s timeout
    assert ranks[0]["seen"] == ["a"]
    assert re.search("Connection (closed|reset) by peer", ranks[0]["error"]), ranks[0]["error"]
