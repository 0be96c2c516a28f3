"""Package attributes imported on first use (PEP 562), for the package facades.

`zeroi2v`, `zeroi2v.models` and `zeroi2v.data` re-export names from their modules without
importing them up front, so that the torch-free parts (the config, the synthetic renderers,
the decoders' logging) stay importable without torch, open_clip, timm or webdataset. Each
package keeps its ``_EXPORTS`` table (tests/test_layering.py reads it as dependencies) and
gets its module ``__getattr__`` from here.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def attribute_loader(package: str, exports: dict[str, str]) -> Callable[[str], Any]:
    """The module ``__getattr__`` of `package`: name → the attribute of module exports[name]."""

    def __getattr__(name: str) -> Any:
        if name in exports:
            return getattr(importlib.import_module(exports[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
