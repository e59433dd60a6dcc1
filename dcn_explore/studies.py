"""The paper's synthetic studies (Sec. 6), run with the package API and returned as tidy tables.

Every runner trains one model per (task × model × layers × seed) on
:func:`~dcn_explore.data.paper_polynomial` data (split 80/10/10 with the same
seed; the validation part picks the best epoch, the test part is scored) and
returns one row per run: ``study, task, model, layers, seed, rmse`` (test),
``val_rmse``, ``train_rmse`` (last epoch's mean batch loss), ``params``,
``train_time_s``, ``steps``, ``best_epoch`` and the sizes used.
``seed`` draws the data (for ``f3`` and the random polynomials: which monomials,
their weights, the samples), the split, the initialisation and the batch order.

- :func:`table1`: Eq. 6 ``f1``, ``f2``, ``f3`` × DCN / DCN-V2 / DNN of the same size /
  a large DNN, one layer each (paper Table 1).
- :func:`table2`: the combined-order polynomial (orders 1-4 + sine + noise), 1-5 layers,
  DCN-V2 (CrossNet) against a DNN with the same parameter count per layer (Table 2).
- :func:`fig4`: homogeneous order-3 and order-4 polynomials, 1-5 layers, the cross layer
  ``x0 ⊙ (W x_l)`` alone, with bias, with residual, with both (Fig. 4).

:func:`summarize` takes the mean (and spread) over seeds; :func:`table1_vs_paper`,
:func:`table2_vs_paper` put the paper's numbers (:data:`PAPER_TABLE1`,
:data:`PAPER_TABLE2`) beside ours; :func:`format_table1`, :func:`format_table2`,
:func:`format_fig4` render them as text; :func:`table1_checks`, :func:`table2_checks`,
:func:`fig4_checks` test the paper's claims on a result and say what was measured.

All sizes (``n_samples``, ``seeds``, ``epochs``, ``layers``) are arguments, so a
notebook can run a one-minute version and ``benchmarks/synthetic.py`` the full one.
``workers > 1`` trains runs in that many processes (one thread each).

Choices the paper leaves open (stated, so results can be read against them):

- Model sizes count every trainable parameter, including the output layer's bias, so
  ours are the paper's + 1 (e.g. DCN-V2 on ``f1``: ``W`` 16 + ``b`` 4 + logit 4 + 1 = 25
  against the paper's 24).
- "DCN (1 layer)" is the package's DCN layer ``x0 (wᵀx0) + b`` *without* the residual
  ``+ x0``: the package adds ``b`` outside ``x0 ⊙ (·)`` (original DCN), so with the residual the
  output keeps a linear term ``vᵀx0`` that only vanishes as ``v → 0, w → ∞``, and ``f1`` (no
  linear term) cannot be fit exactly -- while the paper's 12-parameter DCN fits it to 1e-12.
  The residual form is available as ``"DCN (1 layer, +x_l)"``.
- Exact fits need many Adam steps at a decaying rate, and Adam's second-moment average
  (β2 = 0.999, ~1000 steps of memory) caps how fast the loss can fall once gradients shrink
  quickly. The recipe (:data:`EXACT_FIT`) therefore trains in ``cycles`` consecutive
  :func:`~dcn_explore.train.fit` calls -- cosine schedules with warm restarts, a fresh Adam each,
  peak lr × ``cycle_decay`` per restart -- in float64. ``rmse`` cannot go below ~3e-8 because
  :func:`~dcn_explore.data.paper_polynomial` stores ``x`` and ``y`` as float32 (:data:`PRECISION_FLOOR`).
- Sample counts and epochs: :data:`TABLE1_DEFAULTS`, :data:`TABLE2_DEFAULTS`, :data:`FIG4_DEFAULTS`.
  Many samples and few epochs cost the same per step as few samples and many epochs, and
  condition the exact fits better.

Rows also carry ``cpu_time_s`` (the worker's CPU time for the run: data, training, scoring),
which does not depend on how loaded the machine was.

>>> df = table1(tasks=["f1"], models=["DCN-V2 (1 layer)"], seeds=1, n_samples=1000, epochs=2)
>>> df[["study", "task", "model", "layers", "seed", "params"]].values.tolist()
[['table1', 'f1', 'DCN-V2 (1 layer)', 1, 0, 25]]
"""

from __future__ import annotations

import functools
import math
import sys
import time
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd
import torch

from .data.synthetic import paper_polynomial
from .errors import ConfigError
from .model.config import DCNConfig
from .model.dcn import DCNv2
from .train import TrainConfig, evaluate, fit

# -- the paper's numbers -----------------------------------------------------------------

TABLE1_TASKS = ("f1", "f2", "f3")
TABLE1_MODELS = ("DCN (1 layer)", "DCN-V2 (1 layer)", "DNN (1 layer)", "DNN (large)")
#: an extra model for :func:`table1`: the package's DCN layer with its residual (see :func:`table1_config`)
TABLE1_EXTRA_MODELS = ("DCN (1 layer, +x_l)",)
#: hidden widths of the "DNN (large)" column of Table 1
DNN_LARGE = {"f1": (200, 200), "f2": (200, 200), "f3": (1024, 512, 256)}

