"""The temporal operators STDHA is compared with in paper Table 1, beside `stdha_shift.py`.

Like STDHA they only move existing activations along time (no parameters, no multiply-adds),
but they move a fraction of the *channels* (TSM / TokShift / TPS style), and frames outside
the clip give zeros, as in those papers; STDHA's own-frame rule is specific to STDHA.
Layout: frames in the batch dim, ``(B*T, ...)``, clip-major, as `VideoClassifier` produces.
"""

from __future__ import annotations

import torch

# Fraction of channels the channel-shift baselines change (paper Table 1 compares at 1/6).
DEFAULT_SHIFT_RATIO = 1 / 6


def temporal_channel_shift(x: torch.Tensor, fold: int, time_dim: int = 1) -> torch.Tensor:
    """TSM-style shift on the last axis: channels [0, fold) read frame t−1, [fold, 2·fold)
    read frame t+1, the rest stay. Out-of-range frames give zeros, as in TSM / TokShift /
    TPS (the baselines this reproduces); STDHA's own-frame rule is specific to STDHA.
    """
    num_frames = x.shape[time_dim]
    if fold == 0 or num_frames == 1:
        return x
    back, ahead, rest = x.split([fold, fold, x.shape[-1] - 2 * fold], dim=-1)
    pad = torch.zeros_like(back.narrow(time_dim, 0, 1))
    back = torch.cat([pad, back.narrow(time_dim, 0, num_frames - 1)], dim=time_dim)  # t ← t−1
    ahead = torch.cat([ahead.narrow(time_dim, 1, num_frames - 1), pad], dim=time_dim)  # t ← t+1
    return torch.cat([back, ahead, rest], dim=-1)


def shift_fold(channels: int, ratio: float) -> int:
    """Channels moved in each direction so that a fraction `ratio` of them changes."""
    return max(1, round(channels * ratio / 2))


def token_channel_shift(x: torch.Tensor, num_frames: int, ratio: float) -> torch.Tensor:
    """Temporal channel shift of all tokens ``(B*T, N, C)`` (TPS-like, before attention)."""
    fold = shift_fold(x.shape[-1], ratio)
    x = x.unflatten(0, (-1, num_frames))  # (B, T, N, C)
    return temporal_channel_shift(x, fold, time_dim=1).flatten(0, 1)  # (B*T, N, C)


def cls_token_shift(x: torch.Tensor, num_frames: int, ratio: float) -> torch.Tensor:
    """Temporal channel shift of the [cls] token (token 0) only (TokShift, paper ref [79])."""
    fold = shift_fold(x.shape[-1], ratio)
    cls = x[:, :1].unflatten(0, (-1, num_frames))  # (B, T, 1, C)
    cls = temporal_channel_shift(cls, fold, time_dim=1).flatten(0, 1)  # (B*T, 1, C)
    return torch.cat([cls, x[:, 1:]], dim=1)


def head_channel_shift(x: torch.Tensor, num_frames: int, ratio: float) -> torch.Tensor:
    """Temporal shift of a fraction of each head's channels of K or V ``(B*T, heads, N, d)``."""
    fold = shift_fold(x.shape[-1], ratio)
    x = x.unflatten(0, (-1, num_frames))  # (B, T, heads, N, d)
    return temporal_channel_shift(x, fold, time_dim=1).flatten(0, 1)  # (B*T, heads, N, d)


class ClsShiftBeforeMLP:
    """Forward pre-hook for a block's MLP: TokShift also shifts the [cls] token before the MLP.

    A picklable callable (not a lambda) so models with it deep-copy and pickle.
    """

    def __init__(self, num_frames: int, ratio: float = DEFAULT_SHIFT_RATIO) -> None:
        self.num_frames, self.ratio = num_frames, ratio

    def __call__(self, module: torch.nn.Module, args: tuple) -> tuple:
        return (cls_token_shift(args[0], self.num_frames, self.ratio), *args[1:])
