"""`make demo`'s last step (scripts/demo.sh, step 6/6) names the predicted video once."""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# launch/predict.py's output for one video (`format_predictions`): its path, then the classes
FAKE_PYTHON = """python() { echo "$4"; echo "  1. moving_up 0.9"; echo "  2. moving_left 0.1"; }"""


def test_the_prediction_step_prints_the_video_path_once(tmp_path):
    script = (REPO / "scripts" / "demo.sh").read_text().splitlines()
    start = next(i for i, line in enumerate(script) if line.startswith('echo "== 6/6'))
    end = next(i for i, line in enumerate(script) if line.startswith('echo "demo ('))
    video = tmp_path / "videos" / "val" / "moving_up" / "00000.mp4"
    video.parent.mkdir(parents=True)
    video.write_bytes(b"")
    step = "\n".join(["set -euo pipefail", FAKE_PYTHON, *script[start:end]])
    done = subprocess.run(
        ["bash", "-c", step],
        env={"PATH": "/usr/bin:/bin", "VIDEOS": str(tmp_path / "videos"), "NAME": "tiny"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count(str(video)) == 1, done.stdout
