"""Checkpoints of the released ZeroI2V code (MCG-NJU/ZeroI2V, "before reparam") → our model.

The official model is an mmaction ``Recognizer3D``: ``backbone.*`` is its ``ViT_Zero_CLIP``
(CLIP's visual keys without ``proj``, plus ``temporal_embedding`` and four linear adapters per
block named by where they sit) and ``cls_head.fc_cls`` an I3D head on the mean over frames of
the 768-d ``ln_post`` [cls] feature. Its adapters are exactly ours at the same four sites:

    T_Adapter_in     before the attention (fused QKV)   → attn.adaptation.pre
    S_Adapter        after the attention's out_proj     → attn.out_proj.adaptation.post
    MLP_Adapter      before mlp.c_fc                    → mlp.c_fc.adaptation.pre
    MLP_Adapter_out  after mlp.c_proj                   → mlp.c_proj.adaptation.post
    (D_fc1, D_fc2)                                      → (down, up)

with y = x + scale · D_fc2(dropout(D_fc1(x))): `adapt.adapter_scale` / `adapt.adapter_dropout`.

Head order: the official STDHA shifts *channels* of K and V — with ``shift_div`` d, channels
[0, C/d) read frame t−1 and [C/d, 2C/d) frame t+1 (then ``long_shift_div`` channels t−2, and
t+2 with ``long_shift_right``). When C/d is a whole number of heads this is head relocation
with per-head Δt = (−1…, +1…, −2…, [+2…], 0…), the reverse of our ``{1·1, −1·1, …}`` order for
the ±1 heads. Conversion permutes the heads (rows of W_QKV, columns of W_O) so that the model
runs with our `model.head_offsets`; the attention computes the same function.
"""

from __future__ import annotations

import logging
import pickle
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from zeroi2v.config import Config, ConfigError
from zeroi2v.models.video import build_model

log = logging.getLogger(__name__)

# Our config for an official checkpoint: its recipe where it differs from ours.
OFFICIAL_RECIPE = {
    "model.quick_gelu": True,
    "model.clip_projection": False,
    "model.temporal_embedding": True,
    "model.dropout": 0.5,
    "model.pretrained": None,
    "adapt.strategy": "zeroi2v",
    "adapt.num_adapters": 4,
    "adapt.bottleneck_ratio": 0.25,
    "adapt.adapter_scale": 0.5,  # 1.0 in the SSv2 configs
    "adapt.adapter_dropout": 0.1,
    "adapt.train_final_norm": True,
}
_SITES = {
    "T_Adapter_in": "attn.adaptation.pre",
    "S_Adapter": "attn.out_proj.adaptation.post",
    "MLP_Adapter": "mlp.c_fc.adaptation.pre",
    "MLP_Adapter_out": "mlp.c_proj.adaptation.post",
}
_LAYERS = {"D_fc1": "down", "D_fc2": "up"}
_BLOCKS = "transformer.resblocks."


