"""Synthetic data with a known truth.

- :func:`planted_crosses`: a recommender-like click log with named categorical
  features of varied vocabulary sizes, a few dense features, and a known set of
  planted pairwise (optionally 3-way) crosses; ``ds.truth`` lists them.
- :func:`paper_polynomial`: the paper's Sec. 6 polynomials (Eq. 6 ``f1``, ``f2``,
  ``f3``; the combined-order function of Table 2; homogeneous order-3/4
  polynomials of Fig. 4), with their monomials as ``ds.truth``.

>>> ds = planted_crosses(n_samples=1000, seed=0)
>>> len(ds.schema.of_kind("categorical")), len(ds.truth[ds.truth.order == 2])
(12, 6)
"""

from __future__ import annotations

import itertools
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from ..errors import ConfigError
from ..schema import FeatureSpec, Schema
from .dataset import TabularData

#: name -> (vocabulary size, popularity skew (Zipf exponent; 0 = uniform))
DEFAULT_CATEGORICAL: dict[str, tuple[int, float]] = {
    "user_id": (1000, 1.0),
    "item_id": (500, 1.0),
    "user_age": (7, 0.0),
    "user_gender": (3, 0.0),
    "user_country": (30, 0.8),
    "item_category": (20, 0.5),
    "item_brand": (100, 0.8),
    "device_type": (4, 0.0),
    "os": (6, 0.3),
    "hour_of_day": (24, 0.0),
    "day_of_week": (7, 0.0),
    "ad_position": (5, 0.3),
}
DEFAULT_DENSE = ("item_price", "user_tenure", "item_ctr_prior")


def _zipf_probs(vocab: int, skew: float) -> np.ndarray:
    p = 1.0 / np.arange(1, vocab + 1) ** skew
    return p / p.sum()


def _standardise(z: np.ndarray) -> np.ndarray:
    return (z - z.mean()) / (z.std() + 1e-12)


