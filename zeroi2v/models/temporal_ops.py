"""Parameter-free temporal operators on frames-in-batch tensors (paper §1.1 and Table 1).

Everything here is a re-indexing of existing activations along time: no parameters, no
multiply-adds. Layout convention: the caller splits the batch into an explicit time axis
(``(B*T, ...) → (B, T, ...)``) and passes its position; frames of one clip are consecutive
in the batch (clip-major, frame-minor), which is what `VideoClassifier` produces.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch

# Fraction of channels the channel-shift baselines change (paper Table 1 compares at 1/6).
DEFAULT_SHIFT_RATIO = 1 / 6


def time_index(offsets: Sequence[int], num_frames: int, device=None) -> torch.Tensor:
    """Source frame of every (frame, head): ``(T, heads)`` long tensor.

    Boundary rule (DESIGN.md, as the official code): where t + Δt falls outside [0, T) the
    head reads its own frame t, i.e. it acts as a spatial head there. No zeros, no wrap.
    """
    dt = torch.as_tensor(list(offsets), dtype=torch.long, device=device)  # (heads,)
    t = torch.arange(num_frames, device=device)[:, None]  # (T, 1)
    src = t + dt[None, :]  # (T, heads)
    inside = (src >= 0) & (src < num_frames)
    return torch.where(inside, src, t.expand_as(src))


@functools.lru_cache(maxsize=512)
def _cached_index(offsets: tuple[int, ...], num_frames: int, device: torch.device) -> torch.Tensor:
    return time_index(offsets, num_frames, device)


def shift_kv(
    x: torch.Tensor, offsets: Sequence[int], time_dim: int = 1, head_dim: int = 2
) -> torch.Tensor:
    """STDHA re-indexing: head h of frame t reads ``x`` of frame ``t + offsets[h]``.

    `x` has an explicit time axis at `time_dim` and the heads at `head_dim`, any other axes
    anywhere, e.g. ViT K/V ``(B, T, heads, N, d)`` (defaults) or Swin window K/V
    ``(B, T, nW, heads, N, d)`` (``head_dim=3``). Apply it to K and V (never Q). One gather
    with a cached (T, heads) index; no Python loop over heads; identity when all Δt = 0.
    """
    time_dim, head_dim = time_dim % x.dim(), head_dim % x.dim()
    num_frames, num_heads = x.shape[time_dim], x.shape[head_dim]
    offsets = tuple(int(dt) for dt in offsets)
    if len(offsets) != num_heads:
        raise ValueError(f"got {len(offsets)} head offsets for a tensor with {num_heads} heads")
    if num_frames == 1 or not any(offsets):
        return x
    index = _cached_index(offsets, num_frames, x.device)  # (T, heads)
    if time_dim > head_dim:
        index = index.t()
    shape = [1] * x.dim()
    shape[time_dim], shape[head_dim] = num_frames, num_heads
    # expand() makes a stride-0 view, so the full-size index is never materialised
    return torch.gather(x, time_dim, index.view(shape).expand(x.shape))


def shift_frames_in_batch(x: torch.Tensor, offsets: Sequence[int], num_frames: int) -> torch.Tensor:
    """`shift_kv` for the ViT layout ``(B*T, heads, N, d)`` (frames in the batch dim)."""
    x = x.unflatten(0, (-1, num_frames))  # (B, T, heads, N, d)
    return shift_kv(x, offsets, time_dim=1, head_dim=2).flatten(0, 1)  # (B*T, heads, N, d)


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
