"""Sweeps: a grid of model/training settings × seeds -> one tidy DataFrame, one row per run.

Every finished run is written to ``results_dir/runs/<run_id>.json`` (atomically)
together with its checkpoint ``<run_id>.pt``; ``run_id`` is a hash of the data
fingerprint, the full model and training configuration, the seed and the split.
Running the same sweep again reuses every finished run instead of retraining it,
so an interrupted sweep resumes where it stopped and loses no finished run.

>>> import tempfile
>>> import dcn_explore as dx
>>> ds = dx.data.planted_crosses(n_samples=1500, seed=0)
>>> base = dx.DCNConfig(cross="low_rank", rank=2, cross_layers=1, structure="cross_only")
>>> df = sweep(ds, base, {"rank": [2, 4]}, seeds=1, train=dx.TrainConfig(epochs=1, progress=False),
...            results_dir=tempfile.mkdtemp(), progress=False)
>>> list(df["rank"]), bool(df["reused"].any())
([2, 4], False)
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import time
import warnings
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import pandas as pd
import torch

from ._io import write_json_atomic
from .checkpoint import save_checkpoint
from .crosses import crosses
from .data.dataset import TabularData
from .errors import ConfigError, DataError
from .model.config import DCNConfig
from .model.dcn import DCNv2
from .train import TrainConfig, evaluate, fit

MODEL_FIELDS = {f.name for f in fields(DCNConfig)}
TRAIN_FIELDS = {f.name for f in fields(TrainConfig)} - {"progress", "checkpoint", "seed", "device"}
ALIASES = {"layers": "cross_layers"}


def data_fingerprint(data: TabularData) -> str:
    """A short hash of the tensors and schema (identifies the data set a run was trained on)."""
    h = hashlib.sha256()
    h.update(json.dumps(data.schema.to_dict(), sort_keys=True).encode())
    for t in (data.categorical, data.multivalent, data.dense, data.label):
        t = t.detach().cpu().contiguous()
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


def _normalise_grid(grid: Mapping[str, Sequence[Any]]) -> dict[str, list]:
    out = {}
    for key, values in grid.items():
        k = ALIASES.get(key, key)
        if k not in MODEL_FIELDS and k not in TRAIN_FIELDS:
            raise ConfigError(f"sweep grid field {key!r} is not a DCNConfig or TrainConfig field; "
                              f"model fields: {sorted(MODEL_FIELDS)}; training fields: {sorted(TRAIN_FIELDS)}")
        vals = list(values) if isinstance(values, (list, tuple, range)) else [values]
        if not vals:
            raise ConfigError(f"sweep grid field {key!r} has no values")
        out[k] = vals
    return out


def expand(base: DCNConfig, grid: Mapping[str, Sequence[Any]], train: TrainConfig, seeds: int | Iterable[int]) -> list[dict]:
    """Every (model config, train config, seed) of the grid, validated before anything runs."""
    g = _normalise_grid(grid)
    seed_list = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    if not seed_list:
        raise ConfigError("seeds must be a positive count or a non-empty list")
    runs = []
    keys = list(g)
    for combo in itertools.product(*(g[k] for k in keys)):
        point = dict(zip(keys, combo))
        model_changes = {k: v for k, v in point.items() if k in MODEL_FIELDS}
        train_changes = {k: v for k, v in point.items() if k in TRAIN_FIELDS}
        if model_changes.get("cross") in ("full", "vector") and "rank" not in model_changes:
            model_changes["rank"] = None  # a rank from the base config does not apply to these
        if model_changes.get("cross") in ("full", "vector", "low_rank") and "experts" not in model_changes:
            model_changes.setdefault("experts", 1)
        try:
            mcfg = base.replace(**model_changes)
            tcfg = train.replace(**train_changes)
        except ConfigError as e:
            raise ConfigError(f"sweep point {point}: {e}") from e
        for s in seed_list:
            runs.append({"point": point, "model": mcfg, "train": tcfg.replace(seed=int(s)), "seed": int(s)})
    return runs


def run_id(fingerprint: str, model: DCNConfig, train: TrainConfig, seed: int, split: Sequence[float], split_seed: int) -> str:
    t = train.to_dict()
    for k in ("progress", "checkpoint", "device"):
        t.pop(k, None)
    key = json.dumps({"data": fingerprint, "model": model.to_dict(), "train": t, "seed": seed,
                      "split": list(split), "split_seed": split_seed}, sort_keys=True, default=str)
    return hashlib.sha256(key.encode()).hexdigest()[:20]


def read_record(path: Path | None) -> dict | None:
    """The finished run's record at ``path``, or ``None`` when there is none or it is damaged (a damaged
    result is retrained, not trusted). Every sweep engine reads its reusable runs through this."""
    if path is None or not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, OSError, UnicodeDecodeError):
        return None
    return record if isinstance(record, dict) else None


def _row(record: dict, point: dict | None = None) -> dict:
    """The tidy row of one run record. ``point``: the grid point of the sweep asking (default: the
    record's own); a reused record may come from another grid that reached the same config."""
    row = dict(record["point"] if point is None else point)
    row.update(seed=record["seed"], model=record["model_label"], run_id=record["run_id"])
    row.update({f"test_{k}": v for k, v in record["test"].items()})
    row.update({f"val_{k}": v for k, v in record["val"].items()})
    row.update(params=record["params"], flops=record["flops"], train_time_s=record["train_time_s"],
               epochs=record["epochs"], best_epoch=record["best_epoch"], top_crosses=record["top_crosses"],
               device=record["device"])
    return row


def make_record(spec: dict, model: DCNv2, history: pd.DataFrame, best_epoch: int, train_time_s: float, device: str,
                val_set: TabularData, test_set: TabularData, top_k: int = 10, **extra) -> dict:
    """The JSON-serialisable summary of one finished run (what ``results_dir/runs/<run_id>.json`` holds)."""
    top = []
    if model.cross is not None:
        # nonlinear experts (Eq. 4) have no cross matrix without data: theirs is a data-averaged Jacobian
        nonlinear = model.config.cross == "mixture" and model.config.activation != "identity"
        t = crosses(model, val_set if nonlinear else None).top(k=top_k, aggregate=True)
        top = [f"{a}×{b}:{n:.4g}" for a, b, n in zip(t.feature_a, t.feature_b, t.norm)]
    return {
        "point": spec["point"], "seed": spec["seed"], "model_label": spec["model"].label(),
        "model_config": spec["model"].to_dict(), "train_config": spec["train"].to_dict(),
        "test": evaluate(model, test_set), "val": evaluate(model, val_set),
        "params": model.num_parameters(), "flops": model.flops_per_example(),
        "train_time_s": train_time_s, "epochs": len(history), "best_epoch": best_epoch,
        "top_crosses": top, "history": json.loads(history.to_json(orient="records")), "device": device,
        "finished_at": time.time(), **extra,
    }


def run_one(train_set: TabularData, val_set: TabularData, test_set: TabularData, spec: dict, top_k: int = 10,
            checkpoint: str | None = None) -> dict:
    """Train one configuration and summarise it as a JSON-serialisable record."""
    model = DCNv2(train_set.schema, spec["model"], seed=spec["seed"])
    res = fit(model, train_set, val_set, spec["train"].replace(checkpoint=checkpoint))
    return make_record(spec, model, res.history, res.best_epoch, res.train_time_s, res.device, val_set, test_set, top_k)


def sweep(
    data: TabularData,
    base: DCNConfig | None = None,
    grid: Mapping[str, Sequence[Any]] | None = None,
    seeds: int | Iterable[int] = 1,
    train: TrainConfig | None = None,
    results_dir: str | os.PathLike | None = None,
    split: Sequence[float] = (0.8, 0.1, 0.1),
    split_seed: int = 0,
    top_k: int = 10,
    progress: bool = True,
    callback: Callable[[dict], Any] | None = None,
    save_models: bool = True,
    batched: bool = False,
    engine: str = "local",
    ray_address: str | None = None,
) -> pd.DataFrame:
    """Train ``base`` modified by every point of ``grid`` (any DCNConfig/TrainConfig fields) for each seed.

    Returns a tidy DataFrame: the swept fields, ``seed``, ``model``, test and validation metrics,
    ``params``, ``flops``, ``train_time_s``, ``epochs``, ``top_crosses`` (strings ``"a×b:norm"``),
    ``run_id`` and ``reused`` (True when the run was read back from ``results_dir``).
    ``callback(row)`` is called as each run finishes (or is reused).
    ``batched=True`` trains runs that differ only in seed and rank together (:mod:`dcn_explore.batched`);
    ``engine="ray"`` spreads the runs over a Ray cluster as Ray Tune trials (:mod:`dcn_explore.cluster`).
    """
    base = base or DCNConfig()
    train = (train or TrainConfig()).replace(progress=False)
    specs = expand(base, grid or {}, train, seeds)
    if engine not in ("local", "ray"):
        raise ConfigError(f"engine={engine!r}; allowed: local, ray")
    if engine == "ray":
        if batched:
            raise ConfigError("engine='ray' runs one trial per run; batched=True is for the local engine")
        from .cluster import sweep_ray

        return sweep_ray(data, specs, results_dir, split=split, split_seed=split_seed, top_k=top_k, callback=callback,
                         ray_address=ray_address)
    if batched:
        from .batched import sweep_batched

        return sweep_batched(data, specs, results_dir=results_dir, split=split, split_seed=split_seed, top_k=top_k,
                             progress=progress, callback=callback)
    parts = data.split(split, seed=split_seed) if isinstance(data, TabularData) else tuple(data)
    if len(parts) != 3:
        raise ConfigError(f"split must give train/val/test (3 parts), got {len(parts)}")
    tr, va, te = parts
    fp = data_fingerprint(data if isinstance(data, TabularData) else tr)
    out_dir = Path(results_dir) / "runs" if results_dir is not None else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(specs), desc="sweep", unit="run")
    rows = []
    try:
        for spec in specs:
            rid = run_id(fp, spec["model"], spec["train"], spec["seed"], split, split_seed)
            path = out_dir / f"{rid}.json" if out_dir is not None else None
            record = read_record(path)
            reused = record is not None
            if record is None:
                ckpt = str(out_dir / f"{rid}.pt") if (out_dir is not None and save_models) else None
                record = run_one(tr, va, te, spec, top_k=top_k, checkpoint=ckpt)
                record["run_id"] = rid
                if path is not None:
                    write_json_atomic(path, record)
            record["run_id"] = rid
            row = _row(record, spec["point"])
            row["reused"] = reused
            rows.append(row)
            if bar is not None:
                bar.update(1)
            if callback is not None:
                callback(row)
    finally:
        if bar is not None:
            bar.close()
    return pd.DataFrame(rows)


