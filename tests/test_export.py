"""Exported TorchScript / ONNX graphs compute what PyTorch computes and carry no adapter."""

from __future__ import annotations

import json

import pytest
import torch

import zeroi2v
from zeroi2v.config import load
from zeroi2v.use.export import export


@pytest.fixture(scope="module")
def trained_like():
    """Tiny zeroi2v model whose adapters are not the identity (as after training)."""
    cfg = load("configs/tiny_cpu.json", {"data.num_clips": 2, "model.pretrained": None})
    torch.manual_seed(0)
    model = zeroi2v.build_model(cfg).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "adaptation" in name or "ln" in name:  # LayerNorms too: distinct values
                param.add_(torch.randn_like(param) * 0.1)
    return model, cfg


def test_export_matches_pytorch_and_has_no_adapter(trained_like, tmp_path):
    model, cfg = trained_like
    report = export(model, cfg, tmp_path)
    assert report.ok, report.as_dict()
    assert report.onnx_exporter in ("dynamo", "legacy")
    assert max(report.max_rel_error.values()) <= 1e-4
    assert report.adapter_names == {"torchscript": [], "onnx": []}
    # parameters of the exported graphs == plain backbone + head, not the adapted model
    adapted = sum(p.numel() for p in model.parameters())
    assert report.params["torchscript"] == report.plain_params < adapted
    assert report.params["onnx"] == report.plain_params  # LayerNorms perturbed: no dedup
    saved = json.loads((tmp_path / "export_report.json").read_text())
    assert saved["ok"] and set(saved["files"]) == {"torchscript", "onnx"}

    # The files stand alone: reload them and compare with the unmerged model itself.
    import onnxruntime as ort

    clips = torch.randn(2, 3, 8, 32, 32)
    with torch.no_grad():
        expected = model(clips)
        scripted = torch.jit.load(report.files["torchscript"])(clips)
    session = ort.InferenceSession(report.files["onnx"], providers=["CPUExecutionProvider"])
    onnx_out = torch.from_numpy(session.run(None, {"clips": clips.numpy()})[0])
    torch.testing.assert_close(scripted, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(onnx_out, expected, rtol=1e-4, atol=1e-5)


def test_checks_catch_an_unmerged_model(trained_like, tmp_path):
    """Exporting the adapted model as if it were merged must fail both zero-cost checks."""
    model, cfg = trained_like
    report = export(model, cfg, tmp_path, merged=True)
    assert not report.ok
    assert report.adapter_names["torchscript"] and report.adapter_names["onnx"]
    assert report.params["torchscript"] > report.plain_params


def test_export_cli_rejects_unknown_format(tmp_path):
    from launch import export as export_cli

    with pytest.raises(SystemExit):
        export_cli.main(["--model", "x", "--out", str(tmp_path), "--format", "tflite"])
