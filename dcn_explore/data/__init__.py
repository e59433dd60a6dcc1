"""Data sources -> :class:`TabularData` (encoded tensors + Schema)."""

from .criteo import criteo, criteo_dataset, criteo_vocabulary, split_by_day, write_criteo_sample
from .dataset import Batch, TabularData
from .frame import FrameEncoder, from_frame, split_frame
from .movielens import movielens
from .sources import load_source
from .synthetic import paper_polynomial, planted_crosses

__all__ = ["Batch", "TabularData", "FrameEncoder", "from_frame", "split_frame", "paper_polynomial", "planted_crosses", "movielens", "load_source",
           "criteo", "criteo_dataset", "criteo_vocabulary", "split_by_day", "write_criteo_sample"]
