"""Dataset preparation for zeroi2v: sources → WebDataset shards, synthetic data, inspection.

An application of the library, run from a checkout (`python -m data_prep --help`): it imports
from `zeroi2v` only torch-free modules (`files`, `data.quiet`, `data.synthetic`), never the
reverse, and is not installed with the package.
"""

from data_prep.shard import shard_split
from data_prep.sources import SourceList, load_source
from data_prep.synthetic import make_synthetic

__all__ = ["SourceList", "load_source", "make_synthetic", "shard_split"]
