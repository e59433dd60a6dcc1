"""What a trained cross network learned (Sec. 3.5, Sec. 7.6, Eq. 7, Fig. 3a, Fig. 6).

For cross layer ``l`` the *effective cross matrix* ``W_l`` is the matrix in
``x_{l+1} = x0 ⊙ (W_l x_l + b_l) + x_l``:

- full (Eq. 1): ``W``; low-rank (Eq. 2): ``U Vᵀ``; DCN-v1: ``1 wᵀ``;
- mixture (Eq. 3): ``U_i C_i V_iᵀ`` per expert ``i``, and the gate-weighted
  combination ``Σ_i ḡ_i W_i`` where ``ḡ_i`` is the mean gate value over a data
  sample (with no data: the gate at ``x_l = 0``, i.e. ``1/K`` for softmax and
  ``1/2`` for sigmoid; ``1`` for the constant gate);
- nonlinear experts (Eq. 4): the data-averaged Jacobian of
  ``x_l ↦ U_i g(C_i g(V_iᵀ x_l))``, ``U_i · (C_i ⊙ mean_n g'(h_n) g'(v_n)ᵀ) · V_iᵀ``,
  which is exactly ``U_i C_i V_iᵀ`` when ``g`` is the identity.

The ``(i, j)`` block of ``W_l`` (rows of feature ``i``, columns of feature ``j``,
shape ``e_i × e_j``) is the learned cross between features ``i`` and ``j``.
Block norms are its Frobenius norm (``mode="weight"``, Fig. 6b) or, with data,
the root-mean-square size of the cross term itself,
``sqrt(mean_n ‖x0_i ⊙ (W_ij x_{l,j})‖²)`` (``mode="data"``), which weights each
block by the typical magnitude of the two features it connects.

>>> import torch
>>> from dcn_explore import DCNv2, DCNConfig
>>> from dcn_explore.data import planted_crosses
>>> model = DCNv2(planted_crosses(n_samples=50).schema, DCNConfig(cross_layers=1, structure="cross_only"), seed=0)
>>> rep = crosses(model)
>>> rep.block_norms(0).shape, list(rep.top(3).columns)
((15, 15), ['feature_a', 'feature_b', 'norm', 'layer', 'expert'])
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from .data.dataset import TabularData
from .errors import ConfigError
from .model.cross import ACTIVATION_FNS, MixtureCross
from .model.dcn import DCNv2
from .schema import Schema

MODES = ("weight", "data")


def _spearman(a, b) -> float:
    """Spearman's rank correlation: Pearson's correlation of the (average-tie) ranks."""
    ra, rb = pd.Series(np.asarray(a, dtype=float)).rank(), pd.Series(np.asarray(b, dtype=float)).rank()
    return float(ra.corr(rb))


def _activation_grad(name: str, z: torch.Tensor) -> torch.Tensor:
    """``g'(z)`` elementwise, by autograd through the activation itself."""
    z = z.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        ACTIVATION_FNS[name](z).sum().backward()
    return z.grad.detach()