#: Table 1: mean RMSE of 5 runs and model size (# parameters) as the paper prints it
PAPER_TABLE1 = pd.DataFrame(
    [
        ("f1", "DCN (1 layer)", 8.9e-13, 12), ("f1", "DCN-V2 (1 layer)", 5.1e-13, 24),
        ("f1", "DNN (1 layer)", 2.7e-2, 24), ("f1", "DNN (large)", 4.7e-3, 41_000),
        ("f2", "DCN (1 layer)", 1.0e-1, 9), ("f2", "DCN-V2 (1 layer)", 4.5e-15, 15),
        ("f2", "DNN (1 layer)", 3.0e-2, 15), ("f2", "DNN (large)", 1.4e-3, 41_000),
        ("f3", "DCN (1 layer)", 2.6e0, 300), ("f3", "DCN-V2 (1 layer)", 6.7e-7, 10_000),
        ("f3", "DNN (1 layer)", 2.7e-1, 10_000), ("f3", "DNN (large)", 7.8e-2, 758_000),
    ],
    columns=["task", "model", "rmse", "params"],
)

TABLE2_MODELS = ("DCN-V2", "DNN")
#: Table 2: mean RMSE of 5 runs by number of layers (combined orders 1-4)
PAPER_TABLE2 = pd.DataFrame(
    [("DCN-V2", l, r) for l, r in zip(range(1, 6), (1.43e-1, 2.89e-2, 9.82e-3, 9.87e-3, 9.92e-3))]
    + [("DNN", l, r) for l, r in zip(range(1, 6), (1.32e-1, 1.03e-1, 1.03e-1, 1.09e-1, 1.05e-1))],
    columns=["model", "layers", "rmse"],
)

#: Fig. 4 ablation: variant -> (cross_bias, cross_residual) of ``x_{l+1} = x0 ⊙ (W x_l [+ b]) [+ x_l]``
FIG4_VARIANTS: dict[str, tuple[bool, bool]] = {
    "x0*(Wx)": (False, False),
    "+bias": (True, False),
    "+residual": (False, True),
    "+bias+residual": (True, True),
}
FIG4_TASKS = ("order3", "order4")

#: RMSEs below this are "exact fits" and count as ties when orderings are compared: the data
#: store x and y as float32 (about 6e-8 relative), so ~1e-7 is the floor any model can reach.
PRECISION_FLOOR = 1e-6

#: the training recipe of the exact-fit studies: float64, Adam with a cosine decay to 0, restarted
#: ``cycles`` times with the peak learning rate × ``cycle_decay`` each time (see :meth:`RunSpec.cycle_configs`),
#: no L2, no EMA, no early stopping (each cycle keeps its best epoch on validation), no clipping.
EXACT_FIT = dict(
    dtype="float64", lr=5e-3, lr_schedule="cosine", batch_size=256, l2=0.0,
    ema_decay=None, early_stopping=None, clip_norm=None, progress=False,
    cycles=5, cycle_decay=0.3,
)

#: full-size defaults (used when an argument is ``None``); chosen in ``benchmarks/synthetic.py``'s
#: docstring. ``n_samples`` is before the 80/10/10 split.
TABLE1_DEFAULTS = {
    "n_samples": {"f1": 10_000, "f2": 10_000, "f3": 100_000},
    "epochs": {"f1": 60, "f2": 60, "f3": 28},
    #: per-task recipe on top of EXACT_FIT (d = 3-4: a larger step; d = 100: more, smaller restarts)
    "train": {"f1": dict(lr=3e-2, cycles=3), "f2": dict(lr=3e-2, cycles=3), "f3": dict(lr=5e-3, cycles=7)},
    #: the 760K-parameter DNN on f3 costs ~75x the others per step: float32, big batches, few epochs
    "large_train": {"f3": dict(dtype="float32", lr=3e-3, batch_size=256, epochs=3, cycles=1)},
}
TABLE2_DEFAULTS = {"n_samples": 100_000, "epochs": 8, "train": dict(lr=3e-2, cycles=1)}
#: Fig. 4, per order: a 3-layer product (order 4) needs more steps than a 2-layer one (order 3)
FIG4_DEFAULTS = {"n_samples": 100_000, "epochs": {3: 6, 4: 12},
                 "train": {3: dict(lr=3e-2, cycles=1), 4: dict(lr=3e-2, cycles=2)}}


# -- one run ----------------------------------------------------------------------------

@dataclass(frozen=True)
class RunSpec:
    """One training run: data (``task``, ``n_samples``, ``seed``, ``d``, ``noise``), model, training."""

    study: str
    task: str
    model: str
    layers: int
    seed: int
    n_samples: int
    config: DCNConfig
    train: TrainConfig
    d: int | None = None
    noise: float | None = None
    cycles: int = 1
    cycle_decay: float = 0.3
    extra: tuple = ()  # extra (column, value) pairs copied into the row (e.g. the Fig. 4 variant)

    def cycle_configs(self) -> list[TrainConfig]:
        """The training of each cycle: ``train.epochs`` split over ``cycles`` consecutive
        :func:`~dcn_explore.train.fit` calls (a fresh Adam each time, i.e. cosine with warm
        restarts), the peak learning rate multiplied by ``cycle_decay`` from one to the next."""
        return _cycle_configs(self.train.replace(seed=self.seed), self.cycles, self.cycle_decay)


def _cycle_configs(tc: TrainConfig, cycles: int, decay: float) -> list[TrainConfig]:
    if isinstance(cycles, bool) or not isinstance(cycles, int) or not 1 <= cycles <= tc.epochs:
        raise ConfigError(f"cycles={cycles!r}: must be an integer in [1, epochs={tc.epochs}]")
    if not 0 < decay <= 1:
        raise ConfigError(f"cycle_decay={decay!r}: must be in (0, 1]")
    base, extra = divmod(tc.epochs, cycles)
    return [tc.replace(epochs=base + (k < extra), lr=tc.lr * decay**k, seed=tc.seed + 1009 * k) for k in range(cycles)]


