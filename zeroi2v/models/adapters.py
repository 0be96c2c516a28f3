"""Adapters that attach to the frozen linear maps of a transformer block (paper §1.2, Table 3).

Every trainable addition to one frozen linear map ``y = W x + b`` lives in one `Adaptation`
module, owned by the layer that holds W (`AdaptedLinear`, or the open_clip attention for its
fused ``in_proj_weight``). The layer keeps its own ``weight``/``bias`` names, so pretrained
checkpoints load strictly and, after `.merge()`, the state dict is the plain backbone again.

    y = post( (W + Δ) · pre(x) + b + lora(x) )

- ``pre``/``post``: serial adapters before / after W (`LinearAdapter` merges, `GeluAdapter`
  and `STAdapter` do not); ``pre`` may be one adapter per output chunk (separate Q/K/V).
- ``lora``: parallel low-rank update; ``delta``: trainable rows/columns of W (temporal heads).

Blocks are addressed by *role*, not by library: `block_sites` maps the roles ``qkv``, ``out``,
``fc1``, ``fc2`` to the layers of timm ViT / timm Swin blocks (``attn.qkv``, ``attn.proj``,
``mlp.fc1``, ``mlp.fc2``) and open_clip blocks (``attn`` itself, ``attn.out_proj``,
``mlp.c_fc``, ``mlp.c_proj``). Any block with ``.attn`` and ``.mlp`` of either naming works.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from zeroi2v.models.adapter_layers import (
    GeluAdapter,
    LinearAdapter,
    LoRA,
    SliceDelta,
    STAdapter,
)

__all__ = [
    "Adaptation",
    "AdaptedLinear",
    "GeluAdapter",
    "LinearAdapter",
    "LoRA",
    "STAdapter",
    "SliceDelta",
    "attach_adapters",
    "block_sites",
    "mark_trainable",
    "merge_adapters",
    "transformer_blocks",
]

# ----------------------------------------------------------------------------- adaptation


class Adaptation(nn.Module):
    """All trainable additions to one frozen linear map; see the module docstring."""

    def __init__(
        self,
        pre: nn.Module | Sequence[nn.Module] | None = None,
        post: nn.Module | None = None,
        lora: LoRA | None = None,
        delta: SliceDelta | None = None,
    ) -> None:
        super().__init__()
        self.pre = nn.ModuleList(pre) if isinstance(pre, Sequence) else pre
        self.post, self.lora, self.delta = post, lora, delta

    def forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
        if self.delta is not None:
            weight = self.delta.apply_to(weight)
        if isinstance(self.pre, nn.ModuleList):  # one adapter per output chunk (Q, K, V)
            chunks = len(self.pre)
            biases = bias.chunk(chunks) if bias is not None else [None] * chunks
            y = torch.cat(
                [
                    F.linear(adapter(x), w, b)
                    for adapter, w, b in zip(self.pre, weight.chunk(chunks), biases, strict=True)
                ],
                dim=-1,
            )
        else:
            y = F.linear(self.pre(x) if self.pre is not None else x, weight, bias)
        if self.lora is not None:
            y = y + self.lora(x)
        return self.post(y) if self.post is not None else y

    def serial_adapters(self) -> list[nn.Module]:
        pre = list(self.pre) if isinstance(self.pre, nn.ModuleList) else [self.pre]
        return [a for a in [*pre, self.post] if a is not None]

    @property
    def mergeable(self) -> bool:
        return all(getattr(a, "mergeable", False) for a in self.serial_adapters())

    @torch.no_grad()
    def fold(
        self, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(W', b') with W' x + b' == forward(x, W, b); computed in float64."""
        blocking = [type(a).__name__ for a in self.serial_adapters() if not a.mergeable]
        if blocking:
            raise ValueError(f"{blocking[0]} is not linear per frame and cannot be merged")
        w = weight.double()
        b = bias.double() if bias is not None else torch.zeros_like(w[:, 0])
        if self.delta is not None:
            w = self.delta.apply_to(w)
        if self.pre is not None:  # before W: W' = W M, b' = W c + b (chunk-wise)
            pre = list(self.pre) if isinstance(self.pre, nn.ModuleList) else [self.pre]
            ws, bs = w.chunk(len(pre)), b.chunk(len(pre))
            folded = [
                (wi @ m, wi @ c + bi)
                for (m, c), wi, bi in zip((a.affine() for a in pre), ws, bs, strict=True)
            ]
            w, b = torch.cat([f[0] for f in folded]), torch.cat([f[1] for f in folded])
        if self.lora is not None:
            w = w + self.lora.delta_weight()
        if self.post is not None:  # after W: W' = M W, b' = M b + c
            m, c = self.post.affine()
            w, b = m @ w, m @ b + c
        if bias is None:
            if b.abs().max() > 0:
                raise ValueError("folding would create a bias for a layer that has none")
            return w.to(weight.dtype), None
        return w.to(weight.dtype), b.to(bias.dtype)


