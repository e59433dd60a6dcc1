"""pandas DataFrame -> :class:`TabularData`.

Id conventions (the vocabulary is built on the frame the encoder is fitted on):

- categorical: id 0 = out-of-vocabulary or missing, ids 1.. = known values
  (most frequent first);
- multivalent: id 0 = padding (left out of the mean), id 1 = out-of-vocabulary,
  ids 2.. = known values. A cell is a list/tuple of values or a string split on
  ``separator``;
- dense: coerced to float, transformed (``"standardize"`` by default, or
  ``"log"`` = ``log(1 + max(x, 0))`` then standardised, ``"minmax"``, ``"none"``),
  missing values replaced by the fitted mean (0 after standardising).

>>> import pandas as pd
>>> df = pd.DataFrame({"city": ["a", "b", "a", None], "price": [1.0, 2.0, None, 4.0], "y": [0, 1, 1, 0]})
>>> ds = from_frame(df, label="y", categorical=["city"], dense=["price"])
>>> ds.categorical[:, 0].tolist(), ds.schema.names
([1, 2, 1, 0], ['city', 'price'])
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from ..errors import ConfigError, DataError
from ..schema import FeatureSpec, Schema
from .dataset import TASKS, TabularData

DENSE_TRANSFORMS = ("standardize", "log", "minmax", "none")


def _show(v) -> str:
    """repr of a cell value without NumPy's type wrapper (``4``, not ``np.int64(4)``)."""
    return repr(v.item() if hasattr(v, "item") else v)


def _as_list(x) -> list[str]:
    if x is None:
        return []
    if isinstance(x, str):
        return [x]
    return list(x)


