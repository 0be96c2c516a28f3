"""DeepSpeed's CPU all-reduce buffers in /dev/shm do not outlive the ranks, even SIGKILLed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from engine_helpers import clean_env, free_port

SHM = Path("/dev/shm")

RANK = """
import sys, time
import torch
from deepspeed import comm
from zeroi2v.engine import parallel

info = parallel.init_distributed(timeout_s=120)
total = torch.full((4,), float(info.rank + 1))
comm.inference_all_reduce(total)  # DeepSpeed's shm path, through the mappings kept
print(f"rank {info.rank} sum {total[0].item():.0f}", flush=True)
time.sleep(120)  # until the test kills the job
"""


@pytest.mark.skipif(not SHM.is_dir(), reason="POSIX shared memory is not mounted at /dev/shm")
def test_a_killed_two_rank_job_leaves_no_allreduce_buffer_in_dev_shm(tmp_path):
    script = tmp_path / "rank.py"
    script.write_text(RANK)
    port = free_port()
    launcher = Path(sys.executable).parent / "deepspeed"
    job = subprocess.Popen(
        [str(launcher), "--num_gpus", "2", "--master_addr", "127.0.0.1"]
        + ["--master_port", str(port), str(script)],
        cwd=tmp_path,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    said = []
    try:
        deadline = time.monotonic() + 240
        while "".join(said).count("sum 3") < 2:  # the ranks' lines may share one line
            assert time.monotonic() < deadline and job.poll() is None, "".join(said)[-3000:]
            said.append(job.stdout.readline())
        # both ranks are alive and all-reduced through the buffers; their names are gone
        assert sorted(SHM.glob(f"deepspeed_allreduce_buffer_*_{port}_*")) == []
    finally:
        os.killpg(job.pid, signal.SIGKILL)
        job.wait(timeout=30)
    assert sorted(SHM.glob(f"deepspeed_allreduce_buffer_*_{port}_*")) == []
