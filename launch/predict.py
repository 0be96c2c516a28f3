"""Top-k classes of videos with a trained model, scored over the config's test views.

    python launch/predict.py --model models:/zeroi2v_tiny_cpu@champion a.mp4 b.mp4 --top-k 3
    python launch/predict.py --model runs/tiny_cpu/merged.pt a.mp4 --json predictions.json

Views, transforms and view averaging (softmax mean) are those of launch/evaluate.py.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from zeroi2v import logs
from zeroi2v.redact import run_cli

if TYPE_CHECKING:
    from zeroi2v.use.inference import Prediction


def main(argv: list[str] | None = None) -> list[Prediction]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--model", required=True, help="models:/NAME@ALIAS, a model URI or a checkpoint"
    )
    parser.add_argument("videos", nargs="+", help="video files")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--json", default=None, help="also write the predictions to this JSON file")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile the model (CUDA graphs on cuda)"
    )
    args = parser.parse_args(argv)
    if args.top_k < 1:
        parser.error("--top-k must be >= 1")
    # lazy: torch and the extras load once work starts: a fast --help
    from zeroi2v.use.inference import format_predictions, predict

    predictions = predict(
        args.model,
        args.videos,
        top_k=args.top_k,
        json_path=args.json,
        device=args.device,
        compile=args.compile,
    )
    print(format_predictions(predictions))
    missing = len(args.videos) - len(predictions)
    if missing:
        print(f"skipped {missing} of {len(args.videos)} videos that do not decode", file=sys.stderr)
    return predictions


if __name__ == "__main__":
    logs.setup()
    run_cli(main)
