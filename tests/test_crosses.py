"""Effective cross matrices, block norms (checked by hand), top crosses, spectra, gates, recovery scores."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

import dcn_explore as dx
from dcn_explore import ConfigError

# a tiny schema with unequal widths: a (2 columns), b (3 columns), x (dense, 1 column) -> d = 6
SCHEMA = dx.Schema([
    dx.FeatureSpec("a", "categorical", vocab_size=4, embedding_dim=2),
    dx.FeatureSpec("b", "categorical", vocab_size=5, embedding_dim=3),
    dx.FeatureSpec("x", "dense"),
])


def _model(cross="full", **kw):
    cfg = dx.DCNConfig(cross=cross, cross_layers=kw.pop("layers", 1), structure="cross_only", **kw)
    return dx.DCNv2(SCHEMA, cfg, seed=0)


def _data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dx.data.TabularData(SCHEMA, categorical=torch.stack([torch.randint(0, 4, (n,), generator=g),
                                                               torch.randint(0, 5, (n,), generator=g)], 1),
                               dense=torch.randn(n, 1, generator=g), label=torch.randint(0, 2, (n,), generator=g).float())


def test_block_norms_equal_a_hand_computation_with_unequal_widths():
    m = _model()
    with torch.no_grad():
        m.cross.layers[0].W.copy_(torch.arange(36.0).reshape(6, 6))
    bn = dx.crosses(m).block_norms(0)
    assert list(bn.index) == list(bn.columns) == ["a", "b", "x"]
    # W = [[0..5], [6..11], ...]; blocks by hand:
    assert bn.loc["a", "a"] == pytest.approx(math.sqrt(0 + 1 + 36 + 49))                 # rows 0-1, cols 0-1
    assert bn.loc["a", "b"] == pytest.approx(math.sqrt(4 + 9 + 16 + 64 + 81 + 100))      # rows 0-1, cols 2-4
    assert bn.loc["x", "b"] == pytest.approx(math.sqrt(32**2 + 33**2 + 34**2))           # row 5, cols 2-4
    assert bn.loc["b", "x"] == pytest.approx(math.sqrt(17**2 + 23**2 + 29**2))           # rows 2-4, col 5
    assert bn.loc["x", "x"] == pytest.approx(35.0)
    top = dx.crosses(m).top(k=3)
    row = top[(top.feature_a == "b") & (top.feature_b == "x")].iloc[0]
    assert row.norm == pytest.approx(math.sqrt(32**2 + 33**2 + 34**2 + 17**2 + 23**2 + 29**2))  # (b,x) and (x,b) combined
    assert list(top.norm) == sorted(top.norm, reverse=True)
    ordered = dx.crosses(m).top(k=6, ordered=True)
    assert len(ordered) == 6 and set(zip(ordered.feature_a, ordered.feature_b)) == {
        ("a", "b"), ("b", "a"), ("a", "x"), ("x", "a"), ("b", "x"), ("x", "b")}


def test_data_aware_norm_is_the_rms_of_the_cross_term():
    m = _model()
    data = _data()
    rep = dx.crosses(m, data)
    W = m.cross.layers[0].W.detach().double()
    with torch.no_grad():
        x0 = m.embed(data.categorical, data.multivalent, data.dense).double()
    sa, sb = slice(0, 2), slice(2, 5)
    term = x0[:, sa] * (x0[:, sb] @ W[sa, sb].T)                       # x0_a ⊙ (W_ab x0_b)
    expected = float(term.pow(2).sum(1).mean().sqrt())
    assert rep.block_norms(0, mode="data").loc["a", "b"] == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ConfigError, match="needs data"):
        dx.crosses(m).block_norms(0, mode="data")


def test_effective_matrices_of_each_variant():
    low = _model("low_rank", rank=2)
    L = low.cross.layers[0]
    assert np.allclose(dx.crosses(low).matrix(0), (L.U @ L.V.T).detach().numpy(), atol=1e-6)
    vec = _model("vector")
    w = vec.cross.layers[0].w.detach().numpy()
    assert np.allclose(dx.crosses(vec).matrix(0), np.ones((6, 1)) @ w[None], atol=1e-6)
    mix = _model("mixture", rank=2, experts=3, gate="constant")
    M = mix.cross.layers[0]
    with torch.no_grad():
        M.C.normal_()
    rep = dx.crosses(mix)
    per = [(M.U[i] @ M.C[i] @ M.V[i].T).detach().numpy() for i in range(3)]
    for i in range(3):
        assert np.allclose(rep.matrix(0, expert=i), per[i], atol=1e-5)
    assert np.allclose(rep.matrix(0), sum(per), atol=1e-5)  # constant gate: G ≡ 1


def test_gate_weighted_combination_uses_mean_gate_over_data():
    mix = _model("mixture", rank=2, experts=3, gate="softmax")
    data = _data()
    rep = dx.crosses(mix, data)
    M = mix.cross.layers[0]
    with torch.no_grad():
        x0 = mix.embed(data.categorical, data.multivalent, data.dense)
        g = M.gate_weights(x0).mean(0)
    assert np.allclose(rep.gate_mean[0], g.numpy(), atol=1e-6)
    expected = sum(float(g[i]) * rep.matrix(0, i) for i in range(3))
    assert np.allclose(rep.matrix(0), expected, atol=1e-5)
    usage = rep.gate_usage()
    assert list(usage.columns[:5]) == ["layer", "expert", "gate_mean", "gate_std", "share"]
    assert usage.share.sum() == pytest.approx(1.0)
    no_data = dx.crosses(mix)
    assert np.allclose(no_data.gate_mean, 1 / 3) and "no data" in no_data.gate_source


@pytest.mark.parametrize("act", ["relu", "tanh", "hard_tanh"])
def test_nonlinear_experts_use_the_data_averaged_jacobian(act):
    mix = _model("mixture", rank=2, experts=2, gate="constant", activation=act)
    M = mix.cross.layers[0]
    with torch.no_grad():
        M.C.normal_()
    data = _data(n=16)
    rep = dx.crosses(mix, data)
    with torch.no_grad():
        x0 = mix.embed(data.categorical, data.multivalent, data.dense).double()
    for i in range(2):
        U, V, C = (p.detach().double()[i] for p in (M.U, M.V, M.C))
        g = {"relu": torch.relu, "tanh": torch.tanh, "hard_tanh": lambda z: z.clamp(-1, 1)}[act]
        f = lambda x: U @ g(C @ g(V.T @ x))  # noqa: E731
        J = torch.stack([torch.autograd.functional.jacobian(f, x) for x in x0]).mean(0)
        assert np.allclose(rep.matrix(0, expert=i), J.numpy(), atol=1e-5)
    with pytest.raises(ConfigError, match="pass data"):
        dx.crosses(mix)


def test_identity_jacobian_reduces_exactly_to_UCV():
    mix = _model("mixture", rank=2, experts=2, gate="constant")
    M = mix.cross.layers[0]
    with torch.no_grad():
        M.C.normal_()
    from dcn_explore.crosses import _jacobians

    J = _jacobians(M, torch.randn(10, 6))
    assert torch.allclose(J, M.effective_matrices().float(), atol=1e-6)


def test_spectrum_and_numerical_rank():
    m = _model()
    W = torch.diag(torch.tensor([10.0, 5.0, 1.0, 0.5, 0.05, 0.001]))
    with torch.no_grad():
        m.cross.layers[0].W.copy_(W)
    rep = dx.crosses(m)
    assert np.allclose(rep.spectrum(0), [10, 5, 1, 0.5, 0.05, 0.001], atol=1e-6)
    assert rep.numerical_rank(0, tol=0.01) == 4    # σ ≥ 0.1: 10, 5, 1, 0.5
    assert rep.numerical_rank(0, tol=0.2) == 2
    s = rep.spectra(tol=0.01)
    assert s.kept.sum() == 4 and s.sigma_rel.iloc[0] == 1.0


def test_layers_combined_and_aggregated_top():
    m = _model(layers=2)
    rep = dx.crosses(m)
    both = rep.block_norms(layer=None)
    by_hand = np.sqrt(rep.block_norms(0).to_numpy() ** 2 + rep.block_norms(1).to_numpy() ** 2)
    assert np.allclose(both.to_numpy(), by_hand)
    assert set(rep.top(10).layer) == {0, 1}
    agg = rep.top(3, aggregate=True)
    assert set(agg.layer) == {"all"} and len(agg) == 3


def test_recovery_scores():
    m = _model()
    W = torch.zeros(6, 6)
    W[0:2, 2:5] = 3.0   # a×b strong
    W[5, 0:2] = 1.0     # x×a weak
    with torch.no_grad():
        m.cross.layers[0].W.copy_(W)
    rep = dx.crosses(m)
    truth = pd.DataFrame({"feature_a": ["b", "a"], "feature_b": ["a", "x"], "weight": [-2.0, 0.5], "order": [2, 2]})
    r = rep.recovery(truth)
    assert (r["k"], r["hits"], r["precision_at_k"]) == (2, 2, 1.0)
    assert r["spearman_planted"] == pytest.approx(1.0) and r["auc_pairs"] == 1.0
    wrong = pd.DataFrame({"feature_a": ["b"], "feature_b": ["x"], "weight": [1.0]})
    r2 = rep.recovery(wrong)
    assert r2["hits"] == 0 and r2["missed"] == [("b", "x")]
    with pytest.raises(ConfigError, match="not in the schema"):
        rep.recovery(pd.DataFrame({"feature_a": ["q"], "feature_b": ["a"], "weight": [1.0]}))


def test_bad_arguments_name_what_is_allowed():
    rep = dx.crosses(_model())
    with pytest.raises(ConfigError, match="layer=3"):
        rep.block_norms(3)
    with pytest.raises(ConfigError, match="mode='bogus'"):
        rep.block_norms(0, mode="bogus")
    with pytest.raises(ConfigError, match="k=0"):
        rep.top(0)
    with pytest.raises(ConfigError, match="no cross layers"):
        dx.crosses(dx.DCNv2(SCHEMA, dx.DCNConfig(structure="deep_only", deep_layers=(4,))))
