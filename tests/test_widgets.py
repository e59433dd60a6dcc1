"""Widget behaviour: moving a control changes the figure it drives, in place; buttons do what they say."""

import subprocess
import sys

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

import dcn_explore as dx

pytest.importorskip("ipywidgets")
pytest.importorskip("anywidget")
from dcn_explore.widgets import CrossExplorer, SweepPanel, TrainingView, parse_values, sync_figure  # noqa: E402


@pytest.fixture(scope="module")
def planted():
    ds = dx.data.planted_crosses(n_samples=1500, seed=0)
    return ds, ds.split((0.8, 0.1, 0.1), seed=0)


@pytest.fixture(scope="module")
def mixture(planted):
    ds, (train, val, test) = planted
    m = dx.DCNv2(ds.schema, dx.DCNConfig(cross="mixture", rank=4, experts=3, cross_layers=2, structure="cross_only"), seed=0)
    dx.fit(m, train, val, dx.TrainConfig(epochs=1, progress=False))
    return m


def _z(fw):
    return np.asarray(fw.data[0].z, dtype=float)


def test_importing_the_package_does_not_import_widgets():
    code = "import sys, dcn_explore, dcn_explore.plots; assert 'ipywidgets' not in sys.modules, 'ipywidgets imported'; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_cross_explorer_controls_redraw_the_heatmap_in_place(planted, mixture):
    ds, (_, _, test) = planted
    ex = CrossExplorer(mixture, test, truth=ds.truth, k=5)
    heat = ex.heatmap
    assert isinstance(heat, go.FigureWidget) and list(heat.data[0].x) == ds.schema.names
    rep = ex.report
    assert np.allclose(_z(heat), rep.block_norms(0).to_numpy())
    z0 = _z(heat)

    ex.layer.value = 1
    assert ex.heatmap is heat and "layer 1" in heat.layout.title.text
    assert np.allclose(_z(heat), rep.block_norms(1).to_numpy()) and not np.allclose(_z(heat), z0)

    ex.expert.value = 2
    assert "expert 2" in heat.layout.title.text
    assert np.allclose(_z(heat), rep.block_norms(1, 2).to_numpy())
    assert set(ex.current_top["expert"]) == {2}

    ex.mode.value = "data"
    assert np.allclose(_z(heat), rep.block_norms(1, 2, mode="data").to_numpy())
    assert "over data" in heat.data[0].colorbar.title.text

    ex.layer.value = "all"
    assert "all layers" in heat.layout.title.text
    assert set(ex.current_top["layer"]) == {"all"}

    ex.diagonal.value = False
    assert np.isnan(np.diag(_z(heat))).all()
    # the widget model's own copy follows too: a view created now (Voilà, a reload) shows the current figure
    assert heat._widget_layout["title"]["text"] == heat.layout.title.text
    assert np.allclose(np.asarray(heat._widget_data[0]["z"], dtype=float), _z(heat), equal_nan=True)
    assert all(heat.data[0].z[i][i] is None for i in range(len(ds.schema)))  # NaN goes to the browser as a JSON null


def test_cross_explorer_top_k_table_follows_the_slider(planted, mixture):
    ds, (_, _, test) = planted
    ex = CrossExplorer(mixture, test, truth=ds.truth, k=5)
    rows = lambda: ex.table.value.count("<tr>")  # body rows (the header row carries a style attribute)
    assert rows() == 5 and "<th>planted</th>" in ex.table.value and "<b>Top 5 crosses</b>" in ex.table.value
    ex.k.value = 8
    assert rows() == 8 and "<b>Top 8 crosses</b>" in ex.table.value
    top = ex.report.top(8, layer=0, expert="combined")
    assert list(ex.current_top.feature_a) == list(top.feature_a)
    for a, b, n in zip(top.feature_a, top.feature_b, top.norm):
        assert f"<td>{a}</td>\n      <td>{b}</td>\n      <td>{n:.4g}</td>" in ex.table.value
    assert ex.k.max == len(ds.schema) * (len(ds.schema) - 1) // 2


