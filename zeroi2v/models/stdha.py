"""STDHA: spatial-temporal dual-headed attention, swapped into open_clip and timm ViTs.

Frames are in the batch: a block sees ``(B*T, N, C)``. After q, k, v are split into heads,
the K and V of each temporal head (Δt ≠ 0) are re-indexed to frame t + Δt (`shift_qkv`: K
and V of the temporal heads only, both in one go on the packed projection; Q and the spatial
heads are not touched); then attention is the fused
`F.scaled_dot_product_attention`. No parameter and no multiply-add is added. With all Δt = 0
the modules compute exactly the original attention.

The modules reuse the original layers and parameter names (open_clip: ``in_proj_weight``,
``in_proj_bias``, ``out_proj``; timm: ``qkv``, ``q_norm``, ``k_norm``, ``proj``), so
pretrained checkpoints load with strict=True. The other Table 1 operators live in the same
modules, selected by `temporal_op` (see `TEMPORAL_OPS`); those that also move Q (``qkv_shift``,
``hr_qkv``) are dispatched in `_mix_qkv`, apart from STDHA's own path `_mix_packed`.

Temporal heads see the K/V of another frame at the same token positions, [cls] included.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from zeroi2v.config import CHANNEL_SHIFT_OPS
from zeroi2v.models.adapters import AdaptableMixin, transformer_blocks
from zeroi2v.models.stdha_shift import shift_frames_in_batch, shift_kv, shift_qkv
from zeroi2v.models.temporal_baselines import (
    DEFAULT_SHIFT_RATIO,
    SHIFT_FILLS,
    ShiftFill,
    cls_head_shift,
    head_channel_shift,
    shift_fold,
    token_channel_shift,
)

__all__ = [
    "TEMPORAL_OPS",
    "OpenClipSTDHA",
    "TimmSTDHA",
    "install_temporal_attention",
    "shift_kv",
    "shift_qkv",
]

# Paper Table 1 (a): "[cls] token shift" = cls_shift, "Shift QKV" = qkv_shift, "Shift KV" =
# kv_shift, "HR QKV" = hr_qkv, "HR KV (STDHA)" = stdha, each as the released ablation code
# defines it (temporal_baselines.py). channel_shift (all tokens' channels shifted before the
# QKV projection, TPS's channel shift in its own place) is not a Table 1 row.
TEMPORAL_OPS = ("none", "stdha", "cls_shift", "channel_shift", "kv_shift", "qkv_shift", "hr_qkv")
HEAD_RELOCATION_OPS = ("stdha", "hr_qkv")  # the operators that read `head_offsets`


class TemporalMixing(nn.Module):
    """What every video attention shares: per-head Δt, clip length and the temporal operator.

    Built from the attention it replaces (`attn`), whose layers `_adopt` takes over.
    """

    def __init__(
        self,
        attn: nn.Module,
        offsets: Sequence[int] | None,
        num_frames: int,
        temporal_op: str = "stdha",
        shift_ratio: float = DEFAULT_SHIFT_RATIO,
        shift_fill: ShiftFill = "own",
    ) -> None:
        super().__init__()
        self._adopt(attn)
        num_heads = attn.num_heads
        if temporal_op not in TEMPORAL_OPS:
            raise ValueError(f"unknown temporal_op '{temporal_op}'; choose one of {TEMPORAL_OPS}")
        offsets = [0] * num_heads if offsets is None else [int(dt) for dt in offsets]
        if len(offsets) != num_heads:
            raise ValueError(
                f"got {len(offsets)} head offsets for an attention with {num_heads} heads"
            )
        if temporal_op not in HEAD_RELOCATION_OPS and any(offsets):
            raise ValueError(
                f"head offsets {offsets} need temporal_op 'stdha' or 'hr_qkv', not '{temporal_op}'"
            )
        self.num_heads, self.offsets, self.num_frames = num_heads, offsets, num_frames
        if temporal_op in CHANNEL_SHIFT_OPS:  # fail at build time, not in the first forward
            width = getattr(attn, "embed_dim", None) or attn.num_heads * attn.head_dim
            per_head = temporal_op in ("kv_shift", "qkv_shift")
            shift_fold(width // num_heads if per_head else width, shift_ratio)
        if shift_fill not in SHIFT_FILLS:
            raise ValueError(f"unknown shift_fill '{shift_fill}'; choose one of {SHIFT_FILLS}")
        self.temporal_op, self.shift_ratio, self.shift_fill = temporal_op, shift_ratio, shift_fill
        self.train(attn.training)

    def _adopt(self, attn: nn.Module) -> None:
        """Check that `attn` is the attention this class replaces and take over its layers,
        under their own names (so that checkpoints load with strict=True)."""
        raise NotImplementedError

    def _mix_input(self, x: torch.Tensor) -> torch.Tensor:
        """Operators that act on the tokens before the QKV projection; x: (B*T, N, C)."""
        if self.temporal_op == "channel_shift":
            return token_channel_shift(x, self.num_frames, self.shift_ratio, self.shift_fill)
        return x

    def _mix_packed(self, qkv: torch.Tensor) -> torch.Tensor:
        """STDHA on the packed projection; qkv: (B*T, N, 3, heads, d).

        Before timm's q_norm / k_norm: they normalise each (token, head) vector on its own,
        so they commute with re-indexing frames.
        """
        if self.temporal_op != "stdha" or not any(self.offsets):
            return qkv
        qkv = qkv.unflatten(0, (-1, self.num_frames))  # (B, T, N, 3, heads, d)
        # this attention's own fresh projection: inference may rewrite it in place
        return shift_qkv(qkv, self.offsets, time_dim=1, overwrite=True).flatten(0, 1)

    def _mix_kv(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Operators that act on K and V after the split; k, v: (B*T, heads, N, d)."""
        shift = {"kv_shift": head_channel_shift, "cls_shift": cls_head_shift}.get(self.temporal_op)
        if shift is None:
            return k, v
        return tuple(shift(t, self.num_frames, self.shift_ratio, self.shift_fill) for t in (k, v))

    def _mix_qkv(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """All operators after the projection; q, k, v: (B*T, heads, N, d).

        ``qkv_shift`` (TPS-like "Shift QKV"): a fraction of each head's Q, K and V channels
        reads frame t∓1. ``hr_qkv`` ("HR QKV"): whole heads of Q, K and V read frame t + Δt,
        i.e. the head's output is relocated in time. Others: Q untouched, `_mix_kv`.
        """
        if self.temporal_op == "qkv_shift":
            return tuple(
                head_channel_shift(t, self.num_frames, self.shift_ratio, self.shift_fill)
                for t in (q, k, v)
            )
        if self.temporal_op == "hr_qkv" and any(self.offsets):
            return tuple(
                shift_frames_in_batch(t, self.offsets, self.num_frames, overwrite=True)
                for t in (q, k, v)
            )
        return (q, *self._mix_kv(k, v))

    def extra_repr(self) -> str:
        return (
            f"temporal_op={self.temporal_op}, offsets={self.offsets}, num_frames={self.num_frames}"
            + (
                f", shift_ratio={self.shift_ratio:g}, shift_fill={self.shift_fill}"
                if self.temporal_op in CHANNEL_SHIFT_OPS
                else ""
            )
        )


class OpenClipSTDHA(AdaptableMixin, TemporalMixing):
    """Drop-in for the `nn.MultiheadAttention` (batch_first) of open_clip's residual blocks.

    Same call signature as open_clip uses (``attn(x, x, x, need_weights=False,
    attn_mask=...)`` → tuple) and the same parameter names. Self-attention only.
    """

    adapt_params = ("in_proj_weight", "in_proj_bias")

    def _adopt(self, mha: nn.Module) -> None:
        if not mha.batch_first or not mha._qkv_same_embed_dim or mha.bias_k is not None:
            raise ValueError(
                "expected open_clip's batch_first self-attention nn.MultiheadAttention"
            )
        self.in_proj_weight, self.in_proj_bias = mha.in_proj_weight, mha.in_proj_bias
        self.out_proj = mha.out_proj
        self.dropout = mha.dropout
        self.adaptation = None

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor | None = None,
        value: torch.Tensor | None = None,
        need_weights: bool = False,
        attn_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, None]:
        # Self-attention only: K and V come from `query`. Compare shapes, not identity, since
        # DeepSpeed's ZeRO-3 forward hooks hand the same tensor over as distinct objects.
        if any(t is not None and t.shape != query.shape for t in (key, value)):
            raise ValueError("STDHA is self-attention: key and value must be the query tensor")
        if need_weights:
            raise ValueError("STDHA uses fused attention and cannot return attention weights")
        if attn_mask is not None and attn_mask.dtype == torch.bool:  # MHA: True = masked out
            attn_mask = torch.zeros_like(attn_mask, dtype=query.dtype).masked_fill(
                attn_mask, float("-inf")
            )
        x = self._mix_input(query)
        BT, N, C = x.shape
        qkv = self.project(x).view(BT, N, 3, self.num_heads, C // self.num_heads)
        qkv = self._mix_packed(qkv)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B*T, heads, N, d)
        q, k, v = self._mix_qkv(q, k, v)
        x = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )  # (B*T, heads, N, d)
        x = x.transpose(1, 2).reshape(BT, N, C)
        return self.out_proj(x), None