@functools.lru_cache(maxsize=4)
def _splits(task: str, n_samples: int, seed: int, d: int | None, noise: float | None):
    ds = paper_polynomial(task, n_samples=n_samples, seed=seed, d=d, noise=noise)
    return ds.split((0.8, 0.1, 0.1), seed=seed)


def run_one(spec: RunSpec) -> dict:
    """Train and score one :class:`RunSpec`; returns its row."""
    cpu0 = time.process_time()
    train, val, test = _splits(spec.task, spec.n_samples, spec.seed, spec.d, spec.noise)
    model = DCNv2(train.schema, spec.config, task="regression", seed=spec.seed)
    results = [fit(model, train, val, tc) for tc in spec.cycle_configs()]
    res = results[-1]  # the model holds the best weights (on validation) of the last cycle
    last = res.history.iloc[-1] if len(res.history) else {}
    row = {
        "study": spec.study, "task": spec.task, "model": spec.model, "layers": spec.layers, "seed": spec.seed,
        **dict(spec.extra),
        "rmse": evaluate(model, test)["rmse"],
        "val_rmse": float(res.best_metrics.get("val_rmse", math.nan)),
        "train_rmse": math.sqrt(float(last["train_loss"])) if len(res.history) else math.nan,
        "params": model.num_parameters(),
        "train_time_s": sum(r.train_time_s for r in results),
        "cpu_time_s": time.process_time() - cpu0,  # data + training + scoring, this process's CPU (load-independent)
        "steps": sum(r.steps for r in results),
        "best_epoch": sum(len(r.history) for r in results[:-1]) + res.best_epoch,
        "epochs": spec.train.epochs,
        "cycles": spec.cycles,
        "batch_size": spec.train.batch_size,
        "lr": spec.train.lr,
        "dtype": spec.train.dtype,
        "n_train": len(train), "n_test": len(test), "d": train.schema.d,
        "config": spec.config.label(),
    }
    return row


def _worker_init(threads: int) -> None:
    torch.set_num_threads(threads)


def run(specs: Sequence[RunSpec], workers: int = 1, threads: int | None = None, progress: bool = False) -> pd.DataFrame:
    """Run every spec (in ``workers`` processes when > 1) and return one row per run, in ``specs`` order.

    ``threads``: torch threads per worker process (default 1 when ``workers > 1``; the
    caller's setting otherwise). ``progress``: one line per finished run on stderr.
    """
    specs = list(specs)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers={workers!r}: must be an integer >= 1")
    rows: list[dict | None] = [None] * len(specs)
    start = time.perf_counter()

    def report(i: int, done: int) -> None:
        if progress:
            r = rows[i]
            el = time.perf_counter() - start
            print(f"[{done}/{len(specs)} {el:6.0f}s] {r['study']} {r['task']} {r['model']} L={r['layers']} "
                  f"seed={r['seed']}: rmse={r['rmse']:.3g} ({r['train_time_s']:.1f}s)", file=sys.stderr, flush=True)

    if workers == 1 or len(specs) <= 1:
        for i, s in enumerate(specs):
            rows[i] = run_one(s)
            report(i, i + 1)
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        # longest runs first keeps the workers busy until the end
        order = sorted(range(len(specs)), key=lambda i: -_cost(specs[i]))
        ctx = mp.get_context("spawn")  # never fork a process whose OpenMP pool is running
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init, initargs=(threads or 1,)) as ex:
            futs = {ex.submit(run_one, specs[i]): i for i in order}
            for done, f in enumerate(as_completed(futs), 1):
                i = futs[f]
                rows[i] = f.result()
                report(i, done)
    return pd.DataFrame(rows)


def _cost(spec: RunSpec) -> float:
    """A rough relative cost (steps × per-step work) used to schedule long runs first."""
    n_train = int(spec.n_samples * 0.8)
    steps = spec.train.epochs * math.ceil(n_train / spec.train.batch_size)
    d = spec.d or {"f1": 4, "f2": 3, "f3": 100}.get(spec.task, 50)
    widths = spec.config.deep_layers if spec.config.has_deep else ()
    dims = [d, *widths]
    work = sum(a * b for a, b in zip(dims, dims[1:])) + (spec.config.cross_layers * d * d if spec.config.has_cross else 0)
    return steps * (2e5 + spec.train.batch_size * work)  # per-step overhead + matmul work


# -- argument helpers -------------------------------------------------------------------

def _seed_list(seeds: int | Iterable[int]) -> list[int]:
    out = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    if not out:
        raise ConfigError("seeds must be a positive count or a non-empty list of seeds")
    return out


def _per_task(value: Any, task: str, default: Any, name: str) -> Any:
    if value is None:
        value = default
    if isinstance(value, Mapping):
        if task not in value:
            raise ConfigError(f"{name}: no value for task {task!r} in {dict(value)!r}")
        return value[task]
    return value


def _train_config(*overrides: Mapping | TrainConfig | None) -> tuple[TrainConfig, int, float]:
    """:data:`EXACT_FIT` updated by each override in turn (dicts of TrainConfig fields plus
    ``cycles`` / ``cycle_decay``, or whole TrainConfigs) -> (TrainConfig, cycles, cycle_decay)."""
    base = dict(EXACT_FIT)
    cyc = {"cycles": base.pop("cycles"), "cycle_decay": base.pop("cycle_decay")}
    cfg = TrainConfig(**base)
    for o in overrides:
        if o is None:
            continue
        if isinstance(o, TrainConfig):
            cfg = o
            continue
        o = dict(o)
        cyc.update({k: o.pop(k) for k in ("cycles", "cycle_decay") if k in o})
        cfg = cfg.replace(**o)
    cycles, decay = cyc["cycles"], cyc["cycle_decay"]
    if isinstance(cycles, bool) or not isinstance(cycles, int) or cycles < 1:
        raise ConfigError(f"cycles={cycles!r}: must be an integer >= 1")
    if not isinstance(decay, (int, float)) or not 0 < decay <= 1:
        raise ConfigError(f"cycle_decay={decay!r}: must be in (0, 1]")
    return cfg, cycles, float(decay)


