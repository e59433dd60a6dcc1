"""The figures show the numbers they claim to, with labelled axes, layers, experts and units."""

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
import torch

import dcn_explore as dx
from dcn_explore import ConfigError, plots

# a tiny schema with unequal widths: a (2 columns), b (3 columns), x (dense, 1 column) -> d = 6
SCHEMA = dx.Schema([
    dx.FeatureSpec("a", "categorical", vocab_size=4, embedding_dim=2),
    dx.FeatureSpec("b", "categorical", vocab_size=5, embedding_dim=3),
    dx.FeatureSpec("x", "dense"),
])


def _model(cross="full", layers=1, **kw):
    return dx.DCNv2(SCHEMA, dx.DCNConfig(cross=cross, cross_layers=layers, structure="cross_only", **kw), seed=0)


def _data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dx.data.TabularData(SCHEMA, categorical=torch.stack([torch.randint(0, 4, (n,), generator=g),
                                                               torch.randint(0, 5, (n,), generator=g)], 1),
                               dense=torch.randn(n, 1, generator=g), label=torch.randint(0, 2, (n,), generator=g).float())


@pytest.fixture
def full_report():
    m = _model(layers=2)
    with torch.no_grad():
        m.cross.layers[0].W.copy_(torch.arange(36.0).reshape(6, 6) - 18)
    return dx.crosses(m, _data())


@pytest.fixture
def mixture_report():
    return dx.crosses(_model("mixture", layers=2, rank=2, experts=3), _data())


def test_block_norm_heatmap_shows_the_block_norms_with_feature_names(full_report):
    fig = plots.block_norm_heatmap(full_report, layer=0)
    h = fig.data[0]
    assert h.type == "heatmap" and list(h.x) == ["a", "b", "x"] and list(h.y) == ["a", "b", "x"]
    bn = full_report.block_norms(0)
    assert np.allclose(np.asarray(h.z), bn.to_numpy())
    # W[0:2, 2:5] of arange(36)-18: rows 0..1, cols 2..4 -> values -16..-14 and -10..-8
    expected_ab = math.sqrt(sum(v * v for v in [-16, -15, -14, -10, -9, -8]))
    assert np.asarray(h.z)[0, 1] == pytest.approx(expected_ab)
    assert fig.layout.xaxis.title.text == "input feature j (block column)"
    assert fig.layout.yaxis.title.text == "output feature i (block row)"
    assert fig.layout.yaxis.autorange == "reversed"
    assert "layer 0" in fig.layout.title.text and full_report.model_label in fig.layout.title.text
    assert h.colorbar.title.text == "‖W_ij‖_F (weights)"


def test_block_norm_heatmap_modes_layers_and_diagonal(full_report):
    data_fig = plots.block_norm_heatmap(full_report, layer=1, mode="data")
    assert np.allclose(np.asarray(data_fig.data[0].z), full_report.block_norms(1, mode="data").to_numpy())
    assert "over data" in data_fig.data[0].colorbar.title.text and "layer 1" in data_fig.layout.title.text
    all_fig = plots.block_norm_heatmap(full_report, layer=None)
    combined = np.sqrt(full_report.block_norms(0).to_numpy() ** 2 + full_report.block_norms(1).to_numpy() ** 2)
    assert np.allclose(np.asarray(all_fig.data[0].z), combined)
    assert "all layers" in all_fig.layout.title.text
    nodiag = np.asarray(plots.block_norm_heatmap(full_report, layer=0, show_diagonal=False).data[0].z, dtype=float)
    assert np.isnan(np.diag(nodiag)).all() and np.isfinite(nodiag[0, 1])


def test_mixture_figures_name_the_expert(mixture_report):
    one = plots.block_norm_heatmap(mixture_report, layer=1, expert=2)
    assert "layer 1" in one.layout.title.text and "expert 2" in one.layout.title.text
    assert np.allclose(np.asarray(one.data[0].z), mixture_report.block_norms(1, 2).to_numpy())
    comb = plots.block_norm_heatmap(mixture_report, layer=0)
    assert "experts combined (gate-weighted; gate from: data)" in comb.layout.title.text
    per = plots.expert_block_norms(mixture_report, layer=0)
    assert len(per.data) == 3 and [a.text for a in per.layout.annotations] == ["expert 0", "expert 1", "expert 2"]
    for e, tr in enumerate(per.data):
        assert np.allclose(np.asarray(tr.z), mixture_report.block_norms(0, e).to_numpy())
    assert len({tr.zmax for tr in per.data}) == 1  # one shared colour scale
    assert per.layout.xaxis.title.text == "input feature j"


