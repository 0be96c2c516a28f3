"""STDHA's re-indexing: head h of frame t reads the K/V of frame t + Δt_h (paper §3.1).

The rule, read first (`reference_shift` is it, in a few lines; the fast paths below are
tested against it): for every head h with offset Δt_h and every frame t of a clip of T
frames, K and V of (t, h) are replaced by K and V of (t + Δt_h, h); where t + Δt_h falls
outside [0, T), the head reads its own frame t (it is a spatial head there). No zeros, no
wrap-around, nothing learned, no multiply-add.

The rest is how `shift_kv` moves only the temporal heads' frames in training (`_ShiftKV`:
slice copies per run of equal Δt), inference (in place: one gather, one scatter) and export /
`torch.compile` (element-wise selects). The runs of equal Δt are a `HeadRuns`, computed once
when an attention is built. `shift_qkv` applies it to K and V of a packed QKV projection at
once.
Layout convention: the caller splits the batch into an explicit time axis
(``(B*T, ...) → (B, T, ...)``) and passes its position; frames of one clip are consecutive
in the batch (clip-major, frame-minor), which is what `VideoClassifier` produces. The other
temporal operators of Table 1 are in `temporal_baselines.py`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch


def time_index(offsets: Sequence[int], num_frames: int, device=None) -> torch.Tensor:
    """Source frame of every (frame, head): ``(T, heads)`` long tensor; the rule above."""
    dt = torch.as_tensor(list(offsets), dtype=torch.long, device=device)  # (heads,)
    t = torch.arange(num_frames, device=device)[:, None]  # (T, 1)
    src = t + dt[None, :]  # (T, heads): frame t + Δt_h ...
    inside = (src >= 0) & (src < num_frames)
    return torch.where(inside, src, t.expand_as(src))  # ... or, outside the clip, its own frame


def reference_shift(
    x: torch.Tensor, offsets: Sequence[int], time_dim: int = 1, head_dim: int = 2
) -> torch.Tensor:
    """The rule as one full-size gather: slow (it copies every head) but plainly right, and
    differentiable; `shift_kv` must equal it, values and gradients."""
    time_dim, head_dim = time_dim % x.dim(), head_dim % x.dim()
    src = time_index(offsets, x.shape[time_dim], x.device)  # (T, heads)
    if time_dim > head_dim:
        src = src.t()  # (heads, T): the index's axes in the order of x's
    shape = [1] * x.dim()
    shape[time_dim], shape[head_dim] = x.shape[time_dim], x.shape[head_dim]
    return torch.gather(x, time_dim, src.view(shape).expand(x.shape))


@dataclass(frozen=True)
class HeadRuns:
    """Per-head Δt and its maximal runs of consecutive heads sharing one Δt ≠ 0:
    ``(first head, count, Δt)``.

    Few in practice (temporal heads come first, grouped by Δt), so a shift is a handful of
    slice copies of the temporal heads and never touches the spatial ones. An attention
    builds its runs once (`of`, or `packed` for its QKV projection) and passes them to every
    call; `shift_kv` given a plain list of offsets makes the runs on each call.
    """

    offsets: tuple[int, ...]
    runs: tuple[tuple[int, int, int], ...]

    @classmethod
    def of(cls, offsets: Sequence[int]) -> HeadRuns:
        offsets = tuple(int(dt) for dt in offsets)
        runs, start = [], 0
        for h in range(1, len(offsets) + 1):
            if h == len(offsets) or offsets[h] != offsets[start]:
                if offsets[start]:
                    runs.append((start, h - start, offsets[start]))
                start = h
        return cls(offsets, tuple(runs))

    @classmethod
    def packed(cls, offsets: Sequence[int]) -> HeadRuns:
        """Runs of a packed projection ``(..., 3, heads, d)`` seen as 3·heads "heads" whose Δt
        are ``[0]·heads + offsets + offsets``: K and V of a temporal head move, Q never does."""
        return cls.of([0] * len(offsets) + [int(dt) for dt in offsets] * 2)


def _moved_frames(num_frames: int, dt: int) -> tuple[int, int, int]:
    """Frames of a Δt head that read another frame: ``(first target, first source, count)``.

    Δt > 0: frames [0, T−Δt) read [Δt, T); Δt < 0: frames [−Δt, T) read [0, T+Δt). The other
    frames read their own frame (boundary rule), so they keep their values: nothing to copy.
    """
    count = max(num_frames - abs(dt), 0)
    return (0, dt, count) if dt > 0 else (-dt, 0, count)


def _copy_moved_frames(
    out: torch.Tensor, src: torch.Tensor, runs: tuple, time_dim: int, head_dim: int
) -> None:
    """Write the re-indexed temporal heads of `src` into `out` (a different tensor)."""
    for first, count, dt in runs:
        to_t, from_t, frames = _moved_frames(out.shape[time_dim], dt)
        moved = src.narrow(head_dim, first, count).narrow(time_dim, from_t, frames)
        out.narrow(head_dim, first, count).narrow(time_dim, to_t, frames).copy_(moved)


@functools.lru_cache(maxsize=256)
def _move_index(
    runs: tuple, num_frames: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(target frame, source frame, head) of every moved (frame, head), as index tensors.

    Built once per (offsets, T, device) so the in-place shift is one gather and one scatter
    for all runs together, with no host-to-device copy per call. A cache rather than a part
    of `HeadRuns` because an attention does not know its device when it is built; never
    reached while compiling or tracing (those take `_shifted_select`).
    """
    moves = [
        (to_t + i, from_t + i, head)
        for first, count, dt in runs
        for head in range(first, first + count)
        for to_t, from_t, frames in [_moved_frames(num_frames, dt)]
        for i in range(frames)
    ]
    return tuple(torch.tensor(column, device=device) for column in zip(*moves, strict=True))


