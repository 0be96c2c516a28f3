"""The frozen backbone: rebuilt from where the run got it, never saved; a fingerprint proves it.

Checkpoints hold what trains: the adapters and head, their optimizer state and the run state
(DeepSpeed's ``exclude_frozen_parameters``). The frozen weights are most of the model (ViT-B/16:
86 M of 90 M elements) and the same in every save, so each reader of a checkpoint rebuilds them
the way training did (`build`: ``model.init_from``'s parent, ``model.pretrained``, or the seeded
random init) and loads the checkpoint's weights over them (`load_trainable`: only frozen keys may
be missing). Rebuilding could silently give another backbone (a ``model.pretrained`` file
replaced, another seed); so every save records `fingerprint` (sha256 over the frozen tensors, as
built, before any engine casts or partitions them) with where it came from, and `check` stops a
resume or a load whose backbone differs, in one sentence naming both.

Checkpoints written before this (full module weights, no fingerprint) still load: their frozen
keys are present and replace the rebuilt ones.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import nn

from zeroi2v.config import Config
from zeroi2v.engine.transfer import initialise_from
from zeroi2v.errors import FrozenBackboneError
from zeroi2v.models.video import build_model

if TYPE_CHECKING:
    from zeroi2v.engine.transfer import Parent


def origin(cfg: Config) -> str:
    """Where `build` gets the frozen weights from, as a phrase naming the config field."""
    if cfg.model.init_from is not None:
        return f"model.init_from {cfg.model.init_from}"
    if cfg.model.pretrained is not None:
        return f"model.pretrained {cfg.model.pretrained}"
    return f"a random init (model.pretrained null, train.seed {cfg.train.seed})"


def build(cfg: Config, parent: Parent | None = None) -> nn.Module:
    """The model exactly as training builds it: seeded (a random backbone and the head's init
    depend on it), then `parent`'s weights (``model.init_from``, `loading.load_parent`)."""

    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg)
    if parent is not None:
        initialise_from(model, parent, cfg)
    return model


def frozen_names(model: nn.Module) -> set[str]:
    return {name for name, p in model.named_parameters() if not p.requires_grad}


def fingerprint(model: nn.Module, cfg: Config) -> dict[str, str]:
    """sha256 over the frozen parameters' names, dtypes, shapes and bytes, and their origin.

    Call it on the model as built (full tensors on the host: ZeRO-3 partitions them and bf16
    casts them once the engine wraps the model). ViT-B/16: ~0.3 s for 344 MB.
    """
    digest = hashlib.sha256()
    for name, param in sorted(model.named_parameters()):
        if param.requires_grad:
            continue
        tensor = param.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{tensor.dtype}|{tuple(param.shape)};".encode())
        digest.update(memoryview(tensor.view(torch.uint8).numpy()))
    return {"sha256": digest.hexdigest(), "source": origin(cfg)}


def check(saved: dict[str, str] | None, now: dict[str, str], where: str) -> None:
    """Stop when `where` (a checkpoint) recorded another frozen backbone than `now`'s.

    `saved` None: a checkpoint from before fingerprints, which holds its frozen weights itself.
    """
    if saved is None or saved["sha256"] == now["sha256"]:
        return
    raise FrozenBackboneError(
        f"{where} was trained on the frozen backbone {saved['sha256'][:16]} (from "
        f"{saved['source']}) but this config builds {now['sha256'][:16]} (from {now['source']}); "
        f"use the config and weights the run was trained with (its config.json), or start a "
        f"new run"
    )


def agree(now: dict[str, str], world_size: int) -> None:
    """Every rank: stop, all alike, unless every rank built the same frozen backbone (e.g. a
    ``model.pretrained`` file that differs between nodes). One all-gather, once per run."""
    if world_size == 1:
        return

    found: list[Any] = [None] * world_size
    dist.all_gather_object(found, now["sha256"])
    if len(set(found)) > 1:
        shown = ", ".join(f"rank {r}: {h[:16]}" for r, h in enumerate(found))
        raise FrozenBackboneError(
            f"the ranks built different frozen backbones from {now['source']} ({shown}); every "
            f"node must read the same weights"
        )


def load_trainable(model: nn.Module, state: dict[str, torch.Tensor], where: str) -> bool:
    """Load a checkpoint's `state` over `model`'s rebuilt frozen weights; True when `state`
    held the frozen weights too (a checkpoint from before fingerprints).

    Non-strict only for the frozen keys: a missing trainable key or an unknown key is an error.
    """
    missing, unexpected = model.load_state_dict(state, strict=False)
    frozen = frozen_names(model)
    trainable_missing = sorted(set(missing) - frozen)
    if trainable_missing or unexpected:
        raise RuntimeError(
            f"{where} does not fit this model: trainable weights missing "
            f"{trainable_missing[:3]}, unknown keys {sorted(unexpected)[:3]}; was it written "
            f"with this config?"
        )
    return not (frozen & set(missing))
