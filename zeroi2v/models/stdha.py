"""STDHA: spatial-temporal dual-headed attention, swapped into open_clip and timm ViTs.

Frames are in the batch: a block sees ``(B*T, N, C)``. After the QKV projection, the K and V
of each temporal head (Δt ≠ 0) are re-indexed to frame t + Δt (`STDHA`, i.e. `shift_qkv`: K
and V of the temporal heads only, both in one go on the packed projection; Q and the spatial
heads are not touched); then attention is the fused `F.scaled_dot_product_attention`. No
parameter and no multiply-add is added. With all Δt = 0 the modules compute exactly the
original attention.

The modules reuse the original layers and parameter names (open_clip: ``in_proj_weight``,
``in_proj_bias``, ``out_proj``; timm: ``qkv``, ``q_norm``, ``k_norm``, ``proj``), so
pretrained checkpoints load with strict=True. The temporal operator is an object picked by
name from `TEMPORAL_OPS` (as timm's `create_attn` picks an attention class from a table):
`STDHA` here, the other Table 1 rows in `temporal_baselines.py`; the attentions only call
its hooks.

Temporal heads see the K/V of another frame at the same token positions, [cls] included.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from zeroi2v.models.adapters import AdaptableMixin, transformer_blocks
from zeroi2v.models.stdha_shift import HeadRuns, shift_kv, shift_qkv
from zeroi2v.models.temporal_baselines import (
    DEFAULT_SHIFT_RATIO,
    ChannelShift,
    ClsShift,
    HeadRelocationQKV,
    KVShift,
    QKVShift,
    ShiftFill,
    TemporalOperator,
)

__all__ = [
    "STDHA",
    "TEMPORAL_OPS",
    "OpenClipSTDHA",
    "TimmSTDHA",
    "create_temporal_op",
    "install_temporal_attention",
    "shift_kv",
    "shift_qkv",
]


class STDHA(TemporalOperator):
    """Table 1 "HR KV (STDHA)": K and V of head h read frame t + Δt_h (`stdha_shift.py`).

    Acts on the packed projection ``(B*T, N, 3, heads, d)``, before timm's q_norm / k_norm:
    they normalise each (token, head) vector on its own, so they commute with re-indexing
    frames. The runs of equal Δt are found once, here.
    """

    name = "stdha"
    reads_offsets = True

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.runs = HeadRuns.packed(self.offsets)

    def packed(self, qkv: torch.Tensor) -> torch.Tensor:
        if not self.runs.runs:  # all heads spatial
            return qkv
        qkv = qkv.unflatten(0, (-1, self.num_frames))  # (B, T, N, 3, heads, d)
        # this attention's own fresh projection: inference may rewrite it in place
        return shift_qkv(qkv, self.runs, time_dim=1, overwrite=True).flatten(0, 1)


# Paper Table 1 (a): "[cls] token shift" = cls_shift, "Shift QKV" = qkv_shift, "Shift KV" =
# kv_shift, "HR QKV" = hr_qkv, "HR KV (STDHA)" = stdha, each as the released ablation code
# defines it (temporal_baselines.py). channel_shift (all tokens' channels shifted before the
# QKV projection, TPS's channel shift in its own place) is not a Table 1 row.
TEMPORAL_OPS: dict[str, type[TemporalOperator]] = {
    "none": TemporalOperator,
    "stdha": STDHA,
    "cls_shift": ClsShift,
    "channel_shift": ChannelShift,
    "kv_shift": KVShift,
    "qkv_shift": QKVShift,
    "hr_qkv": HeadRelocationQKV,
}


def create_temporal_op(temporal_op: str, *args: Any, **kwargs: Any) -> TemporalOperator:
    """The operator `temporal_op` names (timm's `create_attn` style); the other arguments
    are `TemporalOperator`'s: clip length, heads and head width of the attention, and the
    settings its operator reads."""
    if temporal_op not in TEMPORAL_OPS:
        raise ValueError(f"unknown temporal_op '{temporal_op}'; choose one of {list(TEMPORAL_OPS)}")
    return TEMPORAL_OPS[temporal_op](*args, **kwargs)


class TemporalMixing(nn.Module):
    """What every video attention shares: the attention it replaces (`_adopt` takes over its
    layers) and its temporal operator, `temporal` (a plain object: no parameters, no keys)."""

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
        self.num_heads = attn.num_heads
        self.temporal = create_temporal_op(
            temporal_op, num_frames, self.num_heads, attn.head_dim, offsets, shift_ratio, shift_fill
        )
        self.train(attn.training)

    @property
    def offsets(self) -> list[int]:
        """Per-head Δt (0 = spatial head)."""
        return self.temporal.offsets

    @property
    def num_frames(self) -> int:
        return self.temporal.num_frames

    @property
    def temporal_op(self) -> str:
        return self.temporal.name

    def _adopt(self, attn: nn.Module) -> None:
        """Check that `attn` is the attention this class replaces and take over its layers,
        under their own names (so that checkpoints load with strict=True)."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return repr(self.temporal)


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
        x = self.temporal.tokens(query)  # (B*T, N, C); STDHA: as is
        BT, N, C = x.shape
        qkv = self.project(x).view(BT, N, 3, self.num_heads, C // self.num_heads)
        qkv = self.temporal.packed(qkv)  # STDHA: K, V of head h read frame t + Δt_h
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B*T, heads, N, d)
        q, k, v = self.temporal.split(q, k, v)  # STDHA: as is
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
        x = self.temporal.tokens(x)  # (B*T, N, C); STDHA: as is
        BT, N, _ = x.shape
        qkv = self.qkv(x).view(BT, N, 3, self.num_heads, self.head_dim)
        qkv = self.temporal.packed(qkv)  # STDHA: K, V of head h read frame t + Δt_h
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B*T, heads, N, d)
        q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = self.temporal.split(q, k, v)  # STDHA: as is
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

    `offsets`: one per-head Δt list per block (None: all spatial), e.g. a config's
    ``model.offsets``. `shift_ratio` (R_c) and `shift_fill` are read by the channel-shift
    operators only.
    """
    # lazy: timm is slow to import, timm models only
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