class FrameEncoder:
    """Fits vocabularies and dense statistics on one frame, encodes any frame with them."""

    def __init__(
        self,
        label: str,
        categorical: Sequence[str] = (),
        dense: Sequence[str] = (),
        multivalent: Sequence[str] = (),
        task: str = "binary",
        min_count: int = 1,
        dense_transform: str | Mapping[str, str] = "standardize",
        separator: str = "|",
        max_len: int | None = None,
        embedding_dim: int | str | Mapping[str, int] = "auto",
        source: str = "frame",
    ):
        self.label = label
        self.categorical = _as_list(categorical)
        self.dense = _as_list(dense)
        self.multivalent = _as_list(multivalent)
        self.task = task
        self.min_count = min_count
        self.dense_transform = dense_transform
        self.separator = separator
        self.max_len = max_len
        self.embedding_dim = embedding_dim
        self.source = source
        if task not in TASKS:
            raise ConfigError(f"task={task!r}; allowed: {', '.join(TASKS)}")
        if not isinstance(label, str) or not label:
            raise ConfigError(f"label must name a column, got {label!r}")
        roles = {"label": [label], "categorical": self.categorical, "dense": self.dense, "multivalent": self.multivalent}
        seen: dict[str, str] = {}
        for role, cols in roles.items():
            for c in cols:
                if c in seen:
                    raise ConfigError(f"column {c!r} is listed as both {seen[c]} and {role}")
                seen[c] = role
        if not (self.categorical or self.dense or self.multivalent):
            raise ConfigError("from_frame needs at least one feature column (categorical, dense or multivalent)")
        if not isinstance(min_count, int) or min_count < 1:
            raise ConfigError(f"min_count must be an integer >= 1, got {min_count!r}")
        if max_len is not None and (not isinstance(max_len, int) or max_len < 1):
            raise ConfigError(f"max_len must be None or an integer >= 1, got {max_len!r}")
        for c in self.dense:
            t = self._transform_of(c)
            if t not in DENSE_TRANSFORMS:
                raise ConfigError(f"dense_transform for {c!r} is {t!r}; allowed: {', '.join(DENSE_TRANSFORMS)}")
        if isinstance(dense_transform, Mapping):
            unknown = sorted(set(dense_transform) - set(self.dense))
            if unknown:
                raise ConfigError(f"dense_transform names columns that are not dense features: {unknown}")
        self.vocab_: dict[str, pd.Index] = {}
        self.max_len_: dict[str, int] = {}
        self.stats_: dict[str, tuple[float, float]] = {}
        self.schema_: Schema | None = None

    def _transform_of(self, col: str) -> str:
        t = self.dense_transform
        return t.get(col, "standardize") if isinstance(t, Mapping) else t

    # -- checks on a frame -------------------------------------------------------------
    def _check_frame(self, df: Any, need_label: bool = True) -> None:
        if not isinstance(df, pd.DataFrame):
            raise DataError(f"{self.source}: expected a pandas DataFrame, got {type(df).__name__}")
        if len(df) == 0:
            raise DataError(f"{self.source}: the frame is empty (0 rows); expected at least one example")
        cols = ([self.label] if need_label else []) + self.categorical + self.dense + self.multivalent
        missing = [c for c in cols if c not in df.columns]
        if missing:
            raise DataError(f"{self.source}: missing column(s) {missing}; the frame has {list(df.columns)}")

    def _dense_values(self, df: pd.DataFrame, col: str) -> np.ndarray:
        s = df[col]
        if s.dtype == bool:
            s = s.astype(float)
        num = pd.to_numeric(s, errors="coerce")
        bad = num.isna() & s.notna()
        if bad.any():
            row = bad.idxmax()
            pos = int(np.flatnonzero(bad.to_numpy())[0])
            raise DataError(f"{self.source}: dense column {col!r}, row {_show(row)} (position {pos}): value {_show(s.loc[row])} is not a number")
        vals = num.to_numpy(dtype=np.float64, na_value=np.nan)
        inf = np.isinf(vals)
        if inf.any():
            pos = int(np.flatnonzero(inf)[0])
            raise DataError(f"{self.source}: dense column {col!r}, row {_show(df.index[pos])} (position {pos}): value {vals[pos]} is not finite")
        return vals

    def _labels(self, df: pd.DataFrame) -> np.ndarray:
        s = df[self.label]
        if s.isna().any():
            pos = int(np.flatnonzero(s.isna().to_numpy())[0])
            raise DataError(f"{self.source}: label column {self.label!r} is missing at row {_show(df.index[pos])} (position {pos})")
        if s.dtype == bool:
            s = s.astype(np.float32)
        num = pd.to_numeric(s, errors="coerce")
        if num.isna().any():
            pos = int(np.flatnonzero(num.isna().to_numpy())[0])
            raise DataError(f"{self.source}: label column {self.label!r}, row {_show(df.index[pos])} (position {pos}): value {_show(s.iloc[pos])} is not a number")
        y = num.to_numpy(dtype=np.float64)
        if self.task == "binary":
            bad = ~np.isin(y, (0.0, 1.0))
            if bad.any():
                pos = int(np.flatnonzero(bad)[0])
                raise DataError(
                    f"{self.source}: task='binary' needs labels 0/1 in column {self.label!r}; row {_show(df.index[pos])} "
                    f"(position {pos}) has {_show(s.iloc[pos])} (binarise it first, or use task='regression')"
                )
        elif not np.isfinite(y).all():
            pos = int(np.flatnonzero(~np.isfinite(y))[0])
            raise DataError(f"{self.source}: label column {self.label!r}, row {_show(df.index[pos])}: value {y[pos]} is not finite")
        return y.astype(np.float32)

    def _lists(self, s: pd.Series) -> pd.Series:
        def to_list(v):
            if isinstance(v, (list, tuple, np.ndarray)):
                return [x for x in v if not (isinstance(x, float) and math.isnan(x))]
            if v is None or (isinstance(v, float) and math.isnan(v)):
                return []
            if isinstance(v, str):
                return [p for p in v.split(self.separator) if p != ""]
            return [v]

        return s.map(to_list)

    # -- fit / transform ------------------------------------------------------------------
    def fit(self, df: pd.DataFrame) -> "FrameEncoder":
        self._check_frame(df)
        self._labels(df)  # reject bad labels before anything else
        for c in self.categorical:
            counts = df[c].dropna().value_counts(sort=False)
            counts = counts[counts >= self.min_count]
            order = sorted(counts.index, key=lambda v: (-counts[v], str(v)))
            self.vocab_[c] = pd.Index(order)
        for c in self.multivalent:
            exploded = self._lists(df[c]).explode().dropna()
            counts = exploded.value_counts(sort=False)
            counts = counts[counts >= self.min_count]
            self.vocab_[c] = pd.Index(sorted(counts.index, key=lambda v: (-counts[v], str(v))))
            longest = int(self._lists(df[c]).map(len).max() or 1)
            self.max_len_[c] = max(1, min(longest, self.max_len) if self.max_len else longest)
        for c in self.dense:
            v = self._dense_values(df, c)
            t = self._transform_of(c)
            if t == "log":
                v = np.log1p(np.maximum(v, 0.0))
            finite = v[~np.isnan(v)]
            mean = float(finite.mean()) if finite.size else 0.0
            if t in ("standardize", "log"):
                sd = float(finite.std()) if finite.size else 1.0
                shift, scale = mean, (sd if sd > 1e-12 else 1.0)
            elif t == "minmax":
                lo = float(finite.min()) if finite.size else 0.0
                hi = float(finite.max()) if finite.size else 1.0
                shift, scale = lo, ((hi - lo) if hi > lo else 1.0)
            else:
                shift, scale = 0.0, 1.0
            self.stats_[c] = (shift, scale, mean)  # missing values are filled with the fitted mean
        feats = [FeatureSpec(c, "categorical", vocab_size=len(self.vocab_[c]) + 1) for c in self.categorical]
        feats += [FeatureSpec(c, "multivalent", vocab_size=len(self.vocab_[c]) + 2, max_len=self.max_len_[c]) for c in self.multivalent]
        feats += [FeatureSpec(c, "dense") for c in self.dense]
        self.schema_ = Schema(feats).with_embedding_dims(self.embedding_dim)
        return self

    def transform(self, df: pd.DataFrame, name: str | None = None) -> TabularData:
        if self.schema_ is None:
            raise ConfigError("FrameEncoder.transform called before fit")
        self._check_frame(df)
        n = len(df)
        y = self._labels(df)
        cat = np.zeros((n, len(self.categorical)), dtype=np.int64)
        for j, c in enumerate(self.categorical):
            codes = self.vocab_[c].get_indexer(df[c])  # -1 for unseen / missing
            cat[:, j] = codes + 1
        width = max(self.max_len_.values(), default=0)
        mv = np.zeros((n, len(self.multivalent), width), dtype=np.int64)
        for j, c in enumerate(self.multivalent):
            L = self.max_len_[c]
            lists = self._lists(df[c]).map(lambda items: items[:L])
            lens = lists.map(len).to_numpy(dtype=np.int64)
            flat = [v for items in lists for v in items]
            if flat:
                codes = self.vocab_[c].get_indexer(pd.Index(flat, dtype=object))
                rows = np.repeat(np.arange(n), lens)
                pos = np.arange(len(flat)) - np.repeat(np.cumsum(lens) - lens, lens)
                mv[rows, j, pos] = np.where(codes < 0, 1, codes + 2)
        dense = np.zeros((n, len(self.dense)), dtype=np.float32)
        for j, c in enumerate(self.dense):
            v = self._dense_values(df, c)
            t = self._transform_of(c)
            if t == "log":
                v = np.log1p(np.maximum(v, 0.0))
            shift, scale, fill = self.stats_[c]
            v = (np.where(np.isnan(v), fill, v) - shift) / scale
            dense[:, j] = v
        return TabularData(
            self.schema_,
            categorical=torch.from_numpy(cat),
            multivalent=torch.from_numpy(mv),
            dense=torch.from_numpy(dense),
            label=torch.from_numpy(y),
            task=self.task,
            name=name or self.source,
            encoder=self,
        )

    def vocabulary(self, feature: str) -> list:
        """Known values of an id feature, in id order (id 0 = OOV is not listed)."""
        return list(self.vocab_[feature])


