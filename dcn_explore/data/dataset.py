"""``TabularData``: encoded tensors + the Schema that names their columns.

Tensors (``N`` examples):

- ``categorical``: ``(N, n_categorical)`` int64, one id per categorical feature (schema order)
- ``multivalent``: ``(N, n_multivalent, L)`` int64, padded with 0 (see :mod:`.frame`)
- ``dense``: ``(N, n_dense)`` float32, already normalised
- ``label``: ``(N,)`` float32 (0/1 for ``task="binary"``)

Batches are taken by indexing these tensors (no per-example collation), so a
dataset that fits in device memory is moved there once with :meth:`TabularData.to`.

>>> import torch
>>> from dcn_explore.schema import Schema, FeatureSpec
>>> s = Schema([FeatureSpec("a", "categorical", vocab_size=3), FeatureSpec("x", "dense")])
>>> ds = TabularData(s, categorical=torch.tensor([[0], [1], [2], [1]]),
...                  dense=torch.zeros(4, 1), label=torch.tensor([0., 1., 1., 0.]))
>>> [len(p) for p in ds.split((0.5, 0.5), seed=0)]
[2, 2]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import pandas as pd
import torch

from ..errors import ConfigError, DataError
from ..schema import Schema

TASKS = ("binary", "regression")


@dataclass
class Batch:
    """One mini-batch: the model's inputs and the label."""

    categorical: torch.Tensor
    multivalent: torch.Tensor
    dense: torch.Tensor
    label: torch.Tensor

    def inputs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.categorical, self.multivalent, self.dense


