"""Transfer: start a training from a registered model or a checkpoint (``model.init_from``).

The paper fine-tunes K400-trained models on UCF101 / HMDB51 (CLIP+K400 rows of Table 6). What
a parent gives the new model depends on what it is:

- a *merged* model (every registry model, a merged ``.pt``): its merged weights become the new
  frozen backbone and fresh identity adapters are attached, so at step 0 the new backbone
  computes exactly the parent's features. Merging again folds the new adapters into those
  weights: the result is still the plain architecture, exact to fp32 re-association.
- an *unmerged* DeepSpeed checkpoint folder: if its adaptation settings equal the new config's,
  the frozen backbone *and* the trained adapters are loaded (training continues from them);
  otherwise it is merged first and treated as above.

The classifier is copied when the class counts agree and re-created (a logged sentence says
so) when they differ. The temporal operator has no weights, so the parent may use another
head allocation or clip length; the backbone and image size must match.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from zeroi2v.config import Config, ConfigError
from zeroi2v.engine.tracking import tracking_uri
from zeroi2v.models.merge import merge

log = logging.getLogger(__name__)

_ALIAS = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))$")


@dataclass
class Parent:
    """A loaded parent model, its config and the lineage tags the new run records."""

    model: nn.Module
    cfg: Config
    lineage: dict[str, str] = field(default_factory=dict)


def is_uri(text: str) -> bool:
    return text.startswith(("models:/", "runs:/")) or "://" in text


def lineage_tags(uri: str, cfg: Config) -> dict[str, str]:
    """MLflow tags naming the parent: URI, and for registry models name, version and run."""
    tags = {"lineage.parent_uri": uri}
    match = _ALIAS.match(uri)
    if match:
        from mlflow import MlflowClient  # lazy: MLflow ([train]/[serve] extra)

        client = MlflowClient(tracking_uri(cfg))
        name = match["name"]
        if match["alias"]:
            version = client.get_model_version_by_alias(name, match["alias"])
        else:
            version = client.get_model_version(name, match["version"])
        tags.update(
            {
                "lineage.parent_model_name": name,
                "lineage.parent_model_version": str(version.version),
                "lineage.parent_run_id": version.run_id or "",
            }
        )
    elif uri.startswith("runs:/"):
        tags["lineage.parent_run_id"] = uri.removeprefix("runs:/").split("/")[0]
    else:
        tags["lineage.parent_uri"] = str(Path(uri).resolve())
    return tags


def _adaptation_keys(module: nn.Module) -> set[str]:
    return {k for k in module.state_dict() if ".adaptation." in f".{k}"}


def _activations(module: nn.Module) -> set[str]:
    return {type(m).__name__ for m in module.modules() if "GELU" in type(m).__name__}


def initialise_from(model: nn.Module, parent: Parent, cfg: Config) -> str:
    """Copy the parent's weights into the freshly built `model` (see the module docstring).

    Returns a one-line description of what was taken (also logged).
    """

    source = parent.model
    if _activations(source.backbone) != _activations(model.backbone):
        raise ConfigError(
            f"model.init_from: the parent's MLPs use {sorted(_activations(source.backbone))}, "
            f"this config builds {sorted(_activations(model.backbone))}; set model.quick_gelu "
            "(CLIP's OpenAI weights use QuickGELU)"
        )
    same_adaptation = parent.cfg.adapt == cfg.adapt
    has_adapters = bool(_adaptation_keys(source))
    if has_adapters and not same_adaptation:
        source = merge(source)
    state = source.backbone.state_dict()
    missing, unexpected = model.backbone.load_state_dict(state, strict=False)
    fresh = set(missing)
    if unexpected or not fresh <= _adaptation_keys(model.backbone):
        raise ConfigError(
            f"model.init_from: the parent's backbone does not fit this config's "
            f"(unexpected {sorted(unexpected)[:3]}, missing {sorted(fresh)[:3]})"
        )
    what = (
        "backbone and adapters"
        if has_adapters and same_adaptation
        else "merged weights as the frozen backbone, fresh adapters"
    )
    parent_classes, classes = parent.cfg.model.num_classes, cfg.model.num_classes
    if parent_classes == classes:
        model.head.load_state_dict(source.head.state_dict())
        what += ", classifier"
    else:
        log.warning(
            "model.init_from: the parent has %d classes and this config %d: the classifier "
            "is re-created (randomly initialised), not copied.",
            parent_classes,
            classes,
        )
        what += f", new classifier ({parent_classes} → {classes} classes)"
    log.info("Initialised from %s: %s.", cfg.model.init_from, what)
    return what