class TimmSTDHA(TemporalMixing):
    """Drop-in for timm's `Attention` (ViT); reuses its qkv / q_norm / k_norm / norm / proj."""

    def _adopt(self, attn: nn.Module) -> None:
        if getattr(attn, "gate", None) is not None:
            raise ValueError("gated timm attention is not supported by STDHA")
        self.head_dim, self.attn_dim = attn.head_dim, attn.num_heads * attn.head_dim
        self.qkv, self.q_norm, self.k_norm = attn.qkv, attn.q_norm, attn.k_norm
        self.attn_drop, self.norm = attn.attn_drop, attn.norm
        self.proj, self.proj_drop = attn.proj, attn.proj_drop

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False
    ) -> torch.Tensor:
        x = self._mix_input(x)
        BT, N, _ = x.shape
        qkv = self._mix_packed(self.qkv(x).view(BT, N, 3, self.num_heads, self.head_dim))
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B*T, heads, N, d)
        q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = self._mix_qkv(q, k, v)
        x = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attn_mask,
            is_causal=is_causal,
            dropout_p=self.attn_drop.p if self.training else 0.0,
        )  # (B*T, heads, N, d)
        x = self.norm(x.transpose(1, 2).reshape(BT, N, self.attn_dim))
        return self.proj_drop(self.proj(x))


