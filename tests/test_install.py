"""What `pip install zeroi2v` gives: the library alone, light.

The core (torch, torchvision, open_clip, timm, pydantic, numpy, tqdm) builds and merges a model;
DeepSpeed, Ray, MLflow and the video decoders come with extras (`[train]`, `[tune]`, `[serve]`,
`[data]`). The wheel holds `zeroi2v` only: `launch/` and `data_prep/` are applications run from
a checkout, and a top-level `launch` package would collide with other projects.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXTRAS_ONLY = ("deepspeed", "ray", "mlflow", "decord", "webdataset", "torchcodec", "av")
APPS = ("launch", "data_prep")

# build_model → forward → merge → forward on the tiny backbone, then what got imported and what
# is installed, as one JSON line. The config is inline: configs/ is not part of the wheel.
CORE_SCRIPT = f"""
import importlib.util, json, sys
import torch
import zeroi2v
from zeroi2v.config import from_dict

cfg = from_dict({{
    "model": {{"backbone": "tiny_vit", "pretrained": None, "num_frames": 8, "image_size": 32,
               "num_classes": 4, "head_offsets": [[1, 1], [-1, 1], [0, 2]]}},
    "adapt": {{"strategy": "zeroi2v", "num_adapters": 4}},
}})
torch.manual_seed(0)
model = zeroi2v.build_model(cfg).eval()
for name, param in model.named_parameters():  # adapters start at zero: make the merge count
    if "adapter" in name:
        torch.nn.init.normal_(param, std=0.02)
clip = torch.randn(2, 3, 8, 32, 32)  # (B, C, T, H, W)
with torch.no_grad():
    before = model(clip)
    after = zeroi2v.merge(model)(clip)
names = {EXTRAS_ONLY + APPS!r}
print(json.dumps({{
    "shape": list(after.shape),
    "merge_error": (after - before).abs().max().item(),
    "imported": sorted(n for n in names if n in sys.modules),
    "installed": sorted(n for n in names if importlib.util.find_spec(n) is not None),
    "zeroi2v": zeroi2v.__file__,
}}))
"""


def _run_core(python: str, cwd: Path, env: dict[str, str], timeout: int) -> dict:
    done = subprocess.run(
        [python, "-c", CORE_SCRIPT], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["shape"] == [2, 4]
    assert report["merge_error"] < 1e-4, report
    return report


def test_the_core_imports_no_extra(tmp_path):
    """A fresh interpreter (this process has imported everything already), run outside the
    repository with the checkout on PYTHONPATH."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    report = _run_core(sys.executable, tmp_path, env, timeout=300)
    assert report["imported"] == [], f"the core imported {report['imported']}"
    assert Path(report["zeroi2v"]).is_relative_to(REPO)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel of this checkout, built from a copy of what a wheel needs (nothing in the
    repository is written: no build/ or egg-info). No build isolation: setuptools is here."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "zeroi2v", src / "zeroi2v", ignore=shutil.ignore_patterns("__pycache__"))
    dist = tmp_path_factory.mktemp("dist")
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    done = subprocess.run(
        [*command, str(src), "-w", str(dist)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (built,) = dist.glob("zeroi2v-*.whl")
    return built


def test_the_wheel_holds_the_library_and_requires_the_core_only(wheel):
    with zipfile.ZipFile(wheel) as archive:
        tops = {name.split("/")[0] for name in archive.namelist()}
        (metadata,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        requires = [
            line.removeprefix("Requires-Dist: ")
            for line in archive.read(metadata).decode().splitlines()
            if line.startswith("Requires-Dist: ")
        ]
    assert tops == {"zeroi2v", wheel.name.split("-")[0] + "-0.1.0.dist-info"}, tops
    core = {re.split(r"[<>=\[ ;]", r)[0].lower() for r in requires if "extra ==" not in r}
    assert core == {"torch", "torchvision", "open_clip_torch", "timm", "pydantic", "numpy", "tqdm"}
    assert not core & set(EXTRAS_ONLY)
    assert any("deepspeed" in r and 'extra == "train"' in r for r in requires), requires


def _torch_pins() -> list[str]:
    """The pins `make` installs torch with (Makefile `TORCH ?=`): this machine's copies, and
    no install after them may pull another torch."""
    (line,) = re.findall(r"^TORCH \?= (.+)$", (REPO / "Makefile").read_text(), re.MULTILINE)
    return line.split()


@pytest.mark.slow
def test_the_wheel_alone_builds_and_merges_a_model_in_a_fresh_venv(wheel, tmp_path):
    """The core-only install: a new venv gets torch (pinned as `make` pins it), then the wheel
    with its core dependencies; from a folder outside the repository, build_model → forward →
    merge → forward runs, and no extra's package nor an application package is installed."""
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    python = str(venv / "bin" / "python")
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
        pins = _torch_pins()
        for what in (pins, [str(wheel), *pins]):  # torch first, then the wheel on the same pins
            done = subprocess.run(
                [python, "-m", "pip", "install", "-q", *what], env=env, cwd=tmp_path,
                capture_output=True, text=True, timeout=900,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr[-3000:]
        report = _run_core(python, tmp_path, env, timeout=300)
        assert report["installed"] == [], f"the core install brought {report['installed']}"
        assert Path(report["zeroi2v"]).is_relative_to(venv), report["zeroi2v"]
    finally:
        shutil.rmtree(venv, ignore_errors=True)  # a few GB of torch and CUDA libraries
