"""Attention maps of the last block: where its spatial and temporal heads look, per frame.

    python launch/visualize.py --model models:/zeroi2v_tiny_cpu@champion video.mp4 --out attn.png
    python launch/visualize.py --model ... video.mp4 --out attn.png --run-id RUN  # also to MLflow

One PNG: a row per head group (spatial heads; one row per temporal offset Δt), a column per
frame, each [CLS]→patch map drawn over the frame its keys come from (see zeroi2v/visualize.py).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from zeroi2v import logs
from zeroi2v.redact import run_cli

if TYPE_CHECKING:
    from zeroi2v.use.visualize import AttentionMaps


def main(argv: list[str] | None = None) -> AttentionMaps:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--model", required=True, help="models:/NAME@ALIAS, a model URI or a checkpoint"
    )
    parser.add_argument("video", help="video file")
    parser.add_argument("--out", required=True, help="PNG to write")
    parser.add_argument("--run-id", default=None, help="MLflow run to log the PNG to (attention/)")
    parser.add_argument("--view", type=int, default=0, help="which test view (clip-major) to show")
    args = parser.parse_args(argv)
    # lazy: torch and the extras load once work starts: a fast --help
    from zeroi2v.use.inference import load_model
    from zeroi2v.use.visualize import visualize

    model, cfg = load_model(args.model)
    result = visualize(model, cfg, args.video, args.out, run_id=args.run_id, view=args.view)
    print(f"wrote {args.out}: rows {result.groups}, {result.maps.shape[1]} frames")
    return result


if __name__ == "__main__":
    logs.setup()
    run_cli(main)
