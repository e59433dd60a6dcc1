"""The embedding layer: ``x0 = [e_1; ...; e_k; x_dense]`` in schema order (Sec. 3).

Each id feature has its own width. Features of the same width share one table
(rows stacked, an offset per feature), so a batch needs one lookup per distinct
width, not one per feature; a multivalent feature is the mean of its ids'
embeddings (``embedding_bag``, padding excluded). The pieces are concatenated
and put in schema order with one precomputed column permutation.

>>> import torch
>>> from dcn_explore.schema import Schema, FeatureSpec
>>> s = Schema([FeatureSpec("a", "categorical", vocab_size=5, embedding_dim=2),
...             FeatureSpec("x", "dense"),
...             FeatureSpec("b", "categorical", vocab_size=7, embedding_dim=3)])
>>> emb = FeatureEmbedding(s)
>>> x0 = emb(torch.tensor([[1, 6]]), torch.zeros(1, 0, 0, dtype=torch.long), torch.tensor([[0.5]])).detach()
>>> x0.shape, float(x0[0, 2]), torch.equal(x0[0, :2], emb.table("a")[1])
(torch.Size([1, 6]), 0.5, True)
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..schema import Schema


def rows_gradient(n_rows: int, ids: torch.Tensor, g: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """The gradient ``(n_rows, w)`` of a table's lookup ``table[ids]``, given the lookup's gradient ``g``
    (``ids.shape + (w,)``, any strides): per row, the sum of the gradient rows that looked it up
    (written into ``out`` when given: a contiguous ``(n_rows, w)`` tensor, e.g. kept from step to step).

    - From a contiguous copy: ``index_add_`` takes its fast path only for a contiguous source
      (measured on the CPU: 6,144 rows of width 34 from a stride-180 gradient, 580 µs strided against
      330 µs copy included).
    - With many lookups per row (small vocabularies: ``8 · n_rows ≤`` lookups), along the last
      dimension of the transposed gradient, several times faster than row by row (18,432 lookups into
      276 rows of width 10: 190 µs against 670 µs).

    Either way the sums are added in the lookups' order, bit for bit the same."""
    w, ids = g.shape[-1], ids.reshape(-1)
    if n_rows * 8 <= ids.numel():
        t = g.new_zeros(w, n_rows).index_add_(1, ids, g.movedim(-1, 0).reshape(w, -1)).mT
        return t.contiguous() if out is None else out.copy_(t)
    out = g.new_zeros(n_rows, w) if out is None else out.zero_()
    return out.index_add_(0, ids, g.reshape(-1, w).contiguous())


