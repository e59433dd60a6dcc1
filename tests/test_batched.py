"""dx.sweep(..., batched=True) gives the same per-run results as running the runs one by one."""

import pytest

import dcn_explore as dx
from dcn_explore.batched import can_batch, group_key
from dcn_explore.sweep import expand

TOL = 2e-4  # absolute, on test/val log loss and AUC: float reordering of batched vs single matmuls


@pytest.fixture(scope="module")
def data():
    return dx.data.planted_crosses(n_samples=2000, seed=0)


@pytest.mark.parametrize("base, grid", [
    (dx.DCNConfig(cross="low_rank", rank=4, cross_layers=2, structure="stacked", deep_layers=(16,)), {"rank": [2, 4, 8]}),
    (dx.DCNConfig(cross="mixture", rank=4, experts=2, cross_layers=1, structure="parallel", deep_layers=(8,)), {"rank": [2, 6]}),
    (dx.DCNConfig(cross="full", cross_layers=1, structure="cross_only"), {}),
])
def test_batched_equals_one_by_one(data, base, grid):
    train = dx.TrainConfig(epochs=3, batch_size=256, progress=False, early_stopping=1)  # early stopping is exercised
    seq = dx.sweep(data, base, grid, seeds=2, train=train, progress=False)
    bat = dx.sweep(data, base, grid, seeds=2, train=train, progress=False, batched=True)
    assert list(seq.run_id) == list(bat.run_id)
    for col in ("test_logloss", "test_auc", "val_logloss", "val_auc"):
        assert (seq[col] - bat[col]).abs().max() < TOL, col
    assert list(seq.epochs) == list(bat.epochs) and list(seq.best_epoch) == list(bat.best_epoch)
    assert list(seq.params) == list(bat.params)


def test_grouping_rules(data):
    base = dx.DCNConfig(cross="low_rank", rank=4, cross_layers=1)
    specs = expand(base, {"rank": [2, 4], "cross_layers": [1, 2]}, dx.TrainConfig(), seeds=2)
    keys = {group_key(s) for s in specs}
    assert len(keys) == 2  # ranks and seeds share a group; depth does not
    assert all(can_batch(s, data.schema) for s in specs)
    assert not can_batch(expand(base, {}, dx.TrainConfig(lr_schedule="plateau"), 1)[0], data.schema)
    assert not can_batch(expand(base.replace(deep_dropout=0.1), {}, dx.TrainConfig(), 1)[0], data.schema)


def test_batched_sweep_resumes_and_reuses(data, tmp_path):
    base = dx.DCNConfig(cross="low_rank", rank=2, cross_layers=1, structure="cross_only")
    train = dx.TrainConfig(epochs=1, progress=False)
    first = dx.sweep(data, base, {"rank": [2, 4]}, seeds=1, train=train, results_dir=tmp_path, progress=False, batched=True)
    assert not first.reused.any()
    again = dx.sweep(data, base, {"rank": [2, 4, 8]}, seeds=1, train=train, results_dir=tmp_path, progress=False, batched=True)
    assert list(again.reused) == [True, True, False]
    from dcn_explore.sweep import load_run

    model, record = load_run(tmp_path, again.run_id.iloc[2])
    assert model.config.rank == 8 and record["test"]["auc"] == pytest.approx(again.test_auc.iloc[2])
