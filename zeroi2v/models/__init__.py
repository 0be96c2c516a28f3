"""Models: backbones, STDHA, adapters, the video classifier and merging.

Attributes are imported lazily so that importing the package (or `zeroi2v`, which re-exports
`build_model` and `merge`) does not import torch, open_clip or timm until a model is built.
"""

from __future__ import annotations

from zeroi2v.lazy import attribute_loader

_EXPORTS = {
    "build_model": "zeroi2v.models.video",
    "VideoClassifier": "zeroi2v.models.video",
    "build_backbone": "zeroi2v.models.backbones",
    "merge": "zeroi2v.models.merge",
    "verify_merge": "zeroi2v.models.merge",
    "mark_trainable": "zeroi2v.models.adapters",
    "attach_adapters": "zeroi2v.models.adapters",
    "install_temporal_attention": "zeroi2v.models.stdha",
    "shift_kv": "zeroi2v.models.stdha_shift",
}

__all__ = sorted(_EXPORTS)

__getattr__ = attribute_loader(__name__, _EXPORTS)