def test_weight_heatmap_outlines_and_labels_the_blocks(full_report):
    fig = plots.weight_heatmap(full_report, layer=0)
    z = np.asarray(fig.data[0].z)
    assert z.shape == (6, 6) and np.allclose(z, np.abs(full_report.matrix(0)))
    assert list(fig.layout.xaxis.ticktext) == ["a", "b", "x"]
    assert list(fig.layout.xaxis.tickvals) == [0.5, 3.0, 5.0]  # centres of columns 0-1, 2-4, 5
    lines = sorted({s.x0 for s in fig.layout.shapes if s.x0 == s.x1})
    assert lines == [1.5, 4.5]  # block edges between a|b and b|x
    assert "layer 0" in fig.layout.title.text and "d = 6" in fig.layout.title.text


def test_learned_vs_planted_side_by_side(full_report):
    truth = pd.DataFrame({"feature_a": ["a"], "feature_b": ["x"], "order": [2], "weight": [-0.7]})
    fig = plots.learned_vs_planted(full_report, truth)
    learned, planted = (np.asarray(t.z, dtype=float) for t in fig.data)
    scores = full_report.pair_scores()
    assert learned[0, 2] == pytest.approx(scores[("a", "x")]) and learned[2, 0] == pytest.approx(scores[("a", "x")])
    assert np.isnan(np.diag(learned)).all() and np.isnan(np.diag(planted)).all()
    assert planted[0, 2] == planted[2, 0] == pytest.approx(0.7) and planted[0, 1] == 0
    assert "learned" in fig.layout.annotations[0].text and "planted" in fig.layout.annotations[1].text


def test_spectrum_plot_marks_the_numerical_rank():
    m = _model()
    with torch.no_grad():  # singular values 1, 0.1, 0.001, 0 ... -> R_T(0.01) = 2
        m.cross.layers[0].W.copy_(torch.diag(torch.tensor([1.0, 0.1, 0.001, 0.0, 0.0, 0.0])))
    rep = dx.crosses(m)
    fig = plots.spectrum_plot(rep, tol=0.01, reference={"at initialisation": np.ones(6)})
    assert list(fig.data[0].y[:3]) == pytest.approx([1.0, 0.1, 0.001])
    assert fig.data[0].name == "layer 0 (R_T = 2)" and fig.data[1].name == "at initialisation"
    vlines = [s for s in fig.layout.shapes if s.x0 == s.x1 and s.xref == "x"]
    assert [s.x0 for s in vlines] == [2]
    assert fig.layout.yaxis.type == "log" and "σ_k / σ_1" in fig.layout.yaxis.title.text


def test_sweep_curve_has_mean_and_std_over_seeds():
    df = pd.DataFrame({"rank": [1, 1, 4, 4, 16, 16], "seed": [0, 1] * 3,
                       "test_logloss": [0.60, 0.64, 0.50, 0.52, 0.45, 0.45]})
    fig = plots.sweep_curve(df, x="rank", y="test_logloss", log_x=True, threshold=0.25)
    tr = fig.data[0]
    assert list(tr.x) == [1, 4, 16] and list(tr.y) == pytest.approx([0.62, 0.51, 0.45])
    assert list(tr.error_y.array) == pytest.approx([np.std([0.6, 0.64], ddof=1), np.std([0.5, 0.52], ddof=1), 0.0])
    assert fig.layout.xaxis.type == "log" and fig.layout.xaxis.title.text == "rank"
    assert "lower is better" in fig.layout.yaxis.title.text and "± std over 2 seeds" in fig.layout.title.text
    # best 0.45, worst 0.62: within 25% of the range (0.0425) -> rank 16
    assert fig.layout.shapes[0].x0 == 16 and "threshold rank ≈ 16" in fig.layout.annotations[0].text
    by_color = plots.sweep_curve(df.assign(gate=["a", "b"] * 3), x="rank", y="test_logloss", color="gate")
    assert [t.name for t in by_color.data] == ["gate=a", "gate=b"]
    one_seed = plots.sweep_curve(df[df.seed == 0], x="rank", y="test_logloss")
    assert "no error bars" in one_seed.layout.title.text
    empty = plots.sweep_curve(pd.DataFrame(), x="rank", y="test_auc")
    assert len(empty.data) == 1 and len(empty.data[0].x) == 0 and "higher is better" in empty.layout.yaxis.title.text
    with pytest.raises(ConfigError, match="no column 'nope'"):
        plots.sweep_curve(df, x="nope", y="test_logloss")


