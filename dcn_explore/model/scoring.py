"""Scoring without autograd: a frozen copy of a model's products, laid out for the matrix library.

Used by :func:`dcn_explore.predict` for the models whose time is almost all in products over
``x0``'s width ``d``: full-rank and low-rank cross layers (any structure) and deep-only models.
Mixtures, DCN (vector) layers and low-rank layers with a diagonal scale score through the model's
own forward. What changes against the forward (the results agree to float rounding; the tests
check ``1e-5`` on the logits):

- ``x0``'s width ``d`` is padded to ``P``, the next multiple of 8 above ``d`` (429 -> 432 for the
  Criteo shape: 10 % less time per ``512 × 429 × 429`` product with the CPU's GEMM). The padding
  columns are zero and stay zero through every layer (their kernel rows and columns are zero).
- Column ``d`` of ``x0`` holds a constant 1, so the bias of a full-rank layer and of the first deep
  layer is one more kernel column: the product gives ``W x + b`` without the separate pass that
  writes the bias into the output first (a low-rank layer adds its bias in its second product,
  ``U (Vᵀ x) + b``, as ``addmm``). The column stays 1 through the cross layers: with the residual
  its output is 0 (``x_{l+1}[d] = x_l[d] + x0[d] · 0``), without it 1 (``x0[d] · 1``).
- Layer 0 with the residual computes ``x0 ⊙ (W x0 + b + 1)`` (one product and one multiply; the
  fused training step does the same), later layers update ``x_l`` in place with one ``addcmul``.
- A full-rank layer's diagonal scale ``α`` is folded into its kernel (``W + αI``).
- Buffers are allocated once per call and reused for every chunk.

>>> from dcn_explore.data import planted_crosses
>>> from dcn_explore.model import DCNConfig, DCNv2
>>> ds = planted_crosses(n_samples=64)
>>> model = DCNv2(ds.schema, DCNConfig(cross="full", cross_layers=2, deep_layers=(16,)), seed=0).eval()
>>> scorer = Scorer.build(model)
>>> x0 = model.embed(*ds.batch(slice(0, 64)).inputs())
>>> with torch.no_grad():
...     torch.allclose(scorer(x0), model.head(x0), atol=1e-5)
True
"""

from __future__ import annotations

import torch
from torch import nn

from .cross import FullCross, LowRankCross
from .dcn import DCNv2