class TabularData:
    """Encoded examples of one data set (or one split of it)."""

    def __init__(
        self,
        schema: Schema,
        categorical: torch.Tensor | None = None,
        multivalent: torch.Tensor | None = None,
        dense: torch.Tensor | None = None,
        label: torch.Tensor | None = None,
        task: str = "binary",
        truth: pd.DataFrame | None = None,
        name: str = "data",
        meta: dict[str, Any] | None = None,
        encoder: Any = None,
        validate: bool = True,
    ):
        if task not in TASKS:
            raise ConfigError(f"task={task!r}; allowed: {', '.join(TASKS)}")
        if label is None:
            raise DataError(f"{name}: a label tensor is required")
        n = int(label.shape[0])
        n_cat = len(schema.of_kind("categorical"))
        n_mv = len(schema.of_kind("multivalent"))
        n_dense = len(schema.of_kind("dense"))
        dev = label.device
        if categorical is None:
            categorical = torch.zeros(n, n_cat, dtype=torch.long, device=dev)
        if multivalent is None:
            max_len = max([f.max_len for f in schema.of_kind("multivalent")] or [0])
            multivalent = torch.zeros(n, n_mv, max_len, dtype=torch.long, device=dev)
        if dense is None:
            dense = torch.zeros(n, n_dense, dtype=torch.float32, device=dev)
        self.schema = schema
        self.categorical = categorical
        self.multivalent = multivalent
        self.dense = dense
        self.label = label
        self.task = task
        self.truth = truth
        self.name = name
        self.meta = dict(meta or {})
        self.encoder = encoder
        if validate:
            self._validate()

    # -- checks ------------------------------------------------------------------
    def _validate(self) -> None:
        n = len(self)
        s = self.schema
        expect = {
            "categorical": (self.categorical, (n, len(s.of_kind("categorical")))),
            "dense": (self.dense, (n, len(s.of_kind("dense")))),
        }
        for field, (t, shape) in expect.items():
            if tuple(t.shape) != shape:
                raise DataError(f"{self.name}: {field} tensor has shape {tuple(t.shape)}, expected {shape} (N, features of kind {field!r} in the schema)")
        if self.multivalent.dim() != 3 or tuple(self.multivalent.shape[:2]) != (n, len(s.of_kind("multivalent"))):
            raise DataError(f"{self.name}: multivalent tensor has shape {tuple(self.multivalent.shape)}, expected (N={n}, {len(s.of_kind('multivalent'))}, max_len)")
        if self.categorical.dtype != torch.long or self.multivalent.dtype != torch.long:
            raise DataError(f"{self.name}: id tensors must be int64, got {self.categorical.dtype} / {self.multivalent.dtype}")
        if self.label.dim() != 1:
            raise DataError(f"{self.name}: label must be 1-D (N,), got shape {tuple(self.label.shape)}")
        for j, f in enumerate(s.of_kind("categorical")):
            col = self.categorical[:, j]
            if n and (int(col.min()) < 0 or int(col.max()) >= f.vocab_size):
                raise DataError(f"{self.name}: feature {f.name!r} has ids in [{int(col.min())}, {int(col.max())}], outside its vocabulary [0, {f.vocab_size})")
        for j, f in enumerate(s.of_kind("multivalent")):
            col = self.multivalent[:, j]
            if n and col.numel() and (int(col.min()) < 0 or int(col.max()) >= f.vocab_size):
                raise DataError(f"{self.name}: multivalent feature {f.name!r} has ids outside [0, {f.vocab_size})")
        if n and not bool(torch.isfinite(self.dense).all()):
            bad = (~torch.isfinite(self.dense)).nonzero()[0].tolist()
            raise DataError(f"{self.name}: dense feature {s.of_kind('dense')[bad[1]].name!r} is not finite at row {bad[0]}")
        if n and not bool(torch.isfinite(self.label).all()):
            raise DataError(f"{self.name}: label is not finite at row {int((~torch.isfinite(self.label)).nonzero()[0])}")
        if self.task == "binary" and n and not bool(((self.label == 0) | (self.label == 1)).all()):
            row = int((~((self.label == 0) | (self.label == 1))).nonzero()[0])
            raise DataError(f"{self.name}: task='binary' needs labels 0 or 1; row {row} has {float(self.label[row])}")

    # -- container protocol --------------------------------------------------------
    def __len__(self) -> int:
        return int(self.label.shape[0])

    def __repr__(self) -> str:
        return f"TabularData({self.name!r}, n={len(self)}, task={self.task!r}, {self.schema!r})"

    @property
    def device(self) -> torch.device:
        return self.label.device

    def _replace(self, idx: torch.Tensor | slice, name: str) -> "TabularData":
        return TabularData(
            self.schema, self.categorical[idx], self.multivalent[idx], self.dense[idx], self.label[idx],
            task=self.task, truth=self.truth, name=name, meta=self.meta, encoder=self.encoder, validate=False,
        )

    def subset(self, index: Sequence[int] | torch.Tensor, name: str | None = None) -> "TabularData":
        """The examples at ``index`` (a shared-schema view)."""
        idx = torch.as_tensor(index, dtype=torch.long, device=self.device)
        return self._replace(idx, name or f"{self.name}[subset]")

    def batch(self, index: torch.Tensor | slice) -> Batch:
        """Mini-batch by indexing the stored tensors (``index``: a slice, or row numbers of any shape,
        which lead the batch's shape)."""
        if isinstance(index, torch.Tensor) and not index.is_floating_point() and index.dtype != torch.bool:
            # index_select on the flat row numbers: 3x faster on the CPU than advanced indexing with a
            # 2-D index (12 x 512 rows of 12 ids: 50 µs against 164 µs), the same rows
            flat = index.reshape(-1)
            return Batch(*(t.index_select(0, flat).view(*index.shape, *t.shape[1:])
                           for t in (self.categorical, self.multivalent, self.dense, self.label)))
        return Batch(self.categorical[index], self.multivalent[index], self.dense[index], self.label[index])

    def to(self, device: str | torch.device) -> "TabularData":
        """A copy on ``device`` (the same object if it is already there)."""
        device = torch.device(device)
        if self.device == device:
            return self
        out = TabularData(
            self.schema, self.categorical.to(device), self.multivalent.to(device), self.dense.to(device),
            self.label.to(device), task=self.task, truth=self.truth, name=self.name, meta=self.meta,
            encoder=self.encoder, validate=False,
        )
        return out

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.categorical, self.multivalent, self.dense, self.label))

    def split(self, fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0) -> tuple["TabularData", ...]:
        """Random disjoint parts with the given fractions (they must sum to 1).

        Every part but the last gets ``floor(f * N)`` examples; the last takes the rest.
        """
        fr = [float(f) for f in fractions]
        if not fr or any(f <= 0 for f in fr) or not math.isclose(sum(fr), 1.0, abs_tol=1e-6):
            raise ConfigError(f"split fractions must be positive and sum to 1, got {tuple(fractions)}")
        n = len(self)
        g = torch.Generator().manual_seed(int(seed))
        perm = torch.randperm(n, generator=g).to(self.device)
        sizes = [int(math.floor(f * n)) for f in fr[:-1]]
        sizes.append(n - sum(sizes))
        if min(sizes) == 0:
            raise DataError(f"{self.name}: splitting {n} examples by {tuple(fractions)} leaves an empty part")
        names = ["train", "val", "test"] if len(sizes) == 3 else [f"part{i}" for i in range(len(sizes))]
        parts, start = [], 0
        for size, nm in zip(sizes, names):
            parts.append(self._replace(perm[start : start + size], f"{self.name}/{nm}"))
            start += size
        return tuple(parts)

    def sample(self, n: int, seed: int = 0) -> "TabularData":
        """At most ``n`` random examples (all of them, in order, if ``n >= len(self)``)."""
        if n >= len(self):
            return self
        g = torch.Generator().manual_seed(int(seed))
        return self._replace(torch.randperm(len(self), generator=g)[:n].to(self.device), f"{self.name}[sample]")

    def label_mean(self) -> float:
        return float(self.label.float().mean()) if len(self) else math.nan
