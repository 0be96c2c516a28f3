"""Models: backbones, STDHA, adapters, the video classifier and merging.

Attributes are imported lazily so that `zeroi2v.config` (which reads the torch-free
`specs` and `offsets` modules) does not import torch, open_clip or timm.
"""

from __future__ import annotations

import importlib
from typing import Any

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


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