def _check_names(given: Iterable[str], allowed: Sequence[str], what: str) -> list[str]:
    given = list(given)
    bad = [g for g in given if g not in allowed]
    if bad or not given:
        raise ConfigError(f"{what}: {bad or 'none given'}; allowed: {', '.join(allowed)}")
    return given


# -- Table 1 ----------------------------------------------------------------------------

def table1_config(model: str, task: str) -> DCNConfig:
    """The model of one Table 1 column (every cross model is a one-layer CrossNet).

    - ``"DCN (1 layer)"``: ``cross="vector"`` (``W = 1 wᵀ``); ``"DCN-V2 (1 layer)"``: ``cross="full"``;
    - ``"DNN (1 layer)"``: one ReLU layer of width ``d``, which has exactly the DCN-V2 layer's
      ``d² + 2d + 1`` parameters; ``"DNN (large)"``: :data:`DNN_LARGE` widths.

    >>> cfg = table1_config("DNN (1 layer)", "f3")
    >>> cfg.structure, cfg.deep_layers
    ('deep_only', (100,))
    """
    d = {"f1": 4, "f2": 3, "f3": 100}[task]
    if model == "DCN (1 layer)":
        return DCNConfig(cross="vector", structure="cross_only", cross_layers=1, cross_residual=False)
    if model == "DCN (1 layer, +x_l)":
        return DCNConfig(cross="vector", structure="cross_only", cross_layers=1)
    if model == "DCN-V2 (1 layer)":
        return DCNConfig(cross="full", structure="cross_only", cross_layers=1)
    if model == "DNN (1 layer)":
        return DCNConfig(structure="deep_only", cross_layers=0, deep_layers=(d,))
    if model == "DNN (large)":
        return DCNConfig(structure="deep_only", cross_layers=0, deep_layers=DNN_LARGE[task])
    raise ConfigError(f"Table 1 model {model!r}; allowed: {', '.join(TABLE1_MODELS)}")


def table1_specs(
    tasks: Sequence[str] = TABLE1_TASKS,
    models: Sequence[str] = TABLE1_MODELS,
    seeds: int | Iterable[int] = 5,
    n_samples: int | Mapping[str, int] | None = None,
    epochs: int | Mapping[str, int] | None = None,
    train: Mapping | TrainConfig | None = None,
    large_train: Mapping[str, Mapping] | None = None,
) -> list[RunSpec]:
    """The runs of :func:`table1` (see there), without running them."""
    tasks = _check_names(tasks, TABLE1_TASKS, "Table 1 tasks")
    models = _check_names(models, TABLE1_MODELS + TABLE1_EXTRA_MODELS, "Table 1 models")
    large = TABLE1_DEFAULTS["large_train"] if large_train is None else large_train
    specs = []
    for task in tasks:
        n = int(_per_task(n_samples, task, TABLE1_DEFAULTS["n_samples"], "n_samples"))
        ep = int(_per_task(epochs, task, TABLE1_DEFAULTS["epochs"], "epochs"))
        for model in models:
            over = large.get(task) if model == "DNN (large)" else None
            tc, cycles, decay = _train_config({"epochs": ep}, TABLE1_DEFAULTS["train"].get(task), train, over)
            for seed in _seed_list(seeds):
                specs.append(RunSpec("table1", task, model, 1, seed, n, table1_config(model, task), tc,
                                     cycles=min(cycles, tc.epochs), cycle_decay=decay))
    return specs


def table1(
    tasks: Sequence[str] = TABLE1_TASKS,
    models: Sequence[str] = TABLE1_MODELS,
    seeds: int | Iterable[int] = 5,
    n_samples: int | Mapping[str, int] | None = None,
    epochs: int | Mapping[str, int] | None = None,
    train: Mapping | TrainConfig | None = None,
    large_train: Mapping[str, Mapping] | None = None,
    workers: int = 1,
    progress: bool = False,
) -> pd.DataFrame:
    """Table 1: polynomial fitting of increasing difficulty (Eq. 6), one layer per model.

    ``f1 = x1² + x1x2 + x3x1 + x4x1`` (d=4), ``f2 = x1² + 0.1x1x2 + x2x3 + 0.1x3²`` (d=3),
    ``f3 = Σ_{(i,j)∈S} w_ij x_i x_j`` (d=100, ``|S| = 100``), ``x ~ U[-1, 1]``; models from
    :func:`table1_config`. Training: :data:`EXACT_FIT` with ``epochs``, then
    ``TABLE1_DEFAULTS["train"][task]``, then ``train`` (a dict of
    :class:`~dcn_explore.train.TrainConfig` fields plus ``cycles`` / ``cycle_decay``, or a whole
    TrainConfig), then ``large_train[task]`` for the large DNN (default
    ``TABLE1_DEFAULTS["large_train"]``; ``{}`` for none). ``n_samples`` / ``epochs``: an int, a
    ``{task: value}`` dict, or ``None`` for :data:`TABLE1_DEFAULTS`.

    >>> df = table1(tasks=["f2"], models=["DCN (1 layer)", "DNN (1 layer)"], seeds=2, n_samples=1000, epochs=1)
    >>> df.groupby("model").params.first().to_dict(), len(df)
    ({'DCN (1 layer)': 10, 'DNN (1 layer)': 16}, 4)
    """
    specs = table1_specs(tasks, models, seeds, n_samples, epochs, train, large_train)
    return run(specs, workers=workers, progress=progress)


