"""Sweeps: the tidy result table, bad grids, and resuming after the process is killed."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

import dcn_explore as dx
from dcn_explore import ConfigError
from dcn_explore.sweep import load_results, load_run

N_SAMPLES = 1200
BASE = dict(cross="low_rank", rank=1, cross_layers=1, structure="cross_only")
GRID = {"rank": [1, 2, 3]}
SEEDS = [0, 1]

# The child process runs exactly the sweep the test resumes (same data, configs, seeds -> same run ids).
CHILD = textwrap.dedent(f"""
    import sys
    import dcn_explore as dx
    ds = dx.data.planted_crosses(n_samples={N_SAMPLES}, seed=0)
    dx.sweep(ds, dx.DCNConfig(**{BASE!r}), {GRID!r}, seeds={SEEDS!r}, train=dx.TrainConfig(epochs=2, progress=False),
             results_dir=sys.argv[1], progress=False, callback=lambda row: print("finished", row["run_id"], flush=True))
""")


def _finished(results_dir: Path) -> dict[str, float]:
    """run_id -> finished_at of every run whose result file is complete."""
    out = {}
    for p in (results_dir / "runs").glob("*.json"):
        out[p.stem] = json.loads(p.read_text())["finished_at"]
    return out


@pytest.fixture(scope="module")
def planted():
    return dx.data.planted_crosses(n_samples=N_SAMPLES, seed=0)


def test_a_killed_sweep_resumes_and_reuses_every_finished_run(planted, tmp_path):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=env)
    deadline = time.monotonic() + 240
    try:
        while len(_finished(tmp_path) if (tmp_path / "runs").is_dir() else {}) < 2:
            assert child.poll() is None, f"the sweep ended before it could be killed: {child.communicate()}"
            assert time.monotonic() < deadline, "no run finished within 240 s"
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
    finally:
        if child.poll() is None:
            child.kill()
        child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL
    before = _finished(tmp_path)
    total = len(GRID["rank"]) * len(SEEDS)
    assert 2 <= len(before) < total, f"kill landed after {len(before)} of {total} runs: not mid-way"
    assert set(load_results(tmp_path)["run_id"]) == set(before)  # stray temp files of the killed run are ignored

    df = dx.sweep(planted, dx.DCNConfig(**BASE), GRID, seeds=SEEDS, train=dx.TrainConfig(epochs=2, progress=False),
                  results_dir=tmp_path, progress=False)
    assert len(df) == total and set(zip(df["rank"], df["seed"])) == {(r, s) for r in GRID["rank"] for s in SEEDS}
    reused = dict(zip(df["run_id"], df["reused"]))
    assert {r for r, u in reused.items() if u} == set(before), "every run finished before the kill is reused, no other"
    after = _finished(tmp_path)
    assert len(after) == total
    for rid, t in before.items():
        assert after[rid] == t, f"run {rid} was retrained"
    # a reused run's row is the record written before the kill
    rid = next(iter(before))
    rec = json.loads((tmp_path / "runs" / f"{rid}.json").read_text())
    row = df[df.run_id == rid].iloc[0]
    assert row["test_logloss"] == rec["test"]["logloss"] and row["train_time_s"] == rec["train_time_s"]


def test_the_tidy_frame_has_config_seed_metrics_cost_and_crosses(planted, tmp_path):
    base = dx.DCNConfig(**BASE)
    df = dx.sweep(planted, base, {"rank": [2, 4], "lr": [3e-3]}, seeds=2, train=dx.TrainConfig(epochs=1, progress=False),
                  results_dir=tmp_path, progress=False, top_k=5)
    assert len(df) == 4
    expected = {"rank", "lr", "seed", "model", "run_id", "test_logloss", "test_auc", "val_logloss", "val_auc",
                "params", "flops", "train_time_s", "epochs", "top_crosses", "reused"}
    assert expected <= set(df.columns), expected - set(df.columns)
    assert sorted(zip(df["rank"], df["seed"])) == [(2, 0), (2, 1), (4, 0), (4, 1)] and set(df["lr"]) == {3e-3}
    assert set(df["model"]) == {"DCN-V2 low-rank r=2 ×1 cross_only", "DCN-V2 low-rank r=4 ×1 cross_only"}
    assert df["test_logloss"].between(0.3, 1.5).all() and df["test_auc"].between(0.0, 1.0).all()
    assert (df["train_time_s"] > 0).all() and not df["reused"].any()
    for r in (2, 4):
        m = dx.DCNv2(planted.schema, base.replace(rank=r), seed=0)
        sub = df[df["rank"] == r]
        assert set(sub["params"]) == {m.num_parameters()} and set(sub["flops"]) == {m.flops_per_example()}
    assert df[df["rank"] == 4]["params"].iloc[0] > df[df["rank"] == 2]["params"].iloc[0]
    # top crosses: the k strongest pairs as "a×b:norm", strongest first, matching the saved model
    row = df.iloc[0]
    assert len(row["top_crosses"]) == 5
    norms = [float(s.rsplit(":", 1)[1]) for s in row["top_crosses"]]
    assert norms == sorted(norms, reverse=True)
    model, record = load_run(tmp_path, row["run_id"])
    top = dx.crosses(model).top(5, aggregate=True)
    assert [f"{a}×{b}" for a, b in zip(top.feature_a, top.feature_b)] == [s.rsplit(":", 1)[0] for s in row["top_crosses"]]
    assert record["seed"] == row["seed"]
    assert load_results(tmp_path).sort_values("run_id")["run_id"].tolist() == sorted(df["run_id"])


def test_an_invalid_grid_field_raises_naming_it(planted, tmp_path):
    base = dx.DCNConfig(**BASE)
    with pytest.raises(ConfigError, match="'rnak'"):
        dx.sweep(planted, base, {"rnak": [1, 2]}, results_dir=tmp_path, progress=False)
    with pytest.raises(ConfigError, match=r"rank=0"):
        dx.sweep(planted, base, {"rank": [2, 0]}, results_dir=tmp_path / "b", progress=False)
    with pytest.raises(ConfigError, match="'experts' has no values"):
        dx.sweep(planted, base, {"experts": []}, progress=False)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "b").exists(), "nothing is trained or written for a bad grid"


def test_a_sweep_over_nonlinear_experts_records_their_top_crosses(planted, tmp_path):
    # Eq. 4 experts have no cross matrix without data (a data-averaged Jacobian): the sweep must pass data
    base = dx.DCNConfig(cross="mixture", rank=2, experts=2, cross_layers=1, structure="cross_only")
    df = dx.sweep(planted, base, {"activation": ["relu", "tanh"]}, seeds=1, train=dx.TrainConfig(epochs=1, progress=False),
                  results_dir=tmp_path, progress=False, top_k=3)
    assert list(df["activation"]) == ["relu", "tanh"]
    assert all(len(t) == 3 for t in df["top_crosses"])


@pytest.mark.parametrize("batched", [False, True])
def test_a_run_reused_from_another_grid_is_labelled_with_this_grids_point(planted, tmp_path, batched):
    base = dx.DCNConfig(**dict(BASE, rank=2))
    tc = dx.TrainConfig(epochs=1, progress=False)
    first = dx.sweep(planted, base, {"rank": [2]}, seeds=1, train=tc, results_dir=tmp_path, progress=False, batched=batched)
    again = dx.sweep(planted, base, {"lr": [tc.lr]}, seeds=1, train=tc, results_dir=tmp_path, progress=False, batched=batched)
    assert again["reused"].all() and list(again["run_id"]) == list(first["run_id"])  # the same configuration
    assert list(again["lr"]) == [tc.lr], "the row carries the swept field of the grid that asked for it"


@pytest.mark.parametrize("batched", [False, True])
def test_a_damaged_result_file_is_retrained_and_rewritten(planted, tmp_path, batched):
    base = dx.DCNConfig(**BASE)
    tc = dx.TrainConfig(epochs=1, progress=False)
    first = dx.sweep(planted, base, {"rank": [1, 2]}, seeds=1, train=tc, results_dir=tmp_path, progress=False, batched=batched)
    damaged = tmp_path / "runs" / f"{first.run_id.iloc[0]}.json"
    damaged.write_text('{"point": {"rank": 1}, "se')  # a half-written file, as a crash of another writer would leave
    again = dx.sweep(planted, base, {"rank": [1, 2]}, seeds=1, train=tc, results_dir=tmp_path, progress=False, batched=batched)
    assert list(again.reused) == [False, True]
    assert json.loads(damaged.read_text())["run_id"] == first.run_id.iloc[0]  # rewritten whole
    assert again.test_logloss.iloc[0] == pytest.approx(first.test_logloss.iloc[0], abs=1e-6)
    (tmp_path / "runs" / f"{first.run_id.iloc[1]}.json").write_text("{")
    with pytest.warns(UserWarning, match=f"1 damaged run record.*{first.run_id.iloc[1]}"):
        assert list(load_results(tmp_path).run_id) == [first.run_id.iloc[0]]
    with pytest.raises(dx.DataError, match=f"{first.run_id.iloc[1]}.json.*damaged"):
        load_run(tmp_path, first.run_id.iloc[1])