def _shift_in_place(x: torch.Tensor, runs: tuple, time_dim: int, head_dim: int) -> None:
    """Two operators in all, whatever the number of runs: gather the moved frames, write them."""
    to_t, from_t, head = _move_index(runs, x.shape[time_dim], x.device)
    where: list = [slice(None)] * x.dim()
    where[time_dim], where[head_dim] = from_t, head
    moved = x[tuple(where)]  # a new tensor: sources and targets may overlap
    where[time_dim] = to_t
    x[tuple(where)] = moved


def _shifted_select(x: torch.Tensor, runs: tuple, time_dim: int, head_dim: int) -> torch.Tensor:
    """Out-of-place shift as element-wise selects between `x` and `x` rolled along time.

    Index arithmetic only (no index tensors, no in-place writes): export tracers follow it,
    and `torch.compile` fuses it, forward and backward, into one kernel (a concatenation of
    slices became one copy kernel per piece, ~15 per block on the tiny ViT).
    """
    num_frames, heads = x.shape[time_dim], x.shape[head_dim]
    t = torch.arange(num_frames, device=x.device).view([-1] + [1] * (x.dim() - time_dim - 1))
    h = torch.arange(heads, device=x.device).view([-1] + [1] * (x.dim() - head_dim - 1))
    out = x
    for first, count, dt in runs:
        moved = (h >= first) & (h < first + count) & (t + dt >= 0) & (t + dt < num_frames)
        out = torch.where(moved, x.roll(-dt, time_dim), out)  # roll: frame t reads t + dt
    return out