def official_head_offsets(
    width: int,
    heads: int,
    shift_div: int,
    long_shift_div: int = -1,
    long_shift_right: bool = False,
) -> list[int]:
    """Per-head Δt of the official channel shift (see the module docstring)."""
    head_dim = width // heads
    groups = [(-1, width // shift_div), (1, width // shift_div)]
    if long_shift_div > 0:
        groups.append((-2, width // long_shift_div))
        if long_shift_right:
            groups.append((2, width // long_shift_div))
    offsets: list[int] = []
    for dt, channels in groups:
        if channels % head_dim:
            raise ConfigError(
                f"the official shift moves {channels} channels with Δt={dt}, not a whole number "
                f"of heads of {head_dim}: it is a channel shift, not head relocation"
            )
        offsets += [dt] * (channels // head_dim)
    return offsets + [0] * (heads - len(offsets))


def head_permutation(official: Sequence[int], ours: Sequence[int]) -> list[int]:
    """`perm` with ``official[perm[i]] == ours[i]``: our head i is official head perm[i]."""
    if sorted(official) != sorted(ours):
        raise ConfigError(
            f"the checkpoint's head offsets {list(official)} are not a reordering of "
            f"model.head_offsets {list(ours)}; set model.head_offsets to the same multiset"
        )
    free = list(range(len(official)))
    perm = []
    for dt in ours:
        index = next(h for h in free if official[h] == dt)
        free.remove(index)
        perm.append(index)
    return perm


def _permute_heads(state: dict[str, torch.Tensor], block: str, perm: list[int]) -> None:
    """Reorder the heads of one block's fused QKV (rows) and output projection (columns)."""
    w_out = state[f"{block}attn.out_proj.weight"]
    width, heads = w_out.shape[1], len(perm)
    head_dim = width // heads
    channels = torch.cat([torch.arange(h * head_dim, (h + 1) * head_dim) for h in perm])
    rows = torch.cat([part * width + channels for part in range(3)])
    for name in ("attn.in_proj_weight", "attn.in_proj_bias"):
        state[f"{block}{name}"] = state[f"{block}{name}"][rows]
    state[f"{block}attn.out_proj.weight"] = w_out[:, channels]


def _our_key(key: str) -> str:
    """Official key (``backbone.`` / ``cls_head.`` prefix) → ours; KeyError if unknown."""
    if key.startswith("cls_head.fc_cls."):
        return "head." + key.removeprefix("cls_head.fc_cls.")
    if not key.startswith("backbone."):
        raise KeyError(key)
    name = key.removeprefix("backbone.")
    if name == "temporal_embedding":
        return "backbone.temporal_embedding.weight"
    if name.startswith(_BLOCKS):
        index, _, rest = name.removeprefix(_BLOCKS).partition(".")
        adapter, _, layer = rest.partition(".")
        if adapter in _SITES:
            fc, _, param = layer.partition(".")
            rest = f"{_SITES[adapter]}.{_LAYERS[fc]}.{param}"
        return f"backbone.{_BLOCKS}{index}.{rest}"
    return key


def convert_state_dict(
    official: Mapping[str, torch.Tensor],
    model: nn.Module,
    official_offsets: Sequence[Sequence[int]],
) -> dict[str, torch.Tensor]:
    """The official state dict as `model`'s (strictly complete: every key of both is used).

    `official_offsets`: per block, the official per-head Δt (`official_head_offsets`); the
    blocks' own ``attn.offsets`` give our order. A checkpoint without ``MLP_Adapter_out``
    (``num_tadapter=1``) keeps `model`'s identity adapter there.
    """
    ours = model.state_dict()
    state, unknown = {}, []
    for key, value in official.items():
        try:
            state[_our_key(key)] = value
        except KeyError:
            unknown.append(key)
    unknown += [k for k in state if k not in ours]
    if unknown:
        raise ConfigError(f"official checkpoint keys with no place in this model: {unknown[:5]}")
    missing = [k for k in ours if k not in state]
    if any("mlp.c_proj.adaptation" not in k for k in missing):
        raise ConfigError(
            f"this model needs keys the checkpoint lacks: {missing[:5]} (check "
            "model.backbone, clip_projection=false and temporal_embedding=true)"
        )
    state.update({k: ours[k] for k in missing})
    blocks = [m for m in model.backbone.modules() if hasattr(m, "attn") and hasattr(m, "mlp")]
    if len(official_offsets) != len(blocks):
        raise ConfigError(
            f"got official offsets for {len(official_offsets)} of {len(blocks)} blocks"
        )
    for index, (block, offsets) in enumerate(zip(blocks, official_offsets, strict=True)):
        perm = head_permutation(offsets, block.attn.offsets)
        _permute_heads(state, f"backbone.{_BLOCKS}{index}.", perm)
    return state


# Packages whose objects an mmaction training checkpoint keeps beside the weights: mmengine's
# CheckpointHook saves the `message_hub`, whose logged scalars are mmengine `HistoryBuffer`s.
OPENMMLAB_PACKAGES = ("mmengine.", "mmcv.", "mmaction.")


class OpenMMLabStandIn:
    """What an object of an OpenMMLab class in a checkpoint's bookkeeping (``meta``,
    ``message_hub``) is read as: only the state dict is used, and unpickling the real class
    would mean importing, and trusting, that package. It keeps what it is given and runs
    nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _numpy_globals() -> list[Any]:
    """numpy arrays, scalars and dtypes, which mmaction's `meta` may hold beside the tensors
    (e.g. a best score): they rebuild values from bytes and call no other code. Files written
    under numpy 1 (the released ones) name two of them ``numpy.core.multiarray.*``."""

    dtypes = [getattr(np.dtypes, name) for name in np.dtypes.__all__]
    multiarray = np._core.multiarray
    numpy_1 = [
        (f, f"numpy.core.multiarray.{f.__name__}")
        for f in (multiarray.scalar, multiarray._reconstruct)
    ]
    return [multiarray.scalar, multiarray._reconstruct, np.ndarray, np.dtype, *dtypes, *numpy_1]


def _openmmlab_stand_ins(path: Path) -> list[tuple[type, str]]:
    """`OpenMMLabStandIn` under the name of every OpenMMLab class the file names; none where
    the file is no `torch.save` zip (the load then says what it is)."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except (ValueError, RuntimeError):
        return []
    names = sorted(n for n in set(names) if n.startswith(OPENMMLAB_PACKAGES))
    if names:
        log.info("%s: its bookkeeping holds %s, read as inert stand-ins", path, ", ".join(names))
    return [(OpenMMLabStandIn, name) for name in names]


def read_official(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of an mmaction checkpoint file (``{"state_dict": …, "meta": …}``, and
    what mmengine's training saved beside them: optimizer, schedulers, ``message_hub``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"official checkpoint {path} does not exist")
    try:
        with torch.serialization.safe_globals(_numpy_globals() + _openmmlab_stand_ins(path)):
            saved = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as error:
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        reason = (
            f"it holds {refused.group(1)}, which torch.load(weights_only=True) does not unpickle"
            if refused
            else "it is not a file torch.save wrote"
        )
        raise ConfigError(f"official checkpoint {path} cannot be read: {reason}") from None
    if not isinstance(saved, Mapping):
        raise ConfigError(f"official checkpoint {path} holds a {type(saved).__name__}, not a dict")
    state = saved.get("state_dict", saved)
    not_tensors = [key for key, value in state.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        raise ConfigError(
            f"official checkpoint {path}: its state dict holds entries that are not tensors: "
            f"{not_tensors[:5]}"
        )
    return state


def load_official(
    official: Mapping[str, torch.Tensor], cfg: Config, official_offsets: Sequence[int]
) -> nn.Module:
    """Our unmerged model (eval mode) carrying the official weights; one offsets list per block
    is also accepted. `cfg` should include `OFFICIAL_RECIPE`."""

    model = build_model(cfg)
    blocks = sum(1 for k in official if k.endswith(".attn.in_proj_weight"))
    per_block = official_offsets
    if per_block and not isinstance(per_block[0], Sequence):
        per_block = [list(official_offsets)] * blocks
    model.load_state_dict(convert_state_dict(official, model, per_block), strict=True)
    return model.float().eval()
