"""Sweeps spread with Ray Tune, on a local single-node Ray instance."""

import pytest

import dcn_explore as dx

ray = pytest.importorskip("ray", reason="the cluster extra (Ray Tune) is not installed")


def test_ray_sweep_matches_the_local_sweep_and_reuses_finished_runs(tmp_path):
    data = dx.data.planted_crosses(n_samples=1500, seed=0)
    base = dx.DCNConfig(cross="low_rank", rank=2, cross_layers=1, structure="cross_only")
    train = dx.TrainConfig(epochs=2, progress=False)
    grid = {"rank": [2, 4]}
    remote = dx.sweep(data, base, grid, seeds=1, train=train, results_dir=tmp_path / "ray", engine="ray", progress=False)
    local = dx.sweep(data, base, grid, seeds=1, train=train, results_dir=tmp_path / "local", progress=False)
    assert list(remote.run_id) == list(local.run_id) and not remote.reused.any()
    # the same code on a worker process gives the same numbers (CPU, same seeds)
    assert (remote.test_logloss - local.test_logloss).abs().max() < 1e-6
    damaged = tmp_path / "ray" / "runs" / f"{remote.run_id.iloc[1]}.json"
    damaged.write_text("{")  # a damaged record is retrained, as the local engines do
    again = dx.sweep(data, base, {"rank": [2, 4, 8]}, seeds=1, train=train, results_dir=tmp_path / "ray", engine="ray",
                     progress=False)
    assert list(again.reused) == [True, False, False]
    assert abs(again.test_logloss.iloc[1] - local.test_logloss.iloc[1]) < 1e-6
    assert (tmp_path / "ray" / "runs" / f"{again.run_id.iloc[2]}.pt").is_file()


def test_ray_engine_needs_a_results_dir():
    data = dx.data.planted_crosses(n_samples=200, seed=0)
    with pytest.raises(dx.ConfigError, match="results_dir"):
        dx.sweep(data, dx.DCNConfig(cross_layers=1, structure="cross_only"), {}, engine="ray", progress=False)
