"""Attention maps: recomputed exactly as the forward pass attends, one row per head group."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import zeroi2v
from zeroi2v.config import load
from zeroi2v.use.visualize import (
    attention_maps,
    attention_probs,
    capture_input,
    last_attention,
    plot_attention,
    qkv_heads,
    visualize,
)


def _model(overrides=None):
    cfg = load("configs/tiny_cpu.json", {"model.pretrained": None, **(overrides or {})})
    torch.manual_seed(0)
    model = zeroi2v.build_model(cfg).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "adaptation" in name:
                param.normal_(0, 0.1)
    return model, cfg


def _moving_square(frames: int = 8, size: int = 32) -> torch.Tensor:
    clip = torch.full((1, 3, frames, size, size), -1.0)
    for t in range(frames):
        clip[0, :, t, 8:16, 2 + 3 * t : 10 + 3 * t] = 2.0  # (1, C, T, H, W), moving right
    return clip


def test_recomputed_attention_reproduces_the_module_output():
    """softmax(q kᵀ/√d) v through out_proj == the STDHA module's own (fused) output,
    unmerged (adapters in the projection) and with temporal heads re-indexed."""
    model, _ = _model()
    attn = last_attention(model)
    x = capture_input(model, attn, _moving_square())
    q, k, v = qkv_heads(attn, x)
    mixed = (attention_probs(q, k) @ v).transpose(1, 2).reshape(x.shape)  # (B*T, N, C)
    with torch.no_grad():
        torch.testing.assert_close(attn.out_proj(mixed), attn(x, x, x)[0], rtol=1e-5, atol=1e-5)


def test_maps_grid_one_row_per_head_group(tmp_path):
    model, _ = _model()
    result = attention_maps(model, _moving_square())
    # tiny_cpu: offsets {1·1, -1·1, 0·2} → spatial, Δt=-1, Δt=+1; 8 frames, 4×4 patches
    assert result.groups == ["spatial (2 heads)", "Δt=-1 (1 head)", "Δt=+1 (1 head)"]
    assert result.maps.shape == (3, 8, 4, 4)
    assert np.all(result.maps > 0) and np.all(result.maps.sum((-1, -2)) <= 1 + 1e-6)
    # key frames: t, t-1 (own frame at t=0), t+1 (own frame at the last t)
    assert result.key_frames.tolist() == [
        list(range(8)),
        [0, 0, 1, 2, 3, 4, 5, 6],
        [1, 2, 3, 4, 5, 6, 7, 7],
    ]
    # spatial and temporal heads look at different places of a moving clip
    assert not np.allclose(result.maps[0], result.maps[2], atol=1e-3)

    fig = plot_attention(result, tmp_path / "new" / "attn.png")  # its folder is made
    geometry = {ax.get_subplotspec().get_geometry()[:2] for ax in fig.axes}
    assert geometry == {(3, 8)} and len(fig.axes) == 24
    assert (tmp_path / "new" / "attn.png").stat().st_size > 0


def test_temporal_row_is_the_spatial_computation_on_the_shifted_frame():
    """Head h with Δt at frame t == the same head without STDHA reading frame t+Δt's keys:
    a model with all heads spatial and the same weights, on the same block input."""
    model, _ = _model()
    plain, _ = _model({"model.temporal_op": "none"})
    plain.load_state_dict(model.state_dict())
    attn = last_attention(model)
    x = capture_input(model, attn, _moving_square())
    q, k, _ = qkv_heads(attn, x)
    q0, k0, _ = qkv_heads(last_attention(plain), x)
    torch.testing.assert_close(q, q0)
    head, dt = 0, last_attention(model).offsets[0]  # head 0 reads t + 1
    for t in range(7):
        torch.testing.assert_close(k[t, head], k0[t + dt, head])


def test_visualize_writes_png_and_logs_to_mlflow(tmp_path, synthetic_videos):
    import mlflow

    model, cfg = _model({"tracking.tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"})
    mlflow.set_tracking_uri(cfg.tracking.tracking_uri)
    experiment = mlflow.create_experiment("viz", artifact_location=(tmp_path / "art").as_uri())
    with mlflow.start_run(experiment_id=experiment) as run:
        pass
    video = sorted((synthetic_videos / "val" / "moving_right").glob("*.mp4"))[0]
    out = tmp_path / "attn.png"
    result = visualize(model, cfg, video, out, run_id=run.info.run_id)
    assert out.stat().st_size > 0 and result.maps.shape == (3, 8, 4, 4)
    logged = mlflow.MlflowClient().list_artifacts(run.info.run_id, "attention")
    assert [a.path for a in logged] == ["attention/attn.png"]


def test_swin_is_rejected():
    cfg = load(
        "configs/tiny_cpu.json",
        {
            "model.backbone": "tiny_swin",
            "model.pretrained": None,
            "model.head_offsets": [[[1, 1], [0, 1]], [[1, 1], [-1, 1], [0, 2]]],
        },
    )
    model = zeroi2v.build_model(cfg).eval()
    with pytest.raises(ValueError, match="ViT"):
        attention_maps(model, torch.zeros(1, 3, 8, 32, 32))
