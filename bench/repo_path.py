"""Put the repository root on ``sys.path`` for the benches that make data with `data_prep`.

A bench runs as ``python bench/x.py``, which puts bench/ (not the current folder) first on
``sys.path``; `data_prep` is an application of the checkout, not installed with the package, so
a bench imports this module before it imports `data_prep`.
"""

import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[1])
if ROOT not in sys.path:
    sys.path.insert(1, ROOT)  # after bench/, before site-packages
