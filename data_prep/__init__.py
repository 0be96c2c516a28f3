"""Dataset preparation for zeroi2v: sources → WebDataset shards, synthetic data, inspection.

Standalone on purpose (imports nothing from `zeroi2v`): `python -m data_prep --help`.
"""

from data_prep.shard import shard_split
from data_prep.sources import SourceList, load_source
from data_prep.synthetic import make_synthetic

__all__ = ["SourceList", "load_source", "make_synthetic", "shard_split"]
