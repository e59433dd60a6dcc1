"""Interactive views (ipywidgets + plotly ``FigureWidget``) over crosses, sweeps and training.

Importing :mod:`dcn_explore` does not import this module (nor ipywidgets); import it
where widgets are wanted::

    from dcn_explore.widgets import CrossExplorer, SweepPanel, TrainingView

Every view is an ``ipywidgets.VBox``: display it as the last expression of a cell.
Controls are public attributes (``explorer.layer``, ``panel.run_button``, ...) so that
code and tests can drive a view exactly as a user would. Figures are drawn by
:mod:`dcn_explore.plots` and copied into the ``FigureWidget`` in place inside
``fig.batch_update()``; nothing here computes crosses itself.

- :class:`CrossExplorer`: layer, expert (or the gate-weighted combination), weight-only
  or data-aware norms, top-k; a block-norm heatmap (Fig. 6b) and a top-crosses table.

FigureWidgets are kept in sync on both sides: the edits go to live views as plotly deltas and
into the widget model's own copy of the figure, so that a page that builds its views later
(Voilà, a reloaded notebook) shows the current figure, not the one the widget was created with.
- :class:`SweepPanel`: data set, swept field and values, seeds, epochs; *Run* trains the
  grid with :func:`dcn_explore.sweep.sweep` (curves and table fill in as runs finish);
  a finished run opens in the panel's :class:`CrossExplorer`.
- :class:`TrainingView`: live loss/AUC curves, the block norms of the model being
  trained and the norms of its strongest crosses epoch by epoch (``fit``'s callback).
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import functools
import html
import tempfile
import time
from typing import Any, Callable, Mapping, Sequence

import ipywidgets as W
import numpy as np
import pandas as pd
import plotly.graph_objects as go

from . import plots
from .crosses import CrossReport, crosses
from .data.dataset import TabularData
from .errors import ConfigError, DCNExploreError
from .model.config import DCNConfig
from .model.dcn import DCNv2
from .notebook_report import parse_parameter
from .train import TrainConfig, TrainResult, fit

__all__ = ["CrossExplorer", "SweepPanel", "TrainingView", "sync_figure", "parse_values"]


# -- shared helpers ---------------------------------------------------------------------------
def _json_safe(value: Any) -> Any:
    """Plain JSON for the widget: arrays -> lists, NaN/inf -> None (plotly draws None as a gap).

    Widget messages must be strict JSON, and numpy arrays would travel as binary buffers, which
    anywidget fails to restore when a page builds the model from the kernel's state (Voilà, reload).
    """
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            return np.where(np.isfinite(value), value, None).tolist()
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return type(value)(_json_safe(v) for v in value)
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def sync_figure(target: go.FigureWidget, source: go.Figure) -> None:
    """Make ``target`` show ``source`` in place: traces and layout copied inside one ``batch_update``.

    Traces are added or removed first when their number differs (plotly does not allow that
    inside a batch); each trace must keep its type. NaN values are sent as gaps (None).
    """
    n_new, n_old = len(source.data), len(target.data)
    if n_new < n_old:
        target.data = target.data[:n_new]
    elif n_new > n_old:
        target.add_traces([_json_safe(t.to_plotly_json()) for t in source.data[n_old:]])
    with target.batch_update():
        for old, new in zip(target.data[: min(n_old, n_new)], source.data):
            if old.type != new.type:
                raise ConfigError(f"sync_figure: trace type changes from {old.type!r} to {new.type!r}")
            props = _json_safe(new.to_plotly_json())
            props.pop("type", None)
            props.pop("uid", None)
            old.update(props, overwrite=True)
        lay = source.layout.to_plotly_json()
        lay.pop("template", None)
        target.layout.update(lay, overwrite=True)
        target.layout.shapes = source.layout.shapes
        target.layout.annotations = source.layout.annotations
    # plotly sends these edits as deltas, which only the views alive at that moment apply; keep the
    # widget model's own copy of the figure current too (as FigureWidget's repr does), so that a view
    # created later — Voilà, a reloaded page, a figure inside a box shown after the edit — is right
    target._widget_data = copy.deepcopy(target._data)
    target._widget_layout = copy.deepcopy(target._layout_obj._props)


def parse_values(text: str) -> list:
    """``"1, 4, 16"`` -> ``[1, 4, 16]``; ``"softmax, constant"`` -> ``['softmax', 'constant']``.

    Python literals are parsed (numbers, ``None``, ``True``, tuples such as ``(64, 32)``);
    bare words stay strings.

    >>> parse_values("1, 4, 16"), parse_values("softmax, None"), parse_values("(64, 32), (16,)")
    ([1, 4, 16], ['softmax', None], [(64, 32), (16,)])
    """
    text = (text or "").strip()
    if not text:
        raise ConfigError("values: enter at least one value (comma-separated)")
    try:
        return list(ast.literal_eval(f"[{text}]"))
    except (ValueError, SyntaxError):  # bare words: each item on its own, a literal or the string
        return [parse_parameter(item.strip()) for item in text.split(",") if item.strip()]


def _error_html(msg: str) -> str:
    return f"<span style='color:#b00020'><b>error:</b> {html.escape(msg, quote=False)}</span>"


def _info_html(msg: str) -> str:
    return f"<span style='color:#444'>{html.escape(msg, quote=False)}</span>"


# -- CrossExplorer --------------------------------------------------------------------------------
ALL_LAYERS = "all"


class CrossExplorer(W.VBox):
    """Block norms (Fig. 6b) and top crosses of one model, with controls.

    ``CrossExplorer(model, data=None, truth=None, k=10)``: ``model`` is a ``DCNv2`` or a
    :class:`~dcn_explore.crosses.CrossReport`; ``data`` (e.g. the test split) enables the
    data-aware norms and the gate statistics; ``truth`` (``ds.truth``) marks planted pairs
    in the table. ``CrossExplorer()`` starts empty; :meth:`set_model` fills it later.

    Controls: ``layer`` (a layer or ``"all"``), ``expert`` (``"combined"`` or an expert
    index; mixtures only), ``mode`` (``"weight"``/``"data"``), ``k`` (top-k), ``diagonal``
    (show the self-interaction blocks). Outputs: ``heatmap`` (``FigureWidget``), ``table`` (an HTML
    widget; one FigureWidget per view keeps page loads light); ``current_top`` is the DataFrame the
    table shows.
    """

    def __init__(self, model: DCNv2 | CrossReport | None = None, data: TabularData | None = None,
                 truth: pd.DataFrame | None = None, k: int = 10, layer: int | str = 0, expert: Any = "combined",
                 mode: str = "weight", show_diagonal: bool = True):
        self.report: CrossReport | None = None
        self.truth = truth
        self.current_top = pd.DataFrame(columns=["feature_a", "feature_b", "norm", "layer", "expert"])
        self._quiet = False
        self.layer = W.Dropdown(description="layer", options=[("layer 0", 0)], value=0)
        self.expert = W.Dropdown(description="expert", options=[("single cross matrix", "combined")], value="combined")
        self.mode = W.ToggleButtons(description="norm", options=[("weights ‖W_ij‖", "weight"), ("data-aware", "data")],
                                    value="weight", tooltips=["Frobenius norm of block (i, j) of W (Fig. 6b)",
                                                              "RMS of the cross term x0_i ⊙ (W_ij x_j) over the data"])
        self.k = W.IntSlider(description="top-k", min=1, max=max(1, int(k)), value=max(1, int(k)), continuous_update=False)
        self.diagonal = W.Checkbox(description="show diagonal (x_i × x_i)", value=bool(show_diagonal), indent=False)
        self.status = W.HTML(_info_html("no model yet: call set_model(model, data)"))
        self.heatmap = go.FigureWidget(go.Figure(go.Heatmap(z=[], colorscale=plots.HEAT)))
        self.table = W.HTML()
        super().__init__(children=[
            W.HBox([self.layer, self.expert]), W.HBox([self.mode, self.k, self.diagonal]), self.status, self.heatmap, self.table,
        ])
        for w in (self.layer, self.expert, self.mode, self.k, self.diagonal):
            w.observe(self._on_change, names="value")
        if model is not None:
            self.set_model(model, data=data, truth=truth, layer=layer, expert=expert, mode=mode)

    # -- state -------------------------------------------------------------------------------
    def set_model(self, model: DCNv2 | CrossReport, data: TabularData | None = None, truth: pd.DataFrame | None = None,
                  layer: int | str = 0, expert: Any = "combined", mode: str = "weight") -> "CrossExplorer":
        """Show another model (or report); the controls are rebuilt for its layers and experts."""
        if isinstance(model, CrossReport):
            report = model
        elif isinstance(model, DCNv2):
            report = crosses(model, data)
        else:
            raise ConfigError(f"CrossExplorer needs a DCNv2 or a CrossReport, got {type(model).__name__}")
        self.report, self.truth = report, truth
        n_pairs = max(1, len(report.names) * (len(report.names) - 1) // 2)
        self._quiet = True
        try:
            self.layer.options = [(f"layer {l}", l) for l in range(report.n_layers)] + (
                [("all layers (√Σ norm²)", ALL_LAYERS)] if report.n_layers > 1 else [])
            self.layer.value = layer if layer in [v for _, v in self.layer.options] else 0
            if report.cross == "mixture":
                self.expert.options = [("gate-weighted combination", "combined")] + [(f"expert {e}", e) for e in range(report.n_experts)]
                self.expert.disabled = False
            else:
                self.expert.options = [("single cross matrix", "combined")]
                self.expert.disabled = True
            self.expert.value = expert if expert in [v for _, v in self.expert.options] else "combined"
            has_data = report.states is not None
            self.mode.disabled = not has_data
            self.mode.value = mode if (mode == "weight" or has_data) else "weight"
            self.k.max = n_pairs
            self.k.value = min(self.k.value, n_pairs)
        finally:
            self._quiet = False
        self.refresh()
        return self

    def _selection(self) -> tuple[int | None, Any, str]:
        layer = None if self.layer.value == ALL_LAYERS else int(self.layer.value)
        return layer, self.expert.value, self.mode.value

    def _on_change(self, _change) -> None:
        if not self._quiet and self.report is not None:
            self.refresh()

    def refresh(self) -> None:
        """Redraw the heatmap and the table for the current control values."""
        rep = self.report
        if rep is None:
            return
        layer, expert, mode = self._selection()
        heat = plots.block_norm_heatmap(rep, layer=layer, expert=None if expert == "combined" else expert, mode=mode,
                                        show_diagonal=self.diagonal.value)
        top = rep.top(k=int(self.k.value), layer=layer, expert=expert, mode=mode, aggregate=layer is None)
        what = f"{plots.layer_text(layer)}{plots.expert_text(rep, None if expert == 'combined' else expert)}"
        frame = plots.top_crosses_frame(top, self.truth)
        sync_figure(self.heatmap, heat)
        self.table.value = (f"<div class='dcnx-top-crosses'><b>Top {len(top)} crosses</b> (unordered pairs, "
                            f"{html.escape(plots.mode_text(mode))}; {html.escape(what)})"
                            + frame.to_html(index=False, border=0, classes="dcnx-top-crosses-table") + "</div>")
        self.current_top = top
        note = "" if rep.states is not None else " — data-aware norms need data: set_model(model, data)"
        self.status.value = _info_html(f"{rep.model_label}: {len(rep.names)} features, d = {rep.schema.d}, "
                                       f"{rep.n_layers} cross layer(s){note}")

    def __repr__(self) -> str:
        if self.report is None:
            return "CrossExplorer(empty)"
        layer, expert, mode = self._selection()
        return (f"CrossExplorer(model={self.report.model_label!r}, layer={'all' if layer is None else layer}, "
                f"expert={expert!r}, mode={mode!r}, k={self.k.value})")


# -- TrainingView -----------------------------------------------------------------------------------
class TrainingView(W.VBox):
    """Watch a model train: loss/metric curves, its block norms and its strongest crosses, epoch by epoch.

    ``view = TrainingView(model, train, val, TrainConfig(...))``; display ``view``; then
    ``result = view.fit()`` (or press *Train*). ``view.callback`` can also be handed to
    :func:`dcn_explore.fit` directly. After (or during) training the ``epoch`` slider shows
    the block norms at any finished epoch (0 = at initialisation).

    Block norms are the weight norms ``‖W_ij‖_F`` (Fig. 6b) of ``layer`` (``None``: all layers
    combined); ``data`` (default: ``val``; 1024 examples are used) gives the data-weighted gate
    combination of a mixture and the Jacobians of nonlinear experts (Eq. 4). ``track`` crosses are
    followed in the trajectory figure (the strongest at the latest epoch).
    """

    def __init__(self, model: DCNv2, train: TabularData, val: TabularData | None = None, config: TrainConfig | None = None,
                 data: TabularData | None = None, layer: int | None = 0, show_diagonal: bool = False, track: int = 6):
        if not isinstance(model, DCNv2):
            raise ConfigError(f"TrainingView needs a DCNv2, got {type(model).__name__}")
        if model.cross is None:
            raise ConfigError("TrainingView shows block norms: the model needs cross layers (structure != 'deep_only')")
        self.model, self.train_data, self.val_data = model, train, val
        self.config = (config or TrainConfig()).replace(progress=False)
        data = data if data is not None else val
        self.data = data.sample(1024) if data is not None else None
        self.layer_shown, self.show_diagonal, self.track = layer, show_diagonal, int(track)
        self.history = pd.DataFrame()
        self.snapshots: list[CrossReport] = []
        self.result: TrainResult | None = None
        self.curves = go.FigureWidget(plots.history_plot(None, task=train.task, title=f"Training {model.config.label()}"))
        self.heatmap = go.FigureWidget(go.Figure(go.Heatmap(z=[], colorscale=plots.HEAT)))
        self.trajectories = go.FigureWidget(go.Figure())
        self.epoch = W.IntSlider(description="epoch", min=0, max=0, value=0, continuous_update=True)
        self.train_button = W.Button(description="Train", button_style="primary", icon="play")
        self.status = W.HTML(_info_html(f"{model.config.label()}: not trained yet"))
        super().__init__(children=[W.HBox([self.train_button, self.status]), self.curves, self.epoch, self.heatmap, self.trajectories])
        self.epoch.observe(lambda _c: self._show_epoch(), names="value")
        self.train_button.on_click(lambda _b: self.fit())
        self._snapshot(model)  # epoch 0: the initialisation
        self._show_epoch()

    def _snapshot(self, model: DCNv2) -> None:
        rep = crosses(model, self.data)
        self.snapshots.append(dataclasses.replace(rep, states=None))

    def callback(self, event: dict) -> None:
        """For ``fit(..., callback=view.callback)``: record the epoch and redraw everything."""
        row = {k: v for k, v in event.items() if k != "model"}
        self.history = pd.concat([self.history, pd.DataFrame([row])], ignore_index=True)
        self._snapshot(event["model"])
        sync_figure(self.curves, plots.history_plot(self.history, task=self.train_data.task,
                                                    title=f"Training {self.model.config.label()}"))
        self._draw_trajectories()
        self.epoch.max = len(self.snapshots) - 1
        if self.epoch.value == self.epoch.max:
            self._show_epoch()
        else:
            self.epoch.value = self.epoch.max  # redraws through the observer
        metrics = ", ".join(f"{k} {v:.4f}" for k, v in row.items() if k.startswith("val_") and k != "val_loss" and isinstance(v, float))
        self.status.value = _info_html(f"epoch {row['epoch']}: train loss {row['train_loss']:.4f}" + (f", {metrics}" if metrics else ""))

    def _show_epoch(self) -> None:
        e = int(self.epoch.value)
        rep = self.snapshots[e]
        when = "at initialisation" if e == 0 else f"after epoch {e}"
        fig = plots.block_norm_heatmap(rep, layer=self.layer_shown, show_diagonal=self.show_diagonal)
        fig.update_layout(title=fig.layout.title.text.replace("</sup>", f" — {when}</sup>"))
        sync_figure(self.heatmap, fig)

    def _draw_trajectories(self) -> None:
        scores = [rep.pair_scores(layer=self.layer_shown) for rep in self.snapshots]
        top = list(scores[-1].index[: self.track])
        epochs = list(range(len(scores)))
        fig = go.Figure()
        for a, b in top:
            fig.add_trace(go.Scatter(x=epochs, y=[float(s.get((a, b), np.nan)) for s in scores], mode="lines+markers",
                                     name=f"{a} × {b}", hovertemplate=f"{a} × {b}<br>epoch %{{x}}: %{{y:.4g}}<extra></extra>"))
        fig.update_layout(title=f"The {len(top)} strongest crosses (at the latest epoch) during training<br>"
                                f"<sup>√(‖W_ij‖²+‖W_ji‖²), {plots.layer_text(self.layer_shown)}</sup>",
                          xaxis_title="epoch (0 = initialisation)", yaxis_title="block norm of the pair", height=360)
        sync_figure(self.trajectories, fig)

    def fit(self) -> TrainResult:
        """Train with :func:`dcn_explore.fit`, redrawing after every epoch; returns its ``TrainResult``."""
        self.train_button.disabled = True
        t0 = time.perf_counter()
        try:
            self.result = fit(self.model, self.train_data, self.val_data, self.config, callback=self.callback)
        finally:
            self.train_button.disabled = False
        r = self.result
        self.status.value = _info_html(f"done: {len(r.history)} epochs in {time.perf_counter() - t0:.1f} s; "
                                       f"best epoch {r.best_epoch} (its weights are kept)")
        return r

    def __repr__(self) -> str:
        return f"TrainingView(model={self.model.config.label()!r}, epochs_done={len(self.history)})"


# -- SweepPanel ------------------------------------------------------------------------------------
def _planted(n_samples: int = 20_000) -> TabularData:
    from .data import planted_crosses

    return planted_crosses(n_samples=n_samples, seed=0)


def _movielens(variant: str = "100k") -> TabularData:
    from .data import movielens

    return movielens(variant)


def _polynomial(kind: str = "combined", n_samples: int = 20_000) -> TabularData:
    from .data import paper_polynomial

    return paper_polynomial(kind, n_samples=n_samples, seed=0)


DEFAULT_DATASETS: dict[str, Callable[[], TabularData]] = {
    "planted crosses (20k examples)": _planted,
    "MovieLens-100K": _movielens,
    "paper polynomial: combined orders (Table 2)": _polynomial,
}
SWEEP_FIELDS = ("rank", "experts", "cross_layers", "gate", "activation", "cross", "structure", "lr", "l2", "batch_size")
RUN_COLUMNS = ("params", "flops", "train_time_s")


class SweepPanel(W.VBox):
    """Run a one-field sweep from a form, watch the curve fill in, open any run in a CrossExplorer.

    ``SweepPanel(datasets=None, base=None, train=None, results_dir=None, field="rank",
    values="1, 4, 16", seeds=2, epochs=3)``

    - ``datasets``: ``{name: TabularData or zero-argument callable}`` (default: planted
      crosses, MovieLens-100K, the Table 2 polynomial); callables are called once, on first use.
    - ``base`` / ``train``: the :class:`DCNConfig` / :class:`TrainConfig` the sweep modifies
      (default: a 2-layer cross network, ``structure="cross_only"``). Sweeping ``rank`` on a
      full-rank base switches it to ``cross="low_rank"``; ``experts``, ``gate`` and
      ``activation`` switch it to ``cross="mixture"``.
    - ``results_dir``: where runs are kept (default: a new temporary folder); a run already
      there is reused, not retrained.

    Controls: ``dataset``, ``field``, ``values`` (comma-separated), ``seeds``, ``epochs``,
    ``run_button``, ``progress``, ``metric`` (the curve's y), ``log_x``, ``run_select`` and
    ``open_button``. Outputs: ``curve`` (``FigureWidget``, mean ± std over seeds), ``table``
    (HTML), ``results`` (the tidy DataFrame), ``explorer`` (:class:`CrossExplorer`).
    """

    def __init__(self, datasets: Mapping[str, TabularData | Callable[[], TabularData]] | None = None,
                 base: DCNConfig | None = None, train: TrainConfig | None = None, results_dir: str | None = None,
                 field: str = "rank", values: str = "1, 4, 16", seeds: int = 2, epochs: int = 3,
                 explorer: CrossExplorer | None = None):
        self.datasets = dict(datasets if datasets is not None else DEFAULT_DATASETS)
        if not self.datasets:
            raise ConfigError("SweepPanel: datasets is empty")
        self._loaded: dict[str, TabularData] = {}
        self.base = base or DCNConfig(cross="full", cross_layers=2, structure="cross_only")
        self.train = (train or TrainConfig(early_stopping=None)).replace(progress=False)
        self.results_dir = str(results_dir) if results_dir is not None else tempfile.mkdtemp(prefix="dcnx-sweep-")
        self.results = pd.DataFrame()
        self._swept: str | None = None
        self._data: TabularData | None = None
        if field not in SWEEP_FIELDS:
            raise ConfigError(f"SweepPanel field={field!r}; allowed: {', '.join(SWEEP_FIELDS)}")
        self.dataset = W.Dropdown(description="data", options=list(self.datasets))
        self.field = W.Dropdown(description="sweep", options=list(SWEEP_FIELDS), value=field)
        self.values = W.Text(description="values", value=values, placeholder="comma-separated, e.g. 1, 4, 16")
        self.seeds = W.BoundedIntText(description="seeds", min=1, max=50, value=int(seeds))
        self.epochs = W.BoundedIntText(description="epochs", min=1, max=10_000, value=int(epochs))
        self.run_button = W.Button(description="Run sweep", button_style="primary", icon="play")
        self.progress = W.IntProgress(description="runs", min=0, max=1, value=0)
        self.status = W.HTML(_info_html(f"results kept in {self.results_dir}"))
        self.metric = W.Dropdown(description="y", options=["test_logloss"], value="test_logloss")
        self.log_x = W.Checkbox(description="log x", value=field == "rank", indent=False)
        self.curve = go.FigureWidget(plots.sweep_curve(self.results, x=field, y="test_logloss"))
        self.table = W.HTML()
        self.run_select = W.Dropdown(description="run", options=[])
        self.open_button = W.Button(description="Open in CrossExplorer", icon="search", disabled=True)
        self.explorer = explorer or CrossExplorer()
        super().__init__(children=[
            W.HBox([self.dataset, self.field, self.values]), W.HBox([self.seeds, self.epochs, self.run_button]),
            W.HBox([self.progress, self.status]), W.HBox([self.metric, self.log_x]), self.curve, self.table,
            W.HBox([self.run_select, self.open_button]), self.explorer,
        ])
        self.run_button.on_click(lambda _b: self.run())
        self.open_button.on_click(lambda _b: self.open_selected())
        self.metric.observe(lambda _c: self._draw(), names="value")
        self.log_x.observe(lambda _c: self._draw(), names="value")

    # -- data and configs ----------------------------------------------------------------------
    def data(self, name: str | None = None) -> TabularData:
        """The data set ``name`` (default: the selected one), loaded once."""
        name = name or self.dataset.value
        if name not in self._loaded:
            src = self.datasets[name]
            ds = src() if callable(src) else src
            if not isinstance(ds, TabularData):
                raise ConfigError(f"data set {name!r} gave a {type(ds).__name__}, not a TabularData")
            self._loaded[name] = ds
        return self._loaded[name]

    def base_for(self, field: str) -> DCNConfig:
        """The base config a sweep over ``field`` starts from (see the class docstring)."""
        b = self.base
        if field in ("experts", "gate", "activation") and b.cross != "mixture":
            return b.replace(cross="mixture", rank=b.rank or 8)
        if field == "rank" and b.cross not in ("low_rank", "mixture"):
            return b.replace(cross="low_rank", rank=b.rank or 8)
        return b

    # -- running ------------------------------------------------------------------------------
    def run(self) -> pd.DataFrame | None:
        """What *Run sweep* does: train the grid, filling the curve and table as runs finish.

        Returns the tidy DataFrame (also in ``self.results``), or None when the form is invalid
        (the reason is shown in ``status``).
        """
        from .sweep import sweep

        field = self.field.value
        self.run_button.disabled = True
        t0 = time.perf_counter()
        try:
            values = parse_values(self.values.value)
            ds = self.data()
            base = self.base_for(field)
            n_runs = len(values) * int(self.seeds.value)
            self.results, self._swept, self._data = pd.DataFrame(), field, ds
            self._set_metrics(ds.task)
            self.progress.max, self.progress.value = n_runs, 0
            self.run_select.options = []
            self.open_button.disabled = True
            self.status.value = _info_html(f"training {n_runs} runs of {base.label()} on {ds.name} ...")
            self._draw()
            df = sweep(ds, base, {field: values}, seeds=int(self.seeds.value), train=self.train.replace(epochs=int(self.epochs.value)),
                       results_dir=self.results_dir, progress=False, callback=self._on_row)
        except DCNExploreError as e:
            self.status.value = _error_html(str(e))
            return None
        finally:
            self.run_button.disabled = False
        self.results = df
        reused = int(df["reused"].sum()) if "reused" in df else 0
        self.status.value = _info_html(f"done: {len(df)} runs ({reused} reused from {self.results_dir}) in {time.perf_counter() - t0:.1f} s")
        self._draw()
        return df

    def _set_metrics(self, task: str) -> None:
        m = ["logloss", "auc"] if task == "binary" else ["rmse"]
        opts = [f"test_{k}" for k in m] + [f"val_{k}" for k in m] + list(RUN_COLUMNS)
        keep = self.metric.value if self.metric.value in opts else opts[0]
        self.metric.options = opts
        self.metric.value = keep

    def _on_row(self, row: dict) -> None:
        self.results = pd.concat([self.results, pd.DataFrame([row])], ignore_index=True)
        self.progress.value = len(self.results)
        self._draw()

    def _draw(self) -> None:
        field = self._swept or self.field.value
        df = self.results
        y = self.metric.value
        if len(df) and y not in df.columns:
            return
        sync_figure(self.curve, plots.sweep_curve(df, x=field, y=y, log_x=self.log_x.value,
                                                  title=f"{y} vs {field}" + (f" — {self._data.name}" if self._data is not None else "")
                                                  + (" (mean ± std over seeds)" if len(df) else " (no runs yet)")))
        if len(df):
            cols = [field, "seed"] + [c for c in df.columns if c.startswith("test_")] + list(RUN_COLUMNS) + ["reused"]
            show = df[[c for c in cols if c in df.columns]].copy()
            show["top crosses"] = [", ".join(t[:3]) for t in df["top_crosses"]]
            self.table.value = show.to_html(index=False, float_format=lambda v: f"{v:.4g}", border=0, classes="dcnx-sweep-table")
            keep = self.run_select.value
            self.run_select.options = [(f"{field}={r[field]}, seed {r['seed']}", r["run_id"]) for _, r in df.iterrows()]
            self.run_select.value = keep if keep in set(df["run_id"]) else df["run_id"].iloc[-1]
            self.open_button.disabled = False
        else:
            self.table.value = ""

    def open_selected(self, run_id: str | None = None) -> CrossExplorer:
        """Load the selected run's model and show it in ``explorer`` (data-aware norms on the test split)."""
        from .sweep import load_run

        rid = run_id or self.run_select.value
        if rid is None:
            raise ConfigError("no run selected: run a sweep first")
        model, record = load_run(self.results_dir, rid)
        ds = self._data if self._data is not None else self.data()
        test = ds.split((0.8, 0.1, 0.1), seed=0)[2]
        truth = ds.truth if ds.truth is not None and {"feature_a", "feature_b", "weight"} <= set(ds.truth.columns) else None
        if model.cross is None:
            self.status.value = _error_html(f"run {rid} ({record['model_label']}) has no cross layers to show")
            return self.explorer
        self.explorer.set_model(model, data=test, truth=truth)
        self.status.value = _info_html(f"opened run {rid}: {record['model_label']}, seed {record['seed']}")
        return self.explorer

    def __repr__(self) -> str:
        return f"SweepPanel(data={self.dataset.value!r}, field={self.field.value!r}, values={self.values.value!r}, runs={len(self.results)})"