def install_temporal_attention(
    model: nn.Module,
    offsets: Sequence[Sequence[int]] | None,
    num_frames: int,
    temporal_op: str = "stdha",
    shift_ratio: float = DEFAULT_SHIFT_RATIO,
    shift_fill: ShiftFill = "own",
) -> nn.Module:
    """Swap every ViT block's attention (open_clip or timm) for its video version, in place.

    `offsets`: one per-head Δt list per block (None: all spatial). `shift_ratio` (R_c) and
    `shift_fill` are read by the channel-shift operators only (`CHANNEL_SHIFT_OPS`).
    """
    from timm.layers import Attention as TimmAttention

    blocks = transformer_blocks(model)
    if offsets is None:
        offsets = [None] * len(blocks)
    if len(offsets) != len(blocks):
        raise ValueError(f"got head offsets for {len(offsets)} blocks, the model has {len(blocks)}")
    for block, dts in zip(blocks, offsets, strict=True):
        if isinstance(block.attn, nn.MultiheadAttention):
            video = OpenClipSTDHA
        elif type(block.attn) is TimmAttention:  # subclasses (RoPE, Swin windows) differ
            video = TimmSTDHA
        else:
            raise ValueError(f"no video attention for {type(block.attn).__name__}")
        block.attn = video(block.attn, dts, num_frames, temporal_op, shift_ratio, shift_fill)
    return model