def from_frame(
    df: pd.DataFrame,
    label: str,
    categorical: Sequence[str] = (),
    dense: Sequence[str] = (),
    multivalent: Sequence[str] = (),
    task: str = "binary",
    fit_rows: Any = None,
    name: str = "frame",
    **encoder_options,
) -> TabularData:
    """Encode a DataFrame; vocabularies and dense statistics come from ``df`` or from ``df.loc[fit_rows]``.

    ``encoder_options``: ``min_count``, ``dense_transform``, ``separator``, ``max_len``,
    ``embedding_dim`` (``"auto"``, an int, or ``{feature: width}``). The fitted
    encoder is ``ds.encoder``; ``ds.encoder.transform(other_df)`` encodes new rows
    with the same vocabularies (unseen values -> id 0/1).
    """
    enc = FrameEncoder(label, categorical, dense, multivalent, task=task, source=name, **encoder_options)
    enc._check_frame(df)
    enc.fit(df if fit_rows is None else df.loc[fit_rows])
    return enc.transform(df, name=name)


def split_frame(
    df: pd.DataFrame,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    **from_frame_args,
) -> tuple[TabularData, ...]:
    """Split rows at random, fit the encoder on the first part only, encode every part with it.

    This is the strict protocol: vocabularies and statistics never see validation/test rows.
    """
    fr = [float(f) for f in fractions]
    if not fr or any(f <= 0 for f in fr) or not math.isclose(sum(fr), 1.0, abs_tol=1e-6):
        raise ConfigError(f"split fractions must be positive and sum to 1, got {tuple(fractions)}")
    name = from_frame_args.pop("name", "frame")
    label = from_frame_args.pop("label")
    cols = {k: from_frame_args.pop(k, ()) for k in ("categorical", "dense", "multivalent")}
    task = from_frame_args.pop("task", "binary")
    enc = FrameEncoder(label, task=task, source=name, **cols, **from_frame_args)
    enc._check_frame(df)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(df))
    sizes = [int(math.floor(f * len(df))) for f in fr[:-1]]
    sizes.append(len(df) - sum(sizes))
    if min(sizes) == 0:
        raise DataError(f"{name}: splitting {len(df)} rows by {tuple(fractions)} leaves an empty part")
    bounds = np.cumsum([0] + sizes)
    parts = [df.iloc[perm[a:b]] for a, b in zip(bounds[:-1], bounds[1:])]
    enc.fit(parts[0])
    names = ["train", "val", "test"] if len(parts) == 3 else [f"part{i}" for i in range(len(parts))]
    return tuple(enc.transform(p, name=f"{name}/{nm}") for p, nm in zip(parts, names))
