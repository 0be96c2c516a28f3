"""Read FAIR's person-proposal pickles (``ava_dense_proposals_{train,val}.FAIR.recall_93.9.pkl``).

The layout, as mmaction2's ``AVADataset`` reads it (``load_annotations`` builds the key,
``prepare_train_frames`` reads the array): a pickled dict keyed ``"{video_id},{timestamp:04d}"``
whose values are float arrays (N, 5) of normalised ``x1, y1, x2, y2, score`` (mmaction2 also
accepts (N, 4) without scores). Strings load as latin-1, so Python 2 pickles read too.

Unpickling can run any code the file names. These files only need dicts, numpy arrays and
their dtypes, so `load_proposal_pickle` uses an unpickler that resolves nothing else: a file
naming any other global (``os.system``, ``builtins.eval``, ...) is refused with one sentence.
Still, load only files you trust.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

PICKLE_MAGIC = b"\x80"  # protocol 2+ pickles start with the PROTO opcode


def _allowed() -> dict[tuple[str, str], Any]:
    """The globals a pickled dict of numpy arrays refers to, under every module name numpy 1,
    numpy 2 and Python 2/3 have used for them; taken from numpy's own reducers, not imported
    from its private modules."""
    reconstruct = np.zeros(1).__reduce__()[0]
    scalar = np.float64(0).__reduce__()[0]
    names: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,  # how protocol 2 stores bytes
    }
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        names[(module, "_reconstruct")] = reconstruct
        names[(module, "scalar")] = scalar
    return names


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    return text.encode(encoding)


class _ArraysOnly(pickle.Unpickler):
    allowed = _allowed()

    def find_class(self, module: str, name: str) -> Any:
        found = self.allowed.get((module, name))
        if found is None:
            raise pickle.UnpicklingError(f"{module}.{name}")
        return found


def is_pickle(path: Path) -> bool:
    """By content (protocol 2+ magic byte), or by the ``.pkl`` extension for older protocols."""
    with open(path, "rb") as f:
        return f.read(1) == PICKLE_MAGIC or Path(path).suffix == ".pkl"


def load_proposal_pickle(path: Path) -> dict[str, np.ndarray]:
    """``{"video,timestamp": (N, 4|5) array}``, or ValueError naming the file and the problem."""
    path = Path(path)
    with open(path, "rb") as f:
        try:
            data = _ArraysOnly(f, encoding="latin1").load()
        except pickle.UnpicklingError as err:
            raise ValueError(
                f"{path.name}: refusing to unpickle {err}: a proposal pickle holds only a dict "
                "of numpy arrays (load only files you trust)"
            ) from None
        except Exception as err:  # truncated or not a pickle at all
            raise ValueError(f"{path.name}: not a readable pickle ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path.name}: expected a dict of arrays, got {type(data).__name__}")
    for key, boxes in data.items():
        shape = getattr(boxes, "shape", None)
        if not isinstance(key, str) or "," not in key:
            raise ValueError(f"{path.name}: key {key!r} is not 'video_id,timestamp'")
        if shape is None or len(shape) != 2 or shape[1] not in (4, 5):
            raise ValueError(f"{path.name}: {key}: expected an (N, 4) or (N, 5) array, got {shape}")
    return data
