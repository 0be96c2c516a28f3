"""Where the spatial and the temporal heads of the last block look, frame by frame.

The attention is fused (`F.scaled_dot_product_attention`), so it never materialises weights.
A forward pre-hook on the last block's STDHA module captures its input; the [CLS] query's
attention over the patch tokens is then recomputed with the module's own projection (adapters
included when unmerged) and its own re-indexing (the hooks of its `temporal` operator): the maps are
those of the forward pass, not of a re-implementation. No model code changes.

Layout of the figure: one row per head group, one column per frame t (the query's frame).
Rows: "spatial" (all Δt = 0 heads averaged), then one row per distinct temporal offset Δt
(its heads averaged). A Δt row at column t shows frame t's [CLS] attending to the patches of
frame t + Δt (or of frame t itself where t + Δt is outside the clip: STDHA's boundary rule),
drawn over frame t + Δt, i.e. over the frame whose patches are being looked at.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from zeroi2v.config import Config
from zeroi2v.engine.tracking import tracking_uri
from zeroi2v.models.adapters import transformer_blocks
from zeroi2v.models.backbones import token_layout
from zeroi2v.models.stdha import TemporalMixing
from zeroi2v.models.stdha_shift import time_index
from zeroi2v.use.inference import VideoPredictor, read_video


@dataclass
class AttentionMaps:
    """[CLS]→patch attention of the last block, per head group and frame."""

    maps: np.ndarray  # (groups, T, h, w), each map sums to ≤ 1 (the rest went to [CLS])
    groups: list[str]  # row labels, e.g. "spatial (2 heads)", "Δt=+1 (1 head)"
    key_frames: np.ndarray  # (groups, T): frame whose patches row g, column t looks at
    frames: np.ndarray  # (T, H, W, 3) float in [0, 1]: the view's frames, for display


def last_attention(model: nn.Module) -> nn.Module:
    """The STDHA module of the last ViT block (Swin's window attention has no [CLS])."""

    blocks = transformer_blocks(getattr(model, "backbone", model))
    if not blocks or not isinstance(blocks[-1].attn, TemporalMixing):
        raise ValueError("attention maps need a ViT backbone with zeroi2v's video attention")
    return blocks[-1].attn


@torch.no_grad()
def capture_input(model: nn.Module, attn: nn.Module, clip: Tensor) -> Tensor:
    """Run `model` on `clip` and return what `attn` received: (B*T, N, C) tokens."""
    captured: list[Tensor] = []

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        captured.append(args[0] if args else kwargs.get("query", kwargs.get("x")))

    handle = attn.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        model(clip)
    finally:
        handle.remove()
    return captured[0]


def qkv_heads(attn: nn.Module, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """q, k, v (B*T, heads, N, d) as `attn.forward` computes them, already re-indexed."""
    x = attn.temporal.tokens(x)
    BT, N, _ = x.shape
    if hasattr(attn, "qkv"):  # timm
        qkv = attn.temporal.packed(attn.qkv(x).view(BT, N, 3, attn.num_heads, attn.head_dim))
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B*T, heads, N, d)
        q, k = attn.q_norm(q), attn.k_norm(k)
    else:  # open_clip: fused in_proj (through the adaptation when unmerged)
        qkv = attn.temporal.packed(attn.project(x).view(BT, N, 3, attn.num_heads, -1))
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B*T, heads, N, d)
    return attn.temporal.split(q, k, v)


def attention_probs(q: Tensor, k: Tensor) -> Tensor:
    """softmax(q kᵀ / √d): (B*T, heads, N, N), SDPA's default scaling."""
    return (q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5).softmax(-1)


def head_groups(offsets: list[int]) -> list[tuple[str, int, list[int]]]:
    """(label, Δt, head indices): spatial first, then each temporal Δt in ascending order."""
    groups = []
    for dt in [0, *sorted({d for d in offsets if d != 0})]:
        heads = [h for h, d in enumerate(offsets) if d == dt]
        if not heads:
            continue
        name = "spatial" if dt == 0 else f"Δt={dt:+d}"
        groups.append((f"{name} ({len(heads)} head{'s' if len(heads) > 1 else ''})", dt, heads))
    return groups


