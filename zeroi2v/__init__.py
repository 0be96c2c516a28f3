"""ZeroI2V: image transformers turned into video models at zero extra inference cost.

``zeroi2v.build_model(cfg)`` and ``zeroi2v.merge(model)`` are imported lazily, so
``import zeroi2v.config`` stays light (no torch, open_clip or timm).
"""

from __future__ import annotations

from zeroi2v.lazy import attribute_loader

__version__ = "0.1.0"

_EXPORTS = {
    "build_model": "zeroi2v.models.video",
    "merge": "zeroi2v.models.merge",
    "verify_merge": "zeroi2v.models.merge",
}

__all__ = sorted(_EXPORTS)

__getattr__ = attribute_loader(__name__, _EXPORTS)
