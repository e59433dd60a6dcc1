"""Spread a sweep over a Ray cluster with Ray Tune (optional extra: ``pip install dcn-explore[cluster]``).

``dx.sweep(..., engine="ray")`` runs every (config, seed) of the grid as one Tune trial.
Each trial trains with the same code as the local sweep and writes the same record
(``results_dir/runs/<run_id>.json`` + checkpoint, atomically), so results from a cluster and
from a laptop are interchangeable, and re-running reuses every finished run. ``results_dir``
must be on storage every node can see (a shared filesystem) when the cluster has several
nodes; without ``ray_address`` a local single-node Ray instance is started.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd

from ._io import write_json_atomic
from .data.dataset import TabularData
from .errors import ConfigError


def _trial(config: dict, data: TabularData, specs: list, ids: list, out_dir: str, split, split_seed: int, top_k: int) -> dict:
    import torch

    from .sweep import run_one

    torch.set_num_threads(max(1, int(config.get("threads", 1))))
    i = config["index"]
    tr, va, te = data.split(split, seed=split_seed)
    rec = run_one(tr, va, te, specs[i], top_k=top_k, checkpoint=str(Path(out_dir) / f"{ids[i]}.pt"))
    rec["run_id"] = ids[i]
    rec["engine"] = "ray"
    write_json_atomic(Path(out_dir) / f"{ids[i]}.json", rec)
    key = "logloss" if "logloss" in rec["val"] else "rmse"
    return {"val_loss": rec["val"][key], "run_id": ids[i]}


def _start_ray(ray, address: str | None, attempts: int = 3) -> None:
    """``ray.init``, retried: on a busy machine the raylet can give up waiting for its agent
    processes (a fixed 15 s wait inside Ray, ray-project/ray#65983) although a second start works."""
    for attempt in range(1, attempts + 1):
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False,
                     **({} if address else {"num_cpus": max(1, os.cpu_count() or 1)}))
            return
        except Exception as e:  # Ray raises a bare Exception for a node that timed out during startup
            ray.shutdown()
            if attempt == attempts:
                raise RuntimeError(f"could not start Ray after {attempts} attempts "
                                   f"({'address ' + address if address else 'local single-node instance'}): {e}") from e


def sweep_ray(data: TabularData, specs: Sequence[dict], results_dir, split=(0.8, 0.1, 0.1), split_seed: int = 0,
              top_k: int = 10, callback: Callable[[dict], Any] | None = None, ray_address: str | None = None,
              cpus_per_trial: float = 1.0, max_concurrent: int | None = None) -> pd.DataFrame:
    """Run the sweep's pending runs as Ray Tune trials; returns the same tidy DataFrame as :func:`dcn_explore.sweep`."""
    try:
        import ray
        from ray import tune
    except ImportError as e:
        raise ConfigError("engine='ray' needs Ray Tune: pip install 'dcn-explore[cluster]'") from e
    from .sweep import _row, data_fingerprint, read_record, run_id

    if results_dir is None:
        raise ConfigError("engine='ray' needs results_dir (shared storage the trials write their records to)")
    out_dir = (Path(results_dir) / "runs").resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    fp = data_fingerprint(data)
    ids = [run_id(fp, s["model"], s["train"], s["seed"], split, split_seed) for s in specs]
    pending = [i for i, rid in enumerate(ids) if read_record(out_dir / f"{rid}.json") is None]  # missing or damaged
    started = False
    if pending:
        if not ray.is_initialized():
            _start_ray(ray, ray_address)
            started = True
        try:
            trainable = tune.with_resources(
                tune.with_parameters(_trial, data=data, specs=list(specs), ids=ids, out_dir=str(out_dir),
                                     split=tuple(split), split_seed=split_seed, top_k=top_k),
                {"cpu": cpus_per_trial},
            )
            tuner = tune.Tuner(
                trainable,
                param_space={"index": tune.grid_search(pending), "threads": max(1, int(cpus_per_trial))},
                tune_config=tune.TuneConfig(max_concurrent_trials=max_concurrent),
                run_config=tune.RunConfig(storage_path=str((Path(results_dir) / "ray").resolve()), name="sweep", verbose=0),
            )
            grid = tuner.fit()
            errors = [r.error for r in grid if r.error is not None]
            if errors:
                raise RuntimeError(f"{len(errors)} Ray trial(s) failed; first: {errors[0]}")
        finally:
            if started:
                ray.shutdown()
    rows = []
    for i, rid in enumerate(ids):
        rec = read_record(out_dir / f"{rid}.json")
        if rec is None:
            raise RuntimeError(f"run {rid} (grid point {specs[i]['point']}, seed {specs[i]['seed']}): the Ray trial finished "
                               f"but its record {out_dir / f'{rid}.json'} is missing or unreadable")
        rec["run_id"] = rid
        row = _row(rec, specs[i]["point"])
        row["reused"] = i not in pending
        rows.append(row)
        if callback is not None:
            callback(row)
    return pd.DataFrame(rows)