def test_threshold_x_for_losses_and_scores():
    s = pd.DataFrame({"rank": [1, 4, 16, 64], "mean": [0.60, 0.45, 0.41, 0.40]})
    assert plots.threshold_x(s, "rank", frac=0.1) == 16
    assert plots.threshold_x(s, "rank", frac=0.0) == 64
    auc = pd.DataFrame({"rank": [1, 4, 16], "mean": [0.70, 0.79, 0.80]})
    assert plots.threshold_x(auc, "rank", frac=0.2, lower_is_better=False) == 4


def test_metric_heatmap_annotates_means_and_uses_log_colour():
    df = pd.DataFrame({"order": [2, 2, 3, 3], "cross_layers": [1, 2, 1, 2], "seed": 0, "test_rmse": [1e-3, 1e-4, 0.5, 1e-2]})
    fig = plots.metric_heatmap(df, x="cross_layers", y="order", value="test_rmse")
    h = fig.data[0]
    assert list(h.x) == ["1", "2"] and list(h.y) == ["2", "3"]
    assert np.allclose(np.asarray(h.z), np.log10([[1e-3, 1e-4], [0.5, 1e-2]]))
    assert [list(r) for r in h.text] == [["0.001", "0.0001"], ["0.5", "0.01"]]
    assert h.colorbar.title.text == "log10 test_rmse" and fig.layout.xaxis.title.text == "cross_layers"


def test_history_plot_puts_same_units_together():
    hist = pd.DataFrame({"epoch": [1, 2], "train_loss": [0.7, 0.6], "val_loss": [0.68, 0.61],
                         "val_logloss": [0.68, 0.61], "val_auc": [0.6, 0.7]})
    fig = plots.history_plot(hist)
    assert [t.name for t in fig.data] == ["log loss: train (mean over the epoch)", "log loss: validation", "validation AUC: validation"]
    assert list(fig.data[1].y) == [0.68, 0.61] and list(fig.data[2].y) == [0.6, 0.7]
    assert fig.layout.xaxis.title.text == "epoch" and fig.layout.yaxis2.title.text == "validation AUC"
    reg = plots.history_plot(None, task="regression")
    assert [a.text for a in reg.layout.annotations] == ["train loss (MSE)", "validation RMSE"]
    assert all(len(t.x) == 0 for t in reg.data)


def test_top_crosses_table_marks_planted_pairs(full_report):
    top = full_report.top(3)
    truth = pd.DataFrame({"feature_a": [top.feature_b[0]], "feature_b": [top.feature_a[0]], "order": [2], "weight": [1.0]})
    fig = plots.top_crosses_table(top, truth)
    header = list(fig.data[0].header.values)
    cells = {h: list(v) for h, v in zip(header, fig.data[0].cells.values)}
    assert header == ["rank", "feature_a", "feature_b", "norm", "layer", "expert", "planted"]
    assert cells["planted"] == ["yes", "no", "no"] and cells["rank"] == ["1", "2", "3"]
    assert cells["norm"][0] == f"{top.norm[0]:.4g}"


def test_gate_usage_plot_shows_gate_means_per_layer(mixture_report):
    fig = plots.gate_usage_plot(mixture_report)
    g = mixture_report.gate_usage()
    assert [t.name for t in fig.data] == ["layer 0", "layer 1"]
    assert list(fig.data[0].x) == ["expert 0", "expert 1", "expert 2"]
    assert list(fig.data[1].y) == pytest.approx(g[g.layer == 1].gate_mean.tolist())
    assert list(fig.data[1].error_y.array) == pytest.approx(g[g.layer == 1].gate_std.tolist())
    assert "gate values from: data" in fig.layout.title.text


def test_layer_block_norms_one_panel_per_layer(full_report):
    fig = plots.layer_block_norms(full_report)
    assert [a.text for a in fig.layout.annotations] == ["layer 0", "layer 1"]
    z1 = np.asarray(fig.data[1].z, dtype=float)
    ref = full_report.block_norms(1).to_numpy()
    assert np.isnan(np.diag(z1)).all() and z1[0, 1] == pytest.approx(ref[0, 1])


def test_figures_are_plain_figures_not_widgets(full_report):
    assert type(plots.block_norm_heatmap(full_report)) is go.Figure