# -- Table 2 ----------------------------------------------------------------------------

def table2_config(model: str, layers: int, d: int = 50) -> DCNConfig:
    """``"DCN-V2"``: a CrossNet of ``layers`` full cross layers; ``"DNN"``: ``layers`` ReLU layers of
    width ``d``. Both have ``layers·(d² + d) + d + 1`` parameters.

    >>> table2_config("DNN", 3, d=50).deep_layers
    (50, 50, 50)
    """
    if model == "DCN-V2":
        return DCNConfig(cross="full", structure="cross_only", cross_layers=layers)
    if model == "DNN":
        return DCNConfig(structure="deep_only", cross_layers=0, deep_layers=(d,) * layers)
    raise ConfigError(f"Table 2 model {model!r}; allowed: {', '.join(TABLE2_MODELS)}")


def table2_specs(
    layers: Sequence[int] = (1, 2, 3, 4, 5),
    models: Sequence[str] = TABLE2_MODELS,
    seeds: int | Iterable[int] = 5,
    n_samples: int | None = None,
    epochs: int | None = None,
    d: int = 50,
    noise: float | None = None,
    train: Mapping | TrainConfig | None = None,
) -> list[RunSpec]:
    """The runs of :func:`table2` (see there), without running them."""
    models = _check_names(models, TABLE2_MODELS, "Table 2 models")
    n = int(n_samples or TABLE2_DEFAULTS["n_samples"])
    tc, cycles, decay = _train_config({"epochs": int(epochs or TABLE2_DEFAULTS["epochs"])}, TABLE2_DEFAULTS["train"], train)
    cycles = min(cycles, tc.epochs)
    return [
        RunSpec("table2", "combined", model, int(l), seed, n, table2_config(model, int(l), d), tc, d=d, noise=noise,
                cycles=cycles, cycle_decay=decay)
        for model in models for l in layers for seed in _seed_list(seeds)
    ]


def table2(
    layers: Sequence[int] = (1, 2, 3, 4, 5),
    models: Sequence[str] = TABLE2_MODELS,
    seeds: int | Iterable[int] = 5,
    n_samples: int | None = None,
    epochs: int | None = None,
    d: int = 50,
    noise: float | None = None,
    train: Mapping | TrainConfig | None = None,
    workers: int = 1,
    progress: bool = False,
) -> pd.DataFrame:
    """Table 2: combined-order polynomial ``xᵀw + Σ_{α∈S} w_α x^α + 0.1 sin(2xᵀw_s + 0.1) + 0.01ε``
    (``|S2|=20, |S3|=10, |S4|=5``, ``x ∈ R^50``) against the number of layers, DCN-V2 vs DNN
    (:func:`table2_config`). Training: :data:`EXACT_FIT`, ``TABLE2_DEFAULTS["train"]``, ``train``.

    >>> df = table2(layers=[1, 2], models=["DCN-V2"], seeds=1, n_samples=1000, epochs=1)
    >>> list(df.layers), list(df.params)
    ([1, 2], [2601, 5151])
    """
    return run(table2_specs(layers, models, seeds, n_samples, epochs, d, noise, train), workers=workers, progress=progress)


# -- Fig. 4 -----------------------------------------------------------------------------

def fig4_config(variant: str, layers: int) -> DCNConfig:
    """A CrossNet of ``layers`` full cross layers with the bias / residual of ``variant``
    (:data:`FIG4_VARIANTS`).

    >>> c = fig4_config("x0*(Wx)", 2); (c.cross_bias, c.cross_residual)
    (False, False)
    """
    if variant not in FIG4_VARIANTS:
        raise ConfigError(f"Fig. 4 variant {variant!r}; allowed: {', '.join(FIG4_VARIANTS)}")
    bias, residual = FIG4_VARIANTS[variant]
    return DCNConfig(cross="full", structure="cross_only", cross_layers=layers, cross_bias=bias, cross_residual=residual)


def fig4_specs(
    orders: Sequence[int] = (3, 4),
    layers: Sequence[int] = (1, 2, 3, 4, 5),
    variants: Sequence[str] = tuple(FIG4_VARIANTS),
    seeds: int | Iterable[int] = 5,
    n_samples: int | None = None,
    epochs: int | Mapping[int, int] | None = None,
    d: int = 50,
    train: Mapping | TrainConfig | None = None,
) -> list[RunSpec]:
    """The runs of :func:`fig4` (see there), without running them."""
    variants = _check_names(variants, tuple(FIG4_VARIANTS), "Fig. 4 variants")
    tasks = _check_names([f"order{int(p)}" for p in orders], FIG4_TASKS, "Fig. 4 orders")
    n = int(n_samples or FIG4_DEFAULTS["n_samples"])
    specs = []
    for task in tasks:
        p = int(task[-1])
        ep = int(_per_task(epochs, p, FIG4_DEFAULTS["epochs"], "epochs"))
        tc, cycles, decay = _train_config({"epochs": ep}, FIG4_DEFAULTS["train"].get(p), train)
        specs += [
            RunSpec("fig4", task, f"DCN-V2 {v}", int(l), seed, n, fig4_config(v, int(l)), tc, d=d,
                    cycles=min(cycles, tc.epochs), cycle_decay=decay, extra=(("order", p), ("variant", v)))
            for v in variants for l in layers for seed in _seed_list(seeds)
        ]
    return specs