@dataclass
class CrossReport:
    """Effective cross matrices of one model, and tables computed from them.

    ``matrices[(layer, expert)]`` is a ``(d, d)`` tensor; ``expert`` is ``None`` for
    the (gate-weighted) combination, ``0..K-1`` for a mixture's experts.
    """

    schema: Schema
    model_label: str
    cross: str
    n_layers: int
    n_experts: int
    matrices: dict
    gate_mean: np.ndarray | None
    gate_std: np.ndarray | None
    gate_source: str
    states: list[torch.Tensor] | None  # x0, x_1, ..., x_L on the data sample (None without data)

    # -- selection helpers -------------------------------------------------------------
    def _layers(self, layer) -> list[int]:
        if layer is None:
            return list(range(self.n_layers))
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not 0 <= layer < self.n_layers:
            raise ConfigError(f"layer={layer!r}: this model has cross layers 0..{self.n_layers - 1}")
        return [int(layer)]

    def _expert_key(self, expert) -> int | None:
        if expert is None or expert == "combined":
            return None
        if isinstance(expert, bool) or not isinstance(expert, (int, np.integer)) or not 0 <= expert < self.n_experts:
            raise ConfigError(f"expert={expert!r}: allowed None/'combined' or 0..{self.n_experts - 1}")
        return int(expert) if self.n_experts > 1 or self.cross == "mixture" else None

    def matrix(self, layer: int = 0, expert: Any = None) -> np.ndarray:
        """The effective cross matrix ``(d, d)`` of one layer (and expert)."""
        return self.matrices[(self._layers(layer)[0], self._expert_key(expert))].cpu().numpy()

    @property
    def names(self) -> list[str]:
        return self.schema.names

    def block_bounds(self) -> list[tuple[str, int, int]]:
        """``(feature, start, stop)`` of each block of ``x0``."""
        return [(n, s.start, s.stop) for n, s in self.schema.slices.items()]

    # -- block norms --------------------------------------------------------------------
    def _norms(self, layer: int, expert_key, mode: str) -> torch.Tensor:
        if mode not in MODES:
            raise ConfigError(f"mode={mode!r}; allowed: {', '.join(MODES)}")
        W = self.matrices[(layer, expert_key)].double()
        sl = list(self.schema.slices.values())
        k = len(sl)
        block_of = torch.zeros(self.schema.d, k, dtype=torch.float64)  # column i: the indicator of block i
        for i, si in enumerate(sl):
            block_of[si, i] = 1.0
        if mode == "weight":  # ‖W_ij‖_F = sqrt(Σ over block (i, j) of W²), every block in one product
            return (block_of.T @ W.square() @ block_of).sqrt()
        if self.states is None:
            raise ConfigError("mode='data' needs data: build the report with dx.crosses(model, data)")
        x0, xl = self.states[0].double(), self.states[layer].double()
        out = torch.empty(k, k, dtype=torch.float64)
        for j, sj in enumerate(sl):
            term = x0 * (xl[:, sj] @ W[:, sj].T)  # (N, d): x0 ⊙ (W_{:, j} x_{l,j})
            out[:, j] = ((term**2) @ block_of).mean(0).sqrt()
        return out

    def block_norms(self, layer: int | None = 0, expert: Any = None, mode: str = "weight") -> pd.DataFrame:
        """``k × k`` block norms, index = output feature ``i``, columns = input feature ``j`` (Fig. 6b).

        ``layer=None`` combines all layers as ``sqrt(Σ_l norm_l²)``.
        """
        key = self._expert_key(expert)
        sq = sum(self._norms(l, key, mode) ** 2 for l in self._layers(layer))
        return pd.DataFrame(sq.sqrt().numpy(), index=pd.Index(self.names, name="feature_i"), columns=pd.Index(self.names, name="feature_j"))

    def _pair_norms(self, layer, expert, mode: str, ordered: bool, include_diagonal: bool):
        """The feature indices ``(i, j)`` of every listed pair and, per layer and expert (in that order),
        ``(layer, expert label, norms of the pairs)``."""
        experts = list(range(self.n_experts)) if expert == "each" and self.cross == "mixture" else [expert]
        k = len(self.names)
        # row-major (i, j): every ordered pair, or i <= j (i < j without the diagonal)
        if ordered:
            i, j = np.nonzero(~np.eye(k, dtype=bool) | include_diagonal)
        else:
            i, j = np.triu_indices(k, 0 if include_diagonal else 1)
        parts = []
        for l in self._layers(layer):
            for e in experts:
                n = self._norms(l, self._expert_key(e), mode).numpy()
                v = n[i, j] if ordered else np.where(i == j, n[i, j], np.hypot(n[i, j], n[j, i]))
                parts.append((l, "combined" if self._expert_key(e) is None else int(e), v.astype(float)))
        return i, j, parts

    def pairs(self, layer: int | None = None, expert: Any = "combined", mode: str = "weight",
              ordered: bool = False, include_diagonal: bool = False) -> pd.DataFrame:
        """Every cross as a tidy table: ``feature_a, feature_b, norm, layer, expert``.

        Unordered (default): blocks ``(i, j)`` and ``(j, i)`` combined as ``sqrt(‖W_ij‖² + ‖W_ji‖²)``.
        ``expert="each"`` lists every expert of a mixture separately (``"combined"``: the gate-weighted matrix).
        """
        names = np.array(self.names, dtype=object)
        i, j, parts = self._pair_norms(layer, expert, mode, ordered, include_diagonal)
        return pd.concat([pd.DataFrame({"feature_a": names[i], "feature_b": names[j], "norm": v, "layer": l, "expert": e})
                          for l, e, v in parts], ignore_index=True)

    def top(self, k: int = 10, layer: int | None = None, expert: Any = "combined", mode: str = "weight",
            ordered: bool = False, aggregate: bool = False) -> pd.DataFrame:
        """The ``k`` strongest off-diagonal crosses across layers (and experts, with ``expert="each"``);
        ties keep the order of :meth:`pairs`.

        ``aggregate=True`` first combines the layers per pair (``sqrt(Σ_l norm²)``, layer = ``"all"``).
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ConfigError(f"k={k!r}: must be an integer >= 1")
        i, j, parts = self._pair_norms(layer, expert, mode, ordered, False)
        if aggregate:  # per expert, the layers' squares summed in layer order
            sums: dict = {}
            for _, e, v in parts:
                sums[e] = sums[e] + v**2 if e in sums else v**2
            parts = [("all", e, np.sqrt(sq)) for e, sq in sums.items()]
        # the (layer, expert, pair) rows in pairs()'s order; a stable sort on the negated norms keeps it for ties
        norms = np.concatenate([v for _, _, v in parts])
        best = np.argsort(-norms, kind="stable")[: int(k)]
        part, pair = np.divmod(best, len(i))
        names = np.array(self.names, dtype=object)
        return pd.DataFrame({"feature_a": names[i[pair]], "feature_b": names[j[pair]], "norm": norms[best],
                             "layer": [parts[q][0] for q in part], "expert": [parts[q][1] for q in part]})

    def pair_scores(self, mode: str = "weight", layer: int | None = None) -> pd.Series:
        """Unordered off-diagonal pair -> score, layers combined ``sqrt(Σ_l norm²)``, combined experts."""
        p = self.pairs(layer=layer, expert="combined", mode=mode)
        s = (p["norm"] ** 2).groupby([p["feature_a"], p["feature_b"]], sort=False).sum().pipe(np.sqrt)
        return s.sort_values(ascending=False, kind="stable")

    # -- recovery of a known truth -----------------------------------------------------
    def recovery(self, truth: pd.DataFrame, mode: str = "weight", layer: int | None = None) -> dict:
        """How well the block norms recover planted pairwise crosses.

        ``truth`` needs ``feature_a, feature_b, weight`` (rows with ``order != 2`` or
        ``feature_a == feature_b`` are ignored). Returns ``k`` (= number of planted
        pairs ``|S|``), ``hits`` and ``precision_at_k`` (planted pairs among the top-|S|
        off-diagonal pairs), ``spearman_planted`` (rank correlation of the learned
        scores with ``|weight|`` over the planted pairs), ``spearman_all`` (over all
        pairs, non-planted = 0), ``auc_pairs`` (chance that a planted pair outranks a
        non-planted one), and the ``missed`` / ``false`` pairs.
        """
        if not {"feature_a", "feature_b", "weight"} <= set(truth.columns):
            raise ConfigError(f"truth needs columns feature_a, feature_b, weight; got {list(truth.columns)}")
        t = truth
        if "order" in t.columns:
            t = t[t["order"] == 2]
        t = t[t["feature_a"] != t["feature_b"]]
        pos = {n: i for i, n in enumerate(self.names)}
        unknown = sorted({f for f in pd.concat([t["feature_a"], t["feature_b"]]) if f not in pos})
        if unknown:
            raise ConfigError(f"truth names features that are not in the schema: {unknown}")

        def canon(a, b):
            return (a, b) if pos[a] < pos[b] else (b, a)

        planted = {canon(a, b): abs(float(w)) for a, b, w in zip(t["feature_a"], t["feature_b"], t["weight"])}
        scores = self.pair_scores(mode=mode, layer=layer)
        k = len(planted)
        top = [canon(a, b) for a, b in scores.index[:k]]
        hits = sum(p in planted for p in top)
        all_pairs = [canon(a, b) for a, b in scores.index]
        s = pd.Series(scores.to_numpy(), index=pd.MultiIndex.from_tuples(all_pairs))
        truth_all = pd.Series([planted.get(p, 0.0) for p in all_pairs], index=s.index)
        in_s = truth_all > 0
        sp_planted = _spearman([s[p] for p in planted], list(planted.values())) if k > 1 else math.nan
        sp_all = _spearman(s.to_numpy(), truth_all.to_numpy())
        pos_scores, neg_scores = s[in_s].to_numpy(), s[~in_s].to_numpy()
        auc = float(((pos_scores[:, None] > neg_scores[None, :]).mean() + 0.5 * (pos_scores[:, None] == neg_scores[None, :]).mean())) if len(neg_scores) and k else math.nan
        return {
            "k": k,
            "hits": int(hits),
            "precision_at_k": hits / k if k else math.nan,
            "spearman_planted": sp_planted,
            "spearman_all": sp_all,
            "auc_pairs": auc,
            "missed": sorted(p for p in planted if p not in top),
            "false": [p for p in top if p not in planted],
        }

    # -- spectrum (Sec. 3.5, Fig. 3a) ----------------------------------------------------
    def spectrum(self, layer: int = 0, expert: Any = None) -> np.ndarray:
        """Singular values of the effective cross matrix, largest first."""
        W = self.matrices[(self._layers(layer)[0], self._expert_key(expert))].double()
        return torch.linalg.svdvals(W).numpy()

    def numerical_rank(self, layer: int = 0, expert: Any = None, tol: float = 0.01) -> int:
        """``R_T``: the number of singular values ``σ_k >= T·σ_1`` (the paper's
        ``argmin_k σ_k < T·σ_1``, counted as how many singular values are kept)."""
        if not 0 < tol < 1:
            raise ConfigError(f"tol={tol!r}: must be in (0, 1)")
        s = self.spectrum(layer, expert)
        return int((s >= tol * s[0]).sum()) if s[0] > 0 else 0

    def spectra(self, tol: float = 0.01) -> pd.DataFrame:
        """Tidy singular values of every layer: ``layer, index (1-based), sigma, sigma_rel, kept``."""
        rows = []
        for l in range(self.n_layers):
            s = self.spectrum(l)
            for i, v in enumerate(s):
                rows.append((l, i + 1, float(v), float(v / s[0]) if s[0] else 0.0, bool(v >= tol * s[0])))
        return pd.DataFrame(rows, columns=["layer", "index", "sigma", "sigma_rel", "kept"])

    # -- experts and gates ---------------------------------------------------------------
    def gate_usage(self) -> pd.DataFrame:
        """Mean (and std) gate value per layer and expert, with each expert's share of the layer's total."""
        if self.gate_mean is None:
            raise ConfigError("gate_usage needs a mixture model (cross='mixture')")
        rows = []
        for l in range(self.n_layers):
            tot = float(self.gate_mean[l].sum()) or 1.0
            for e in range(self.n_experts):
                rows.append((l, e, float(self.gate_mean[l, e]), float(self.gate_std[l, e]), float(self.gate_mean[l, e]) / tot))
        return pd.DataFrame(rows, columns=["layer", "expert", "gate_mean", "gate_std", "share"]).assign(source=self.gate_source)


@torch.no_grad()
def _states(model: DCNv2, data: TabularData) -> list[torch.Tensor]:
    dev = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    was = model.training
    model.eval()
    try:
        d = data.to(dev)
        x0 = model.embed(d.categorical, d.multivalent, d.dense.to(dtype))
        _, states = model.cross(x0, return_states=True)
    finally:
        model.train(was)
    return [s.float().cpu() for s in states]


def crosses(model: DCNv2, data: TabularData | None = None, sample: int = 4096, seed: int = 0) -> CrossReport:
    """Extract the effective cross matrices of ``model`` (optionally using up to ``sample`` examples of ``data``).

    Data is needed for nonlinear experts (Eq. 4 Jacobians), for data-weighted gate
    combinations and for ``mode="data"`` norms.
    """
    if not isinstance(model, DCNv2):
        raise ConfigError(f"model must be a DCNv2, got {type(model).__name__}")
    if model.cross is None:
        raise ConfigError(f"the model has no cross layers (structure={model.config.structure!r}); nothing to extract")
    cfg = model.config
    states = None
    if data is not None:
        if len(data) == 0:
            raise ConfigError(f"{data.name}: empty data; pass data with examples or None")
        if data.schema.names != model.schema.names:
            raise ConfigError(f"{data.name}: schema features {data.schema.names} differ from the model's {model.schema.names}")
        states = _states(model, data.sample(sample, seed=seed))
    layers = list(model.cross.layers)
    K = cfg.experts if cfg.cross == "mixture" else 1
    matrices: dict = {}
    gate_mean = gate_std = None
    gate_source = "none"
    if cfg.cross == "mixture":
        gate_mean, gate_std = np.zeros((len(layers), K)), np.zeros((len(layers), K))
    for l, layer in enumerate(layers):
        if isinstance(layer, MixtureCross):
            if layer.activation == "identity":
                Ws = layer.effective_matrices().cpu().float()
            else:
                if states is None:
                    raise ConfigError(f"activation={layer.activation!r}: the cross matrix of nonlinear experts (Eq. 4) is a data-averaged Jacobian; pass data: dx.crosses(model, data)")
                Ws = _jacobians(layer, states[l])
            if states is not None:
                with torch.no_grad():
                    g = layer.gate_weights(states[l].to(next(layer.parameters()).device, next(layer.parameters()).dtype)).float().cpu()
                gm, gs = g.mean(0), g.std(0) if g.shape[0] > 1 else torch.zeros(K)
                gate_source = "data" if layer.G is not None else "constant"
            else:
                gm = torch.full((K,), 1.0 if layer.G is None else (1.0 / K if layer.gate_kind == "softmax" else 0.5))
                gs = torch.zeros(K)
                gate_source = "constant" if layer.G is None else "gate at x_l = 0 (no data given)"
            gate_mean[l], gate_std[l] = gm.numpy(), gs.numpy()
            for e in range(K):
                matrices[(l, e)] = Ws[e]
            matrices[(l, None)] = (gm[:, None, None] * Ws).sum(0)
        else:
            matrices[(l, None)] = layer.effective_matrices().cpu().float()[0]
    return CrossReport(
        schema=model.schema, model_label=cfg.label(), cross=cfg.cross, n_layers=len(layers), n_experts=K,
        matrices=matrices, gate_mean=gate_mean, gate_std=gate_std, gate_source=gate_source, states=states,
    )


@torch.no_grad()
def _jacobians(layer: MixtureCross, xl: torch.Tensor) -> torch.Tensor:
    """Data-averaged Jacobians ``(K, d, d)`` of ``x ↦ U_i g(C_i g(V_iᵀ x))`` (Eq. 4), plus ``α I``."""
    U, V, C = (p.detach().cpu().double() for p in (layer.U, layer.V, layer.C))
    x = xl.double()
    out = []
    for i in range(layer.experts):
        v = x @ V[i]  # (N, r)
        d1 = _activation_grad(layer.activation, v)
        h = ACTIVATION_FNS[layer.activation](v) @ C[i].T
        d2 = _activation_grad(layer.activation, h)
        M = C[i] * (d2.T @ d1) / x.shape[0]  # mean_n diag(g'(h_n)) C diag(g'(v_n))
        out.append(U[i] @ M @ V[i].T)
    W = torch.stack(out).float()
    return W + layer.diag_scale * torch.eye(layer.d)[None]
