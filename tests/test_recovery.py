"""The learned block norms recover the planted crosses (issue: recovery).

Data: planted_crosses() defaults — 12 named categorical features (vocabularies 3..1000)
plus 3 dense features (15 feature blocks) and 6 planted pairs; split 80/10/10.
Models: 1-layer cross networks (structure='cross_only', so every cross the model uses
is in W), trained with the default TrainConfig().
"""

import pytest

import dcn_explore as dx


@pytest.fixture(scope="module")
def planted():
    ds = dx.data.planted_crosses(seed=0)
    assert len(ds.schema) >= 12 and len(ds.truth) == 6
    return ds, ds.split((0.8, 0.1, 0.1), seed=0)


def _train(planted, **cfg):
    ds, (train, val, test) = planted
    model = dx.DCNv2(ds.schema, dx.DCNConfig(cross_layers=1, structure="cross_only", **cfg), seed=0)
    dx.fit(model, train, val, dx.TrainConfig(progress=False))
    return dx.crosses(model, test).recovery(ds.truth), dx.evaluate(model, test)


def test_full_rank_recovers_exactly_the_planted_pairs(planted):
    rec, metrics = _train(planted, cross="full")
    print("full-rank:", rec, metrics)
    assert rec["hits"] == rec["k"] == 6, rec
    assert rec["false"] == []
    assert metrics["auc"] > 0.85


def test_low_rank_with_rank_at_least_the_number_of_features_recovers_5_of_6(planted):
    ds, _ = planted
    rec, metrics = _train(planted, cross="low_rank", rank=len(ds.schema))
    print("low-rank:", rec, metrics)
    assert rec["hits"] >= 5, rec


def test_four_expert_mixture_recovers_5_of_6(planted):
    ds, _ = planted
    rec, metrics = _train(planted, cross="mixture", rank=len(ds.schema), experts=4)
    print("mixture:", rec, metrics)
    assert rec["hits"] >= 5, rec
