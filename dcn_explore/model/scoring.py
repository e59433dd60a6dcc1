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
- Where every id feature is categorical with one embedding width ``w`` that divides ``P`` (the
  Criteo shape: 26 × 16 + 13 dense -> ``P = 432 = 27 × 16``), one ``index_select`` writes a batch's
  embeddings straight into the padded buffer, seen as ``P / w`` slots of ``w`` per row: the id
  features first, then the dense features, the constant and the padding, written after the lookup
  into the slots it filled with row 0. The kernels' rows and columns are permuted to that order, so
  no ``x0`` is concatenated or copied. ``predict`` looks up ``LOOKUP_ROWS`` (2,048) rows at a time
  and runs the layers on ``batch_size`` rows at a time. Paired against the previous scorer on the
  Criteo-shaped models, batch 512: 1.05–1.06× (full rank), 1.13× (rank 64).
- Buffers are allocated once per call and reused for every chunk.
- Where :func:`~dcn_explore.model.onednn.cpu_matmul` chooses oneDNN (by default: AVX-512 CPUs,
  ``P ≥ 256``; ``DCNX_CPU_MATMUL`` to choose), float32 models run their products through oneDNN,
  the kernels reordered once for its kernel and the step after each product inside it (``x0 ⊙ (·)`` of a cross
  layer, a deep layer's ReLU). Paired against the BLAS products on the Criteo-shaped models on a
  2-core AMD EPYC (Zen 4), batch 512: 1.18–1.31× (full rank), 1.11–1.17× (rank 64), 1.16–1.21×
  (deep only), four runs. The results agree to float rounding (about 1e-6 on logits of order 1).

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

from ..errors import ConfigError
from .cross import FullCross, LowRankCross
from .dcn import DCNv2
from . import onednn


class Scorer:
    """Logits ``(B,)`` of one :class:`DCNv2`, from ``x0: (B, d)`` (``scorer(x0)``) or from a batch's
    raw inputs (``scorer.score(categorical, multivalent, dense)``).

    The padded kernels (cross layers, the first deep layer, the logit's cross part) are copies taken
    when the scorer is built; the later deep layers and the embedding table are read in place.
    Build a new scorer after the weights change (:func:`~dcn_explore.predict` builds one per call).

    ``matmul``: ``"onednn"`` or ``"blas"`` for the products of a float32 model on the CPU (default:
    :func:`~dcn_explore.model.onednn.cpu_matmul` of the padded width); other devices and dtypes
    always use ``torch.mm``.
    :attr:`matmul` says which one the scorer runs."""

    #: :func:`~dcn_explore.predict` looks up this many rows at a time (its ``batch_size`` rows at a
    #: time when that is more) and runs the layers on ``batch_size`` rows
    LOOKUP_ROWS = 2048

    @classmethod
    def lookup_group(cls, batch_size: int) -> int:
        """Rows looked up at a time when the layers run on ``batch_size`` rows: the multiple of
        ``batch_size`` nearest :attr:`LOOKUP_ROWS` from below (``batch_size`` itself when larger)."""
        return batch_size * max(1, cls.LOOKUP_ROWS // batch_size)

    @staticmethod
    def padded_width(d: int) -> int:
        """``P``: ``x0``'s width ``d`` padded to the next multiple of 8 above it (room for the
        constant-1 column)."""
        return (d // 8 + 1) * 8

    def __init__(self, model: DCNv2, matmul: str | None = None) -> None:
        cfg, d = model.config, model.d
        self.d, self.P = d, self.padded_width(d)
        self.structure = cfg.structure
        w = next(model.parameters())
        self.dtype, self.device = w.dtype, w.device
        self.embed = model.embed
        self.slots = self._slot_layout(model)
        # cols[q]: the model's x0 column that padded column q < d holds (None: the same column)
        self.cols = self.slots[3] if self.slots is not None else None
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
        if matmul not in (None, "onednn", "blas"):
            raise ConfigError(f"Scorer: matmul={matmul!r}; expected 'onednn', 'blas' or None")
        on_cpu = self.device.type == "cpu" and self.dtype == torch.float32
        self.matmul = (matmul or onednn.cpu_matmul(self.P)) if on_cpu else "blas"
        if self.matmul == "onednn" and (why := onednn.onednn_unusable()) is not None:
            raise ConfigError(f"Scorer: matmul='onednn': {why}")
        with torch.no_grad():  # oneDNN's cross and deep products
            self._packed = self._pack() if self.matmul == "onednn" else None
        self._x0_rows = self._rows = 0

    @classmethod
    def build(cls, model: nn.Module, matmul: str | None = None) -> Scorer | None:
        """The scorer for ``model``, or ``None`` where it has parts this class does not cover
        (mixture and vector layers, low-rank layers with a diagonal scale)."""
        if not isinstance(model, DCNv2):
            return None
        layers = list(model.cross.layers) if model.cross is not None else []
        if not all(type(layer) is FullCross or (type(layer) is LowRankCross and not layer.diag_scale) for layer in layers):
            return None
        if model.deep is None and model.config.structure != "cross_only":
            return None
        return cls(model, matmul)

    def _slot_layout(self, model: DCNv2) -> tuple[torch.Tensor, torch.Tensor, int, torch.Tensor] | None:
        """``(table, offsets, width, cols)`` where one lookup can write ``x0`` straight into the padded
        buffer: every id feature categorical with one width ``w`` that divides ``P``. The buffer's
        row is then ``P / w`` slots of ``w``: the id features' embeddings first, then one or more
        slots holding the dense features, the constant 1 (column ``d``) and the zero padding, which
        the lookup fills with row 0 and which are written over after it. ``cols`` maps those
        columns back to the model's ``x0`` columns."""
        single = model.embedding.single_table()
        if single is None or self.P % single[0].shape[1]:
            return None
        table, offsets = single
        w, schema, where = table.shape[1], model.schema, model.schema.slices
        cols = [c for f in schema.of_kind("categorical") for c in range(where[f.name].start, where[f.name].stop)]
        cols += [where[f.name].start for f in schema.of_kind("dense")]
        return table, offsets, w, torch.tensor(cols, device=self.device)

    def _in_order(self, t: torch.Tensor, dim: int = 0) -> torch.Tensor:
        """``t``'s entries along ``dim`` (rows by default), indexed by the model's ``x0`` columns, in the
        padded order."""
        return t if self.cols is None else t.index_select(dim, self.cols)

    def _padded_in(self, weight: torch.Tensor, bias: torch.Tensor | None, rows: int | None = None) -> torch.Tensor:
        """``(rows, P)`` (``rows`` defaults to ``weight``'s): ``weight`` with the bias in column ``d``,
        zero padding columns (and rows); the products use its transpose (a view)."""
        out = torch.zeros(rows or weight.shape[0], self.P, dtype=self.dtype, device=self.device)
        out[: weight.shape[0], : self.d] = self._in_order(weight, dim=1)
        if bias is not None:
            out[: weight.shape[0], self.d] = bias
        return out

    def _cross_kernels(self, layer: FullCross | LowRankCross, first: bool) -> tuple[torch.Tensor, ...]:
        """Full rank: ``(Kᵀ,)``, ``K: (P, P)`` = ``W + αI`` with the bias in column ``d``. Low rank:
        ``(V, Uᵀ, b)`` padded to ``(P, r)``, ``(r, P)``, ``(P,)``. The bias gets 1 added in a first
        residual layer, and output ``d`` is 1 where that keeps ``x[d] = 1`` (see the module docstring)."""
        d = self.d
        fold_residual = first and layer.residual
        b = self._in_order(layer.b) if layer.b is not None else torch.zeros(d, dtype=self.dtype, device=self.device)
        b = b + 1 if fold_residual else b
        one = 1.0 if fold_residual or not layer.residual else 0.0
        if isinstance(layer, LowRankCross):
            V = torch.zeros(self.P, layer.rank, dtype=self.dtype, device=self.device)
            V[:d] = self._in_order(layer.V)
            U = torch.zeros(self.P, layer.rank, dtype=self.dtype, device=self.device)
            U[:d] = self._in_order(layer.U)
            bp = torch.zeros(self.P, dtype=self.dtype, device=self.device)
            bp[:d], bp[d] = b, one
            return V, U.t(), bp
        K = self._padded_in(self._in_order(layer.W), b, rows=self.P)
        if layer.diag_scale:
            K[:d, :d].diagonal().add_(layer.diag_scale)
        K[d, d] = one
        return (K.t(),)

    def _buffers(self, rows: int, chunk: int) -> None:
        """``x0`` (and the slots' ids) for ``rows`` rows, the layers' buffers for ``chunk`` rows (the
        BLAS products only)."""
        new = lambda *shape: torch.empty(*shape, dtype=self.dtype, device=self.device)  # noqa: E731
        if rows > self._x0_rows:
            self._x0_rows = rows
            self.x0 = torch.zeros(rows, self.P, dtype=self.dtype, device=self.device)
            self.x0[:, self.d] = 1.0
            if self.slots is not None:  # ids of each row's slots; the slots after the id features read row 0
                self.ids = torch.zeros(rows, self.P // self.slots[2], dtype=torch.long, device=self.device)
        if chunk > self._rows and self._packed is None:  # oneDNN's products return new tensors
            self._rows = chunk
            self.x, self.y = new(chunk, self.P), new(chunk, self.P)
            self.h = [new(chunk, Wt.shape[1]) for Wt, _ in self.deep]
            self.v = [new(chunk, k[0].shape[1]) if len(k) > 1 else None for k in self.cross]  # low rank: x V

    def _pack(self) -> tuple[list, list]:
        """The products as oneDNN's kernels read them: per cross layer ``(K,)`` (full rank, bias in
        ``K``) or ``(Vᵀ, U)`` (low rank, the bias with ``U``), then the deep layers (the first one's
        bias in its kernel). The reordered layout does not depend on the batch: a ``432 × 432``
        kernel reordered for 100, 512 or 4,096 rows ran as fast on each of those batches."""
        cross = [(onednn.PackedLinear(k[0].t()),) if len(k) == 1
                 else (onednn.PackedLinear(k[0].t()), onednn.PackedLinear(k[1].t(), k[2]))
                 for k in self.cross]
        return cross, [onednn.PackedLinear(Wt.t(), b) for Wt, b in self.deep]

    @torch.no_grad()
    def __call__(self, x0: torch.Tensor) -> torch.Tensor:
        """Logits from ``x0`` as the model's ``embed`` gives it."""
        n = x0.shape[0]
        self._buffers(n, n)
        self.x0[:n, : self.d] = self._in_order(x0, dim=1)
        return self._run(self.x0[:n])

    @torch.no_grad()
    def score(self, categorical: torch.Tensor, multivalent: torch.Tensor, dense: torch.Tensor,
              chunk: int | None = None) -> torch.Tensor:
        """Logits of a batch of raw inputs (the model's ``forward`` arguments); the layers run on
        ``chunk`` rows at a time (default: all), the lookups on the whole batch. With the slot layout
        one ``index_select`` writes the embeddings into the padded buffer (no concatenation and no
        copy of ``x0``); otherwise ``x0`` comes from the model's ``embed``."""
        n = categorical.shape[0]
        if n == 0:
            return torch.zeros(0, dtype=self.dtype, device=self.device)
        chunk = min(chunk or n, n)
        if self.slots is None:
            x0 = self.embed(categorical, multivalent, dense)
            return torch.cat([self(x0[i : i + chunk]) for i in range(0, n, chunk)])
        table, offsets, w, _ = self.slots
        self._buffers(n, chunk)
        X0, ids, e = self.x0[:n], self.ids[:n], categorical.shape[1] * w
        torch.add(categorical, offsets, out=ids[:, : categorical.shape[1]])
        torch.index_select(table, 0, ids.view(-1), out=X0.view(-1, w))
        X0[:, e : self.d] = dense
        X0[:, self.d] = 1.0
        X0[:, self.d + 1 :] = 0.0
        return torch.cat([self._run(X0[i : i + chunk]) for i in range(0, n, chunk)])

    def _run(self, X0: torch.Tensor) -> torch.Tensor:
        """Logits of the rows of ``X0`` (a view of the padded ``x0`` buffer, at most ``chunk`` rows).
        :attr:`xL` holds the cross network's output (``X0`` without cross layers) afterwards."""
        if self._packed is not None:
            return self._run_onednn(X0)
        n = X0.shape[0]
        X, Y = self.x[:n], self.y[:n]
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
        return self._logit(xl, h)

    def _run_onednn(self, X0: torch.Tensor) -> torch.Tensor:
        """:meth:`_run` with oneDNN's products, ``x0 ⊙ (·)`` and the ReLUs inside them."""
        cross, deep = self._packed
        xl = X0
        for i, kernels in enumerate(cross):
            y = kernels[0](xl, mul=X0) if len(kernels) == 1 else kernels[1](kernels[0](xl), mul=X0)
            xl = y if i == 0 or not self.residual else y.add_(xl)
        h = X0 if self.structure in ("deep_only", "parallel") else xl
        for lin in deep:
            h = lin(h, relu=True)
        return self._logit(xl, h)

    def _logit(self, xl: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        self.xL = xl
        w_x, w_h, b = self.logit
        if w_x is None:
            return torch.addmv(b, h, w_h)
        out = torch.mv(xl, w_x)
        return out.addmv_(h, w_h) if w_h is not None else out