def test_cross_explorer_without_data_disables_data_mode_and_full_rank_has_no_experts(planted):
    ds, _ = planted
    m = dx.DCNv2(ds.schema, dx.DCNConfig(cross="full", cross_layers=1, structure="cross_only"), seed=0)
    ex = CrossExplorer(m)
    assert ex.mode.disabled and ex.mode.value == "weight"
    assert ex.expert.disabled and [v for _, v in ex.expert.options] == ["combined"]
    assert [v for _, v in ex.layer.options] == [0]  # one layer: no "all layers" entry
    assert "need data" in ex.status.value
    assert repr(ex) == "CrossExplorer(model='DCN-V2 ×1 cross_only', layer=0, expert='combined', mode='weight', k=10)"
    empty = CrossExplorer()
    assert repr(empty) == "CrossExplorer(empty)"
    empty.set_model(m)
    assert list(empty.heatmap.data[0].y) == ds.schema.names


def test_cross_explorer_switches_models(planted, mixture):
    ds, (_, _, test) = planted
    ex = CrossExplorer(mixture, test)
    ex.expert.value = 1
    ex.layer.value = 1
    other = dx.DCNv2(ds.schema, dx.DCNConfig(cross="low_rank", rank=3, cross_layers=1, structure="cross_only"), seed=1)
    ex.set_model(other, test)
    assert ex.layer.value == 0 and ex.expert.value == "combined" and ex.expert.disabled
    assert "low-rank r=3" in ex.heatmap.layout.title.text
    assert np.allclose(_z(ex.heatmap), dx.crosses(other).block_norms(0).to_numpy())


def test_training_view_fills_curves_and_block_norms_epoch_by_epoch(planted):
    ds, (train, val, _) = planted
    m = dx.DCNv2(ds.schema, dx.DCNConfig(cross="full", cross_layers=1, structure="cross_only"), seed=0)
    view = TrainingView(m, train, val, dx.TrainConfig(epochs=3, early_stopping=None, progress=False))
    assert view.epoch.max == 0 and "at initialisation" in view.heatmap.layout.title.text
    assert all(len(t.x) == 0 for t in view.curves.data)
    z_init = _z(view.heatmap)
    result = view.fit()
    assert len(result.history) == 3 and len(view.history) == 3
    loss_train, loss_val, auc = view.curves.data
    assert list(loss_train.x) == [1, 2, 3]
    assert list(loss_val.y) == pytest.approx(result.history["val_logloss"].tolist())
    assert list(auc.y) == pytest.approx(result.history["val_auc"].tolist())
    assert view.epoch.max == 3 and view.epoch.value == 3 and "after epoch 3" in view.heatmap.layout.title.text
    z_last = _z(view.heatmap)
    assert not np.allclose(np.nan_to_num(z_last), np.nan_to_num(z_init))
    view.epoch.value = 0  # scrub back to the initialisation
    assert np.allclose(np.nan_to_num(_z(view.heatmap)), np.nan_to_num(z_init))
    assert len(view.trajectories.data) == 6 and list(view.trajectories.data[0].x) == [0, 1, 2, 3]
    assert "epoch 3" in view.status.value or "done" in view.status.value
    assert repr(view) == "TrainingView(model='DCN-V2 ×1 cross_only', epochs_done=3)"


def test_training_view_callback_works_with_fit_directly(planted):
    ds, (train, val, _) = planted
    m = dx.DCNv2(ds.schema, dx.DCNConfig(cross="low_rank", rank=4, cross_layers=1, structure="cross_only"), seed=0)
    view = TrainingView(m, train, val)
    dx.fit(m, train, val, dx.TrainConfig(epochs=2, early_stopping=None, progress=False), callback=view.callback)
    assert list(view.curves.data[0].x) == [1, 2] and view.epoch.max == 2