def load_run(results_dir: str | os.PathLike, run: str) -> tuple[DCNv2, dict]:
    """The model and record of one finished run (by ``run_id``), e.g. to open it in the CrossExplorer."""
    from .checkpoint import load_checkpoint

    d = Path(results_dir) / "runs"
    record = read_record(d / f"{run}.json")
    if record is None:
        raise DataError(f"{d / f'{run}.json'}: no readable record of run {run!r} (missing or damaged; a sweep over "
                        "the same configuration retrains it)")
    model, _ = load_checkpoint(d / f"{run}.pt")
    return model, record


def load_results(results_dir: str | os.PathLike) -> pd.DataFrame:
    """Every finished run found in ``results_dir`` as the same tidy DataFrame ``sweep`` returns.
    A damaged record file is left out with a warning naming it (a sweep over it retrains it)."""
    d = Path(results_dir) / "runs"
    rows, damaged = [], []
    for p in sorted(d.glob("*.json")):
        rec = read_record(p)
        if rec is None:
            damaged.append(str(p))
            continue
        rec.setdefault("run_id", p.stem)
        rows.append(dict(_row(rec), reused=True))
    if damaged:
        warnings.warn(f"{len(damaged)} damaged run record(s) left out: {', '.join(damaged)}", stacklevel=2)
    return pd.DataFrame(rows)
