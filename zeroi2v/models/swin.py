"""Swin Transformer as a video backbone: STDHA window attention + inflated temporal patch embed.

Frames go into the batch. timm's `window_partition` turns the (B*T, H, W, C) feature map into
(B*T*nW, N, C) windows with the frame index major and the window index minor, so the K/V of
window w in frame t sit at row (b*T + t)*nW + w. A temporal head of STDHA reads the K/V of the
*same window* in frame t+Δt: the shifted-window mask and the relative position bias depend on
the window position only, so they are unchanged by the re-indexing.

The modules keep timm's parameter names (`qkv`, `proj`, `relative_position_bias_table`, ...),
so timm checkpoints load with strict=True and a merged model is a plain timm Swin state dict.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from timm.models.swin_transformer import SwinTransformer, SwinTransformerBlock, WindowAttention
from torch import nn

from zeroi2v.models.stdha_shift import HeadRuns, shift_qkv
from zeroi2v.specs import BackboneSpec


class STDHAWindowAttention(WindowAttention):
    """timm `WindowAttention` whose temporal heads attend to K/V of the same window at t+Δt.

    `offsets[h]` is head h's Δt (0 = spatial head). The re-indexing is `shift_qkv` (K and V of
    the temporal heads along time in one go, out-of-range frames read their own frame);
    attention is
    the fused SDPA path with the relative position bias (+ shifted-window mask) as additive
    mask, as in timm.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        offsets: Sequence[int],
        num_frames: int,
        num_windows: int,
        head_dim: int | None = None,
        window_size: int | tuple[int, int] = 7,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            dim,
            num_heads=num_heads,
            head_dim=head_dim,
            window_size=window_size,
            qkv_bias=qkv_bias,
            attn_drop=attn_drop,
            proj_drop=proj_drop,
            device=device,
            dtype=dtype,
        )
        if len(offsets) != num_heads:
            raise ValueError(
                f"got {len(offsets)} head offsets for an attention with {num_heads} heads"
            )
        self.offsets = [int(dt) for dt in offsets]
        self.runs = HeadRuns.packed(self.offsets)  # found once, used by every forward
        self.num_frames = num_frames
        self.num_windows = num_windows

    @classmethod
    def from_timm(
        cls, attn: WindowAttention, offsets: Sequence[int], num_frames: int, num_windows: int
    ) -> STDHAWindowAttention:
        """Same sizes and weights as `attn` (works on the meta device too)."""
        weight = attn.qkv.weight
        new = cls(
            attn.dim,
            attn.num_heads,
            offsets,
            num_frames,
            num_windows,
            head_dim=attn.qkv.out_features // 3 // attn.num_heads,
            window_size=attn.window_size,
            qkv_bias=attn.qkv.bias is not None,
            attn_drop=attn.attn_drop.p,
            proj_drop=attn.proj_drop.p,
            device=weight.device,
            dtype=weight.dtype,
        )
        new.load_state_dict(attn.state_dict(), strict=True)
        new.train(attn.training)
        return new

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        B_, N, C = x.shape  # B_ = B*T*nW, (b, t) major and the window index minor
        qkv = self.qkv(x).reshape(B_, N, 3, self.num_heads, -1)
        if any(self.offsets):
            qkv = self._shift(qkv)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B*T*nW, heads, N, d)

        attn_mask = self._get_rel_pos_bias()  # (1, heads, N, N)
        if mask is not None:
            num_win = mask.shape[0]
            mask = mask.view(1, num_win, 1, N, N).expand(B_ // num_win, -1, self.num_heads, -1, -1)
            attn_mask = attn_mask + mask.reshape(-1, self.num_heads, N, N)
        x = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.attn_drop.p if self.training else 0.0
        )  # (B*T*nW, heads, N, d)
        x = x.transpose(1, 2).reshape(B_, N, -1)
        return self.proj_drop(self.proj(x))

    def _shift(self, qkv: torch.Tensor) -> torch.Tensor:
        """Re-index K and V of the temporal heads along time, window by window."""
        B_ = qkv.shape[0]  # qkv: (B*T*nW, N, 3, heads, d)
        per_clip = self.num_frames * self.num_windows
        if B_ % per_clip:
            raise RuntimeError(
                f"window batch {B_} is not a multiple of frames × windows "
                f"({self.num_frames} × {self.num_windows}); is the input size the configured one?"
            )
        qkv = qkv.unflatten(0, (-1, self.num_frames, self.num_windows))  # (B, T, nW, N, 3, h, d)
        # qkv is this attention's own fresh projection: inference may rewrite it in place
        return shift_qkv(qkv, self.runs, time_dim=1, overwrite=True).flatten(0, 2)

    def extra_repr(self) -> str:
        return f"offsets={self.offsets}, num_frames={self.num_frames}"


