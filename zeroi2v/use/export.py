"""Export the merged (deployable) model to TorchScript and ONNX, checked twice.

1. Outputs: each exported graph runs on the same clips as PyTorch (ONNX with onnxruntime) and
   must match within ``rtol`` (max |Δ| / max |reference|) on clips other than the traced ones.
2. Zero cost: no parameter / initializer / node / module name mentions an adapter
   (``adapter``, ``adaptation``, ``lora``), and the exported parameter count equals the plain
   backbone + linear head built from the same config (TorchScript: its parameters; ONNX: its
   float initializers, which the exporter stores once per distinct tensor value, so they are
   compared with the distinct-valued parameters of the merged model, itself == plain).
   That is the paper's claim made checkable on the deployed artefact, not only in PyTorch.

The ONNX exporter: the dynamo one (``torch.export``) needs ``onnxscript``; without it the
TorchScript-based exporter is used. Which one ran is part of the report (no silent choice).
"""

from __future__ import annotations

import importlib.util
import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from zeroi2v.config import Config, from_dict, to_dict
from zeroi2v.models.merge import merge
from zeroi2v.models.video import build_model
from zeroi2v.use.export_formats import FORMATS, ONNX_EXPORTERS

OPSET = 18
ADAPTER_NAME = re.compile(r"adapter|adaptation|lora", re.IGNORECASE)


@dataclass
class ExportReport:
    """What was written and what was checked; `ok` only if every check passed."""

    files: dict[str, str] = field(default_factory=dict)
    max_rel_error: dict[str, float] = field(default_factory=dict)
    params: dict[str, int] = field(default_factory=dict)
    expected_params: dict[str, int] = field(default_factory=dict)
    adapter_names: dict[str, list[str]] = field(default_factory=dict)
    onnx_exporter: str | None = None
    plain_params: int = 0
    merged_params: int = 0
    rtol: float = 1e-4

    @property
    def ok(self) -> bool:
        return (
            all(err <= self.rtol for err in self.max_rel_error.values())
            and not any(self.adapter_names.values())
            and self.params == self.expected_params
            and self.merged_params == self.plain_params
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "max_rel_error": self.max_rel_error,
            "params": self.params,
            "expected_params": self.expected_params,
            "plain_params": self.plain_params,
            "merged_params": self.merged_params,
            "adapter_names": self.adapter_names,
            "onnx_exporter": self.onnx_exporter,
            "rtol": self.rtol,
            "ok": self.ok,
        }


def adapter_names(names: list[str]) -> list[str]:
    """The names that betray an adapter left in a graph."""
    return sorted({n for n in names if ADAPTER_NAME.search(n)})


def plain_param_count(cfg: Config) -> int:
    """Params of the image backbone + linear head (no adapters), built on the meta device."""

    raw = to_dict(cfg)
    raw["model"]["pretrained"] = None
    raw["adapt"]["strategy"] = "linear_probe"
    with torch.device("meta"):
        plain = build_model(from_dict(raw))
    return sum(p.numel() for p in plain.parameters())


def distinct_param_count(module: nn.Module) -> int:
    """Elements of the parameters with distinct values: what an ONNX file stores, because the
    exporter keeps one initializer for identical tensors (e.g. freshly initialised LayerNorms).
    """
    seen: set[tuple] = set()
    total = 0
    for p in module.parameters():
        key = (str(p.dtype), tuple(p.shape), p.detach().cpu().contiguous().numpy().tobytes())
        if key not in seen:
            seen.add(key)
            total += p.numel()
    return total


def example_clips(cfg: Config, batch: int, seed: int = 0) -> torch.Tensor:
    """(batch, C, T, H, W) random clips at the model's input size."""
    size, frames = cfg.model.image_size, cfg.model.num_frames
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, frames, size, size, generator=generator)


def _rel_error(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(actual - expected).max() / max(np.abs(expected).max(), 1e-12))


# ----------------------------------------------------------------------------- TorchScript


def export_torchscript(
    model: nn.Module, example: torch.Tensor, path: Path
) -> torch.jit.ScriptModule:
    """`torch.jit.trace` (the model has no data-dependent control flow) and save."""
    with torch.no_grad(), warnings.catch_warnings():
        # The Python-side checks of shapes / offsets trace as constants; that is intended.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(model, example, check_trace=False)
    traced.save(str(path))
    return torch.jit.load(str(path), map_location="cpu")


def torchscript_names(module: torch.jit.ScriptModule) -> list[str]:
    names = [n for n, _ in module.named_parameters()] + [n for n, _ in module.named_modules()]
    return names + re.findall(r'name="([^"]+)"', str(module.inlined_graph))


# ----------------------------------------------------------------------------- ONNX