class AdaptableMixin:
    """A layer holding a frozen W (and b) plus an optional `adaptation`; `merge()` folds it.

    Subclasses name their parameters in `adapt_params` (so open_clip's ``in_proj_weight``
    keeps its checkpoint name) and route the projection through `project`.
    """

    adapt_params: tuple[str, str] = ("weight", "bias")
    adaptation: Adaptation | None

    def project(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = (getattr(self, name) for name in self.adapt_params)
        if self.adaptation is None:
            return F.linear(x, weight, bias)
        return self.adaptation(x, weight, bias)

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the adaptation into W, b and drop it; a second call does nothing."""
        if self.adaptation is None:
            return
        weight, bias = (getattr(self, name) for name in self.adapt_params)
        new_weight, new_bias = self.adaptation.fold(weight, bias)
        weight.copy_(new_weight)
        if bias is not None:
            bias.copy_(new_bias)
        self.adaptation = None


class AdaptedLinear(AdaptableMixin, nn.Linear):
    """`nn.Linear` (same ``weight``/``bias`` parameters, same names) with an `adaptation`."""

    def __init__(self, linear: nn.Linear) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias  # shared, not copied
        self.adaptation = None
        self.train(linear.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(x)

    def to_linear(self) -> nn.Linear:
        """A plain `nn.Linear` sharing the (merged) parameters."""
        self.merge()
        plain = nn.Linear(
            self.in_features, self.out_features, bias=self.bias is not None, device="meta"
        )
        plain.weight, plain.bias = self.weight, self.bias
        return plain.train(self.training)


# ----------------------------------------------------------------------------- block roles

ROLES = ("qkv", "out", "fc1", "fc2")
_NAMES = {  # role -> (parent attribute, child attribute) per naming; child None = parent itself
    "timm": {
        "qkv": ("attn", "qkv"),
        "out": ("attn", "proj"),
        "fc1": ("mlp", "fc1"),
        "fc2": ("mlp", "fc2"),
    },
    "open_clip": {
        "qkv": ("attn", None),
        "out": ("attn", "out_proj"),
        "fc1": ("mlp", "c_fc"),
        "fc2": ("mlp", "c_proj"),
    },
}


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """Blocks (modules with ``.attn`` and ``.mlp``) in forward order: ViT, Swin, open_clip."""
    return [m for m in model.modules() if hasattr(m, "attn") and hasattr(m, "mlp")]


def block_sites(block: nn.Module) -> dict[str, AdaptableMixin]:
    """Role → adaptable layer of one block; plain `nn.Linear`s are swapped for `AdaptedLinear`."""
    naming = "open_clip" if hasattr(block.mlp, "c_fc") else "timm"
    sites = {}
    for role, (parent_name, child_name) in _NAMES[naming].items():
        parent = getattr(block, parent_name)
        if child_name is None:
            if not isinstance(parent, AdaptableMixin):
                raise ValueError(
                    f"{type(parent).__name__} cannot take adapters; install the temporal "
                    "attention (zeroi2v.models.stdha) before adapting an open_clip model"
                )
            sites[role] = parent
            continue
        layer = getattr(parent, child_name)
        if not isinstance(layer, AdaptableMixin):
            layer = AdaptedLinear(layer)
            setattr(parent, child_name, layer)
        sites[role] = layer
    return sites


def adaptations(model: nn.Module) -> list[Adaptation]:
    return [m for m in model.modules() if isinstance(m, Adaptation)]


def merge_adapters(model: nn.Module) -> nn.Module:
    """Fold every adaptation in place and turn `AdaptedLinear`s back into `nn.Linear`s."""
    for name, module in list(model.named_modules()):
        if isinstance(module, AdaptedLinear):
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, module.to_linear())
        elif isinstance(module, AdaptableMixin):
            module.merge()
    return model


# ----------------------------------------------------------------------------- strategies

SERIAL_ADAPTERS = {"zeroi2v": LinearAdapter, "gelu_adapter": GeluAdapter, "st_adapter": STAdapter}
STRATEGIES = (*SERIAL_ADAPTERS, "lora", "temporal_heads_only", "full_finetune", "linear_probe")


def attach_adapters(
    model: nn.Module,
    strategy: str,
    *,
    num_adapters: int = 4,
    bottleneck_ratio: float = 0.25,
    bottleneck_width: int | None = None,
    lora_rank: int = 16,
    num_frames: int = 1,
    token_grid: tuple[int, int] | None = None,
    num_prefix_tokens: int = 1,
    adapter_scale: float = 1.0,
    adapter_dropout: float = 0.0,
) -> None:
    """Give every transformer block of `model` the trainable parts of `strategy` (Table 3).

    - zeroi2v / gelu_adapter / st_adapter ("full adaptation"): serial adapters before the QKV
      projection (one shared, or Q/K/V separately with ``num_adapters=6``), after the
      attention output projection, before MLP fc1 and after MLP fc2. Bottleneck =
      ``bottleneck_width`` or round(ratio × the adapter's width). Linear / GELU adapters
      scale their branch by ``adapter_scale`` and drop out ``adapter_dropout`` inside it.
    - lora: parallel rank-``lora_rank`` update of the fused QKV and the output projection.
    - temporal_heads_only: trainable deltas on the temporal heads' rows of W_Q, W_K, W_V and
      columns of W_O (heads with Δt ≠ 0 in ``block.attn.offsets``); biases stay frozen.
    - full_finetune / linear_probe: nothing to attach (see `mark_trainable`).
    Adapters start as the identity (up = 0, LoRA B = 0, deltas 0).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown adaptation strategy '{strategy}'; choose one of {STRATEGIES}")
    if num_adapters not in (4, 6):
        raise ValueError(f"num_adapters must be 4 or 6, got {num_adapters}")
    if strategy == "st_adapter" and token_grid is None:
        raise ValueError(
            "st_adapter needs the token grid of a ViT backbone (not supported on Swin)"
        )
    if strategy in ("full_finetune", "linear_probe"):
        return
    blocks = transformer_blocks(model)
    if not blocks:
        raise ValueError(f"found no transformer blocks (.attn and .mlp) in {type(model).__name__}")
    for block in blocks:
        sites = block_sites(block)
        if strategy in SERIAL_ADAPTERS:
            _attach_serial(
                sites,
                strategy,
                num_adapters,
                bottleneck_ratio,
                bottleneck_width,
                num_frames,
                token_grid,
                num_prefix_tokens,
                (adapter_scale, adapter_dropout),
            )
        elif strategy == "lora":
            for role in ("qkv", "out"):
                out_features, in_features = _weight(sites[role]).shape
                lora = LoRA(in_features, out_features, lora_rank)
                sites[role].adaptation = Adaptation(lora=_like(lora, sites[role]))
        else:
            _attach_temporal_heads(block, sites)


def _weight(site: AdaptableMixin) -> torch.Tensor:
    return getattr(site, site.adapt_params[0])


def _has_bias(site: AdaptableMixin) -> bool:
    return getattr(site, site.adapt_params[1]) is not None


def _like(module: nn.Module, site: AdaptableMixin) -> nn.Module:
    weight = _weight(site)
    return module.to(device=weight.device, dtype=weight.dtype)


def _attach_serial(
    sites, strategy, num_adapters, ratio, width, num_frames, grid, prefix, scale_dropout
) -> None:
    def make(site: AdaptableMixin, dim: int) -> nn.Module:
        bottleneck = width or max(1, round(ratio * dim))
        if strategy == "st_adapter":
            adapter = STAdapter(dim, bottleneck, num_frames, grid, prefix)
        else:  # a bias-free layer gets bias-free adapters, so folding never invents a bias
            scale, dropout = scale_dropout
            adapter = SERIAL_ADAPTERS[strategy](
                dim, bottleneck, bias=_has_bias(site), scale=scale, dropout=dropout
            )
        return _like(adapter, site)

    qkv, out, fc1, fc2 = (sites[role] for role in ROLES)
    dim = _weight(qkv).shape[1]
    pre = [make(qkv, dim) for _ in range(3)] if num_adapters == 6 else make(qkv, dim)
    qkv.adaptation = Adaptation(pre=pre)
    out.adaptation = Adaptation(post=make(out, _weight(out).shape[0]))
    fc1.adaptation = Adaptation(pre=make(fc1, _weight(fc1).shape[1]))
    fc2.adaptation = Adaptation(post=make(fc2, _weight(fc2).shape[0]))


def _attach_temporal_heads(block: nn.Module, sites: dict[str, AdaptableMixin]) -> None:
    offsets = getattr(block.attn, "offsets", None)
    temporal = [h for h, dt in enumerate(offsets or []) if dt != 0]
    if not temporal:
        raise ValueError(
            "adapt.strategy 'temporal_heads_only' needs STDHA temporal heads (Δt ≠ 0) in "
            f"every block; {type(block.attn).__name__} has offsets {offsets}"
        )
    qkv_weight, out_weight = _weight(sites["qkv"]), _weight(sites["out"])
    width = qkv_weight.shape[0] // 3
    head_dim = width // block.attn.num_heads
    cols = torch.cat([torch.arange(h * head_dim, (h + 1) * head_dim) for h in temporal])
    rows = torch.cat([part * width + cols for part in range(3)])  # same heads in Q, K and V
    delta_qkv = SliceDelta(qkv_weight.shape, rows, dim=0)
    delta_out = SliceDelta(out_weight.shape, cols, dim=1)
    sites["qkv"].adaptation = Adaptation(delta=_like(delta_qkv, sites["qkv"]))
    sites["out"].adaptation = Adaptation(delta=_like(delta_out, sites["out"]))


def mark_trainable(model: nn.Module, strategy: str, heads: Sequence[str] = ("head",)) -> None:
    """Freeze the backbone; train adaptations and the classifier (everything: full_finetune)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown adaptation strategy '{strategy}'; choose one of {STRATEGIES}")
    model.requires_grad_(strategy == "full_finetune")
    for adaptation in adaptations(model):
        adaptation.requires_grad_(True)
    for name in heads:
        model.get_submodule(name).requires_grad_(True)