class TemporalPatchEmbed(nn.Module):
    """Swin patch embedding inflated to a kt×p×p Conv3d; maps (B, C, T, H, W) → (B*T/kt, H', W', D).

    The 2-D kernel is copied into every temporal slice divided by kt, so a static clip gives
    exactly the 2-D embedding of its frame (I3D inflation) and the pretrained weights stay
    meaningful. The conv keeps the name `proj`, now with a 5-D weight.
    """

    def __init__(self, patch_embed: nn.Module, temporal_patch_size: int) -> None:
        super().__init__()
        proj2d: nn.Conv2d = patch_embed.proj
        kt = temporal_patch_size
        self.temporal_patch_size = kt
        self.img_size = patch_embed.img_size
        self.patch_size = patch_embed.patch_size
        self.grid_size = patch_embed.grid_size
        self.num_patches = patch_embed.num_patches
        self.proj = nn.Conv3d(
            proj2d.in_channels,
            proj2d.out_channels,
            kernel_size=(kt, *proj2d.kernel_size),
            stride=(kt, *proj2d.stride),
            bias=proj2d.bias is not None,
            device=proj2d.weight.device,
            dtype=proj2d.weight.dtype,
        )
        with torch.no_grad():
            # (D, C, p, p) → (D, C, kt, p, p), each temporal slice w / kt
            self.proj.weight.copy_(proj2d.weight.unsqueeze(2).expand_as(self.proj.weight) / kt)
            if proj2d.bias is not None:
                self.proj.bias.copy_(proj2d.bias)
        self.norm = patch_embed.norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5 or x.shape[2] % self.temporal_patch_size:
            raise ValueError(
                f"expected a clip (B, C, T, H, W) with T a multiple of "
                f"{self.temporal_patch_size}, got shape {tuple(x.shape)}"
            )
        x = self.proj(x)  # (B, D, T', H', W')
        x = x.permute(0, 2, 3, 4, 1).flatten(0, 1)  # (B*T', H', W', D)
        return self.norm(x)


def install_stdha(
    model: SwinTransformer, offsets: Sequence[Sequence[int]], num_frames: int
) -> None:
    """Replace every block's `WindowAttention` by `STDHAWindowAttention` (one Δt list per block)."""
    blocks = [b for b in model.modules() if isinstance(b, SwinTransformerBlock)]
    if len(offsets) != len(blocks):
        raise ValueError(f"got head offsets for {len(offsets)} blocks, Swin has {len(blocks)}")
    for block, dts in zip(blocks, offsets, strict=True):
        height, width = block.input_resolution
        win_h, win_w = block.window_size
        num_windows = math.ceil(height / win_h) * math.ceil(width / win_w)
        block.attn = STDHAWindowAttention.from_timm(block.attn, dts, num_frames, num_windows)


def create_swin(
    spec: BackboneSpec, image_size: int, pretrained: str | None = None
) -> SwinTransformer:
    """The timm Swin of `spec` without classifier; `pretrained` is a timm tag or a local file.

    Built from the spec's sizes so `tiny_swin` goes through the same factory as Swin-B.
    """
    kwargs: dict[str, Any] = dict(
        img_size=image_size,
        patch_size=spec.patch_size,
        window_size=spec.window_size,
        embed_dim=spec.width,
        depths=spec.depths,
        num_heads=spec.heads,
        num_classes=0,
        drop_path_rate=0.0,
    )
    name = spec.library_name or "swin_base_patch4_window7_224"
    if pretrained is None:
        return timm.create_model(name, pretrained=False, **kwargs)
    if Path(pretrained).is_file():
        kwargs["pretrained_cfg_overlay"] = dict(file=str(pretrained), num_classes=0)
    else:
        name = f"{name.split('.')[0]}.{pretrained}"
    try:
        return timm.create_model(name, pretrained=True, **kwargs)
    except Exception as error:  # offline hub, unknown tag, bad file: one readable sentence
        raise RuntimeError(
            f"could not load Swin weights '{pretrained}' for timm model '{name}' "
            f"(give a timm tag available offline or a local checkpoint file): {error}"
        ) from error


def build_swin_backbone(spec: BackboneSpec, model_cfg: Any) -> SwinTransformer:
    """Swin video backbone: clip (B, C, T, H, W) → per-frame features (B*T', D), T' = T / kt.

    With `temporal_patch_size` kt = 1 the timm 2-D patch embedding is kept (and fed the B*T
    frames); with kt > 1 it is replaced by `TemporalPatchEmbed`. STDHA is installed when
    `model_cfg.temporal_op == "stdha"`, reading T' frames.
    """
    if spec.family != "swin":
        raise ValueError(f"build_swin_backbone got a '{spec.family}' backbone spec")
    kt = model_cfg.temporal_patch_size
    frames = model_cfg.num_frames // kt
    model = create_swin(spec, model_cfg.image_size, model_cfg.pretrained)
    if kt > 1:
        model.patch_embed = TemporalPatchEmbed(model.patch_embed, kt)
    if model_cfg.temporal_op == "stdha":
        install_stdha(model, model_cfg.offsets, frames)
    elif model_cfg.temporal_op != "none":
        raise ValueError(
            f"model.temporal_op '{model_cfg.temporal_op}' is not implemented for Swin; "
            "use 'stdha' or 'none'"
        )
    return model