def resolve_onnx_exporter(choice: str) -> str:
    if choice not in ONNX_EXPORTERS:
        raise ValueError(f"onnx exporter must be one of {ONNX_EXPORTERS}, got '{choice}'")
    has_onnxscript = importlib.util.find_spec("onnxscript") is not None
    if choice == "dynamo" and not has_onnxscript:
        raise RuntimeError("the dynamo ONNX exporter needs the 'onnxscript' package")
    if choice == "auto":
        return "dynamo" if has_onnxscript else "legacy"
    return choice


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path, exporter: str) -> None:
    """ONNX (opset `OPSET`) with the batch of `example` fixed; weights as named initializers.

    Static batch: the legacy exporter's attention (SDPA decomposed into MatMuls) bakes the
    traced batch into its shapes, so a dynamic batch axis would be a promise it can't keep.
    The batch is one video's test views, which is how a deployed model is called.
    """
    kwargs: dict[str, Any] = dict(
        input_names=["clips"], output_names=["logits"], opset_version=OPSET
    )
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # as in export_torchscript
        if exporter == "dynamo":
            torch.onnx.export(
                model, (example,), str(path), dynamo=True, external_data=False, **kwargs
            )
        else:
            torch.onnx.export(
                model, (example,), str(path), dynamo=False, do_constant_folding=True, **kwargs
            )


def onnx_names_and_params(path: Path) -> tuple[list[str], int]:
    """All initializer / node / value names, and the element count of float initializers.

    Integer initializers are index or shape constants (STDHA's frame index, reshapes), not
    weights, so they are not counted as parameters.
    """
    import onnx  # lazy: onnx ([export] extra)

    graph = onnx.load(str(path)).graph
    float_types = {
        onnx.TensorProto.FLOAT,
        onnx.TensorProto.FLOAT16,
        onnx.TensorProto.BFLOAT16,
        onnx.TensorProto.DOUBLE,
    }
    names = [i.name for i in graph.initializer] + [n.name for n in graph.node]
    names += [o for n in graph.node for o in [*n.input, *n.output]]
    params = sum(int(np.prod(i.dims)) for i in graph.initializer if i.data_type in float_types)
    return names, params


def run_onnx(path: Path, clips: torch.Tensor) -> np.ndarray:
    import onnxruntime as ort  # lazy: onnxruntime ([export] extra)

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"clips": clips.numpy()})[0]


# ----------------------------------------------------------------------------- both


def export(
    model: nn.Module,
    cfg: Config,
    out_dir: str | Path,
    formats: tuple[str, ...] | list[str] = FORMATS,
    onnx_exporter: str = "auto",
    rtol: float = 1e-4,
    merged: bool = False,
) -> ExportReport:
    """Merge `model` (unless `merged`), export it to `formats` in `out_dir`, check the results.

    Traced with one video's views (V = num_clips × num_crops) as the batch. TorchScript is
    checked at batch V and V + 1 (its batch is dynamic), ONNX on two other batches of V clips
    (its batch is static). Writes ``export_report.json`` beside the files.
    """

    unknown = set(formats) - set(FORMATS)
    if unknown or not formats:
        raise ValueError(f"export formats must be among {FORMATS}, got {list(formats)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    deployed = (model if merged else merge(model)).eval().float().cpu()
    views = cfg.data.num_clips * cfg.data.num_crops
    example = example_clips(cfg, views)
    checks = {
        "torchscript": [example_clips(cfg, views, seed=1), example_clips(cfg, views + 1, seed=2)],
        "onnx": [example_clips(cfg, views, seed=1), example_clips(cfg, views, seed=3)],
    }
    with torch.no_grad():
        expected = {f: [deployed(c).numpy() for c in cs] for f, cs in checks.items()}

    report = ExportReport(
        plain_params=plain_param_count(cfg),
        merged_params=sum(p.numel() for p in deployed.parameters()),
        rtol=rtol,
    )
    if "torchscript" in formats:
        path = out / "model.torchscript.pt"
        scripted = export_torchscript(deployed, example, path)
        with torch.no_grad():
            got = [scripted(c).numpy() for c in checks["torchscript"]]
        report.files["torchscript"] = str(path)
        report.max_rel_error["torchscript"] = max(map(_rel_error, got, expected["torchscript"]))
        report.params["torchscript"] = sum(p.numel() for p in scripted.parameters())
        report.expected_params["torchscript"] = sum(p.numel() for p in deployed.parameters())
        report.adapter_names["torchscript"] = adapter_names(torchscript_names(scripted))
    if "onnx" in formats:
        path = out / "model.onnx"
        report.onnx_exporter = resolve_onnx_exporter(onnx_exporter)
        export_onnx(deployed, example, path, report.onnx_exporter)
        got = [run_onnx(path, c) for c in checks["onnx"]]
        names, params = onnx_names_and_params(path)
        report.files["onnx"] = str(path)
        report.max_rel_error["onnx"] = max(map(_rel_error, got, expected["onnx"]))
        report.params["onnx"] = params
        report.expected_params["onnx"] = distinct_param_count(deployed)
        report.adapter_names["onnx"] = adapter_names(names)
    (out / "export_report.json").write_text(json.dumps(report.as_dict(), indent=2))
    return report
