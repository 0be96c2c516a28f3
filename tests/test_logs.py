"""Logs a person can read: no bar redraws in a log file, quiet ranks > 0, known noise filtered."""

from __future__ import annotations

import io
import logging
import subprocess
import sys
import textwrap

from engine_helpers import REPO, clean_env
from tqdm import tqdm

from zeroi2v import logs


def _lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "test.progress"]


def test_progress_off_a_terminal_is_one_line_per_tenth(caplog, monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a log file: not a TTY
    caplog.set_level(logging.INFO, logger="test.progress")
    logger = logging.getLogger("test.progress")
    assert list(logs.progress(range(50), desc="work", logger=logger)) == list(range(50))
    assert _lines(caplog) == [f"work: {n}/50 ({2 * n} %)" for n in range(5, 51, 5)]
    assert sys.stderr.getvalue() == ""  # no bar, no carriage returns

    caplog.clear()  # resumed at step 23 of 40, with a postfix, driven by update()
    bar = logs.progress(total=40, initial=23, desc="train", logger=logger)
    bar.set_postfix(loss="0.5000")
    for _ in range(17):
        bar.update()
    bar.close()
    assert _lines(caplog) == [
        f"train: {n}/40 ({n * 100 // 40} %), loss=0.5000" for n in (24, 28, 32, 36, 40)
    ]

    caplog.clear()  # unknown length (the eval loop): silent
    assert sum(1 for _ in logs.progress(iter(range(7)), desc="eval", logger=logger)) == 7
    assert _lines(caplog) == []


def test_progress_on_a_terminal_is_a_tqdm_bar(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stderr", Terminal())
    bar = logs.progress(range(3), desc="work")
    assert isinstance(bar, tqdm)
    assert list(bar) == [0, 1, 2]
    assert "\r" in sys.stderr.getvalue()
    assert isinstance(logs.progress(range(3), disable=True), tqdm)  # disabled: silent bar


_PROBE = textwrap.dedent(
    """
    import logging, warnings
    from zeroi2v import logs
    logs.setup()
    logging.getLogger("zeroi2v.probe").info("info line")
    logging.getLogger("zeroi2v.probe").warning("warning line")
    logging.info("third-party info on the root logger")  # as open_clip builds a model
    logging.getLogger("torch.utils.cpp_extension").warning(
        "No CUDA runtime is found, using CUDA_HOME='%s'", "/usr/local")
    logging.getLogger("torch.utils.cpp_extension").warning("other cpp_extension warning")
    warnings.warn("`torch.distributed.all_gather_into_tensor` is deprecated. Please use "
                  "`torch.distributed.all_gather_single` instead.", FutureWarning)
    warnings.warn("an unknown future warning", FutureWarning)
    """
)


def _probe(**env: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE],
        env=clean_env(**env),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return proc.stderr


def test_entry_point_logging_rank0_rank1_and_filters():
    rank0 = _probe()
    assert "INFO zeroi2v.probe: info line" in rank0
    assert "WARNING zeroi2v.probe: warning line" in rank0
    assert "rank0" not in rank0  # one process: no rank in the lines
    assert "third-party info" not in rank0
    assert "other cpp_extension warning" in rank0 and "an unknown future warning" in rank0
    assert "No CUDA runtime" not in rank0 and "all_gather_into_tensor" not in rank0

    rank1 = _probe(RANK="1", WORLD_SIZE="2")
    assert "info line" not in rank1
    assert " rank1 WARNING zeroi2v.probe: warning line" in rank1

    asked = _probe(RANK="1", WORLD_SIZE="2", ZEROI2V_LOG_ALL_RANKS="1")
    assert " rank1 INFO zeroi2v.probe: info line" in asked


def test_launch_script_run_from_elsewhere_writes_lines_not_a_bar(tmp_path):
    """`python launch/pretrain_tiny.py` from another folder (no sys.path preamble), its stderr
    a pipe as in the demo's log: ten progress lines, no carriage return."""
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "launch" / "pretrain_tiny.py"),
            "--config",
            str(REPO / "configs" / "tiny_cpu.json"),
            "--out",
            str(tmp_path / "tiny.pt"),
            "--steps",
            "20",
        ],
        env=clean_env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr
    progress = [line for line in proc.stderr.splitlines() if "tiny image pre-training" in line]
    assert [line.split(": ", 2)[-1] for line in progress] == [
        f"{n}/20 ({n * 5} %)" for n in range(2, 21, 2)
    ]
    assert (tmp_path / "tiny.pt").is_file()