def fig4(
    orders: Sequence[int] = (3, 4),
    layers: Sequence[int] = (1, 2, 3, 4, 5),
    variants: Sequence[str] = tuple(FIG4_VARIANTS),
    seeds: int | Iterable[int] = 5,
    n_samples: int | None = None,
    epochs: int | Mapping[int, int] | None = None,
    d: int = 50,
    train: Mapping | TrainConfig | None = None,
    workers: int = 1,
    progress: bool = False,
) -> pd.DataFrame:
    """Fig. 4: homogeneous polynomials of order 3 and 4 (20 random monomials over ``x ∈ R^50``)
    against the number of layers, for the cross layer ``x0 ⊙ (W x_l)`` alone, with the bias
    ``b_l``, with the residual ``+ x_l``, and with both (Eq. 1). The paper's claim: without bias
    and residual an order-``p`` polynomial is fit only at layer ``p - 1``; with them, extra layers
    do not hurt. Rows carry ``order`` and ``variant`` columns. ``epochs``: an int or ``{order: epochs}``;
    training: :data:`EXACT_FIT`, ``FIG4_DEFAULTS["train"][order]``, then ``train``.

    >>> df = fig4(orders=[3], layers=[2], variants=["x0*(Wx)", "+bias+residual"], seeds=1, n_samples=1000, epochs=1)
    >>> df[["task", "variant", "layers", "params"]].values.tolist()
    [['order3', 'x0*(Wx)', 2, 5051], ['order3', '+bias+residual', 2, 5151]]
    """
    return run(fig4_specs(orders, layers, variants, seeds, n_samples, epochs, d, train), workers=workers, progress=progress)


# -- summaries --------------------------------------------------------------------------

_KEYS = ("study", "task", "order", "variant", "model", "layers")


def summarize(df: pd.DataFrame, by: Sequence[str] | None = None) -> pd.DataFrame:
    """Mean over seeds: one row per ``by`` group (default: the study/task/model/layers columns
    present) with ``rmse`` (mean), ``rmse_std``, ``rmse_min``, ``rmse_max``, ``rmse_gmean``
    (geometric mean: RMSEs spanning orders of magnitude), ``params``, ``train_time_s`` (mean;
    ``cpu_time_s`` too when present), ``seeds``.

    >>> df = pd.DataFrame({"model": ["a", "a", "b"], "rmse": [1.0, 3.0, 2.0], "params": [5, 5, 7],
    ...                    "train_time_s": [1.0, 2.0, 3.0], "seed": [0, 1, 0]})
    >>> summarize(df)[["model", "rmse", "seeds"]].values.tolist()
    [['a', 2.0, 2], ['b', 2.0, 1]]
    """
    keys = [k for k in (by or _KEYS) if k in df.columns]
    if not keys:
        raise ConfigError(f"summarize: none of the group columns {list(by or _KEYS)} is in the frame")
    g = df.groupby(keys, sort=False, dropna=False)
    out = g.agg(
        rmse=("rmse", "mean"), rmse_std=("rmse", "std"), rmse_min=("rmse", "min"), rmse_max=("rmse", "max"),
        rmse_gmean=("rmse", lambda s: float(torch.tensor(s.to_numpy(dtype=float)).clamp_min(1e-300).log().mean().exp())),
        params=("params", "first"), train_time_s=("train_time_s", "mean"), seeds=("seed", "nunique"),
        **({"cpu_time_s": ("cpu_time_s", "mean")} if "cpu_time_s" in df.columns else {}),
    ).reset_index()
    return out


def table1_vs_paper(df: pd.DataFrame) -> pd.DataFrame:
    """Our Table 1 means beside the paper's: ``task, model, rmse, rmse_std, params, paper_rmse,
    paper_params, ratio`` (ours / paper), in the paper's row and column order."""
    s = summarize(df[df.study == "table1"], by=["task", "model"])
    paper = PAPER_TABLE1.rename(columns={"rmse": "paper_rmse", "params": "paper_params"})
    out = s.merge(paper, on=["task", "model"], how="left")
    out["ratio"] = out.rmse / out.paper_rmse
    models = list(TABLE1_MODELS + TABLE1_EXTRA_MODELS)
    out["_o"] = [(t, models.index(m) if m in models else 99) for t, m in zip(out.task, out.model)]
    return out.sort_values("_o").drop(columns="_o").reset_index(drop=True)[
        ["task", "model", "rmse", "rmse_std", "rmse_min", "rmse_max", "params", "paper_rmse", "paper_params", "ratio", "train_time_s", "seeds"]
    ]


def table2_vs_paper(df: pd.DataFrame) -> pd.DataFrame:
    """Our Table 2 means beside the paper's: ``model, layers, rmse, rmse_std, params, paper_rmse``."""
    s = summarize(df[df.study == "table2"], by=["model", "layers"])
    paper = PAPER_TABLE2.rename(columns={"rmse": "paper_rmse"})
    return s.merge(paper, on=["model", "layers"], how="left")[
        ["model", "layers", "rmse", "rmse_std", "rmse_min", "rmse_max", "params", "paper_rmse", "train_time_s", "seeds"]
    ]


