"""Named data sources for the command line, sweeps and notebooks.

A source spec is a string:

- ``planted`` — :func:`~dcn_explore.data.planted_crosses` (the built-in default)
- ``polynomial:KIND`` — :func:`~dcn_explore.data.paper_polynomial` (``f1``, ``f2``, ``f3``, ``combined``, ``order3``, ``order4``)
- ``movielens:100k`` / ``movielens:1m`` — :func:`~dcn_explore.data.movielens` (the paper's protocol)
- ``criteo:PATH[,PATH...]`` — :func:`~dcn_explore.data.criteo_dataset` (Kaggle ``train.txt`` or day files; all rows,
  memory-mapped; the paper's day split in ``meta["splits"]``, see :func:`~dcn_explore.data.split_by_day`)
- ``csv:PATH`` — a CSV file through :func:`~dcn_explore.data.from_frame` (needs ``label`` and column lists)

>>> load_source("planted", n_samples=100).name
'planted_crosses'
>>> load_source("nope")
Traceback (most recent call last):
...
dcn_explore.errors.ConfigError: data source 'nope' is unknown; use planted, polynomial:KIND, movielens:100k|1m, criteo:PATH[,PATH...] or csv:PATH
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataError
from .dataset import TabularData

SPECS = "planted, polynomial:KIND, movielens:100k|1m, criteo:PATH[,PATH...] or csv:PATH"


def load_source(spec: str, seed: int = 0, n_samples: int | None = None, root: str | None = None, **csv_options: Any) -> TabularData:
    """Load the data set named by ``spec`` (see the module docstring)."""
    kind, _, arg = str(spec).partition(":")
    if kind == "planted":
        from .synthetic import planted_crosses

        return planted_crosses(seed=seed, **({"n_samples": n_samples} if n_samples else {}))
    if kind == "polynomial":
        from .synthetic import paper_polynomial

        return paper_polynomial(arg or "f1", seed=seed, **({"n_samples": n_samples} if n_samples else {}))
    if kind == "movielens":
        from .movielens import movielens

        return movielens(arg or "100k", root=root)
    if kind == "criteo":
        from .criteo import criteo_dataset

        paths = [p for p in arg.split(",") if p]
        if not paths:
            raise ConfigError("criteo source: give the file(s): criteo:PATH/train.txt or criteo:day_0,day_1,...")
        return criteo_dataset(paths, max_rows=n_samples)
    if kind == "csv":
        import pandas as pd

        from .frame import from_frame

        path = Path(arg)
        if not path.is_file():
            raise DataError(f"csv source: no such file {path}")
        if not csv_options.get("label"):
            raise ConfigError(f"csv source {path}: give the label column (--label)")
        try:
            df = pd.read_csv(path)
        except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as e:
            raise DataError(f"{path}: cannot be read as CSV: {e}") from e
        return from_frame(df, name=str(path), **csv_options)
    raise ConfigError(f"data source {spec!r} is unknown; use {SPECS}")
