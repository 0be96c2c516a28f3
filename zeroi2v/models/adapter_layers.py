"""The adapter layers of paper Table 3: serial (linear, GELU, ST-Adapter), LoRA, slice deltas.

Each is a small module; how they attach to a block and fold into its weights is
`zeroi2v.models.adapters`. Mergeable ones expose ``affine()`` / ``delta_weight()``: the
exact affine map they add, in float64, for structural re-parameterisation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class LinearAdapter(nn.Module):
    """x ↦ x + s · up(dropout(down(x))). Affine at inference, so it folds into a neighbouring
    linear layer. ``scale`` s and ``dropout`` are the released code's recipe (0.5 / 0.1 for K400;
    ours: 1 / 0); dropout is the identity in eval mode, so it never affects the merge.
    """

    mergeable = True

    def __init__(
        self, dim: int, bottleneck: int, bias: bool = True, scale: float = 1.0, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.down = nn.Linear(dim, bottleneck, bias=bias)
        self.dropout = nn.Dropout(dropout)
        self.up = nn.Linear(bottleneck, dim, bias=bias)
        self.scale = scale
        nn.init.zeros_(self.up.weight)  # starts as the identity: training begins at the image model
        if bias:
            nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Both projections as 2-D GEMMs with their bias inside (addmm, whose bias cuBLAS adds
        in the GEMM's epilogue; a 3-D input that is not contiguous would take matmul + a
        separate add), the scale and the residual as one add: 3 operators, not 4 (a separate
        multiply by the scale). In bf16 (autocast or a bf16 module) the GEMMs run in bf16."""
        flat = x.reshape(-1, x.shape[-1])
        branch = self.up(self.dropout(self.activation(self.down(flat))))
        return torch.add(flat, branch, alpha=self.scale).view(x.shape)

    def activation(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden  # linear: the adapter stays affine, so it merges

    def affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(M, c) in float64 with adapter(x) = M x + c: M = I + s U D, c = s (U b_down + b_up)."""
        down, up = self.down.weight.double(), self.up.weight.double()
        matrix = torch.eye(down.shape[1], dtype=torch.float64, device=down.device)
        matrix = matrix + self.scale * (up @ down)
        shift = torch.zeros(up.shape[0], dtype=torch.float64, device=up.device)
        if self.down.bias is not None:
            shift = self.scale * (up @ self.down.bias.double() + self.up.bias.double())
        return matrix, shift


class GeluAdapter(LinearAdapter):
    """x ↦ x + s · up(dropout(gelu(down(x)))): the non-linear baseline of Table 3; no merge."""

    mergeable = False

    def activation(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.gelu(hidden)


class STAdapter(nn.Module):
    """ST-Adapter: x ↦ x + up(dwconv3d(down(x))), the conv over each clip's (T, h, w) grid.

    Kernel (3, 1, 1) as ST-Adapter's default; it mixes frames, so it cannot fold into a
    per-frame linear layer. Expects tokens ``(B*T, prefix + h*w, C)``. Prefix ([cls]) tokens
    are adapted too, their conv being the kernel's spatial centre tap (= the full kernel for
    (3, 1, 1)): ST-Adapter leaves [cls] untouched, which under full adaptation would leave
    the last block's adapters after W_O and around the MLP without effect on a [cls]-pooled
    feature (their parameters would get zero gradients).
    """

    mergeable = False

    def __init__(
        self,
        dim: int,
        bottleneck: int,
        num_frames: int,
        grid: tuple[int, int],
        num_prefix_tokens: int,
        kernel: tuple[int, int, int] = (3, 1, 1),
    ) -> None:
        super().__init__()
        self.num_frames, self.grid, self.num_prefix_tokens = (
            num_frames,
            tuple(grid),
            num_prefix_tokens,
        )
        self.down = nn.Linear(dim, bottleneck)
        self.conv = nn.Conv3d(
            bottleneck, bottleneck, kernel, padding=tuple(k // 2 for k in kernel), groups=bottleneck
        )
        self.up = nn.Linear(bottleneck, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p, (h, w), t = self.num_prefix_tokens, self.grid, self.num_frames
        if x.shape[1] != p + h * w:
            raise ValueError(f"ST-Adapter expects {p}+{h}x{w} tokens, got {x.shape[1]}")
        z = self.down(x).unflatten(0, (-1, t))  # (B, T, p + h*w, k)
        grid = z[:, :, p:].unflatten(2, (h, w)).permute(0, 4, 1, 2, 3)  # (B, k, T, h, w)
        grid = self.conv(grid).permute(0, 2, 3, 4, 1).flatten(2, 3)  # (B, T, h*w, k)
        kt, kh, kw = self.conv.kernel_size
        centre = self.conv.weight[:, :, :, kh // 2 : kh // 2 + 1, kw // 2 : kw // 2 + 1]
        prefix = z[:, :, :p].permute(0, 3, 1, 2).unsqueeze(-1)  # (B, k, T, p, 1)
        prefix = F.conv3d(
            prefix, centre, self.conv.bias, padding=(kt // 2, 0, 0), groups=self.conv.groups
        )  # (B, k, T, p, 1)
        prefix = prefix.squeeze(-1).permute(0, 2, 3, 1)  # (B, T, p, k)
        z = torch.cat([prefix, grid], dim=2).flatten(0, 1)  # (B*T, p + h*w, k)
        return x + self.up(z)


class LoRA(nn.Module):
    """Parallel low-rank update B·A·scaling of a (out, in) weight; A random, B zero (Hu et al.)."""

    def __init__(self, in_features: int, out_features: int, rank: int, scaling: float = 1.0):
        super().__init__()
        self.A = nn.Parameter(torch.empty(rank, in_features))
        self.B = nn.Parameter(torch.zeros(out_features, rank))
        nn.init.kaiming_uniform_(self.A, a=5**0.5)
        self.scaling = scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x, self.A), self.B) * self.scaling

    def delta_weight(self) -> torch.Tensor:
        return (self.B.double() @ self.A.double()) * self.scaling


class SliceDelta(nn.Module):
    """Trainable additive delta on some rows (dim 0) or columns (dim 1) of a frozen weight.

    Only the selected slices can change, and the frozen rest gets no gradient and no weight
    decay (it is not a parameter of this module), unlike masking the gradient of the full W.
    """

    def __init__(self, weight_shape: Sequence[int], index: torch.Tensor, dim: int) -> None:
        super().__init__()
        shape = list(weight_shape)
        shape[dim] = len(index)
        self.dim = dim
        self.register_buffer("index", index.long(), persistent=False)
        self.weight = nn.Parameter(torch.zeros(shape))

    def apply_to(self, weight: torch.Tensor) -> torch.Tensor:
        return weight.index_add(self.dim, self.index, self.weight.to(weight.dtype))