class _ShiftKV(torch.autograd.Function):
    """Out-of-place shift: one copy of `x`, then slice copies of the temporal heads' frames.

    Backward is its transpose, also one copy plus slices: a moved frame's gradient goes back
    to its source frame; a frame that reads itself keeps its own gradient. (Autograd of
    in-place slice writes would copy the whole gradient once per slice; a gather's backward
    is a full-size scatter-add.)
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, runs: tuple, time_dim: int, head_dim: int) -> torch.Tensor:
        ctx.meta = (runs, time_dim, head_dim)
        out = x.clone()
        _copy_moved_frames(out, x, runs, time_dim, head_dim)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        runs, time_dim, head_dim = ctx.meta
        grad_in = grad.clone()
        for first, count, dt in runs:
            to_t, from_t, frames = _moved_frames(grad.shape[time_dim], dt)
            grad_run, grad_in_run = (g.narrow(head_dim, first, count) for g in (grad, grad_in))
            grad_in_run.narrow(time_dim, to_t, frames).zero_()  # these frames read elsewhere
            grad_in_run.narrow(time_dim, from_t, frames).add_(
                grad_run.narrow(time_dim, to_t, frames)
            )
        return grad_in, None, None, None


def shift_kv(
    x: torch.Tensor,
    offsets: Sequence[int] | HeadRuns,
    time_dim: int = 1,
    head_dim: int = 2,
    *,
    overwrite: bool = False,
) -> torch.Tensor:
    """STDHA re-indexing: head h of frame t reads ``x`` of frame ``t + offsets[h]``.

    `x` has an explicit time axis at `time_dim` and the heads at `head_dim`, any other axes
    anywhere, e.g. ViT K/V ``(B, T, heads, N, d)`` (defaults) or Swin window K/V
    ``(B, T, nW, heads, N, d)`` (``head_dim=3``). Apply it to K and V (never Q). Identity
    (`x` itself) when all Δt = 0. Only the temporal heads' frames are moved, as slice copies
    per run of equal Δt (`offsets` may be the `HeadRuns` an attention built once); no Python
    loop over heads, no gather index. Equal to `reference_shift`, values and gradients.

    ``overwrite=True`` says `x` is a fresh K/V that nothing else reads (the attention's own
    projection): when autograd is not recording it (inference), the temporal heads are
    rewritten in place, one gather and one scatter for all of them, and the spatial heads
    are not copied at all. Otherwise the result is a new tensor: under autograd `_ShiftKV`
    (one copy each way), else element-wise selects (`_shifted_select`). While tracing for
    export or compiling always the latter: the legacy ONNX exporter loses in-place writes
    through views, TorchScript cannot save an autograd.Function, and `torch.compile` fuses
    the selects into one kernel with an exact autograd transpose.
    """
    time_dim, head_dim = time_dim % x.dim(), head_dim % x.dim()
    num_frames, num_heads = x.shape[time_dim], x.shape[head_dim]
    heads = offsets if isinstance(offsets, HeadRuns) else HeadRuns.of(offsets)
    if len(heads.offsets) != num_heads:
        raise ValueError(
            f"got {len(heads.offsets)} head offsets for a tensor with {num_heads} heads"
        )
    runs = tuple(run for run in heads.runs if abs(run[2]) < num_frames)
    if not runs:  # all spatial, one frame, or every Δt out of range (own frame everywhere)
        return x
    if torch.jit.is_tracing() or torch.compiler.is_compiling():
        return _shifted_select(x, runs, time_dim, head_dim)
    if torch.is_grad_enabled() and x.requires_grad:
        return _ShiftKV.apply(x, runs, time_dim, head_dim)
    if overwrite:
        _shift_in_place(x, runs, time_dim, head_dim)
        return x
    return _shifted_select(x, runs, time_dim, head_dim)


def shift_qkv(
    qkv: torch.Tensor,
    offsets: Sequence[int] | HeadRuns,
    time_dim: int = 1,
    *,
    overwrite: bool = False,
) -> torch.Tensor:
    """`shift_kv` of K and V inside a packed projection ``(..., 3, heads, d)``, in one go.

    The Q/K/V axis and the heads are seen as one axis of 3·heads "heads" (`HeadRuns.packed`;
    `offsets` is the per-head Δt, or those packed runs built once): K and V of a temporal
    head move together, Q never does, so the merged model pays one re-indexing per block
    (eager inference: one gather, one scatter) instead of one per K and V and per run.
    """
    heads = qkv.shape[-2]
    runs = offsets if isinstance(offsets, HeadRuns) else HeadRuns.packed(offsets)
    packed = qkv.flatten(-3, -2)  # (..., 3*heads, d)
    packed = shift_kv(packed, runs, time_dim, head_dim=-2, overwrite=overwrite)
    return packed.unflatten(-2, (3, heads))  # (..., 3, heads, d)


def shift_frames_in_batch(
    x: torch.Tensor,
    offsets: Sequence[int] | HeadRuns,
    num_frames: int,
    *,
    overwrite: bool = False,
) -> torch.Tensor:
    """`shift_kv` for the ViT layout ``(B*T, heads, N, d)`` (frames in the batch dim)."""
    x = x.unflatten(0, (-1, num_frames))  # (B, T, heads, N, d)
    x = shift_kv(x, offsets, time_dim=1, head_dim=2, overwrite=overwrite)
    return x.flatten(0, 1)  # (B*T, heads, N, d)