def fig4_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Mean RMSE of the Fig. 4 runs, one row per (order, variant), one column per layer count,
    plus ``best_layer`` (lowest mean RMSE)."""
    s = summarize(df[df.study == "fig4"], by=["order", "variant", "layers"])
    wide = s.pivot(index=["order", "variant"], columns="layers", values="rmse")
    wide.columns = [f"L{c}" for c in wide.columns]
    wide["best_layer"] = [int(c[1:]) for c in wide.idxmin(axis=1)]
    variants = list(FIG4_VARIANTS)
    wide = wide.reset_index()
    wide["_v"] = wide.variant.map(lambda v: variants.index(v) if v in variants else 99)
    return wide.sort_values(["order", "_v"]).drop(columns="_v").reset_index(drop=True)


def _fmt(x: float) -> str:
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.2e}"


def _fmt_params(p: float) -> str:
    p = float(p)
    return f"{p / 1000:.0f}K" if p >= 10_000 else f"{p:.0f}"


def format_table1(df: pd.DataFrame) -> str:
    """Table 1 as text: ours (mean ± std over seeds, params) beside the paper's."""
    t = table1_vs_paper(df)
    lines = [f"{'task':4}  {'model':19}  {'ours RMSE':>9} ± {'std':8}  {'params':>7}  |  {'paper RMSE':>10}  {'params':>6}  seeds"]
    for r in t.itertuples():
        lines.append(f"{r.task:4}  {r.model:19}  {_fmt(r.rmse):>9} ± {_fmt(r.rmse_std):8}  {_fmt_params(r.params):>7}  |  "
                     f"{_fmt(r.paper_rmse):>10}  {_fmt_params(r.paper_params) if r.paper_params == r.paper_params else '':>6}  {r.seeds}")
    return "\n".join(lines)


def format_table2(df: pd.DataFrame) -> str:
    """Table 2 as text: for each model, our mean RMSE per layer count above the paper's."""
    t = table2_vs_paper(df)
    layers = sorted(t.layers.unique())
    head = f"{'model':7} {'':6} " + " ".join(f"{'L' + str(l):>9}" for l in layers)
    lines = [head]
    for m in [m for m in TABLE2_MODELS if m in set(t.model)]:
        sub = t[t.model == m].set_index("layers")
        lines.append(f"{m:7} {'ours':6} " + " ".join(f"{_fmt(sub.rmse.get(l)):>9}" for l in layers))
        lines.append(f"{'':7} {'± std':6} " + " ".join(f"{_fmt(sub.rmse_std.get(l)):>9}" for l in layers))
        lines.append(f"{'':7} {'paper':6} " + " ".join(f"{_fmt(sub.paper_rmse.get(l)):>9}" for l in layers))
        lines.append(f"{'':7} {'params':6} " + " ".join(f"{_fmt_params(sub.params.get(l)):>9}" for l in layers))
    return "\n".join(lines)


def format_fig4(df: pd.DataFrame) -> str:
    """Fig. 4 as text: mean RMSE per (order, variant) and layer count, and the best layer."""
    w = fig4_summary(df)
    cols = [c for c in w.columns if c.startswith("L")]
    lines = [f"{'order':5} {'variant':15} " + " ".join(f"{c:>9}" for c in cols) + "  best"]
    for r in w.to_dict("records"):
        lines.append(f"{r['order']:<5} {r['variant']:15} " + " ".join(f"{_fmt(r[c]):>9}" for c in cols) + f"  L{r['best_layer']}")
    return "\n".join(lines)


# -- the paper's claims, checked --------------------------------------------------------

def _check(claim: str, measured: str, holds: bool) -> dict:
    return {"claim": claim, "measured": measured, "holds": bool(holds)}


def _rank_matches(ours: Mapping[str, float], paper: Mapping[str, float], floor: float) -> tuple[bool, list[str]]:
    """Does every pair ordered by the paper keep its order in ours? Pairs where both sides are at or
    below ``floor`` (exact fits) in either source count as ties and are not compared."""
    bad = []
    names = [m for m in paper if m in ours]
    for a in names:
        for b in names:
            if paper[a] < paper[b]:
                tie = (ours[a] <= floor and ours[b] <= floor) or (paper[a] <= floor and paper[b] <= floor)
                if not tie and not ours[a] < ours[b]:
                    bad.append(f"{a} < {b}")
    return not bad, bad


def table1_checks(df: pd.DataFrame, exact: float = 1e-4, dnn_min: float = 1e-3, dcn_gap: float = 100.0,
                  floor: float = PRECISION_FLOOR) -> pd.DataFrame:
    """The Table 1 claims on mean RMSEs: DCN-V2 fits every task (``<= exact``); DCN fails ``f3``
    (``>= dcn_gap ×`` DCN-V2); both DNNs stay ``>= dnn_min``; each row keeps the paper's order
    (values ``<= floor`` on both sides count as ties). Returns ``claim, measured, holds``."""
    t = table1_vs_paper(df)
    m = {(r.task, r.model): r.rmse for r in t.itertuples()}
    rows = []
    for task in [x for x in TABLE1_TASKS if x in set(t.task)]:
        v2 = m.get((task, "DCN-V2 (1 layer)"))
        if v2 is not None:
            rows.append(_check(f"{task}: DCN-V2 (1 layer) RMSE <= {exact:g}", f"{v2:.2e}", v2 <= exact))
        for dnn in ("DNN (1 layer)", "DNN (large)"):
            if (task, dnn) in m:
                rows.append(_check(f"{task}: {dnn} RMSE >= {dnn_min:g}", f"{m[(task, dnn)]:.2e}", m[(task, dnn)] >= dnn_min))
        ours = {mm: m[(task, mm)] for mm in TABLE1_MODELS if (task, mm) in m}
        paper = dict(zip(PAPER_TABLE1[PAPER_TABLE1.task == task].model, PAPER_TABLE1[PAPER_TABLE1.task == task].rmse))
        ok, bad = _rank_matches(ours, paper, floor)
        order = " < ".join(f"{k} {ours[k]:.1e}" for k in sorted(ours, key=ours.get))
        rows.append(_check(f"{task}: the paper's ordering of the models", order + ("" if ok else f"  (broken: {', '.join(bad)})"), ok))
    if ("f3", "DCN (1 layer)") in m and ("f3", "DCN-V2 (1 layer)") in m:
        r = m[("f3", "DCN (1 layer)")] / max(m[("f3", "DCN-V2 (1 layer)")], 1e-300)
        rows.append(_check(f"f3: DCN (1 layer) RMSE >= {dcn_gap:g} x DCN-V2's", f"ratio {r:.2e}", r >= dcn_gap))
    return pd.DataFrame(rows, columns=["claim", "measured", "holds"])


