"""Models read back: a registry URI, a merged ``.pt``, a DeepSpeed checkpoint folder, a parent.

One module because these read each other: a checkpoint holds only what trains, so reading it
rebuilds the frozen backbone the way training did (`frozen`), from ``model.init_from``'s
parent when the run had one (`load_parent`), and that parent is itself any model this module
reads. `release` re-exports `load_model` and `load_checkpoint_model`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from zeroi2v import config as config_lib
from zeroi2v.config import Config, ConfigError
from zeroi2v.engine import frozen, parallel, tracking, transfer
from zeroi2v.engine.tracking.model_format import CONFIG_KEY
from zeroi2v.engine.train_state import CLIENT_FILE, TrainState
from zeroi2v.models.merge import merge
from zeroi2v.models.video import build_model

# MLflow's codes for a model name, version or run that is not there (an alias: invalid value)
_NOT_FOUND = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


def _checkpoint_config(path: Path) -> Path | None:
    for folder in (path, path.parent, path.parent.parent):
        if (folder / "config.json").is_file():
            return folder / "config.json"
    return None


def load_checkpoint_model(path: Path, cfg: Config | None = None) -> tuple[nn.Module, Config]:
    """A merged `.pt` (from `save_merged`) or a DeepSpeed checkpoint folder → (model, config).

    The config saved with the weights wins; `cfg` is used only when none was saved.
    """

    path = Path(path)
    if path.is_file():
        saved = torch.load(path, map_location="cpu", weights_only=True)  # tensors + JSON config
        cfg = config_lib.from_dict(saved["config"])
        model = merge(build_model(cfg), inplace=True)  # the merged architecture
        model.load_state_dict(saved["state_dict"])
        return model.float().eval(), cfg
    if not path.exists():
        raise FileNotFoundError(
            f"model {path} does not exist (expected models:/NAME@ALIAS, a "
            f"merged .pt or a DeepSpeed checkpoint folder)"
        )
    found = _checkpoint_config(path)
    if found is not None:
        cfg = config_lib.from_dict(json.loads(found.read_text()))
    elif cfg is None:
        raise FileNotFoundError(f"no config.json next to checkpoint {path}; pass --config")
    return _from_checkpoint(path, cfg), cfg


def _from_checkpoint(path: Path, cfg: Config) -> nn.Module:
    """The frozen backbone rebuilt as training built it, checked against the checkpoint's
    fingerprint, under the checkpoint's trainable weights (`frozen`)."""
    directory, tag = parallel.checkpoint_folder(path)
    weights = parallel.read_checkpoint_weights(directory, tag)  # verified against its manifest
    state = TrainState.read(directory / tag / CLIENT_FILE)
    model = frozen.build(cfg, load_parent(cfg))
    where = f"checkpoint {directory / tag}"
    frozen.check(state.frozen_backbone, frozen.fingerprint(model, cfg), where)
    frozen.load_trainable(model, weights, where)
    return model.float().eval()


def load_model(uri: str | Path, cfg: Config | None = None) -> tuple[nn.Module, Config]:
    """`models:/NAME@ALIAS` (or any MLflow model URI), a merged `.pt` from launch/merge.py, or a
    DeepSpeed checkpoint folder → (model in eval mode on CPU, its resolved config).

    `cfg` (optional) gives the tracking URI for registry models; for a checkpoint the config
    saved with it wins and `cfg` is the fallback.
    """
    text = str(uri)
    if "://" in text or text.startswith("models:/") or text.startswith("runs:/"):
        # lazy: MLflow ([train]/[serve] extra)
        import mlflow
        from mlflow.exceptions import MlflowException

        store = tracking.tracking_uri(cfg or config_lib.from_dict({}))
        mlflow.set_tracking_uri(store)
        try:
            model = mlflow.pytorch.load_model(text, map_location="cpu")
        except MlflowException as error:  # a missing name, version, alias or run: not a bug
            if error.error_code not in _NOT_FOUND:
                raise
            raise FileNotFoundError(f"cannot load {text} from {store}: {error.message}") from None
        raw = mlflow.models.get_model_info(text).metadata or {}
        if CONFIG_KEY not in raw:
            raise ValueError(f"{text} has no '{CONFIG_KEY}' metadata; was it logged by zeroi2v?")
        return model.eval(), config_lib.from_dict(raw[CONFIG_KEY])
    return load_checkpoint_model(Path(text), cfg)


def load_parent(cfg: Config) -> transfer.Parent | None:
    """The parent named by ``cfg.model.init_from`` (None when unset), checked against `cfg`."""
    uri = cfg.model.init_from
    if uri is None:
        return None
    if not transfer.is_uri(uri) and not Path(uri).exists():
        raise ConfigError(f"model.init_from: {uri} does not exist (a models:/ URI or a path)")
    try:
        model, parent_cfg = load_model(uri, cfg)
    except Exception as error:  # registry/network/file problems: one sentence naming the key
        reason = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
        raise ConfigError(
            f"model.init_from: cannot load {uri} ({reason or type(error).__name__})"
        ) from None
    for key in ("backbone", "image_size"):
        mine, theirs = getattr(cfg.model, key), getattr(parent_cfg.model, key)
        if mine != theirs:
            raise ConfigError(
                f"model.init_from: the parent {uri} has model.{key} {theirs!r}, this config "
                f"{mine!r}; they must be equal"
            )
    return transfer.Parent(model, parent_cfg, transfer.lineage_tags(uri, cfg))