def _display_frames(clip: Tensor) -> np.ndarray:
    """(1, C, T, H, W) normalised clip → (T, H, W, 3) in [0, 1]."""
    # lazy: torchvision, to show frames only
    from zeroi2v.data.transforms import CLIP_MEAN, CLIP_STD

    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1, 1)
    frames = (clip[0].cpu().float() * std + mean).clamp(0, 1)  # (C, T, H, W)
    return frames.permute(1, 2, 3, 0).numpy()


@torch.no_grad()
def attention_maps(model: nn.Module, clip: Tensor) -> AttentionMaps:
    """Maps of the last block for one clip (1, C, T, H, W)."""

    if clip.dim() != 5 or clip.shape[0] != 1:
        raise ValueError(f"expected one clip (1, C, T, H, W), got shape {tuple(clip.shape)}")
    model = model.eval()
    attn = last_attention(model)
    layout = token_layout(getattr(model, "backbone", model))
    if layout is None:
        raise ValueError("attention maps need a ViT backbone (patch grid and a [CLS] token)")
    (h, w), prefix = layout
    q, k, _ = qkv_heads(attn, capture_input(model, attn, clip))
    cls = attention_probs(q[:, :, :1], k)[:, :, 0, prefix:]  # (T, heads, h*w), [CLS] query
    cls = cls.unflatten(-1, (h, w)).float().cpu()  # (T, heads, h, w)
    T = cls.shape[0]
    offsets = list(attn.offsets) if attn.temporal_op == "stdha" else [0] * attn.num_heads
    sources = time_index(offsets, T)  # (T, heads): the frame each head reads
    groups = head_groups(offsets)
    maps = np.stack([cls[:, heads].mean(1).numpy() for _, _, heads in groups])  # (G, T, h, w)
    key_frames = np.stack([sources[:, heads[0]].numpy() for _, _, heads in groups])  # (G, T)
    return AttentionMaps(maps, [g[0] for g in groups], key_frames, _display_frames(clip))


def plot_attention(result: AttentionMaps, path: str | Path | None = None, title: str = ""):
    """One row per head group, one column per frame; each map over the frame it looks at."""
    import matplotlib  # lazy: matplotlib ([train]/[serve] extra)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: matplotlib ([train]/[serve] extra)

    rows, cols = result.maps.shape[:2]
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols + 1, 1.6 * rows + 0.6), squeeze=False)
    height, width = result.frames.shape[1:3]
    for g in range(rows):
        for t in range(cols):
            ax = axes[g, t]
            ax.imshow(result.frames[result.key_frames[g, t]], extent=(0, width, height, 0))
            ax.imshow(
                result.maps[g, t],
                cmap="jet",
                alpha=0.5,
                extent=(0, width, height, 0),
                interpolation="bilinear",
            )
            ax.set_xticks([])
            ax.set_yticks([])
            if g == 0:
                ax.set_title(f"t={t}", fontsize=8)
            if t == 0:
                ax.set_ylabel(result.groups[g], fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)  # as export does with its --out
        fig.savefig(path, dpi=100)
    return fig


def visualize(
    model: nn.Module,
    cfg: Config,
    video: bytes | str | Path,
    out: str | Path,
    run_id: str | None = None,
    view: int = 0,
) -> AttentionMaps:
    """Maps for test view `view` of `video`, saved as a PNG at `out` (and to MLflow run)."""
    import matplotlib.pyplot as plt  # lazy: matplotlib ([train]/[serve] extra)

    data, name = read_video(video)
    views = VideoPredictor(model, cfg).views(data, name)  # (V, C, T, H, W)
    if not 0 <= view < len(views):
        raise ValueError(f"view must be in [0, {len(views)}), got {view}")
    result = attention_maps(model, views[view : view + 1])
    fig = plot_attention(result, out, title=f"{Path(name).name}: last block, [CLS]→patches")
    plt.close(fig)
    if run_id is not None:
        import mlflow  # lazy: MLflow ([train]/[serve] extra)

        mlflow.MlflowClient(tracking_uri(cfg)).log_artifact(run_id, str(out), "attention")
    return result
