"""Log what a training kept locally while its MLflow server was unreachable.

    python launch/sync_mlflow.py --run-dir runs/tiny_cpu [--tracking-uri http://host:5000]

A training whose tracking server went away mid-run finishes anyway and leaves
`<train.output_dir>/mlflow_pending/` (metrics, figures, the merged model to register); this
replays it into the same MLflow run (same server unless `--tracking-uri` names where it moved),
registers the model with the champion check, sets the run's final status, removes the folder.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from zeroi2v import logs
from zeroi2v.engine.sync import sync
from zeroi2v.redact import run_cli


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run-dir", required=True, type=Path, help="the run's train.output_dir")
    parser.add_argument("--tracking-uri", help="the server now (default: the one of the run)")
    args = parser.parse_args(argv)
    logs.setup()

    result = sync(args.run_dir, args.tracking_uri)
    print(
        f"logged {result['metrics']} metric values to run {result['run_id']}"
        + (f"; registered {result['model_uri']}" if result["model_uri"] else "")
    )
    return result


if __name__ == "__main__":
    run_cli(main)