def test_sweep_panel_run_button_fills_rows_curve_and_table(planted, tmp_path):
    ds, _ = planted
    panel = SweepPanel(datasets={"tiny planted": ds}, results_dir=str(tmp_path), field="rank", values="1, 3", seeds=2, epochs=1)
    assert len(panel.curve.data[0].x) == 0
    panel.run_button.click()
    df = panel.results
    assert len(df) == 4 and sorted(df["rank"].unique()) == [1, 3] and not df["reused"].any()
    assert panel.progress.value == panel.progress.max == 4
    tr = panel.curve.data[0]
    assert list(tr.x) == [1, 3]
    assert list(tr.y) == pytest.approx(df.groupby("rank")["test_logloss"].mean().tolist())
    assert list(tr.error_y.array) == pytest.approx(df.groupby("rank")["test_logloss"].std().tolist())
    assert "<table" in panel.table.value and panel.table.value.count("</tr>") == 5  # header + 4 runs
    assert len(panel.run_select.options) == 4 and not panel.open_button.disabled
    panel.metric.value = "test_auc"
    assert list(panel.curve.data[0].y) == pytest.approx(df.groupby("rank")["test_auc"].mean().tolist())
    assert "higher is better" in panel.curve.layout.yaxis.title.text

    rid = df[df["rank"] == 3]["run_id"].iloc[0]
    panel.run_select.value = rid
    panel.open_button.click()
    assert "low-rank r=3" in panel.explorer.report.model_label and panel.explorer.report.states is not None
    assert "<th>planted</th>" in panel.explorer.table.value

    panel.run_button.click()  # the same sweep again: every run is reused
    assert panel.results["reused"].all() and "4 reused" in panel.status.value


def test_sweep_panel_reports_bad_input_in_its_status(planted, tmp_path):
    ds, _ = planted
    panel = SweepPanel(datasets={"tiny": ds}, results_dir=str(tmp_path), field="rank", values="0", seeds=1, epochs=1)
    assert panel.run() is None
    assert "error" in panel.status.value and "rank" in panel.status.value
    panel.values.value = ""
    panel.run_button.click()
    assert "at least one value" in panel.status.value
    assert not panel.run_button.disabled


def test_sweep_panel_switches_the_base_config_for_the_field(planted):
    ds, _ = planted
    panel = SweepPanel(datasets={"tiny": ds}, base=dx.DCNConfig(cross="full", cross_layers=1, structure="cross_only"))
    assert panel.base_for("rank").cross == "low_rank"
    assert panel.base_for("experts").cross == "mixture" and panel.base_for("gate").rank == 8
    assert panel.base_for("cross_layers").cross == "full"


def test_parse_values():
    assert parse_values("1, 4, 16") == [1, 4, 16]
    assert parse_values("softmax, constant") == ["softmax", "constant"]
    assert parse_values("1e-3, 0.01") == [1e-3, 0.01]
    with pytest.raises(dx.ConfigError, match="at least one value"):
        parse_values("  ")


def test_sync_figure_changes_trace_count_and_keeps_the_widget():
    fw = go.FigureWidget(go.Figure([go.Scatter(x=[1], y=[1])]))
    src = go.Figure([go.Scatter(x=[1, 2], y=[3, 4], name="a"), go.Scatter(x=[5], y=[6], name="b")])
    src.update_layout(title="two", shapes=[dict(type="line", x0=1, x1=1, y0=0, y1=1)])
    sync_figure(fw, src)
    assert [t.name for t in fw.data] == ["a", "b"] and list(fw.data[0].y) == [3, 4]
    assert fw.layout.title.text == "two" and len(fw.layout.shapes) == 1
    sync_figure(fw, go.Figure([go.Scatter(x=[9], y=[9], name="c")]))
    assert [t.name for t in fw.data] == ["c"] and len(fw.layout.shapes) == 0
    with pytest.raises(dx.ConfigError, match="trace type"):
        sync_figure(fw, go.Figure([go.Bar(y=[1])]))
