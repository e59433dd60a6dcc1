"""Hyper-parameter search on validation loss, with the same trial budget for every model.

Two ways to call :func:`tune`:

- ``tune(data, base=DCNConfig(...), train=TrainConfig(...), space=..., budget=N, seed=s)``:
  every trial builds ``DCNv2(schema, base.replace(**model_part), seed=s)`` and trains it with
  :func:`~dcn_explore.train.fit` (``train.replace(**train_part, seed=s)``); the objective is
  the validation loss of the kept (best, EMA) weights: log loss for binary tasks, RMSE for
  regression. ``data`` is a :class:`~dcn_explore.data.dataset.TabularData` (split
  ``split``/``split_seed`` like :func:`~dcn_explore.sweep.sweep`; the test part is never
  touched) or an explicit ``(train, val)`` / ``(train, val, test)`` tuple. Names in
  ``space`` must be ``DCNConfig`` or ``TrainConfig`` fields (``"layers"`` means
  ``cross_layers``); any other name raises :class:`~dcn_explore.errors.ConfigError`
  naming it, before anything is trained.
- ``tune(fn, space=..., budget=N, seed=s)``: ``fn(params) -> float`` (or a mapping with a
  ``"val_loss"`` entry; its other numeric entries become columns) for any model, e.g. a
  peer library's, so that every model gets the same search.

The search (``method``): ``"grid"`` runs every point of the product of ``space`` in order
(the budget must cover it); ``"random"`` draws ``budget`` distinct points of that product
with ``random.Random(seed)`` (all of them, shuffled, when the product is smaller);
``"auto"`` (default) is ``"grid"`` when the product fits the budget, else ``"random"``.
Trials never exceed ``budget``. A trial whose training diverges is kept with
``val_loss = inf`` and ``status = "diverged"``.

The result is a :class:`TuneResult`: ``trials``, a tidy DataFrame with one row per trial
(``trial``, the searched names, ``val_loss``, other metrics, ``status``, ``time_s``,
``is_best``); ``best``, the winning point (the argmin of ``val_loss``, first trial on
ties); ``model_config`` / ``train_config``, the full winning configurations (data mode).
``df, best = tune(...)`` unpacks to those first two.

>>> import dcn_explore as dx
>>> ds = dx.data.planted_crosses(n_samples=1500, seed=0)
>>> res = tune(ds, base=dx.DCNConfig(cross="low_rank", rank=2, structure="cross_only", cross_layers=1),
...            train=dx.TrainConfig(epochs=1, progress=False),
...            space={"lr": [1e-3, 1e-2], "rank": [2, 4]}, budget=3, seed=0)
>>> len(res.trials), res.best == res.trials.loc[res.trials.val_loss.idxmin(), ["lr", "rank"]].to_dict()
(3, True)
>>> res.model_config.rank == res.best["rank"], res.train_config.lr == res.best["lr"]
(True, True)
"""

from __future__ import annotations

import itertools
import math
import random
import time
from dataclasses import dataclass, fields
from typing import Any, Callable, Iterator, Mapping, Sequence

import pandas as pd

from .data.dataset import TabularData
from .errors import ConfigError, TrainingDivergedError
from .model.config import DCNConfig
from .model.dcn import DCNv2
from .train import TrainConfig, evaluate, fit

MODEL_FIELDS = {f.name for f in fields(DCNConfig)}
TRAIN_FIELDS = {f.name for f in fields(TrainConfig)} - {"progress", "checkpoint", "seed", "device"}
ALIASES = {"layers": "cross_layers"}
METHODS = ("auto", "grid", "random")


@dataclass
class TuneResult:
    """What :func:`tune` returns; ``trials, best = result`` unpacks the first two fields."""

    trials: pd.DataFrame
    best: dict
    best_value: float
    model_config: DCNConfig | None = None
    train_config: TrainConfig | None = None
    method: str = "grid"
    budget: int = 0

    def __iter__(self) -> Iterator:
        return iter((self.trials, self.best))


def _normalise_space(space: Mapping[str, Sequence[Any]], check_fields: bool) -> dict[str, list]:
    if not isinstance(space, Mapping) or not space:
        raise ConfigError(f"tune space must be a non-empty mapping {{name: [values...]}}, got {space!r}")
    out: dict[str, list] = {}
    for key, values in space.items():
        name = ALIASES.get(key, key) if check_fields else key
        if check_fields and name not in MODEL_FIELDS and name not in TRAIN_FIELDS:
            raise ConfigError(f"tune space field {key!r} is not a DCNConfig or TrainConfig field; "
                              f"model fields: {sorted(MODEL_FIELDS)}; training fields: {sorted(TRAIN_FIELDS)}")
        if name in out:
            raise ConfigError(f"tune space field {key!r} is given twice (aliases: {ALIASES})")
        if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple, range)):
            raise ConfigError(f"tune space field {key!r}: values must be a list, tuple or range, got {values!r}")
        vals = list(values)
        if not vals:
            raise ConfigError(f"tune space field {key!r} has no values")
        out[name] = vals
    return out


def _resolve(method: str, size: int, budget: int) -> str:
    return method if method != "auto" else ("grid" if size <= budget else "random")


