"""`--help` and argument errors of every launch script: answered before torch is imported.

torch, MLflow, DeepSpeed and Ray take seconds to import; each script imports the modules that
need them only where its work starts, so asking for help or mistyping a flag is instant.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HEAVY = {"torch", "mlflow", "deepspeed", "ray"}

_RUN_AND_LIST_IMPORTS = """
import runpy, sys
sys.argv = sys.argv[1:]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
finally:
    print("IMPORTED:" + ",".join(sorted({m.split(".")[0] for m in sys.modules})), file=sys.stderr)
"""

HELP = [
    (script, ["--help"], 0, "usage:")
    for script in (
        "convert",
        "evaluate",
        "export",
        "merge",
        "predict",
        "pretrain_tiny",
        "profile_model",
        "sync_mlflow",
        "train",
        "tune",
        "visualize",
    )
]


@pytest.mark.parametrize(
    ("script", "args", "status", "says"),
    [
        *HELP,
        ("few_shot", ["--help"], 0, "N seeds × K shots"),
        (
            "few_shot",
            ["--config", "configs/tiny_cpu.json"],
            2,
            "the following arguments are required: --shots",
        ),
        (
            "few_shot",
            ["--config", "configs/tiny_cpu.json", "--shots", "2", "--data.train_shards=none/x.tar"],
            1,
            "no manifest.json in none",
        ),
        (  # an override right after an option of several values (as docs/transfer.md writes it)
            "few_shot",
            ["--config", "configs/tiny_cpu.json", "--shots", "2", "--seeds", "0", "1"]
            + ["data.train_shards=none/x.tar"],
            1,
            "no manifest.json in none",
        ),
        (
            "evaluate",
            ["--config", "configs/tiny_cpu.json", "configs/tiny_cpu.json", "optim.lrr=1"],
            1,
            "optim.lrr: unknown key",
        ),
    ],
)
def test_help_and_argument_errors_do_not_import_torch(script, args, status, says):
    proc = subprocess.run(
        [sys.executable, "-c", _RUN_AND_LIST_IMPORTS, f"launch/{script}.py", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == status, proc.stderr[-2000:]
    assert says in proc.stdout + proc.stderr
    (imported,) = [x for x in proc.stderr.splitlines() if x.startswith("IMPORTED:")]
    assert not HEAVY & set(imported.removeprefix("IMPORTED:").split(","))


def test_usage_examples_keep_their_line_continuations():
    """A `\\` ending a docstring line is swallowed unless the docstring is raw (r\"\"\"), which
    would glue a two-line example into one with a run of spaces in `--help`."""
    for script in sorted((REPO / "launch").glob("*.py")):
        source = script.read_text()
        doc = ast.get_docstring(ast.parse(source), clean=False) or ""
        head = source[: source.find('"""', source.find('"""') + 3)]
        assert head.count("\\\n") == doc.count("\\\n"), f'{script.name}: make its docstring r"""'
