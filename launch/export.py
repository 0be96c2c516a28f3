"""Export a trained model, merged, to TorchScript and ONNX, and check the exported graphs.

    python launch/export.py --model models:/zeroi2v_tiny_cpu@champion --out exported/
    python launch/export.py --model runs/tiny_cpu/merged.pt --out exported/ --format onnx

Prints the check report (output error vs PyTorch, parameter counts vs the plain backbone +
head, adapter names found) as JSON and exits non-zero when a check fails.
"""

from __future__ import annotations

import argparse
import json

from zeroi2v import logs
from zeroi2v.redact import run_cli
from zeroi2v.use.export_formats import FORMATS, ONNX_EXPORTERS


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--model", required=True, help="models:/NAME@ALIAS, a model URI or a checkpoint"
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--format", nargs="+", choices=FORMATS, default=list(FORMATS))
    parser.add_argument(
        "--onnx-exporter",
        choices=ONNX_EXPORTERS,
        default="auto",
        help="auto: dynamo when onnxscript is installed, else the legacy exporter",
    )
    parser.add_argument("--rtol", type=float, default=1e-4, help="max relative output error")
    args = parser.parse_args(argv)
    # lazy: torch and the extras load once work starts: a fast --help
    from zeroi2v.use.export import export
    from zeroi2v.use.inference import load_model

    model, cfg = load_model(args.model)
    report = export(model, cfg, args.out, args.format, args.onnx_exporter, args.rtol).as_dict()
    print(json.dumps(report, indent=2))
    if not report["ok"]:
        raise SystemExit("export check failed; see the report above")
    return report


if __name__ == "__main__":
    logs.setup()
    run_cli(main)