class Scorer:
    """``x0: (B, d) -> logits (B,)`` for one :class:`DCNv2`.

    The padded kernels (cross layers, the first deep layer, the logit's cross part) are copies taken
    when the scorer is built; the later deep layers are read in place. Build a new scorer after the
    weights change (:func:`~dcn_explore.predict` builds one per call)."""

    def __init__(self, model: DCNv2) -> None:
        cfg, d = model.config, model.d
        self.d, self.P = d, (d // 8 + 1) * 8
        self.structure = cfg.structure
        w = next(model.parameters())
        self.dtype, self.device = w.dtype, w.device
        with torch.no_grad():
            layers = list(model.cross.layers) if model.cross else []
            self.cross = [self._cross_kernels(layer, first=(i == 0)) for i, layer in enumerate(layers)]
            self.residual = bool(layers[0].residual) if layers else True
            linears = [m for m in model.deep.net if isinstance(m, nn.Linear)] if model.deep else []
            # (Wᵀ, b) per deep layer; the first reads the padded x0 or x_L, its bias in Wᵀ's row d
            self.deep = [(self._padded_in(linears[0].weight, linears[0].bias).t(), None)] if linears else []
            self.deep += [(lin.weight.t(), lin.bias) for lin in linears[1:]]
            wl, bl = model.logit.weight[0], model.logit.bias
            if self.structure == "parallel":  # logit = [x_L; h] w + b: the x_L part padded, b at index d
                self.logit = (self._padded_in(wl[None, :d], bl)[0], wl[d:], None)
            elif self.structure == "cross_only":
                self.logit = (self._padded_in(wl[None], bl)[0], None, None)
            else:
                self.logit = (None, wl, bl)
        self._rows = 0

    @classmethod
    def build(cls, model: nn.Module) -> Scorer | None:
        """The scorer for ``model``, or ``None`` where it has parts this class does not cover
        (mixture and vector layers, low-rank layers with a diagonal scale)."""
        if not isinstance(model, DCNv2):
            return None
        layers = list(model.cross.layers) if model.cross is not None else []
        if not all(type(layer) is FullCross or (type(layer) is LowRankCross and not layer.diag_scale) for layer in layers):
            return None
        if model.deep is None and model.config.structure != "cross_only":
            return None
        return cls(model)

    def _padded_in(self, weight: torch.Tensor, bias: torch.Tensor | None, rows: int | None = None) -> torch.Tensor:
        """``(rows, P)`` (``rows`` defaults to ``weight``'s): ``weight`` with the bias in column ``d``,
        zero padding columns (and rows); the products use its transpose (a view)."""
        out = torch.zeros(rows or weight.shape[0], self.P, dtype=self.dtype, device=self.device)
        out[: weight.shape[0], : self.d] = weight
        if bias is not None:
            out[: weight.shape[0], self.d] = bias
        return out

    def _cross_kernels(self, layer: FullCross | LowRankCross, first: bool) -> tuple[torch.Tensor, ...]:
        """Full rank: ``(Kᵀ,)``, ``K: (P, P)`` = ``W + αI`` with the bias in column ``d``. Low rank:
        ``(V, Uᵀ, b)`` padded to ``(P, r)``, ``(r, P)``, ``(P,)``. The bias gets 1 added in a first
        residual layer, and output ``d`` is 1 where that keeps ``x[d] = 1`` (see the module docstring)."""
        d = self.d
        fold_residual = first and layer.residual
        b = layer.b if layer.b is not None else torch.zeros(d, dtype=self.dtype, device=self.device)
        b = b + 1 if fold_residual else b
        one = 1.0 if fold_residual or not layer.residual else 0.0
        if isinstance(layer, LowRankCross):
            V = torch.zeros(self.P, layer.rank, dtype=self.dtype, device=self.device)
            V[:d] = layer.V
            U = torch.zeros(self.P, layer.rank, dtype=self.dtype, device=self.device)
            U[:d] = layer.U
            bp = torch.zeros(self.P, dtype=self.dtype, device=self.device)
            bp[:d], bp[d] = b, one
            return V, U.t(), bp
        K = self._padded_in(layer.W, b, rows=self.P)
        if layer.diag_scale:
            K[:d, :d].diagonal().add_(layer.diag_scale)
        K[d, d] = one
        return (K.t(),)

    def _buffers(self, rows: int) -> None:
        if rows <= self._rows:
            return
        self._rows = rows
        new = lambda *shape: torch.empty(*shape, dtype=self.dtype, device=self.device)  # noqa: E731
        self.x0 = torch.zeros(rows, self.P, dtype=self.dtype, device=self.device)
        self.x0[:, self.d] = 1.0
        self.x, self.y = new(rows, self.P), new(rows, self.P)
        self.h = [new(rows, Wt.shape[1]) for Wt, _ in self.deep]
        self.v = [new(rows, k[0].shape[1]) if len(k) > 1 else None for k in self.cross]  # low rank: x V

    @torch.no_grad()
    def __call__(self, x0: torch.Tensor) -> torch.Tensor:
        n = x0.shape[0]
        self._buffers(n)
        X0, X, Y = self.x0[:n], self.x[:n], self.y[:n]
        X0[:, : self.d] = x0
        xl = X0
        for i, kernels in enumerate(self.cross):
            if len(kernels) == 1:
                torch.mm(xl, kernels[0], out=Y)
            else:
                V, Ut, b = kernels
                torch.addmm(b, torch.mm(xl, V, out=self.v[i][:n]), Ut, out=Y)
            if i == 0 or not self.residual:
                torch.mul(X0, Y, out=X)  # x0 ⊙ (W x0 + b + 1) for a first residual layer, else x0 ⊙ (W x_l + b)
            else:
                X.addcmul_(X0, Y)  # x_l + x0 ⊙ (W x_l + b)
            xl = X
        h = X0 if self.structure in ("deep_only", "parallel") else xl
        for j, (Wt, b) in enumerate(self.deep):
            H = self.h[j][:n]
            (torch.mm(h, Wt, out=H) if b is None else torch.addmm(b, h, Wt, out=H)).relu_()
            h = H
        w_x, w_h, b = self.logit
        if w_x is None:
            return torch.addmv(b, h, w_h)
        out = torch.mv(xl, w_x)
        return out.addmv_(h, w_h) if w_h is not None else out
