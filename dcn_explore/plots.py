"""Plotly figures of what a model learned. Functions return ``go.Figure``; nothing is displayed here.

Every figure labels its axes (features, units), the layer and the expert it shows.

>>> import dcn_explore as dx
>>> model = dx.DCNv2(dx.data.planted_crosses(n_samples=50).schema, dx.DCNConfig(cross_layers=1, structure="cross_only"), seed=0)
>>> fig = block_norm_heatmap(dx.crosses(model), layer=0)
>>> fig.data[0].type, fig.layout.xaxis.title.text
('heatmap', 'input feature j (block column)')
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .crosses import CrossReport

HEAT = "Viridis"


def _expert_text(report: CrossReport, expert: Any) -> str:
    if report.cross != "mixture":
        return ""
    if expert is None or expert == "combined":
        return f", experts combined (gate-weighted; gate: {report.gate_source})"
    return f", expert {expert}"


def _layer_text(layer) -> str:
    return "all layers (√Σ norm²)" if layer is None else f"layer {layer}"


def _mode_text(mode: str) -> str:
    return "‖W_ij‖_F" if mode == "weight" else "RMS of x0_i ⊙ (W_ij x_j) over data"


def block_norm_heatmap(report: CrossReport, layer: int | None = 0, expert: Any = None, mode: str = "weight",
                       title: str | None = None, show_diagonal: bool = True) -> go.Figure:
    """Fig. 6b: the ``k × k`` block norms with feature names."""
    bn = report.block_norms(layer=layer, expert=expert, mode=mode)
    z = bn.to_numpy().copy()
    if not show_diagonal:
        np.fill_diagonal(z, np.nan)
    fig = go.Figure(go.Heatmap(
        z=z, x=list(bn.columns), y=list(bn.index), colorscale=HEAT,
        colorbar=dict(title=dict(text=_mode_text(mode))),
        hovertemplate="row %{y} × col %{x}<br>norm %{z:.4g}<extra></extra>",
    ))
    fig.update_layout(
        title=title or f"Block norms {_mode_text(mode)} — {report.model_label}, {_layer_text(layer)}{_expert_text(report, expert)}",
        xaxis=dict(title="input feature j (block column)", tickangle=-45),
        yaxis=dict(title="output feature i (block row)", autorange="reversed"),
        height=560, margin=dict(l=140, b=140),
    )
    return fig


def weight_heatmap(report: CrossReport, layer: int = 0, expert: Any = None, title: str | None = None) -> go.Figure:
    """Fig. 6a: ``|W|`` itself with the feature blocks outlined and labelled."""
    W = np.abs(report.matrix(layer, expert))
    bounds = report.block_bounds()
    fig = go.Figure(go.Heatmap(z=W, colorscale=HEAT, colorbar=dict(title=dict(text="|W| (entry)")),
                               hovertemplate="row %{y}, col %{x}<br>|W| %{z:.4g}<extra></extra>"))
    centers = [(a + b - 1) / 2 for _, a, b in bounds]
    names = [n for n, _, _ in bounds]
    d = W.shape[0]
    for _, a, _b in bounds[1:]:
        fig.add_shape(type="line", x0=a - 0.5, x1=a - 0.5, y0=-0.5, y1=d - 0.5, line=dict(color="white", width=0.7))
        fig.add_shape(type="line", y0=a - 0.5, y1=a - 0.5, x0=-0.5, x1=d - 0.5, line=dict(color="white", width=0.7))
    fig.update_layout(
        title=title or f"|W| of {_layer_text(layer)}{_expert_text(report, expert)} — {report.model_label}",
        xaxis=dict(title="input block (feature j)", tickmode="array", tickvals=centers, ticktext=names, tickangle=-45),
        yaxis=dict(title="output block (feature i)", tickmode="array", tickvals=centers, ticktext=names, autorange="reversed"),
        height=620, margin=dict(l=140, b=140),
    )
    return fig


def truth_matrix(truth: pd.DataFrame, names: Sequence[str]) -> pd.DataFrame:
    """Symmetric ``k × k`` matrix of planted ``|weight|`` (pairwise rows of ``truth``)."""
    m = pd.DataFrame(0.0, index=list(names), columns=list(names))
    t = truth[truth["order"] == 2] if "order" in truth.columns else truth
    for a, b, w in zip(t["feature_a"], t["feature_b"], t["weight"]):
        m.loc[a, b] = m.loc[b, a] = abs(float(w))
    return m


def learned_vs_planted(report: CrossReport, truth: pd.DataFrame, layer: int | None = None, mode: str = "weight") -> go.Figure:
    """Side by side: learned off-diagonal block norms (unordered pairs) and the planted ``|weight|``."""
    names = report.names
    scores = report.pair_scores(mode=mode, layer=layer)
    learned = pd.DataFrame(np.nan, index=names, columns=names)
    for (a, b), v in scores.items():
        learned.loc[a, b] = learned.loc[b, a] = v
    tm = truth_matrix(truth, names)
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.18, subplot_titles=(
        f"learned: √(‖W_ij‖²+‖W_ji‖²), {_layer_text(layer)}", "planted: |w_ij| of the generator"))
    fig.add_trace(go.Heatmap(z=learned.to_numpy(), x=names, y=names, colorscale=HEAT, colorbar=dict(x=0.41, title=dict(text="norm")),
                             hovertemplate="%{y} × %{x}<br>learned %{z:.4g}<extra></extra>"), 1, 1)
    fig.add_trace(go.Heatmap(z=tm.to_numpy(), x=names, y=names, colorscale=HEAT, colorbar=dict(x=1.0, title=dict(text="|w|")),
                             hovertemplate="%{y} × %{x}<br>planted %{z:.3g}<extra></extra>"), 1, 2)
    for c in (1, 2):
        fig.update_xaxes(title_text="feature", tickangle=-45, row=1, col=c)
        fig.update_yaxes(title_text="feature", autorange="reversed", row=1, col=c)
    fig.update_layout(title=f"Learned crosses vs planted truth — {report.model_label} (diagonal omitted)",
                      height=560, margin=dict(l=140, b=140))
    return fig


def spectrum_plot(report: CrossReport, layers: Sequence[int] | None = None, tol: float = 0.01,
                  reference: dict[str, np.ndarray] | None = None) -> go.Figure:
    """Fig. 3a: singular values ``σ_k / σ_1`` (log scale) with the numerical rank ``R_T`` marked.

    ``reference``: extra named spectra to overlay (e.g. the same layer at initialisation).
    """
    layers = list(range(report.n_layers)) if layers is None else list(layers)
    fig = go.Figure()
    for l in layers:
        s = report.spectrum(l)
        rel = s / s[0] if s[0] else s
        r = report.numerical_rank(l, tol=tol)
        fig.add_trace(go.Scatter(x=np.arange(1, len(s) + 1), y=rel, mode="lines", name=f"layer {l} (R_T={r})"))
        fig.add_vline(x=r, line_dash="dot", annotation_text=f"R_T={r} (layer {l})", annotation_position="top")
    for name, s in (reference or {}).items():
        s = np.asarray(s)
        fig.add_trace(go.Scatter(x=np.arange(1, len(s) + 1), y=s / s[0], mode="lines", name=name, line=dict(dash="dash")))
    fig.add_hline(y=tol, line_dash="dash", annotation_text=f"T = {tol:g}")
    fig.update_layout(title=f"Singular values of the learned cross matrix — {report.model_label}",
                      xaxis_title="k (index of singular value)", yaxis_title="σ_k / σ_1", yaxis_type="log", height=450)
    return fig


def history_plot(history: pd.DataFrame, metrics: Sequence[str] | None = None) -> go.Figure:
    """Training curves per epoch (train loss, validation metrics)."""
    cols = list(metrics) if metrics else [c for c in history.columns if c == "train_loss" or (c.startswith("val_") and c != "val_loss")]
    fig = make_subplots(rows=1, cols=len(cols), subplot_titles=cols)
    for i, c in enumerate(cols, start=1):
        fig.add_trace(go.Scatter(x=history["epoch"], y=history[c], mode="lines+markers", name=c), 1, i)
        fig.update_xaxes(title_text="epoch", row=1, col=i)
        fig.update_yaxes(title_text=c, row=1, col=i)
    fig.update_layout(title="Training history", height=320, showlegend=False)
    return fig


def top_crosses_table(top: pd.DataFrame, truth: pd.DataFrame | None = None) -> go.Figure:
    """A table figure of ``report.top(k)``; marks planted pairs when ``truth`` is given."""
    df = top.copy()
    if truth is not None:
        planted = {frozenset((a, b)) for a, b in zip(truth["feature_a"], truth["feature_b"])}
        df["planted"] = ["yes" if frozenset((a, b)) in planted else "no" for a, b in zip(df.feature_a, df.feature_b)]
    df["norm"] = df["norm"].map(lambda v: f"{v:.4g}")
    return go.Figure(go.Table(header=dict(values=list(df.columns)), cells=dict(values=[df[c] for c in df.columns])))


def sweep_curve(results: pd.DataFrame, x: str, y: str, color: str | None = None, log_x: bool = False,
                title: str | None = None) -> go.Figure:
    """Fig. 5: mean ± std of ``y`` over seeds against the swept field ``x`` (one line per ``color`` value)."""
    groups = [(None, results)] if color is None else list(results.groupby(color, sort=True))
    fig = go.Figure()
    for key, g in groups:
        agg = g.groupby(x, sort=True)[y].agg(["mean", "std", "count"]).reset_index()
        fig.add_trace(go.Scatter(
            x=agg[x], y=agg["mean"], mode="lines+markers",
            error_y=dict(type="data", array=agg["std"].fillna(0.0), visible=True),
            name=f"{color}={key}" if color else y,
            customdata=agg["count"], hovertemplate=f"{x}=%{{x}}<br>{y} mean %{{y:.5g}}<br>runs %{{customdata}}<extra></extra>",
        ))
    n_seeds = int(results.groupby([c for c in [x, color] if c])[y].count().max()) if len(results) else 0
    fig.update_layout(title=title or f"{y} vs {x} (mean ± std over {n_seeds} seed(s))",
                      xaxis_title=x, yaxis_title=f"{y} (test)", height=420, xaxis_type="log" if log_x else None)
    return fig


def gate_usage_plot(report: CrossReport) -> go.Figure:
    """Mean gate value per expert and layer (error bars: std over the data sample)."""
    g = report.gate_usage()
    fig = go.Figure()
    for l, gl in g.groupby("layer"):
        fig.add_trace(go.Bar(x=[f"expert {e}" for e in gl["expert"]], y=gl["gate_mean"],
                             error_y=dict(type="data", array=gl["gate_std"]), name=f"layer {l}"))
    fig.update_layout(title=f"Gate usage — {report.model_label} (gate values from: {report.gate_source})",
                      xaxis_title="expert", yaxis_title="mean gate value G_i(x_l)", barmode="group", height=380)
    return fig


def expert_block_norms(report: CrossReport, layer: int = 0, mode: str = "weight") -> go.Figure:
    """One block-norm heatmap per expert of a mixture layer (what each expert specialises in)."""
    K = report.n_experts
    fig = make_subplots(rows=1, cols=K, subplot_titles=[f"expert {e}" for e in range(K)], horizontal_spacing=0.04)
    zmax = max(float(report.block_norms(layer, e, mode).to_numpy().max()) for e in range(K))
    for e in range(K):
        bn = report.block_norms(layer, e, mode)
        fig.add_trace(go.Heatmap(z=bn.to_numpy(), x=list(bn.columns), y=list(bn.index), colorscale=HEAT,
                                 zmin=0, zmax=zmax, showscale=(e == K - 1), colorbar=dict(title=dict(text=_mode_text(mode)))), 1, e + 1)
        fig.update_yaxes(autorange="reversed", showticklabels=(e == 0), row=1, col=e + 1)
        fig.update_xaxes(tickangle=-45, row=1, col=e + 1)
    fig.update_layout(title=f"Per-expert block norms, layer {layer} — {report.model_label} (shared colour scale)",
                      height=460, margin=dict(b=140, l=140))
    return fig