def unique_rows(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.unique(ids, sorted=True, return_inverse=True)`` of 1-D non-negative int64 ids.

    On the CPU, when each id shifted left by ``⌈log2 n⌉`` bits still fits in 63 bits, the ids and their
    positions are packed into one int64 key and sorted with numpy's vectorised sort (the sorted keys give
    the distinct ids and, by position, the inverse), several times faster than ``torch.unique``'s
    sort for a batch's lookups (512 × 26 Criteo-shaped ids: 0.26–0.31 ms against 0.73 ms). The result is
    the same, element for element; elsewhere ``torch.unique`` runs.

    >>> unique_rows(torch.tensor([5, 2, 5, 9, 2]))
    (tensor([2, 5, 9]), tensor([1, 0, 1, 2, 0]))
    """
    n = ids.numel()
    bits = max(1, (n - 1).bit_length())
    if (ids.device.type != "cpu" or ids.dtype != torch.int64 or n == 0
            or int(ids.max()) >> (63 - bits) or int(ids.min()) < 0):
        return torch.unique(ids, sorted=True, return_inverse=True)
    key = np.left_shift(ids.numpy(), bits)
    key |= np.arange(n)
    key.sort()
    sorted_ids = key >> bits
    first = np.empty(n, dtype=bool)  # where a new id starts in the sorted order
    first[0] = True
    np.not_equal(sorted_ids[1:], sorted_ids[:-1], out=first[1:])
    inverse = np.empty(n, dtype=np.int64)
    inverse[key & ((1 << bits) - 1)] = np.cumsum(first) - 1
    return torch.from_numpy(sorted_ids[first]), torch.from_numpy(inverse)


class _Rows(torch.autograd.Function):
    """``table[ids]`` (rows of a 2-D table), whose backward is :func:`rows_gradient` (the slices that
    ``cat``'s backward hands back are strided). Used for the batched engine's stacked lookups; a single
    model's 512-row lookups were ~10 % slower per epoch with it (the function's own overhead), so they
    keep ``index_select``."""

    generate_vmap_rule = True  # usable under torch.func transforms (vmap) as well

    @staticmethod
    def forward(table: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return table.index_select(0, ids)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        table, ids = inputs
        ctx.save_for_backward(ids)
        ctx.rows = table.shape[0]

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        (ids,) = ctx.saved_tensors
        return rows_gradient(ctx.rows, ids, g), None


class _SparseRows(torch.autograd.Function):
    """``table[ids]`` whose gradient is row-sparse and already coalesced: the distinct ids (sorted) and
    each distinct row's summed gradient, added with ``index_add_`` over the inverse of :func:`unique_rows`.
    ``F.embedding(..., sparse=True)`` hands back one gradient row per lookup, which clipping and the
    lazy optimizer must coalesce (a sort and a scatter of all rows); this does the same in one sort of
    the ids (measured on the CPU, 512 × 26 Criteo-shaped lookups of width 16: lookup, gradient and
    coalescing 3.8 → 2.3 ms). The sums are the same up to the order of addition."""

    @staticmethod
    def forward(table: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return table.index_select(0, ids.reshape(-1)).view(*ids.shape, table.shape[1])

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        table, ids = inputs
        ctx.save_for_backward(ids)
        ctx.table_shape = table.shape

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        (ids,) = ctx.saved_tensors
        rows, inverse = unique_rows(ids.reshape(-1))
        values = g.new_zeros(rows.numel(), g.shape[-1]).index_add_(0, inverse, g.reshape(-1, g.shape[-1]))
        grad = torch.sparse_coo_tensor(rows.unsqueeze(0), values, ctx.table_shape, is_coalesced=True,
                                       check_invariants=False)
        return grad, None


class FeatureEmbedding(nn.Module):
    def __init__(self, schema: Schema, init_std: float = 0.05):
        super().__init__()
        self.schema = schema
        #: when True, lookups produce sparse row gradients (set by ``fit`` for the lazy-Adam fast path)
        self.sparse_grad = False
        cat = schema.of_kind("categorical")
        mv = schema.of_kind("multivalent")
        self.n_dense = len(schema.of_kind("dense"))
        self.cat_tables = nn.ParameterList()
        self.mv_tables = nn.ParameterList()
        self._cat_groups: list[tuple[int, int]] = []  # (width, n_features) per table
        self._mv_groups: list[tuple[int, int, int]] = []  # (width, n_features, padding row)
        self._where: dict[str, tuple[str, int, int]] = {}  # name -> (kind, table index, row offset)
        blocks: list[tuple[str, int, list[str]]] = []  # (kind, table index, feature names) per piece

        for kind, feats, tables in (("categorical", cat, self.cat_tables), ("multivalent", mv, self.mv_tables)):
            by_width: dict[int, list[int]] = defaultdict(list)
            for pos, f in enumerate(feats):
                by_width[f.width].append(pos)
            for t, (width, positions) in enumerate(sorted(by_width.items())):
                offsets, rows = [], 0
                for pos in positions:
                    offsets.append(rows)
                    self._where[feats[pos].name] = (kind, t, rows)
                    rows += feats[pos].vocab_size
                blocks.append((kind, t, [feats[pos].name for pos in positions]))
                pad = rows  # multivalent: one extra all-zero row for padding
                table = torch.empty(rows + (1 if kind == "multivalent" else 0), width).normal_(0.0, init_std)
                if kind == "multivalent":
                    table[pad].zero_()
                tables.append(nn.Parameter(table))
                prefix = "cat" if kind == "categorical" else "mv"
                self.register_buffer(f"{prefix}_cols_{t}", torch.tensor(positions, dtype=torch.long), persistent=False)
                self.register_buffer(f"{prefix}_offsets_{t}", torch.tensor(offsets, dtype=torch.long), persistent=False)
                if kind == "categorical":
                    self._cat_groups.append((width, len(positions)))
                else:
                    self._mv_groups.append((width, len(positions), pad))
        if self.n_dense:
            blocks.append(("dense", 0, [f.name for f in schema.of_kind("dense")]))
        # pieces concatenated in the order their first features come in the schema: when each piece's
        # features are contiguous there (e.g. all dense features, then all ids of one width), the
        # concatenation already is the schema order and no column permutation of x0 is needed
        position = {n: i for i, n in enumerate(schema.names)}
        blocks.sort(key=lambda blk: position[blk[2][0]])
        self._blocks = [(kind, t) for kind, t, _ in blocks]
        order = [n for _, _, names in blocks for n in names]
        # columns of the concatenation -> schema order
        piece_slices, start = {}, 0
        for name in order:
            w = schema[name].width
            piece_slices[name] = (start, start + w)
            start += w
        perm = torch.cat([torch.arange(*piece_slices[n]) for n in schema.names])
        self.identity_order = bool(torch.equal(perm, torch.arange(schema.d)))
        self.register_buffer("perm", perm, persistent=False)

    def single_table(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(table, offsets)`` when every id feature is categorical and of one width (one table; the
        ids of a batch's ``categorical`` column ``j`` are rows ``ids + offsets[j]``), else ``None``."""
        if len(self._cat_groups) != 1 or self._mv_groups:
            return None
        return self.cat_tables[0], self.cat_offsets_0

    def tables(self) -> list[torch.nn.Parameter]:
        """All embedding tables (the parameters that receive row-sparse gradients)."""
        return list(self.cat_tables) + list(self.mv_tables)

    def table(self, name: str) -> torch.Tensor:
        """The embedding rows of one id feature, ``(vocab_size, width)`` (a view into the shared table)."""
        kind, t, off = self._where[name]
        tables = self.cat_tables if kind == "categorical" else self.mv_tables
        return tables[t][off : off + self.schema[name].vocab_size]

    def forward(self, categorical: torch.Tensor, multivalent: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        """``categorical: (B, n_cat)``, ``multivalent: (B, n_mv, L)``, ``dense: (B, n_dense)`` -> ``x0: (B, d)``."""
        return self.lookup(categorical, multivalent, dense, list(self.cat_tables), list(self.mv_tables))

    def lookup(self, categorical: torch.Tensor, multivalent: torch.Tensor, dense: torch.Tensor,
               cat_tables: list[torch.Tensor], mv_tables: list[torch.Tensor], copies: int = 0,
               reorder: bool = True) -> torch.Tensor:
        """``x0`` from the given tables (this layer's own, or ``copies`` copies of them stacked row-wise,
        copy ``g``'s rows at ``g · rows``: then the output is ``(copies, B, d)``, one ``x0`` per copy, and
        the inputs are one ``(B, ...)`` batch for all copies or ``(copies, B, ...)``, one each).
        ``reorder=False`` keeps the concatenation order instead of the schema order."""
        B = categorical.shape[-2] if categorical.dim() >= 2 else dense.shape[-2]
        lead = (copies, B) if copies else (B,)
        copy = torch.arange(copies, device=dense.device).view(copies, 1, 1) if copies else None
        parts = {}
        for t, (width, n) in enumerate(self._cat_groups):
            table = cat_tables[t]
            # this width's columns of the id matrix (all of them when every id feature has one width)
            cols = categorical.index_select(-1, getattr(self, f"cat_cols_{t}")) if len(self._cat_groups) > 1 else categorical
            ids = cols + getattr(self, f"cat_offsets_{t}")
            if copies:
                ids = ids + copy * (table.shape[0] // copies)
            if self.sparse_grad and torch.is_grad_enabled() and table.requires_grad:
                parts["categorical", t] = _SparseRows.apply(table, ids).reshape(*lead, n * width)
            elif copies and torch.is_grad_enabled() and table.requires_grad:
                # stacked copies: thousands of rows, where the contiguous gradient pays for the function's overhead
                parts["categorical", t] = _Rows.apply(table, ids.reshape(-1)).view(*lead, n * width)
            else:  # same rows; index_select's backward (index_add) beats embedding's on the CPU
                parts["categorical", t] = table.index_select(0, ids.reshape(-1)).view(*lead, n * width)
        for t, (width, n, pad) in enumerate(self._mv_groups):
            table = mv_tables[t]
            sel = multivalent.index_select(-2, getattr(self, f"mv_cols_{t}"))  # (..., n, L)
            ids = sel + getattr(self, f"mv_offsets_{t}")[:, None]
            if copies:
                ids = ids + copy[..., None] * (table.shape[0] // copies)
            # padding (id 0) -> the zero row; with copies, copy 0's zero row for all (excluded from the mean)
            ids = torch.where(sel == 0, pad, ids)
            bag = F.embedding_bag(ids.reshape(-1, ids.shape[-1]), table, mode="mean", padding_idx=pad, sparse=self.sparse_grad)
            parts["multivalent", t] = bag.reshape(*lead, n * width)
        if self.n_dense:
            dtype = next(iter(parts.values())).dtype if parts else dense.dtype
            parts["dense", 0] = dense.to(dtype).expand(*lead, -1)
        pieces = [parts[blk] for blk in self._blocks]
        x0 = torch.cat(pieces, dim=-1) if len(pieces) > 1 else pieces[0]
        return x0 if self.identity_order or not reorder else x0.index_select(-1, self.perm)
