"""tune: budget, argmin of validation loss, reproducibility, validation of the space."""

import importlib
import math

import pandas as pd
import pytest

import dcn_explore as dx
from dcn_explore import ConfigError, TrainingDivergedError
from dcn_explore.tune import TuneResult, search_points, tune

tune_mod = importlib.import_module("dcn_explore.tune")  # the module, even once dx exports the function
FAST = dx.TrainConfig(epochs=1, batch_size=256, progress=False, ema_decay=None)
BASE = dx.DCNConfig(cross="low_rank", rank=2, structure="cross_only", cross_layers=1)


@pytest.fixture(scope="module")
def parts():
    return dx.data.planted_crosses(n_samples=1500, seed=0).split((0.8, 0.1, 0.1), seed=0)


def _bowl(params):
    """A known objective: minimum at lr=1e-2, l2=0."""
    return (math.log10(params["lr"]) + 2) ** 2 + 10 * params["l2"]


SPACE = {"lr": [1e-4, 1e-3, 1e-2, 1e-1], "l2": [0.0, 1e-4, 1e-3], "cross_layers": [1, 2, 3]}


def test_budget_is_respected_and_points_are_distinct():
    calls = []
    res = tune(lambda p: calls.append(p) or _bowl(p), space=SPACE, budget=7, seed=3)
    assert len(calls) == 7 == len(res.trials) == res.budget
    assert res.method == "random"
    assert len({tuple(sorted(p.items())) for p in calls}) == 7
    assert list(res.trials.trial) == list(range(7))
    for p in calls:
        assert all(p[k] in SPACE[k] for k in SPACE)


def test_small_space_runs_the_whole_grid_within_budget():
    calls = []
    space = {"lr": [1e-3, 1e-2], "l2": [0.0, 1e-4]}
    res = tune(lambda p: calls.append(p) or _bowl(p), space=space, budget=10, seed=0)
    assert res.method == "grid" and len(calls) == 4
    assert sorted((p["lr"], p["l2"]) for p in calls) == sorted((a, b) for a in space["lr"] for b in space["l2"])
    with pytest.raises(ConfigError, match="budget=3"):
        tune(_bowl, space=space, budget=3, method="grid")


def test_best_is_argmin_of_val_loss_and_unpacks():
    res = tune(_bowl, space={"lr": [1e-4, 1e-3, 1e-2, 1e-1], "l2": [0.0, 1e-3]}, budget=8, seed=0)
    df, best = res
    assert best == {"lr": 1e-2, "l2": 0.0}
    i = df.val_loss.idxmin()
    assert best == df.loc[i, ["lr", "l2"]].to_dict()
    assert df.is_best.sum() == 1 and bool(df.loc[i, "is_best"])
    assert res.best_value == df.val_loss.min() == 0.0


def test_ties_go_to_the_first_trial_and_mapping_results_become_columns():
    res = tune(lambda p: {"val_loss": 1.0, "val_auc": p["x"] / 10, "note": "n"}, space={"x": [1, 2, 3]}, budget=3)
    assert res.best == {"x": 1}
    assert list(res.trials.val_auc) == [0.1, 0.2, 0.3] and set(res.trials.note) == {"n"}
    with pytest.raises(ConfigError, match="val_loss"):
        tune(lambda p: {"loss": 1.0}, space={"x": [1]}, budget=1)


def test_random_search_is_reproducible_with_the_seed():
    a = search_points(SPACE, budget=6, seed=11, method="random")
    b = search_points(SPACE, budget=6, seed=11, method="random")
    c = search_points(SPACE, budget=6, seed=12, method="random")
    assert a == b and a != c


def test_data_mode_trains_real_models_reproducibly(parts):
    train, val, _ = parts
    space = {"lr": [1e-3, 3e-3, 1e-2], "rank": [2, 4], "l2": [0.0, 1e-4]}
    r1 = tune((train, val), base=BASE, train=FAST, space=space, budget=3, seed=5)
    r2 = tune((train, val), base=BASE, train=FAST, space=space, budget=3, seed=5)
    assert len(r1.trials) == 3
    pd.testing.assert_frame_equal(r1.trials.drop(columns="time_s"), r2.trials.drop(columns="time_s"))
    assert r1.best == r2.best
    # the objective is the real validation log loss of the kept weights
    best = r1.trials.loc[r1.trials.is_best].iloc[0]
    m = dx.DCNv2(train.schema, r1.model_config, seed=5)
    dx.fit(m, train, val, r1.train_config)
    assert dx.evaluate(m, val)["logloss"] == pytest.approx(best.val_loss, abs=1e-6)
    assert best.val_loss == r1.trials.val_loss.min()
    assert r1.model_config.rank == r1.best["rank"] and r1.train_config.lr == r1.best["lr"] and r1.train_config.l2 == r1.best["l2"]
    assert {"val_logloss", "val_auc", "params", "epochs"} <= set(r1.trials.columns)


def test_data_mode_splits_a_whole_data_set_and_accepts_the_layers_alias(parts):
    ds = dx.data.planted_crosses(n_samples=1500, seed=0)
    res = tune(ds, base=BASE, train=FAST, space={"layers": [1, 2]}, budget=2, seed=0)
    assert set(res.trials.cross_layers) == {1, 2}
    assert res.model_config.cross_layers == res.best["cross_layers"]


def test_unknown_space_name_raises_naming_the_field_before_training(parts, monkeypatch):
    train, val, _ = parts
    monkeypatch.setattr(tune_mod, "fit", lambda *a, **k: pytest.fail("trained before validating the space"))
    with pytest.raises(ConfigError, match="'learning_rate'"):
        tune((train, val), base=BASE, train=FAST, space={"lr": [1e-3], "learning_rate": [1e-3]}, budget=2)
    with pytest.raises(ConfigError, match=r"rank=0"):
        tune((train, val), base=BASE, train=FAST, space={"rank": [2, 0]}, budget=2)
    with pytest.raises(ConfigError, match="'lr' has no values"):
        tune((train, val), base=BASE, train=FAST, space={"lr": []}, budget=2)
    with pytest.raises(ConfigError, match="budget"):
        tune((train, val), base=BASE, train=FAST, space={"lr": [1e-3]}, budget=0)
    with pytest.raises(ConfigError, match="method"):
        tune((train, val), base=BASE, train=FAST, space={"lr": [1e-3]}, budget=1, method="bayes")


def test_diverged_trials_are_kept_but_never_best():
    def obj(p):
        if p["lr"] > 0.5:
            raise TrainingDivergedError("boom")
        return float("nan") if p["lr"] == 0.2 else p["lr"]

    res = tune(obj, space={"lr": [1.0, 0.2, 0.3, 0.1]}, budget=4)
    assert res.best == {"lr": 0.1}
    assert list(res.trials.status) == ["diverged", "diverged", "ok", "ok"]
    assert math.isinf(res.trials.val_loss.iloc[0])
    with pytest.raises(TrainingDivergedError, match="all 1 trials"):
        tune(obj, space={"lr": [1.0]}, budget=1)


def test_result_type():
    res = tune(_bowl, space={"lr": [1e-2], "l2": [0.0]}, budget=1)
    assert isinstance(res, TuneResult) and res.model_config is None