def table2_checks(df: pd.DataFrame, rise_tol: float = 0.1, dnn_flat: float = 2.0) -> pd.DataFrame:
    """The Table 2 claims on mean RMSEs: DCN-V2 falls from layer 1 to 2 to 3; at 4 and 5 layers it
    rises by at most ``rise_tol`` (relative) over layer 3; the DNN stays flat (its best mean over
    layers is within a factor ``dnn_flat`` of its 1-layer mean) and above DCN-V2 from layer 3 on."""
    t = table2_vs_paper(df)
    rows = []
    v2 = dict(zip(t[t.model == "DCN-V2"].layers, t[t.model == "DCN-V2"].rmse))
    dnn = dict(zip(t[t.model == "DNN"].layers, t[t.model == "DNN"].rmse))
    if all(l in v2 for l in (1, 2, 3)):
        rows.append(_check("DCN-V2: RMSE falls from 1 to 2 to 3 layers",
                           " > ".join(f"{v2[l]:.2e}" for l in (1, 2, 3)), v2[1] > v2[2] > v2[3]))
        deeper = [l for l in v2 if l > 3]
        if deeper:
            worst = max(v2[l] for l in deeper)
            rows.append(_check(f"DCN-V2: no rise beyond 3 layers (<= {1 + rise_tol:g} x layer 3)",
                               ", ".join(f"L{l} {v2[l] / v2[3]:.3f}x" for l in sorted(deeper)), worst <= (1 + rise_tol) * v2[3]))
    if dnn and 1 in dnn:
        best = min(dnn.values())
        rows.append(_check(f"DNN: flat over layers (best >= layer-1 / {dnn_flat:g})",
                           ", ".join(f"L{l} {dnn[l]:.2e}" for l in sorted(dnn)), best >= dnn[1] / dnn_flat))
        both = [l for l in dnn if l in v2 and l >= 3]
        if both:
            rows.append(_check("DNN above DCN-V2 from 3 layers on",
                               ", ".join(f"L{l} {dnn[l] / v2[l]:.1f}x" for l in sorted(both)), all(dnn[l] > v2[l] for l in both)))
    return pd.DataFrame(rows, columns=["claim", "measured", "holds"])


def fig4_checks(df: pd.DataFrame, gap: float = 10.0, hurt_tol: float = 2.0, fit_frac: float = 0.5) -> pd.DataFrame:
    """The Fig. 4 claims on mean RMSEs, per order ``p``: ``x0 ⊙ (W x_l)`` alone is best at layer
    ``p - 1`` and every other layer is ``>= gap ×`` worse; with bias and residual, the layers
    ``>= p - 1`` fit (each ``<= fit_frac ×`` the 1-layer RMSE, which cannot represent order ``p >= 3``
    and so sits at the target's spread) and stay within ``hurt_tol ×`` of the best of them
    (extra layers do not hurt)."""
    w = fig4_summary(df)
    rows = []
    for p in sorted(w.order.unique()):
        sub = w[w.order == p].set_index("variant")
        cols = [c for c in w.columns if c.startswith("L")]
        if "x0*(Wx)" in sub.index and f"L{p - 1}" in cols:
            r = sub.loc["x0*(Wx)", cols].astype(float)
            others = r.drop(f"L{p - 1}")
            ok = int(r.idxmin()[1:]) == p - 1 and (others.empty or others.min() >= gap * r[f"L{p - 1}"])
            rows.append(_check(f"order {p}: x0*(Wx) fits only at layer {p - 1} (others >= {gap:g}x worse)",
                               f"best L{r.idxmin()[1:]}; L{p - 1} {r[f'L{p - 1}']:.2e}, others >= {others.min():.2e}" if not others.empty
                               else f"L{p - 1} {r[f'L{p - 1}']:.2e}", ok))
        if "+bias+residual" in sub.index:
            deep = [c for c in cols if int(c[1:]) >= p - 1]
            if deep:
                r = sub.loc["+bias+residual", deep].astype(float)
                rows.append(_check(f"order {p}: with bias+residual, layers >= {p - 1} stay within {hurt_tol:g}x of their best",
                                   ", ".join(f"{c} {r[c]:.2e}" for c in deep), r.max() <= hurt_tol * r.min()))
                if "L1" in cols and p - 1 > 1:
                    base = float(sub.loc["+bias+residual", "L1"])
                    rows.append(_check(f"order {p}: with bias+residual, layers >= {p - 1} fit (<= {fit_frac:g} x the 1-layer RMSE)",
                                       f"L1 {base:.2e}; worst of L{p - 1}+ {r.max() / base:.2f}x", r.max() <= fit_frac * base))
    return pd.DataFrame(rows, columns=["claim", "measured", "holds"])
