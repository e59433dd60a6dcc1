"""Plotly figures of what a model learned. Functions return ``go.Figure``; nothing is displayed here.

Every figure names what it shows: axis titles with units, the layer, the expert
(for a mixture: one expert or the gate-weighted combination), the kind of norm,
and the model. The widgets in :mod:`dcn_explore.widgets` draw through these same
functions, so a figure in a widget and in a static report say the same thing.

>>> import dcn_explore as dx
>>> model = dx.DCNv2(dx.data.planted_crosses(n_samples=50).schema, dx.DCNConfig(cross_layers=1, structure="cross_only"), seed=0)
>>> fig = block_norm_heatmap(dx.crosses(model), layer=0)
>>> fig.data[0].type, fig.layout.xaxis.title.text
('heatmap', 'input feature j (block column)')
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .crosses import CrossReport
from .errors import ConfigError

HEAT = "Viridis"


# -- labels ---------------------------------------------------------------------------------
def expert_text(report: CrossReport, expert: Any) -> str:
    """``", expert 2"`` / ``", experts combined (gate-weighted …)"`` for a mixture, ``""`` otherwise."""
    if report.cross != "mixture":
        return ""
    if expert is None or expert == "combined":
        return f", experts combined (gate-weighted; gate from: {report.gate_source})"
    return f", expert {expert}"


def layer_text(layer) -> str:
    return "all layers (√Σ_l norm²)" if layer is None else f"layer {layer}"


def mode_text(mode: str) -> str:
    """What a block norm measures (the colour-bar title)."""
    return "‖W_ij‖_F (weights)" if mode == "weight" else "RMS of x0_i ⊙ (W_ij x_j) over data"


# -- Fig. 6b, Fig. 6a ---------------------------------------------------------------------------
def block_norm_heatmap(report: CrossReport, layer: int | None = 0, expert: Any = None, mode: str = "weight",
                       title: str | None = None, show_diagonal: bool = True) -> go.Figure:
    """Fig. 6b: the ``k × k`` block norms (rows: output feature ``i``, columns: input feature ``j``).

    ``show_diagonal=False`` blanks the self-interaction blocks ``(i, i)`` so that the crosses
    between different features set the colour scale.
    """
    bn = report.block_norms(layer=layer, expert=expert, mode=mode)
    z = bn.to_numpy().copy()
    if not show_diagonal:
        np.fill_diagonal(z, np.nan)
    fig = go.Figure(go.Heatmap(
        z=z, x=list(bn.columns), y=list(bn.index), colorscale=HEAT, zmin=0,
        colorbar=dict(title=dict(text=mode_text(mode))),
        hovertemplate="output %{y} × input %{x}<br>norm %{z:.4g}<extra></extra>",
    ))
    diag = "" if show_diagonal else " (diagonal blanked)"
    fig.update_layout(
        title=title or f"Block norms {mode_text(mode)}{diag}<br><sup>{report.model_label}, {layer_text(layer)}{expert_text(report, expert)}</sup>",
        xaxis=dict(title="input feature j (block column)", tickangle=-45),
        yaxis=dict(title="output feature i (block row)", autorange="reversed"),
        height=560, margin=dict(l=140, b=140),
    )
    return fig


def weight_heatmap(report: CrossReport, layer: int = 0, expert: Any = None, title: str | None = None) -> go.Figure:
    """Fig. 6a: ``|W|`` itself, entry by entry, with the feature blocks outlined and labelled.

    Axis ticks sit at the centre of each feature's block of ``x0``; white lines mark block edges.
    """
    W = np.abs(report.matrix(layer, expert)).astype(np.float32)  # float32: half the size in notebooks and reports
    bounds = report.block_bounds()
    d = W.shape[0]
    fig = go.Figure(go.Heatmap(z=W, x=np.arange(d), y=np.arange(d), colorscale=HEAT, zmin=0,
                               colorbar=dict(title=dict(text="|W_ab| (one entry)")),
                               hovertemplate="row %{y}, column %{x} of x0<br>|W| %{z:.4g}<extra></extra>"))
    centers = [(a + b - 1) / 2 for _, a, b in bounds]
    names = [n for n, _, _ in bounds]
    shapes = []
    for _, a, _b in bounds[1:]:
        shapes.append(dict(type="line", x0=a - 0.5, x1=a - 0.5, y0=-0.5, y1=d - 0.5, line=dict(color="white", width=0.7)))
        shapes.append(dict(type="line", y0=a - 0.5, y1=a - 0.5, x0=-0.5, x1=d - 0.5, line=dict(color="white", width=0.7)))
    fig.update_layout(
        shapes=shapes,
        title=title or f"|W| entry by entry, feature blocks outlined<br><sup>{report.model_label} (d = {d}), {layer_text(layer)}{expert_text(report, expert)}</sup>",
        xaxis=dict(title="input block (feature j) — columns of W", tickmode="array", tickvals=centers, ticktext=names, tickangle=-45),
        yaxis=dict(title="output block (feature i) — rows of W", tickmode="array", tickvals=centers, ticktext=names, autorange="reversed"),
        height=620, margin=dict(l=140, b=140),
    )
    return fig


def truth_matrix(truth: pd.DataFrame, names: Sequence[str]) -> pd.DataFrame:
    """Symmetric ``k × k`` matrix of planted ``|weight|`` (pairwise rows of ``truth``; others ignored)."""
    m = pd.DataFrame(0.0, index=list(names), columns=list(names))
    t = truth[truth["order"] == 2] if "order" in truth.columns else truth
    for a, b, w in zip(t["feature_a"], t["feature_b"], t["weight"]):
        if a in m.index and b in m.index:
            m.loc[a, b] = m.loc[b, a] = abs(float(w))
    return m


def learned_matrix(report: CrossReport, layer: int | None = None, mode: str = "weight") -> pd.DataFrame:
    """Symmetric ``k × k`` matrix of learned unordered-pair scores ``√(‖W_ij‖² + ‖W_ji‖²)``, diagonal NaN."""
    names = report.names
    learned = pd.DataFrame(np.nan, index=names, columns=names)
    for (a, b), v in report.pair_scores(mode=mode, layer=layer).items():
        learned.loc[a, b] = learned.loc[b, a] = v
    return learned


def learned_vs_planted(report: CrossReport, truth: pd.DataFrame, layer: int | None = None, mode: str = "weight") -> go.Figure:
    """Side by side: learned off-diagonal block norms (unordered pairs) and the planted ``|weight|``."""
    names = report.names
    learned = learned_matrix(report, layer, mode)
    tm = truth_matrix(truth, names).to_numpy(dtype=float, copy=True)
    np.fill_diagonal(tm, np.nan)
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.2, subplot_titles=(
        f"learned: √(‖W_ij‖²+‖W_ji‖²), {layer_text(layer)}", "planted: |w_ab| of the generator"))
    fig.add_trace(go.Heatmap(z=learned.to_numpy(), x=names, y=names, colorscale=HEAT, zmin=0,
                             colorbar=dict(x=0.4, title=dict(text=mode_text(mode))),
                             hovertemplate="%{y} × %{x}<br>learned %{z:.4g}<extra></extra>"), 1, 1)
    fig.add_trace(go.Heatmap(z=tm, x=names, y=names, colorscale=HEAT, zmin=0,
                             colorbar=dict(x=1.0, title=dict(text="|w| (planted)")),
                             hovertemplate="%{y} × %{x}<br>planted %{z:.3g}<extra></extra>"), 1, 2)
    for c in (1, 2):
        fig.update_xaxes(title_text="feature", tickangle=-45, row=1, col=c)
        fig.update_yaxes(title_text="feature", autorange="reversed", row=1, col=c)
    fig.update_layout(title=f"Learned crosses vs planted truth (diagonal omitted)<br><sup>{report.model_label}</sup>",
                      height=560, margin=dict(l=140, b=140))
    return fig


def expert_block_norms(report: CrossReport, layer: int = 0, mode: str = "weight") -> go.Figure:
    """One block-norm heatmap per expert of a mixture layer (what each expert specialises in), shared colour scale."""
    K = report.n_experts
    experts = list(range(K)) if report.cross == "mixture" else [None]
    bns = [report.block_norms(layer, e, mode) for e in experts]
    fig = make_subplots(rows=1, cols=len(experts), horizontal_spacing=0.04,
                        subplot_titles=[f"expert {e}" if e is not None else "single cross matrix" for e in experts])
    zmax = max(float(np.nanmax(bn.to_numpy())) for bn in bns)
    for c, bn in enumerate(bns, start=1):
        fig.add_trace(go.Heatmap(z=bn.to_numpy(), x=list(bn.columns), y=list(bn.index), colorscale=HEAT, zmin=0, zmax=zmax,
                                 showscale=(c == len(experts)), colorbar=dict(title=dict(text=mode_text(mode))),
                                 hovertemplate=f"expert {c - 1}: %{{y}} × %{{x}}<br>norm %{{z:.4g}}<extra></extra>"), 1, c)
        fig.update_yaxes(autorange="reversed", showticklabels=(c == 1), title_text="output feature i" if c == 1 else None, row=1, col=c)
        fig.update_xaxes(tickangle=-45, title_text="input feature j", row=1, col=c)
    fig.update_layout(title=f"Per-expert block norms, layer {layer} (shared colour scale)<br><sup>{report.model_label}</sup>",
                      height=460, margin=dict(b=140, l=140))
    return fig


def layer_block_norms(report: CrossReport, expert: Any = None, mode: str = "weight", show_diagonal: bool = False) -> go.Figure:
    """One block-norm heatmap per cross layer, shared colour scale: which crosses each layer holds."""
    L = report.n_layers
    bns = [report.block_norms(l, expert, mode) for l in range(L)]
    zs = []
    for bn in bns:
        z = bn.to_numpy().copy()
        if not show_diagonal:
            np.fill_diagonal(z, np.nan)
        zs.append(z)
    zmax = max(float(np.nanmax(z)) if np.isfinite(z).any() else 0.0 for z in zs)
    fig = make_subplots(rows=1, cols=L, horizontal_spacing=0.03, subplot_titles=[f"layer {l}" for l in range(L)])
    for l, (bn, z) in enumerate(zip(bns, zs)):
        fig.add_trace(go.Heatmap(z=z, x=list(bn.columns), y=list(bn.index), colorscale=HEAT, zmin=0, zmax=zmax,
                                 showscale=(l == L - 1), colorbar=dict(title=dict(text=mode_text(mode))),
                                 hovertemplate=f"layer {l}: %{{y}} × %{{x}}<br>norm %{{z:.4g}}<extra></extra>"), 1, l + 1)
        fig.update_yaxes(autorange="reversed", showticklabels=(l == 0), title_text="output feature i" if l == 0 else None, row=1, col=l + 1)
        fig.update_xaxes(tickangle=-45, title_text="input feature j", row=1, col=l + 1)
    diag = "" if show_diagonal else ", diagonal blanked"
    fig.update_layout(title=f"Block norms per layer (shared colour scale{diag})<br><sup>{report.model_label}{expert_text(report, expert)}</sup>",
                      height=460, margin=dict(b=140, l=140))
    return fig


# -- Fig. 3a -------------------------------------------------------------------------------
def spectrum_plot(report: CrossReport, layers: Sequence[int] | None = None, tol: float = 0.01,
                  reference: dict[str, np.ndarray] | None = None) -> go.Figure:
    """Fig. 3a: singular values ``σ_k / σ_1`` (log scale) with the numerical rank ``R_T`` marked per layer.

    ``reference``: extra named spectra to overlay dashed (e.g. the same layer at initialisation).
    """
    layers = list(range(report.n_layers)) if layers is None else list(layers)
    fig = go.Figure()
    d = report.schema.d
    for l in layers:
        s = report.spectrum(l)
        rel = s / s[0] if s[0] else s
        r = report.numerical_rank(l, tol=tol)
        fig.add_trace(go.Scatter(x=np.arange(1, len(s) + 1), y=rel, mode="lines", name=f"layer {l} (R_T = {r})"))
        fig.add_vline(x=r, line_dash="dot", annotation_text=f"R_T = {r} (layer {l})", annotation_position="top")
    for name, s in (reference or {}).items():
        s = np.asarray(s, dtype=float)
        fig.add_trace(go.Scatter(x=np.arange(1, len(s) + 1), y=s / s[0], mode="lines", name=name, line=dict(dash="dash")))
    fig.add_hline(y=tol, line_dash="dash", annotation_text=f"T = {tol:g}")
    fig.update_layout(title=f"Singular values of the learned cross matrix<br><sup>{report.model_label} (d = {d}){expert_text(report, None)}</sup>",
                      xaxis_title="k (index of the singular value, largest first)", yaxis_title="σ_k / σ_1 (relative singular value)",
                      yaxis_type="log", height=450)
    return fig


# -- training history ---------------------------------------------------------------------------
def _history_panels(history: pd.DataFrame | None, task: str | None) -> list[tuple[str, list[tuple[str, str]]]]:
    cols = set(history.columns) if history is not None else set()
    if task is None:
        task = "regression" if "val_rmse" in cols else "binary"
    if task == "binary":
        return [("log loss", [("train_loss", "train (mean over the epoch)"), ("val_logloss", "validation")]),
                ("validation AUC", [("val_auc", "validation")])]
    return [("train loss (MSE)", [("train_loss", "train (mean over the epoch)")]),
            ("validation RMSE", [("val_rmse", "validation")])]


def history_plot(history: pd.DataFrame | None = None, task: str | None = None, title: str = "Training history") -> go.Figure:
    """Training curves per epoch: loss (train and validation, same unit) and the validation metric.

    ``task`` (``"binary"``/``"regression"``) is read from the columns when not given; an empty or
    ``None`` history gives the same traces with no points (the :class:`~dcn_explore.widgets.TrainingView` fills them).
    """
    panels = _history_panels(history, task)
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[p for p, _ in panels], horizontal_spacing=0.12)
    for c, (panel, series) in enumerate(panels, start=1):
        for col, label in series:
            has = history is not None and col in history.columns
            x = history["epoch"].tolist() if has else []
            y = history[col].tolist() if has else []
            fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name=f"{panel}: {label}",
                                     hovertemplate=f"epoch %{{x}}<br>{label} %{{y:.4f}}<extra></extra>"), 1, c)
        fig.update_xaxes(title_text="epoch", row=1, col=c)
        fig.update_yaxes(title_text=panel, row=1, col=c)
    fig.update_layout(title=title, height=340, legend=dict(orientation="h", y=-0.25))
    return fig


# -- tables ---------------------------------------------------------------------------------
def top_crosses_frame(top: pd.DataFrame, truth: pd.DataFrame | None = None) -> pd.DataFrame:
    """``report.top(k)`` ready to show: a ``rank`` column, norms as text (4 significant digits) and,
    when ``truth`` is given, ``planted`` (yes/no for the pairwise rows of ``truth``)."""
    df = top.copy()
    if truth is not None:
        t = truth[truth["order"] == 2] if "order" in truth.columns else truth
        planted = {frozenset((a, b)) for a, b in zip(t["feature_a"], t["feature_b"])}
        df["planted"] = ["yes" if frozenset((a, b)) in planted else "no" for a, b in zip(df.feature_a, df.feature_b)]
    df.insert(0, "rank", range(1, len(df) + 1))
    df["norm"] = [f"{v:.4g}" for v in df["norm"]]
    return df


def top_crosses_table(top: pd.DataFrame, truth: pd.DataFrame | None = None, title: str | None = None) -> go.Figure:
    """A table figure of ``report.top(k)`` (see :func:`top_crosses_frame`)."""
    df = top_crosses_frame(top, truth)
    fig = go.Figure(go.Table(header=dict(values=list(df.columns), align="left"),
                             cells=dict(values=[df[c].astype(str).tolist() for c in df.columns], align="left")))
    fig.update_layout(title=title or f"Top {len(df)} crosses by block norm", height=max(260, 60 + 28 * len(df)),
                      margin=dict(t=50, b=10, l=10, r=10))
    return fig


# -- sweeps (Fig. 5) ------------------------------------------------------------------------
def sweep_summary(results: pd.DataFrame, x: str, y: str, color: str | None = None) -> pd.DataFrame:
    """Mean, standard deviation (ddof 1) and count of ``y`` over seeds, per ``x`` (and ``color``) value.

    >>> df = pd.DataFrame({"rank": [1, 1, 4, 4], "seed": [0, 1, 0, 1], "test_logloss": [0.5, 0.7, 0.3, 0.3]})
    >>> sweep_summary(df, "rank", "test_logloss").round(3).to_dict("list")
    {'rank': [1, 4], 'mean': [0.6, 0.3], 'std': [0.141, 0.0], 'count': [2, 2]}
    """
    for c in [x, y] + ([color] if color else []):
        if c not in results.columns:
            raise ConfigError(f"sweep results have no column {c!r}; columns: {list(results.columns)}")
    keys = [color, x] if color else [x]
    return results.groupby(keys, sort=True)[y].agg(["mean", "std", "count"]).reset_index()


def threshold_x(summary: pd.DataFrame, x: str, frac: float = 0.1, lower_is_better: bool = True) -> Any:
    """The smallest ``x`` whose mean is within ``frac`` of the whole range of means from the best one.

    For a rank sweep this is the "threshold rank" of Sec. 7.5: past it, more rank buys less than
    ``frac`` of the total improvement.

    >>> s = pd.DataFrame({"rank": [1, 4, 16, 64], "mean": [0.60, 0.45, 0.41, 0.40]})
    >>> threshold_x(s, "rank")
    16
    """
    if not 0 <= frac < 1:
        raise ConfigError(f"frac={frac!r}: must be in [0, 1)")
    s = summary.dropna(subset=["mean"]).sort_values(x)
    if s.empty:
        raise ConfigError("threshold_x: no finite means")
    m = s["mean"] if lower_is_better else -s["mean"]
    best, worst = m.min(), m.max()
    ok = s[m <= best + frac * (worst - best)]
    v = ok[x].iloc[0]
    return v.item() if hasattr(v, "item") else v


def _is_lower_better(y: str) -> bool:
    return not any(k in y for k in ("auc", "acc", "precision", "recall", "spearman"))


def sweep_curve(results: pd.DataFrame, x: str, y: str, color: str | None = None, log_x: bool = False,
                title: str | None = None, threshold: float | None = None) -> go.Figure:
    """Fig. 5: mean ± standard deviation of ``y`` over seeds against the swept field ``x``.

    One line per ``color`` value (one line when ``color`` is None, also for empty ``results``).
    ``threshold=frac`` marks :func:`threshold_x` (e.g. the threshold rank) with a dotted line.
    Error bars are the standard deviation over seeds (none with a single seed).
    """
    fig = go.Figure()
    n_max = 0
    if results is None or len(results) == 0:
        fig.add_trace(go.Scatter(x=[], y=[], mode="lines+markers", name=y, error_y=dict(type="data", array=[], visible=True)))
        summary = None
    else:
        summary = sweep_summary(results, x, y, color)
        n_max = int(summary["count"].max())
        groups = [(None, summary)] if color is None else list(summary.groupby(color, sort=True))
        for key, g in groups:
            fig.add_trace(go.Scatter(
                x=g[x].tolist(), y=g["mean"].tolist(), mode="lines+markers",
                error_y=dict(type="data", array=g["std"].fillna(0.0).tolist(), visible=True),
                name=f"{color}={key}" if color else y, customdata=g["count"].tolist(),
                hovertemplate=f"{x}=%{{x}}<br>{y}: mean %{{y:.5g}}<br>runs %{{customdata}}<extra></extra>",
            ))
    shapes, annotations = [], []
    if threshold is not None and summary is not None and color is None:
        t = threshold_x(summary, x, threshold, _is_lower_better(y))
        shapes.append(dict(type="line", xref="x", yref="paper", x0=t, x1=t, y0=0, y1=1, line=dict(dash="dot", color="grey")))
        annotations.append(dict(xref="x", yref="paper", x=t, y=1.0, yanchor="bottom", showarrow=False,
                                text=f"threshold {x} ≈ {t} (within {threshold:.0%} of the best)"))
    err = f"error bars: ± std over {n_max} seeds" if n_max > 1 else "one seed per point: no error bars"
    numeric = summary is None or pd.api.types.is_numeric_dtype(summary[x])
    fig.update_layout(
        title=title or f"{y} vs {x} — mean over seeds ({err})",
        xaxis=dict(title=x, type="log" if log_x else ("linear" if numeric else "category")),
        yaxis=dict(title=f"{y} ({'lower' if _is_lower_better(y) else 'higher'} is better)"),
        shapes=shapes, annotations=annotations, height=420, showlegend=color is not None,
    )
    return fig


def metric_heatmap(results: pd.DataFrame, x: str, y: str, value: str, log: bool = True, title: str | None = None) -> go.Figure:
    """Mean of ``value`` over seeds on an ``y × x`` grid, each cell annotated with its value.

    With ``log=True`` the colour is ``log10(value)`` (metrics such as RMSE span decades).
    """
    s = sweep_summary(results, x, value, color=y)
    piv = s.pivot(index=y, columns=x, values="mean")
    z = piv.to_numpy(dtype=float)
    zc = np.log10(np.where(z > 0, z, np.nan)) if log else z
    fig = go.Figure(go.Heatmap(
        z=zc, x=[str(c) for c in piv.columns], y=[str(i) for i in piv.index], colorscale=HEAT,
        text=[[f"{v:.3g}" for v in row] for row in z], texttemplate="%{text}",
        colorbar=dict(title=dict(text=f"log10 {value}" if log else value)),
        hovertemplate=f"{y}=%{{y}}, {x}=%{{x}}<br>{value} %{{text}}<extra></extra>",
    ))
    fig.update_layout(title=title or f"{value} (mean over seeds) by {y} and {x}",
                      xaxis=dict(title=x, type="category"), yaxis=dict(title=y, type="category"), height=380)
    return fig


# -- experts (Eq. 3) ---------------------------------------------------------------------------
def gate_usage_plot(report: CrossReport) -> go.Figure:
    """Mean gate value ``G_i(x_l)`` per expert and layer (error bars: std over the data sample)."""
    g = report.gate_usage()
    fig = go.Figure()
    for l, gl in g.groupby("layer"):
        fig.add_trace(go.Bar(x=[f"expert {e}" for e in gl["expert"]], y=gl["gate_mean"].tolist(),
                             error_y=dict(type="data", array=gl["gate_std"].tolist()), name=f"layer {l}",
                             hovertemplate="%{x}<br>mean gate %{y:.3f}<extra>layer " + str(l) + "</extra>"))
    fig.update_layout(title=f"Gate usage per expert and layer<br><sup>{report.model_label} (gate values from: {report.gate_source})</sup>",
                      xaxis_title="expert", yaxis_title="mean gate value G_i(x_l) (± std over examples)",
                      barmode="group", height=380)
    return fig