def planted_crosses(
    n_samples: int = 100_000,
    seed: int = 0,
    n_pairs: int = 6,
    n_triples: int = 0,
    pairs: Sequence[tuple[str, str]] | None = None,
    categorical: dict[str, tuple[int, float]] | None = None,
    dense: Sequence[str] = DEFAULT_DENSE,
    cross_weight: tuple[float, float] = (0.6, 1.2),
    main_effect: float = 0.3,
    base_rate: float = -0.5,
    task: str = "binary",
    embedding_dim: int | str | dict = "auto",
) -> TabularData:
    """A click log whose logit holds planted crosses between named features.

    Each categorical feature ``f`` draws its ids with a Zipf popularity and gives
    every id a hidden standardised score ``z_f[id]`` and a main effect. The logit is

    ``base_rate + Σ_f main_f[x_f] + Σ_dense β·x + Σ_{(a,b)∈S} w_ab z_a[x_a] z_b[x_b] (+ Σ_triples w z_a z_b z_c)``

    and ``y ~ Bernoulli(σ(logit))`` (``task="binary"``) or ``y = logit + N(0, 0.1²)``
    (``"regression"``). Planted pairs are drawn at random among the categorical
    features (or given by ``pairs``), with ``|w|`` uniform in ``cross_weight`` and a
    random sign. ``ds.truth`` has one row per planted cross: ``feature_a``,
    ``feature_b``, ``feature_c`` (3-way only), ``order``, ``weight``.
    Ids are stored ``+1`` so that id 0 stays the out-of-vocabulary slot, as for
    :func:`~dcn_explore.data.from_frame`.
    """
    cats = dict(categorical or DEFAULT_CATEGORICAL)
    if n_samples < 10:
        raise ConfigError(f"n_samples must be >= 10, got {n_samples}")
    if task not in ("binary", "regression"):
        raise ConfigError(f"task={task!r}; allowed: binary, regression")
    names = list(cats)
    rng = np.random.default_rng(seed)
    all_pairs = list(itertools.combinations(names, 2))
    if pairs is None:
        if not 0 <= n_pairs <= len(all_pairs):
            raise ConfigError(f"n_pairs must be in [0, {len(all_pairs)}], got {n_pairs}")
        chosen = [all_pairs[i] for i in rng.choice(len(all_pairs), size=n_pairs, replace=False)]
    else:
        chosen = [tuple(p) for p in pairs]
        for p in chosen:
            if len(p) != 2 or p[0] == p[1] or any(f not in cats for f in p):
                raise ConfigError(f"pairs: {p!r} is not a pair of two different categorical features of {names}")
    all_triples = list(itertools.combinations(names, 3))
    triples = [all_triples[i] for i in rng.choice(len(all_triples), size=n_triples, replace=False)] if n_triples else []

    ids = np.zeros((n_samples, len(names)), dtype=np.int64)
    z: dict[str, np.ndarray] = {}
    logit = np.full(n_samples, float(base_rate))
    for j, (name, (vocab, skew)) in enumerate(cats.items()):
        probs = _zipf_probs(vocab, skew)
        perm = rng.permutation(vocab)  # popularity is not tied to the id order
        x = perm[rng.choice(vocab, size=n_samples, p=probs)]
        ids[:, j] = x
        z[name] = _standardise(rng.standard_normal(vocab))[x]
        logit += main_effect * rng.standard_normal(vocab)[x]
    dense_vals = rng.standard_normal((n_samples, len(dense))).astype(np.float32)
    logit += dense_vals @ (main_effect * rng.standard_normal(len(dense)))
    lo, hi = cross_weight
    rows = []
    for feats in chosen + triples:
        w = float(rng.uniform(lo, hi) * rng.choice([-1.0, 1.0]))
        term = np.ones(n_samples)
        for f in feats:
            term = term * z[f]
        logit += w * term
        rows.append({
            "feature_a": feats[0], "feature_b": feats[1],
            "feature_c": feats[2] if len(feats) == 3 else None,
            "order": len(feats), "weight": w,
        })
    if task == "binary":
        y = (rng.random(n_samples) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    else:
        y = (logit + 0.1 * rng.standard_normal(n_samples)).astype(np.float32)
    feats = [FeatureSpec(n, "categorical", vocab_size=cats[n][0] + 1) for n in names]
    feats += [FeatureSpec(n, "dense") for n in dense]
    schema = Schema(feats).with_embedding_dims(embedding_dim)
    truth = pd.DataFrame(rows, columns=["feature_a", "feature_b", "feature_c", "order", "weight"])
    truth = truth.sort_values("weight", key=np.abs, ascending=False, ignore_index=True)
    return TabularData(
        schema,
        categorical=torch.from_numpy(ids + 1),
        dense=torch.from_numpy(dense_vals),
        label=torch.from_numpy(y),
        task=task,
        truth=truth,
        name="planted_crosses",
        meta={"seed": seed, "n_samples": n_samples, "bayes_logit": logit.astype(np.float32)},
    )


# -- the paper's Sec. 6 polynomials -----------------------------------------------------

POLYNOMIALS = ("f1", "f2", "f3", "combined", "order3", "order4")


def _monomials_frame(terms: list[tuple[tuple[int, ...], float]], names: list[str]) -> pd.DataFrame:
    rows = []
    for idx, w in terms:
        fs = [names[i] for i in idx]
        rows.append({
            "term": "*".join(fs),
            "features": tuple(fs),
            "feature_a": fs[0],
            "feature_b": fs[1] if len(fs) > 1 else None,
            "feature_c": fs[2] if len(fs) > 2 else None,
            "order": len(fs),
            "weight": float(w),
        })
    return pd.DataFrame(rows)


def _random_monomials(rng, d: int, order: int, count: int) -> list[tuple[int, ...]]:
    seen: set[tuple[int, ...]] = set()
    while len(seen) < count:
        seen.add(tuple(sorted(rng.choice(d, size=order, replace=False).tolist())))
    return sorted(seen)


def paper_polynomial(
    kind: str = "f1",
    n_samples: int = 20_000,
    seed: int = 0,
    d: int | None = None,
    noise: float | None = None,
) -> TabularData:
    """The paper's synthetic regression targets (Sec. 6), ``x_i ~ U[-1, 1]`` as dense features.

    - ``"f1"`` (d=4): ``x1² + x1x2 + x3x1 + x4x1``; ``"f2"`` (d=3): ``x1² + 0.1x1x2 + x2x3 + 0.1x3²``;
    - ``"f3"`` (d=100): ``Σ_{(i,j)∈S} w_ij x_i x_j`` with ``|S| = 100`` random pairs, ``w ~ U[-1, 1]`` (Eq. 6);
    - ``"combined"`` (Table 2, d=50 by default): ``xᵀw + Σ_{α∈S} w_α x^α + 0.1 sin(2xᵀw_s + 0.1) + 0.01ε``
      with ``|S2| = 20, |S3| = 10, |S4| = 5`` random monomials;
    - ``"order3"`` / ``"order4"`` (Fig. 4, d=50): 20 random monomials of that order.

    ``ds.truth`` lists every monomial (``features``, ``order``, ``weight``; linear
    and sine terms of ``"combined"`` are in ``ds.meta``). The paper does not give
    sample counts or weight distributions; these are our choices (stated above).

    >>> ds = paper_polynomial("f1", n_samples=4)
    >>> x, y = ds.dense, ds.label
    >>> bool(torch.allclose(y, x[:, 0]**2 + x[:, 0]*x[:, 1] + x[:, 2]*x[:, 0] + x[:, 3]*x[:, 0]))
    True
    """
    if kind not in POLYNOMIALS:
        raise ConfigError(f"paper_polynomial kind={kind!r}; allowed: {', '.join(POLYNOMIALS)}")
    rng = np.random.default_rng(seed)
    default_d = {"f1": 4, "f2": 3, "f3": 100, "combined": 50, "order3": 50, "order4": 50}[kind]
    d = int(d or default_d)
    if kind in ("f1", "f2") and d != default_d:
        raise ConfigError(f"paper_polynomial: {kind} is defined for d={default_d}, got d={d}")
    x = rng.uniform(-1.0, 1.0, size=(n_samples, d))
    meta: dict = {"kind": kind, "seed": seed}
    if kind == "f1":
        terms = [((0, 0), 1.0), ((0, 1), 1.0), ((0, 2), 1.0), ((0, 3), 1.0)]
    elif kind == "f2":
        terms = [((0, 0), 1.0), ((0, 1), 0.1), ((1, 2), 1.0), ((2, 2), 0.1)]
    elif kind == "f3":
        pairs = _random_monomials(rng, d, 2, 100)
        terms = [(p, float(w)) for p, w in zip(pairs, rng.uniform(-1, 1, size=len(pairs)))]
    elif kind == "combined":
        terms = []
        for order, count in ((2, 20), (3, 10), (4, 5)):
            mons = _random_monomials(rng, d, order, count)
            terms += [(m, float(w)) for m, w in zip(mons, rng.uniform(-1, 1, size=count))]
    else:
        order = 3 if kind == "order3" else 4
        mons = _random_monomials(rng, d, order, 20)
        terms = [(m, float(w)) for m, w in zip(mons, rng.uniform(-1, 1, size=20))]
    y = np.zeros(n_samples)
    for idx, w in terms:
        y += w * np.prod(x[:, list(idx)], axis=1)
    if kind == "combined":
        w_lin = rng.uniform(-1, 1, size=d)
        w_s = rng.uniform(-1, 1, size=d)
        eps = rng.standard_normal(n_samples)
        sigma = 0.01 if noise is None else noise
        y += x @ w_lin + 0.1 * np.sin(2 * (x @ w_s) + 0.1) + sigma * eps
        meta.update(linear_weights=w_lin.tolist(), sine_weights=w_s.tolist(), noise=sigma)
    elif noise:
        y += noise * rng.standard_normal(n_samples)
    names = [f"x{i + 1}" for i in range(d)]
    schema = Schema([FeatureSpec(n, "dense") for n in names])
    return TabularData(
        schema,
        dense=torch.from_numpy(x.astype(np.float32)),
        label=torch.from_numpy(y.astype(np.float32)),
        task="regression",
        truth=_monomials_frame(terms, names),
        name=f"paper_polynomial/{kind}",
        meta=meta,
    )