def search_points(space: Mapping[str, Sequence[Any]], budget: int, seed: int = 0, method: str = "auto") -> list[dict]:
    """The points :func:`tune` will try, in order (at most ``budget`` of them).

    >>> search_points({"a": [1, 2], "b": [3]}, budget=5)
    [{'a': 1, 'b': 3}, {'a': 2, 'b': 3}]
    >>> len(search_points({"a": range(10), "b": range(10)}, budget=4, seed=1, method="random"))
    4
    """
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ConfigError(f"tune budget={budget!r}: must be an integer >= 1 (the number of trials)")
    if method not in METHODS:
        raise ConfigError(f"tune method={method!r}; allowed: {', '.join(METHODS)}")
    keys = list(space)
    size = math.prod(len(space[k]) for k in keys)
    if _resolve(method, size, budget) == "grid":
        if size > budget:
            raise ConfigError(f"tune method='grid': the space has {size} points, more than budget={budget}; "
                              "raise the budget or use method='random'")
        return [dict(zip(keys, combo)) for combo in itertools.product(*(space[k] for k in keys))]
    rng = random.Random(seed)
    picks = rng.sample(range(size), min(budget, size))  # distinct flat indices into the product

    def point(flat: int) -> dict:
        out = {}
        for k in reversed(keys):
            flat, j = divmod(flat, len(space[k]))
            out[k] = space[k][j]
        return {k: out[k] for k in keys}

    return [point(i) for i in picks]


def _parts(data, split: Sequence[float], split_seed: int) -> tuple[TabularData, TabularData]:
    if isinstance(data, TabularData):
        parts = data.split(split, seed=split_seed)
    elif isinstance(data, (tuple, list)) and all(isinstance(p, TabularData) for p in data):
        parts = tuple(data)
    else:
        raise ConfigError(f"tune data must be a TabularData, a (train, val[, test]) tuple or a callable, got {type(data).__name__}")
    if len(parts) < 2:
        raise ConfigError(f"tune needs a train and a validation part, got {len(parts)} part(s)")
    return parts[0], parts[1]


def _configs(point: Mapping[str, Any], base: DCNConfig, train: TrainConfig) -> tuple[DCNConfig, TrainConfig]:
    model_changes = {k: v for k, v in point.items() if k in MODEL_FIELDS}
    train_changes = {k: v for k, v in point.items() if k in TRAIN_FIELDS}
    try:
        return base.replace(**model_changes), train.replace(**train_changes)
    except ConfigError as e:
        raise ConfigError(f"tune point {dict(point)}: {e}") from e


def tune(
    objective: TabularData | tuple | Callable[[dict], Any],
    base: DCNConfig | None = None,
    train: TrainConfig | None = None,
    space: Mapping[str, Sequence[Any]] | None = None,
    budget: int = 8,
    seed: int = 0,
    method: str = "auto",
    split: Sequence[float] = (0.8, 0.1, 0.1),
    split_seed: int = 0,
    progress: bool = False,
    callback: Callable[[dict], Any] | None = None,
) -> TuneResult:
    """Search ``space`` with at most ``budget`` trials; keep the point of lowest validation loss.

    See the module docstring for the two calling conventions, the search methods and the
    result. ``seed`` drives both the random draw of points and every trial's model
    initialisation and batch order (so trials differ only by their hyper-parameters, and
    the same call gives the same table). ``callback(row)`` is called after each trial.
    """
    if space is None:
        raise ConfigError("tune needs a space {name: [values...]}")
    data_mode = not callable(objective) or isinstance(objective, TabularData)
    sp = _normalise_space(space, check_fields=data_mode)
    points = search_points(sp, budget, seed, method)
    used_method = _resolve(method, math.prod(len(v) for v in sp.values()), budget)

    if data_mode:
        base = base or DCNConfig()
        train = (train or TrainConfig()).replace(progress=False, checkpoint=None, seed=int(seed))
        if not isinstance(base, DCNConfig):
            raise ConfigError(f"tune base must be a DCNConfig, got {type(base).__name__}")
        planned = [_configs(p, base, train) for p in points]  # every point validated before any training
        tr, va = _parts(objective, split, split_seed)

        def run(i: int, point: dict) -> dict:
            mcfg, tcfg = planned[i]
            model = DCNv2(tr.schema, mcfg, seed=int(seed))
            res = fit(model, tr, va, tcfg)
            m = evaluate(model, va)
            key = "logloss" if va.task == "binary" else "rmse"
            return {"val_loss": m[key], **{f"val_{k}": v for k, v in m.items()}, "params": model.num_parameters(),
                    "epochs": len(res.history), "best_epoch": res.best_epoch}
    else:
        fn = objective

        def run(i: int, point: dict) -> dict:
            out = fn(dict(point))
            if isinstance(out, Mapping):
                if "val_loss" not in out:
                    raise ConfigError(f"tune objective returned {sorted(out)}; it must return a float or a mapping with 'val_loss'")
                return {k: v for k, v in out.items() if isinstance(v, (int, float, str, bool)) or v is None}
            return {"val_loss": float(out)}

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(points), desc="tune", unit="trial")
    rows = []
    try:
        for i, point in enumerate(points):
            t0 = time.perf_counter()
            try:
                result, status = run(i, point), "ok"
            except TrainingDivergedError:
                result, status = {"val_loss": math.inf}, "diverged"
            val = float(result["val_loss"])
            if math.isnan(val):
                val, status = math.inf, "diverged"
            row = {"trial": i, **point, **result, "val_loss": val, "status": status, "time_s": time.perf_counter() - t0}
            rows.append(row)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(best=f"{min(r['val_loss'] for r in rows):.4f}")
            if callback is not None:
                callback(dict(row))
    finally:
        if bar is not None:
            bar.close()
    df = pd.DataFrame(rows)
    finite = df[df["val_loss"] < math.inf]
    if finite.empty:
        raise TrainingDivergedError(f"tune: all {len(df)} trials diverged; points tried: {points}")
    best_i = int(finite["val_loss"].idxmin())  # first of equal minima
    df["is_best"] = df.index == best_i
    best = dict(points[best_i])
    out = TuneResult(trials=df, best=best, best_value=float(df.loc[best_i, "val_loss"]), method=used_method, budget=budget)
    if data_mode:
        out.model_config, out.train_config = planned[best_i]
    return out
