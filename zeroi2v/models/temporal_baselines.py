"""The temporal operators STDHA is compared with in paper Table 1, beside `stdha_shift.py`.

Like STDHA they only move existing activations along time (no parameters, no multiply-adds),
but they move a fraction R_c of the *channels*. Each follows the paper's released ablation
code (`mmaction/models/common/stdha_ablation.py` of the ZeroI2V repository, `TemporalShift`,
the module behind the paper's Table 1), whose rules are, for a (T, channels) slice:

* channels [0, fold) of frame t read frame t−1, channels [fold, 2·fold) read frame t+1, the
  rest stay; ``fold = channels // shift_div`` with ``shift_div = 2 / R_c`` (12 for the
  paper's R_c = 1/6), i.e. ``floor(channels · R_c / 2)``;
* frames outside the clip keep their *own* values (the released code clones the tensor and
  overwrites only the in-range frames), the rule STDHA's temporal heads follow too.
  ``fill="zeros"`` gives TSM / TokShift's rule instead (the frame outside the clip is zero).

Which slice each Table 1 row shifts (after the QKV projection, like STDHA):
``kv_shift`` / ``qkv_shift`` — the first 2·fold channels of *every head* of K and V (and Q),
fold taken from the head dim (the released ``ops_type='tcs'``); ``cls_shift`` — the [cls]
token (token 0) of K and V, fold taken from the whole width (``ops_type='token_shift'`` with
the default ``shift_pattern='kv'``). ``channel_shift`` (not a Table 1 row) shifts all tokens'
channels before the projection (TPS's channel shift), with the same fold and fill rules.
Layout: frames in the batch dim, ``(B*T, ...)``, clip-major, as `VideoClassifier` produces.

Each operator is a small class (`TemporalOperator` and its subclasses, below the functions)
that overrides the one hook where it acts; `stdha.TEMPORAL_OPS` maps `model.temporal_op` to
its class, so the video attentions call the hooks and know no operator by name.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch

from zeroi2v.models.stdha_shift import HeadRuns, shift_frames_in_batch

# Fraction of channels the channel-shift baselines change (paper Table 1 compares at 1/6).
DEFAULT_SHIFT_RATIO = 1 / 6
ShiftFill = Literal["own", "zeros"]
SHIFT_FILLS = ("own", "zeros")


def temporal_channel_shift(
    x: torch.Tensor, fold: int, time_dim: int = 1, fill: ShiftFill = "own"
) -> torch.Tensor:
    """Channels [0, fold) of the last axis read frame t−1, [fold, 2·fold) read frame t+1, the
    rest stay. Where t∓1 is outside the clip: the frame's own values (``fill="own"``, the
    released code) or zeros (``fill="zeros"``, TSM / TokShift)."""
    if fill not in SHIFT_FILLS:
        raise ValueError(f"fill must be one of {SHIFT_FILLS}, not {fill!r}")
    num_frames = x.shape[time_dim]
    if num_frames == 1:
        return x
    back, ahead, rest = x.split([fold, fold, x.shape[-1] - 2 * fold], dim=-1)
    first, last = back.narrow(time_dim, 0, 1), ahead.narrow(time_dim, num_frames - 1, 1)
    if fill == "zeros":
        first, last = torch.zeros_like(first), torch.zeros_like(last)
    back = torch.cat([first, back.narrow(time_dim, 0, num_frames - 1)], dim=time_dim)  # t←t−1
    ahead = torch.cat([ahead.narrow(time_dim, 1, num_frames - 1), last], dim=time_dim)  # t←t+1
    return torch.cat([back, ahead, rest], dim=-1)


def shift_fold(channels: int, ratio: float) -> int:
    """Channels moved in each direction: the released ``channels // shift_div`` with
    ``shift_div = 2 / ratio`` (the epsilon keeps 72 · (1/6) / 2 at 6, not 5.999…)."""
    fold = math.floor(channels * ratio / 2 + 1e-9)
    if fold == 0:
        raise ValueError(
            f"model.shift_ratio {ratio:g} moves no channel of {channels} "
            f"(floor({channels} * ratio / 2) = 0); raise it to at least {2 / channels:g}"
        )
    return fold


def token_channel_shift(
    x: torch.Tensor, num_frames: int, ratio: float, fill: ShiftFill = "own"
) -> torch.Tensor:
    """Temporal channel shift of all tokens ``(B*T, N, C)`` (TPS-like, before attention)."""
    fold = shift_fold(x.shape[-1], ratio)
    x = x.unflatten(0, (-1, num_frames))  # (B, T, N, C)
    return temporal_channel_shift(x, fold, 1, fill).flatten(0, 1)  # (B*T, N, C)


def cls_head_shift(
    x: torch.Tensor, num_frames: int, ratio: float, fill: ShiftFill = "own"
) -> torch.Tensor:
    """The released ``token_shift``: the [cls] token of K or V ``(B*T, heads, N, d)``, its
    channels taken across heads (channel h·d + j), fold from the whole width heads·d."""
    BT, heads, N, d = x.shape
    fold = shift_fold(heads * d, ratio)
    cls = x[:, :, 0].reshape(-1, num_frames, heads * d)  # (B, T, heads·d)
    cls = temporal_channel_shift(cls, fold, 1, fill).view(BT, heads, 1, d)
    return torch.cat([cls, x[:, :, 1:]], dim=2)  # (B*T, heads, N, d)


def head_channel_shift(
    x: torch.Tensor, num_frames: int, ratio: float, fill: ShiftFill = "own"
) -> torch.Tensor:
    """The released ``tcs``: a fraction of each head's channels of Q, K or V
    ``(B*T, heads, N, d)``, fold from the head dim d."""
    fold = shift_fold(x.shape[-1], ratio)
    x = x.unflatten(0, (-1, num_frames))  # (B, T, heads, N, d)
    return temporal_channel_shift(x, fold, 1, fill).flatten(0, 1)  # (B*T, heads, N, d)


QKV = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class TemporalOperator:
    """``none``, and what every Table 1 operator shares: the clip length and the hooks.

    A video attention calls three hooks, each the identity here; an operator overrides the
    one where it acts: `tokens` before the QKV projection (``(B*T, N, C)``), `packed` on the
    packed projection (``(B*T, N, 3, heads, d)``, before timm's q_norm / k_norm) and `split`
    on q, k, v (each ``(B*T, heads, N, d)``, after the norms). Built once per attention, from
    its number of heads and head width, so a bad setting fails at build time.
    """

    name = "none"
    reads_offsets = False  # True: whole heads move by Δt (model.head_offsets)

    def __init__(
        self,
        num_frames: int,
        num_heads: int,
        head_dim: int,
        offsets: Sequence[int] | None = None,
        shift_ratio: float = DEFAULT_SHIFT_RATIO,
        shift_fill: ShiftFill = "own",
    ) -> None:
        offsets = [0] * num_heads if offsets is None else [int(dt) for dt in offsets]
        if len(offsets) != num_heads:
            raise ValueError(
                f"got {len(offsets)} head offsets for an attention with {num_heads} heads"
            )
        if not self.reads_offsets and any(offsets):
            raise ValueError(
                f"head offsets {offsets} need temporal_op 'stdha' or 'hr_qkv', not '{self.name}'"
            )
        if shift_fill not in SHIFT_FILLS:
            raise ValueError(f"unknown shift_fill '{shift_fill}'; choose one of {SHIFT_FILLS}")
        self.num_frames, self.offsets = num_frames, offsets
        self.shift_ratio, self.shift_fill = shift_ratio, shift_fill

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def packed(self, qkv: torch.Tensor) -> torch.Tensor:
        return qkv

    def split(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> QKV:
        return q, k, v

    def __repr__(self) -> str:
        return f"temporal_op={self.name}, offsets={self.offsets}, num_frames={self.num_frames}"


class _ChannelShift(TemporalOperator):
    """The operators that move a fraction `shift_ratio` of channels (they read `shift_fill`)."""

    per_head = False  # the fold is taken from the head dim (else from the whole width)

    def __init__(self, num_frames: int, num_heads: int, head_dim: int, *args, **kwargs) -> None:
        super().__init__(num_frames, num_heads, head_dim, *args, **kwargs)
        shift_fold(head_dim if self.per_head else num_heads * head_dim, self.shift_ratio)

    def shift(self, fn, x: torch.Tensor) -> torch.Tensor:
        return fn(x, self.num_frames, self.shift_ratio, self.shift_fill)

    def __repr__(self) -> str:
        return (
            f"{super().__repr__()}, shift_ratio={self.shift_ratio:g}, shift_fill={self.shift_fill}"
        )


class ChannelShift(_ChannelShift):
    """All tokens' channels, before the projection (TPS's channel shift; not a Table 1 row)."""

    name = "channel_shift"

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        return self.shift(token_channel_shift, x)


class ClsShift(_ChannelShift):
    """Table 1 "[cls] token shift": the [cls] token of K and V."""

    name = "cls_shift"

    def split(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> QKV:
        return q, self.shift(cls_head_shift, k), self.shift(cls_head_shift, v)


class KVShift(_ChannelShift):
    """Table 1 "Shift KV": a fraction of each head's channels of K and V."""

    name = "kv_shift"
    per_head = True

    def split(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> QKV:
        return q, self.shift(head_channel_shift, k), self.shift(head_channel_shift, v)


class QKVShift(_ChannelShift):
    """Table 1 "Shift QKV" (TPS-like): a fraction of each head's channels of Q, K and V."""

    name = "qkv_shift"
    per_head = True

    def split(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> QKV:
        return tuple(self.shift(head_channel_shift, t) for t in (q, k, v))


class HeadRelocationQKV(TemporalOperator):
    """Table 1 "HR QKV": whole heads of Q, K *and* V read frame t + Δt, i.e. the head's
    output is relocated in time (STDHA, "HR KV", leaves Q in place)."""

    name = "hr_qkv"
    reads_offsets = True

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.runs = HeadRuns.of(self.offsets)

    def split(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> QKV:
        if not self.runs.runs:
            return q, k, v
        return tuple(
            shift_frames_in_batch(t, self.runs, self.num_frames, overwrite=True) for t in (q, k, v)
        )
