"""ZeroI2V: image transformers turned into video models at zero extra inference cost.

``zeroi2v.build_model(cfg)`` and ``zeroi2v.merge(model)`` are imported lazily, so
``import zeroi2v.config`` stays light (no torch, open_clip or timm).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "build_model": "zeroi2v.models.video",
    "merge": "zeroi2v.models.merge",
    "verify_merge": "zeroi2v.models.merge",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
