"""The Schema: the ordered features of ``x0`` and the slice each one occupies.

The model builds ``x0 = [e_1; ...; e_k; x_dense]`` in schema order (Sec. 3 of the
paper) and :mod:`dcn_explore.crosses` cuts the cross matrices into blocks with
the same slices, so feature names travel from the data to every figure.

>>> s = Schema([FeatureSpec("user", "categorical", vocab_size=100, embedding_dim=4),
...             FeatureSpec("price", "dense")])
>>> s.d, s.names, s.slices["price"]
(5, ['user', 'price'], slice(4, 5, None))
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Iterable, Mapping

from .errors import ConfigError

KINDS = ("categorical", "multivalent", "dense")


def auto_embedding_dim(vocab_size: int, multiplier: float = 6.0) -> int:
    """The paper's rule for the embedding width: ``round(6 * vocab_size ** 0.25)`` (Sec. 7.1).

    >>> auto_embedding_dim(1000), auto_embedding_dim(3)
    (34, 8)
    """
    return max(1, int(round(multiplier * vocab_size**0.25)))


@dataclass(frozen=True)
class FeatureSpec:
    """One feature of ``x0``.

    ``kind`` is ``"categorical"`` (one id per example), ``"multivalent"`` (a list of
    ids, embedded as the mean of their embeddings) or ``"dense"`` (one float, width 1).
    ``vocab_size`` counts every id the embedding table holds, reserved ids included
    (see :mod:`dcn_explore.data.frame`). ``embedding_dim`` is the block width in ``x0``;
    ``None`` for an id feature means the paper's rule :func:`auto_embedding_dim`.
    ``max_len`` is the padded list length of a multivalent feature.
    """

    name: str
    kind: str
    vocab_size: int = 0
    embedding_dim: int | None = None
    max_len: int = 0

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"FeatureSpec.name must be a non-empty string, got {self.name!r}")
        if self.kind not in KINDS:
            raise ConfigError(f"FeatureSpec {self.name!r}: kind={self.kind!r}; allowed: {', '.join(KINDS)}")
        if self.kind == "dense":
            if self.embedding_dim not in (None, 1):
                raise ConfigError(f"FeatureSpec {self.name!r}: a dense feature has width 1, got embedding_dim={self.embedding_dim}")
            object.__setattr__(self, "embedding_dim", 1)
        else:
            if not isinstance(self.vocab_size, int) or self.vocab_size < 1:
                raise ConfigError(f"FeatureSpec {self.name!r}: vocab_size must be an integer >= 1, got {self.vocab_size!r}")
            if self.embedding_dim is None:
                object.__setattr__(self, "embedding_dim", auto_embedding_dim(self.vocab_size))
            if not isinstance(self.embedding_dim, int) or self.embedding_dim < 1:
                raise ConfigError(f"FeatureSpec {self.name!r}: embedding_dim must be an integer >= 1, got {self.embedding_dim!r}")
        if self.kind == "multivalent" and (not isinstance(self.max_len, int) or self.max_len < 1):
            raise ConfigError(f"FeatureSpec {self.name!r}: a multivalent feature needs max_len >= 1, got {self.max_len!r}")

    @property
    def width(self) -> int:
        """Number of columns of ``x0`` this feature occupies."""
        return int(self.embedding_dim)


@dataclass(frozen=True)
class Schema:
    """Ordered features; ``x0`` is laid out in exactly this order."""

    features: tuple[FeatureSpec, ...] = field(default_factory=tuple)

    def __init__(self, features: Iterable[FeatureSpec]):
        feats = tuple(features)
        if not feats:
            raise ConfigError("Schema needs at least one feature")
        names = [f.name for f in feats]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError(f"Schema: duplicate feature names {dup}")
        object.__setattr__(self, "features", feats)

    # -- views -----------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.features)

    def __iter__(self):
        return iter(self.features)

    def __getitem__(self, name: str) -> FeatureSpec:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(f"no feature named {name!r}; features: {self.names}")

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def widths(self) -> list[int]:
        return [f.width for f in self.features]

    @property
    def d(self) -> int:
        """Width of ``x0``."""
        return sum(self.widths)

    @property
    def slices(self) -> dict[str, slice]:
        """Feature name -> its slice of ``x0``."""
        out, start = {}, 0
        for f in self.features:
            out[f.name] = slice(start, start + f.width)
            start += f.width
        return out

    def of_kind(self, kind: str) -> list[FeatureSpec]:
        return [f for f in self.features if f.kind == kind]

    def with_embedding_dims(self, dims: int | str | Mapping[str, int] | None) -> "Schema":
        """A copy with embedding widths overridden.

        ``"auto"``/``None`` keeps each feature's width; an ``int`` sets every id feature;
        a mapping sets the named features (unknown names raise).
        """
        if dims is None or dims == "auto":
            return self
        if isinstance(dims, bool) or not isinstance(dims, (int, Mapping)):
            raise ConfigError(f"embedding_dim must be 'auto', an int or a {{feature: int}} mapping, got {dims!r}")
        if isinstance(dims, Mapping):
            unknown = sorted(set(dims) - set(self.names))
            if unknown:
                raise ConfigError(f"embedding_dim names unknown features {unknown}; features: {self.names}")
        feats = []
        for f in self.features:
            if f.kind == "dense":
                feats.append(f)
                continue
            w = dims.get(f.name, f.embedding_dim) if isinstance(dims, Mapping) else dims
            feats.append(FeatureSpec(f.name, f.kind, f.vocab_size, int(w), f.max_len))
        return Schema(feats)

    def mean_auto_width(self) -> float:
        """The paper's single embedding size: ``6 * vocab**0.25`` averaged over id features."""
        ids = [f for f in self.features if f.kind != "dense"]
        return sum(6 * f.vocab_size**0.25 for f in ids) / max(1, len(ids)) if ids else math.nan

    # -- serialisation (plain types only: checkpoints load with weights_only=True) --
    def to_dict(self) -> dict:
        return {"features": [asdict(f) for f in self.features]}

    @classmethod
    def from_dict(cls, d: Mapping) -> "Schema":
        try:
            return cls(FeatureSpec(**f) for f in d["features"])
        except (KeyError, TypeError) as e:
            raise ConfigError(f"not a valid schema dictionary: {e}") from e

    def __repr__(self) -> str:
        inner = ", ".join(f"{f.name}:{f.kind[0]}{f.width}" for f in self.features)
        return f"Schema(d={self.d}; {inner})"
