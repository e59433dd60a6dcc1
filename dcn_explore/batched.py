"""Batched sweeps: train several runs of one shape family at once, as one stacked model.

Runs that differ only in their seed and rank (and share everything else: data, structure,
training settings) are trained together: their parameters are stacked along a leading
"member" axis, so every step is one set of batched kernels instead of one per run.

- Full-rank and low-rank cross layers (any structure, with or without a deep network, and DNNs)
  run on a hand-written stacked engine (:class:`_Stack`): one lookup per embedding width for all
  members (each member's tables stacked, ids shifted by member), ``bmm``/``baddbmm`` per layer,
  and the whole cross network as one function with its own backward (:class:`_CrossNet`: the same
  batched matmuls and two element-wise products per layer, fewer passes over the ``(G, B, d)``
  activations than autograd's generic graph; a low-rank layer is kept as ``[Uᵀ; bᵀ]`` and ``Vᵀ``, so its
  bias rides in its factor product and the products take the factors as they are; layer 0 folds
  its residual into the bias, ``x1 = x0 ⊙ (W x0 + b + 1)``).
  It works in the embedding's concatenation order (the parameters are permuted once instead of
  ``x0``'s columns every step). Members are sorted by rank and each rank gets its own stacked
  factors, unpadded (measured against zero-padding neighbouring ranks into one group: ranks 4–32 ×
  3 seeds, 5–8 % faster a step than padding within a factor 4; 12 distinct ranks 2–32, on par with
  a factor 2 and 8 % faster than 4).
- Cross-only models (no multivalent features) train through one fused step (:meth:`_Stack.fused_step`):
  lookup, cross network, logit and loss with their backward in one pass, rank group by rank group,
  every activation in buffers kept from step to step (no allocation, no fresh pages), the lookups
  written straight into ``x0``'s columns from one id array built once per step; no autograd: the
  gradients are written in place into the ``.grad`` of one flat parameter tensor, on which Adam and
  the moving average make one pass (:meth:`_Stack.flatten`); evaluation reuses kept buffers as well.
  (:class:`_CrossOnlyStep` is the same step behind autograd's interface, for tests.)
- Mixture and DCN (vector) layers, or a ``diag_scale``, use ``torch.func``: the stacked state of
  ``stack_module_state`` with the forward ``vmap``-ed over ``functional_call``, lower ranks
  zero-padded.

In the ``vmap`` engine, zero-padded factor columns (and rows/columns of ``C``) get exactly zero
gradients, so they stay zero and each member computes exactly its own ``U Vᵀ``. Everything per
run is kept: each member draws its own batches from its own seed, Adam and the moving average are
elementwise, gradient clipping uses each member's own norm, early stopping picks each member's own
best epoch. The results match one-by-one training up to floating-point reordering (see
``tests/test_batched.py`` for the tolerance). The batched engines train in float32: on CUDA, where
``amp="auto"`` autocasts one-by-one runs to bf16, the two agree only up to bf16 rounding (not
measured: no GPU was available when this was written). Groups whose settings cannot be reproduced this way
(row-sparse embeddings, dropout, the plateau schedule, an embedding L2 term, ``amp=True``) are trained one by one.

>>> import dcn_explore as dx
>>> ds = dx.data.planted_crosses(n_samples=1200, seed=0)
>>> base = dx.DCNConfig(cross="low_rank", rank=2, cross_layers=1, structure="cross_only")
>>> df = dx.sweep(ds, base, {"rank": [2, 4]}, seeds=2, train=dx.TrainConfig(epochs=1, progress=False),
...               batched=True, progress=False)
>>> len(df), sorted(df["rank"].unique().tolist())
(4, [2, 4])
"""

from __future__ import annotations

import json
import math
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd
import torch
import torch.nn.functional as F
from torch.func import functional_call, stack_module_state, vmap

from ._io import write_json_atomic
from .checkpoint import save_checkpoint
from .data.dataset import TabularData
from .errors import TrainingDivergedError
from .model.dcn import DCNv2, combine
from .model.embedding import rows_gradient
from .train import DTYPES, SPARSE_AUTO_MIN_PARAMS, _loss_key, dense_adam, metrics_from_outputs, resolve_device


def group_key(spec: dict) -> str:
    """Runs with the same key can share one stacked model (they differ in seed and rank only)."""
    m = spec["model"].to_dict()
    m.pop("rank")
    t = spec["train"].to_dict()
    for k in ("seed", "progress", "checkpoint"):
        t.pop(k)
    return json.dumps({"model": m, "train": t}, sort_keys=True, default=str)


def can_batch(spec: dict, schema) -> bool:
    cfg, tc = spec["model"], spec["train"]
    if cfg.deep_dropout or tc.lr_schedule == "plateau" or tc.compile or tc.embedding_l2 or tc.amp is True:
        return False
    if tc.sparse_embeddings is True:
        return False
    if tc.sparse_embeddings == "auto":
        emb = sum(f.vocab_size * f.width for f in schema.with_embedding_dims(cfg.embedding_dims) if f.kind != "dense")
        if emb >= SPARSE_AUTO_MIN_PARAMS:
            return False
    return True


def _pad_to_rank(model: DCNv2, rank: int) -> DCNv2:
    """A copy of ``model`` with rank ``rank`` whose extra factor columns are zero (same function)."""
    cfg = model.config
    if cfg.rank is None or cfg.rank == rank:
        return model
    big = DCNv2(model.schema, cfg.replace(rank=rank), task=model.task, seed=0)
    src = model.state_dict()
    with torch.no_grad():
        for name, t in big.state_dict().items():
            s = src[name]
            if s.shape == t.shape:
                t.copy_(s)
                continue
            t.zero_()
            t[tuple(slice(0, n) for n in s.shape)].copy_(s)
    return big


def _skinny(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` for a ``b`` with few columns (a rank below 16), computed as ``(bᵀ aᵀ)ᵀ``: the CPU's
    batched GEMM is several times slower with fewer than 16 output columns than with as few rows
    (measured: ``(3, 512, 180) @ (3, 180, 4)`` 300 µs, transposed 60–75 µs; from rank 16 on the plain
    product is as fast or faster). The result is a transposed view."""
    if b.shape[-1] >= 16 or a.device.type != "cpu":
        return torch.bmm(a, b)
    return torch.bmm(b.mT, a.mT).mT


def _fresh(name: str, like: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(like)


def _layer_stride(layout) -> tuple[int, bool]:
    """Per layer, how many tensors of :class:`_CrossNet`'s flat parameter list it has, and whether the
    first is a separate bias (full rank; a low-rank layer's bias is its ``UT``'s last row)."""
    kind, _, slices, _, has_bias = layout
    low = kind == "low_rank"
    return int(has_bias and not low) + len(slices) * (2 if low else 1), has_bias and not low


def _cross_group_forward(x0c, i: int, layout, params, dst=None, buf=_fresh):
    """Every layer of the cross network for rank group ``i`` (``x0c``: its members' ``x0``); returns the
    output (written into ``dst`` when given) and what the backward needs, per layer. ``buf(name, like)``
    gives the buffer for the activation ``name`` shaped like ``like`` (default: a new tensor)."""
    kind, residual, slices, layers, has_bias = layout
    per, sep = _layer_stride(layout)
    cs, x, saved = slices[i], x0c, []
    for layer in range(layers):
        p = layer * per
        w = p + int(sep)
        # layer 0 with a bias: x1 = x0 ⊙ (W x0 + b + 1), the residual riding in the bias (one pass less here
        # and in the backward, where x0's gradient then needs no separate residual term)
        fold = residual and layer == 0 and has_bias
        if kind == "low_rank":
            ut, vt = params[w + 2 * i], params[w + 2 * i + 1]  # [Uᵀ; bᵀ] (or Uᵀ) and Vᵀ
            h = _skinny(x, vt.mT)
            if has_bias:  # [x V, 1] [Uᵀ; bᵀ]: the bias rides in the product
                h = torch.cat([h, h.new_ones(*h.shape[:2], 1)], dim=-1)
                if fold:
                    ut = ut.clone()
                    ut[:, -1] += 1
            wx = torch.bmm(h, ut, out=buf(f"wx{layer}", x0c))
            saved += [h, ut, vt]
        elif has_bias:
            b = params[p][cs] + 1 if fold else params[p][cs]
            wx = torch.baddbmm(b.unsqueeze(1), x, params[w + i].mT, out=buf(f"wx{layer}", x0c))
        else:
            wx = torch.bmm(x, params[w + i].mT, out=buf(f"wx{layer}", x0c))
        saved += [x, wx]
        out = dst if dst is not None and layer == layers - 1 else buf(f"x{layer + 1}", x0c)
        x = torch.addcmul(x, x0c, wx, out=out) if residual and not fold else torch.mul(x0c, wx, out=out)
    return x, saved


def _cross_group_backward(gc, x0c, acc, i: int, layout, params, saved, grads, own: bool = False, buf=_fresh) -> None:
    """The backward of :func:`_cross_group_forward` for rank group ``i`` given the gradient ``gc`` of its
    output: writes ``x0c``'s gradient into ``acc`` and the parameters' gradients into ``grads`` (a full-rank
    bias's gradient into the group's rows of a tensor the caller made). ``own``: ``gc`` is a buffer the
    caller made, free to overwrite; ``buf`` as in :func:`_cross_group_forward`."""
    kind, residual, slices, layers, has_bias = layout
    low = kind == "low_rank"
    (per, sep), keep = _layer_stride(layout), 5 if low else 2
    cs = slices[i]
    gwx = buf("gwx", x0c)
    for layer in reversed(range(layers)):
        sv = saved[layer * keep : (layer + 1) * keep]
        x, wx = sv[-2], sv[-1]
        p = layer * per
        w = p + int(sep)
        torch.mul(gc, x0c, out=gwx)
        if layer == layers - 1:
            torch.mul(gc, wx, out=acc)
        else:
            acc.addcmul_(gc, wx)
        gx = gc if own else buf("gx", x0c)  # gc is dead once gwx and acc have it
        if low:
            h, ut, vt = sv[:3]
            gh = _skinny(gwx, ut[:, : vt.shape[1]].mT)  # gwx U
            grads[w + 2 * i] = torch.bmm(h.mT, gwx)  # of [Uᵀ; bᵀ]: the bias's gradient is its last row
            grads[w + 2 * i + 1] = _skinny(x.mT, gh).mT  # of Vᵀ
            left, right = gh, vt
        else:
            grads[w + i] = torch.bmm(gwx.mT, x)
            if has_bias:
                torch.sum(gwx, 1, out=grads[p][cs])
            left, right = gwx, params[w + i]
        if layer == 0 and (has_bias or not residual):  # the residual is in wx (see the forward), or there is none
            acc.baddbmm_(left, right)
            return
        if not residual:
            torch.bmm(left, right, out=gx)
        elif own:
            gx.baddbmm_(left, right)
        else:
            torch.baddbmm(gc, left, right, out=gx)
        gc, own = gx, True
    acc.add_(gc)


def _bias_grads(layout, params) -> list[torch.Tensor | None]:
    """The gradient list of :class:`_CrossNet`'s parameters, with the full-rank layers' shared biases'
    tensors made (each rank group writes its rows)."""
    per, sep = _layer_stride(layout)
    grads: list[torch.Tensor | None] = [None] * len(params)
    for layer in range(layout[3] if sep else 0):
        grads[layer * per] = torch.empty_like(params[layer * per])
    return grads


class _CrossNet(torch.autograd.Function):
    """The whole cross network (every layer) for every member at once, with a hand-written backward.

    ``x0: (G, B, d)``; members come in contiguous groups of equal rank (``slices``), each group with
    its own stacked factors; ``params`` per layer: low rank, per group ``UT: (G_k, r_k + 1, d)`` (``[Uᵀ; bᵀ]``;
    ``Uᵀ`` without a bias) and ``VT = Vᵀ: (G_k, r_k, d)``; full rank, the bias ``b: (G, d)`` (when the layers
    have one), then ``W: (G, d, d)``. Forward per layer: ``x_{l+1} = x0 ⊙ (x_l Wᵀ + b) + x_l`` (Eq. 1 / Eq. 2).

    - A low-rank layer's bias rides in its second product as one more factor column
      (``[x V, 1] [Uᵀ; bᵀ]``), so neither the bias nor its gradient costs a pass over the activations, and
      the factors are kept transposed as the products take them (no copies per step).
    - The backward keeps to the batched matmuls and two element-wise products per layer, accumulates
      ``x0``'s gradient in place and writes each layer's input gradient over the buffer it made for the
      layer above (fewer passes and fresh buffers than autograd's generic graph).
    - Each rank group goes through all layers before the next group starts."""

    @staticmethod
    def forward(ctx, x0, layout, *params):
        out, saved = torch.empty_like(x0), []
        for i, cs in enumerate(layout[2]):
            saved += _cross_group_forward(x0[cs], i, layout, params, dst=out[cs])[1]
        ctx.layout, ctx.n_params = layout, len(params)
        ctx.save_for_backward(x0, *params, *saved)
        return out

    @staticmethod
    def backward(ctx, g):
        layout = ctx.layout
        x0, *rest = ctx.saved_tensors
        params, saved = rest[: ctx.n_params], rest[ctx.n_params :]
        n = len(saved) // len(layout[2])
        grads = _bias_grads(layout, params)
        g = g.contiguous()
        gx0 = torch.empty_like(x0)
        for i, cs in enumerate(layout[2]):
            _cross_group_backward(g[cs], x0[cs], gx0[cs], i, layout, params, saved[i * n : (i + 1) * n], grads)
        return (gx0, None, *grads)


def _buffer(workspace: dict, name: str, shape, like: torch.Tensor) -> torch.Tensor:
    """The workspace's tensor ``name`` of ``shape`` (made on first use, with ``like``'s dtype and device)."""
    key = (name, tuple(shape), like.dtype, like.device)
    t = workspace.get(key)
    if t is None:
        t = workspace[key] = like.new_empty(shape)
    return t


def _lookup_into(x0: torch.Tensor, categorical, dense, plan, tables) -> list[torch.Tensor | None]:
    """Write the stacked members' ``x0: (G, B, d)`` in place: each id feature's rows straight into its
    columns (no pieces to concatenate). ``categorical``/``dense`` are ``(G, B, ·)`` or one ``(B, ·)``
    batch for all members; ``plan`` and ``tables`` as in :class:`_CrossOnlyStep`. Returns per piece the
    table rows looked up, ``(n, G B)`` (the piece's ``n`` features, rows in ``x0``'s order; ``None`` for the
    dense piece)."""
    pieces, cols, shift = plan
    G, B, d = x0.shape
    flat = x0.view(G * B, d)
    # every feature's table rows at once, feature-major: its id + its row offset in its table + member x rows
    if len(cols):
        ids_fm = categorical.movedim(-1, 0).index_select(0, cols).view(len(cols), -1, B)  # (features, G or 1, B)
        rows = torch.add(ids_fm, shift).view(len(cols), G * B)
    ids, col = [], 0
    for piece in pieces:
        if piece[0] == "dense":
            x0[..., col : col + dense.shape[-1]] = dense
            col += dense.shape[-1]
            ids.append(None)
            continue
        _, t, first, n, width = piece
        table = tables[t].view(-1, width)
        for j in range(n):
            torch.index_select(table, 0, rows[first + j], out=flat[:, col + j * width : col + (j + 1) * width])
        col += n * width
        ids.append(rows[first : first + n])
    return ids


def _fused_step(categorical, dense, label, task, workspace, plan, layout, n_tables, w, b, *rest, table_grads=None):
    """The per-member loss ``(G,)`` of :class:`_CrossOnlyStep` and the gradients of ``(w, b, *rest)`` (of the
    summed loss), computed together. ``table_grads``: contiguous tensors (e.g. the tables' ``.grad``) to
    write the tables' gradients into (and return) instead of new ones."""
    tables, params = rest[:n_tables], rest[n_tables:]
    G, B = label.shape
    d = w.shape[-1]
    x0 = _buffer(workspace, "x0", (G, B, d), w)
    ids = _lookup_into(x0, categorical, dense, plan, tables)
    grads = _bias_grads(layout, params)
    gx0 = _buffer(workspace, "gx0", (G, B, d), w)
    gw, gb, logits = torch.empty_like(w), torch.empty_like(b), x0.new_empty(G, B)

    def buf(name: str, like: torch.Tensor) -> torch.Tensor:
        return _buffer(workspace, name, like.shape, like)

    for i, cs in enumerate(layout[2]):
        x0c = x0[cs]
        out, saved = _cross_group_forward(x0c, i, layout, params, buf=buf)
        logit = torch.baddbmm(b[cs].unsqueeze(-1), out, w[cs].mT, out=logits[cs].unsqueeze(-1)).squeeze(-1)  # (G_k, B)
        y = label[cs]
        dlogit = (torch.sigmoid(logit) - y) / B if task == "binary" else (logit - y) * (2.0 / B)
        torch.bmm(dlogit.unsqueeze(1), out, out=gw[cs])
        torch.sum(dlogit, 1, keepdim=True, out=gb[cs])
        gc = torch.mul(dlogit.unsqueeze(-1), w[cs], out=buf("gc", x0c))  # the outer product dlogit wᵀ
        _cross_group_backward(gc, x0c, gx0[cs], i, layout, params, saved, grads, own=True, buf=buf)
    # every member's loss at once (its gradient, per group above, needs no loss value)
    if task == "binary":
        loss = F.binary_cross_entropy_with_logits(logits, label, reduction="none").mean(1)
    else:
        loss = F.mse_loss(logits, label, reduction="none").mean(1)
    gflat, gtables, col = gx0.view(G * B, d), [None] * n_tables, 0
    for piece, r in zip(plan[0], ids):
        if piece[0] == "dense":
            col += dense.shape[-1]
            continue
        t, n, width = piece[1], piece[3], piece[4]
        shape = tables[t].shape
        g = gflat[:, col : col + n * width].view(-1, n, width).transpose(0, 1)  # (n, G B, width), as r
        if table_grads is not None:
            gtables[t] = table_grads[t]
            rows_gradient(G * shape[1], r, g, out=gtables[t].view(-1, width))
        else:
            gtables[t] = rows_gradient(G * shape[1], r, g).view(shape)
        col += n * width
    return loss, (gw, gb, *gtables, *grads)


class _CrossOnlyStep(torch.autograd.Function):
    """The per-member training loss ``(G,)`` of cross-only models (embedding lookup, cross network,
    logit layer, loss), forward and backward in one pass.

    The loss's gradient is known as soon as a rank group's logits are, so each group runs its forward,
    its loss and its backward while its ``(G_k, B, d)`` activations are still in the cache, instead of
    all groups' forward, then all groups' backward; every activation (``x0`` and its gradient included)
    lives in ``workspace``, a dict kept from one step to the next, so a step neither allocates nor
    first-touches fresh pages for them (on the CPU the stacked step is bound by memory traffic: a
    2-epoch fit of 12 members with fresh buffers took 50–90k page faults and 3.4–4.2 s, the same fit
    with glibc told never to hand memory back 3.0–3.6 s, three alternating pairs). The lookups write straight into ``x0``'s columns (no
    concatenation) and their backward adds ``x0``'s gradient into the tables' rows. The gradients are
    computed in the forward and scaled by the incoming per-member gradient (ones for
    ``loss.sum().backward()``).

    ``categorical: (G, B, n_cat)``, ``dense: (G, B, n_dense)``, ``label: (G, B)``; ``task``: "binary"
    (mean binary cross-entropy on logits) or "regression" (mean squared error); ``plan``: how ``x0``
    is built (:meth:`_Stack._lookup_plan`); ``rest``: the stacked tables ``(G, rows, width)``
    (``n_tables`` of them), then the cross network's parameters as :class:`_CrossNet` takes them;
    ``members``: the members (a slice) each of ``w, b, *rest`` holds."""

    @staticmethod
    def forward(ctx, categorical, dense, label, task, workspace, plan, layout, members, n_tables, w, b, *rest):
        loss, ctx.grads = _fused_step(categorical, dense, label, task, workspace, plan, layout, n_tables, w, b, *rest)
        ctx.members = members
        return loss

    @staticmethod
    def backward(ctx, g):
        grads, ctx.grads = ctx.grads, None
        if not bool((g == 1).all()):  # scale each member's gradients by its own loss's gradient
            grads = tuple(t * g[m].view(-1, *([1] * (t.dim() - 1))) for t, m in zip(grads, ctx.members))
        return (None, None, None, None, None, None, None, None, None, *grads)


class _Logit(torch.autograd.Function):
    """``h wᵀ + b`` per member (``h: (G, B, k)``, ``w: (G, 1, k)``, ``b: (G, 1)`` -> ``(G, B)``). Its backward
    is an outer product and a row-vector product: autograd's generic backward of a width-1 ``bmm`` is
    several times slower on the CPU."""

    @staticmethod
    def forward(ctx, h, w, b):
        ctx.save_for_backward(h, w)
        return torch.baddbmm(b.unsqueeze(-1), h, w.mT).squeeze(-1)

    @staticmethod
    def backward(ctx, g):
        h, w = ctx.saved_tensors
        return g.unsqueeze(-1) * w, torch.bmm(g.unsqueeze(1), h), g.sum(1, keepdim=True)


class _Stack:
    """The parameters of ``G`` member models stacked along a leading member axis.

    ``params[name]`` is a list of tensors; tensor ``i`` holds the members ``slices[name][i]`` (one
    tensor for all members, except rank-dependent factors in the hand-written engine: one per rank
    group). Per-member quantities (gradient norms, the L2 term) are therefore ``(G,)`` vectors."""

    def __init__(self, models: list[DCNv2], device, dtype):
        self.G = len(models)
        self.models = models
        cfg = models[0].config
        ranks = [m.config.rank for m in models]
        # the hand-written engine: full/low-rank layers (any structure), or no cross network at all
        self.fast = cfg.cross in ("full", "low_rank") or not cfg.has_cross
        self.fast = self.fast and not (cfg.has_cross and cfg.diag_scale)
        # the hand-written engine keeps a low-rank layer as ``UT = [Uᵀ; bᵀ]`` (r + 1, d) and ``VT = Vᵀ`` (r, d) per
        # member: the products take them as they are (no transposed copies, no bias concatenated every step)
        # and the gradient of ``[Uᵀ; bᵀ]`` is one product
        self._low = self.fast and cfg.has_cross and cfg.cross == "low_rank"
        for m in models:
            m.to(device=device, dtype=dtype)
        self.params: dict[str, list[torch.Tensor]] = {}
        self.slices: dict[str, list[slice]] = {}
        if self.fast:
            # members are sorted by rank; each run of equal ranks stacks its own factors
            groups, start = [], 0
            for i in range(1, self.G + 1):
                if i == self.G or ranks[i] != ranks[start]:
                    groups.append(slice(start, i))
                    start = i
            states = [m.state_dict() for m in models]
            self._basis = self._basis_dims(models[0]) if not models[0].embedding.identity_order else {}
            if self._basis:  # work in the embedding's concatenation order: no column shuffle of x0 per step
                inv = torch.argsort(models[0].embedding.perm)
                states = [{k: self._permute(k, v, inv) for k, v in st.items()} for st in states]
                self._perm = models[0].embedding.perm
            for name in states[0]:
                if self._factor(name) is not None:  # low-rank factors: stored transposed, one tensor per rank group
                    if name.endswith(".U"):
                        pre = name[: -len("U")]
                        self.slices[pre + "UT"] = self.slices[pre + "VT"] = groups
                        self.params[pre + "UT"] = [self._stacked(states[s], lambda st: self._ut_rows(st, pre)) for s in groups]
                        self.params[pre + "VT"] = [self._stacked(states[s], lambda st: st[pre + "V"].T) for s in groups]
                    continue
                self.slices[name] = [slice(0, self.G)]
                self.params[name] = [torch.stack([st[name] for st in states]).requires_grad_()]
        else:
            self._basis = {}
            rank = max(r or 0 for r in ranks) or None
            padded = [(_pad_to_rank(m, rank) if rank else m).to(device=device, dtype=dtype) for m in models]
            stacked, self._buffers = stack_module_state(padded)
            self._template = padded[0]
            for name, t in stacked.items():
                self.params[name] = [t]
                self.slices[name] = [slice(0, self.G)]

            def one(p, b, cat, mv, dense):
                return functional_call(self._template, (p, b), (cat, mv, dense))

            self._vmapped = {False: vmap(one, in_dims=(0, 0, 0, 0, 0)), True: vmap(one, in_dims=(0, 0, None, None, None))}
        self.names = list(self.params)
        kernels = {id(k) for k in models[0].cross_kernels()}  # the weights under the L2 term (Sec. 3.4)
        kernel_names = [k for k, p in models[0].named_parameters() if id(p) in kernels]
        if self._low:  # U's rows of UT (not the bias row: kernels()) and VT
            kernel_names = [k + "T" for k in kernel_names]
        self.kernel_names = kernel_names
        self._emb = models[0].embedding
        self._members = torch.arange(self.G, device=device)
        self._workspace: dict = {}  # activation buffers of the fused cross-only step, kept across steps
        self._plan: tuple | None = None  # how the fused step and the evaluation build x0 (_lookup_plan)
        self._grad_blocks: list = []  # after flatten(): the flat gradient's member-major blocks, with their members
        self._flat: torch.Tensor | None = None  # the flat leaf over every tensor, after flatten()

    def _factor(self, name: str) -> str | None:
        """``"U"``, ``"V"`` or ``"b"`` for a low-rank cross layer's model tensor kept in ``UT``/``VT``, else None."""
        if not self._low or not name.startswith("cross.layers."):
            return None
        last = name.rsplit(".", 1)[1]
        return last if last in ("U", "V", "b") else None

    @staticmethod
    def _ut_rows(state: dict, pre: str) -> torch.Tensor:
        """``[Uᵀ; bᵀ]`` of one member's layer (``Uᵀ`` when the layer has no bias)."""
        rows = [state[pre + "U"].T]
        return torch.cat(rows + [state[pre + "b"].unsqueeze(0)] if pre + "b" in state else rows)

    @staticmethod
    def _stacked(states: list[dict], part: Callable[[dict], torch.Tensor]) -> torch.Tensor:
        return torch.stack([part(st) for st in states]).requires_grad_()

    @staticmethod
    def _basis_dims(model: DCNv2) -> dict[str, list[int]]:
        """Which dimensions of which parameters index ``x0``'s columns (the first ``d`` entries of them)."""
        cfg, dims = model.config, {}
        for i in range(cfg.cross_layers if cfg.has_cross else 0):
            pre = f"cross.layers.{i}."
            dims.update({pre + "W": [0, 1], pre + "U": [0], pre + "V": [0], pre + "b": [0]})
        if cfg.has_deep:
            dims["deep.net.0.weight"] = [1]
        if cfg.structure in ("cross_only", "parallel"):
            dims["logit.weight"] = [1]
        return dims

    def _permute(self, name: str, t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """``t`` with the first ``d`` entries of each of its x0-indexed dimensions reordered by ``idx``."""
        d = idx.numel()
        for dim in self._basis.get(name, []):
            full = torch.cat([idx, torch.arange(d, t.shape[dim])]).to(t.device)
            t = t.index_select(dim, full)
        return t

    def tensors(self) -> list[torch.Tensor]:
        return [t for k in self.names for t in self.params[k]]

    def kernels(self, grads: bool = False) -> list[torch.Tensor]:
        """The tensors under the L2 term (or their gradients), as views: ``UT`` without its bias row."""
        out = []
        for k in self.kernel_names:
            for j, t in enumerate(self.params[k]):
                v = t.grad if grads else t.detach()
                if k.endswith(".UT") and v is not None:
                    v = v[:, : self.params[k[: -len("UT")] + "VT"][j].shape[1]]
                out.append(v)
        return out

    def norms(self, names, grads: bool = False, squared: bool = False) -> torch.Tensor:
        """``(G,)``: per member, the 2-norm of the named tensors together (or of their gradients), as
        ``clip_grad_norm_`` takes it: the norm of the per-tensor norms; ``squared``: its square.
        ``names=None``: the L2 term's kernels (:meth:`kernels`)."""
        norms, members = [], []
        if grads and self._flat is not None and names == self.names:  # every gradient: one norm per block
            pairs = self._grad_blocks
        elif names is None:
            pairs = zip(self.kernels(grads), (s for k in self.kernel_names for s in self.slices[k]))
        else:
            pairs = ((t.grad if grads else t.detach(), s) for k in names for t, s in zip(self.params[k], self.slices[k]))
        for v, s in pairs:
            if v is not None:
                norms.append(torch.linalg.vector_norm(v.flatten(1), dim=1))
                members.append(self._members[s])
        out = torch.zeros(self.G, device=self._members.device)
        if norms:
            out = out.to(norms[0].dtype).index_add_(0, torch.cat(members), torch.cat(norms).square())
        return out if squared else out.sqrt()

    def scale_grads(self, coef: torch.Tensor) -> None:
        """Multiply member ``g``'s gradients by ``coef[g]``."""
        pairs = self._grad_blocks if self._flat is not None else (  # one scaling per block of the flat gradient
            (t.grad, s) for k in self.names for t, s in zip(self.params[k], self.slices[k]))
        for g, s in pairs:
            if g is not None:
                g.mul_(coef[s].view(-1, *([1] * (g.dim() - 1))))

    def member_state(self, values: dict[str, list[torch.Tensor]], g: int) -> dict[str, torch.Tensor]:
        """Member ``g``'s parameters, in its own model's names and shapes."""
        out = {}
        for name, ref in self.models[g].state_dict().items():
            part = self._factor(name)
            key = name if part is None else name[: -len(part)] + ("VT" if part == "V" else "UT")
            for t, s in zip(values[key], self.slices[key]):
                if s.start <= g < s.stop:
                    v = t[g - s.start]
                    if part is not None:  # UT = [Uᵀ; bᵀ], VT = Vᵀ
                        v = v[-1] if part == "b" else (v[: ref.shape[1]] if part == "U" else v).T
                    v = v[tuple(slice(0, n) for n in ref.shape)].detach()
                    out[name] = (self._permute(name, v, self._perm) if self._basis else v).clone()
        return out

    def forward(self, categorical, multivalent, dense, shared: bool = False,
                params: dict[str, list[torch.Tensor]] | None = None) -> torch.Tensor:
        """Logits ``(G, B)`` with ``params`` (default: the trained ones; e.g. their moving average);
        inputs are ``(G, B, ...)`` (each member its own batch) or, with ``shared``, one ``(B, ...)``
        batch for every member."""
        p = self.params if params is None else params
        if not self.fast:
            return self._vmapped[shared]({k: v[0] for k, v in p.items()}, self._buffers, categorical, multivalent, dense)
        return self._head(self._x0(categorical, multivalent, dense, p), p)

    @property
    def fused_loss(self) -> bool:
        """Whether :meth:`loss` runs the whole step of cross-only models with ids and dense features
        (no multivalent ones) as one pass (:class:`_CrossOnlyStep`)."""
        cfg = self.models[0].config
        return self.fast and cfg.structure == "cross_only" and cfg.has_cross and not self._emb._mv_groups

    def loss(self, categorical, multivalent, dense, label: torch.Tensor) -> torch.Tensor:
        """Per-member mean training loss ``(G,)`` of a batch ``(G, B, ...)`` with the trained parameters."""
        task = self.models[0].task
        if not self.fused_loss:
            out = self.forward(categorical, multivalent, dense)
            if task == "binary":
                return F.binary_cross_entropy_with_logits(out, label, reduction="none").mean(1)
            return F.mse_loss(out, label, reduction="none").mean(1)
        layout, tensors, members = self._fused_inputs()
        return _CrossOnlyStep.apply(categorical, dense, label, task, self._workspace, self._lookup_plan(), layout, members,
                                    len(self._emb._cat_groups), *tensors)

    def _fused_inputs(self) -> tuple[tuple, list[torch.Tensor], list[slice]]:
        """The fused step's cross-network layout, its tensors (``w, b``, the tables, then the cross
        network's as :class:`_CrossNet` takes them) and the members (a slice) each tensor holds."""
        p = self.params
        names = ["logit.weight", "logit.bias", *(f"embedding.cat_tables.{t}" for t in range(len(self._emb._cat_groups)))]
        layout, flat, members = self._cross_layout(p)
        return layout, [t for k in names for t in p[k]] + flat, [s for k in names for s in self.slices[k]] + members

    def fused_step(self, categorical, dense, label: torch.Tensor) -> torch.Tensor:
        """The fused step without autograd (:attr:`fused_loss` models): returns the per-member losses
        ``(G,)`` and leaves the gradient of their sum in every tensor's ``.grad``, overwritten in place
        (the tables' written there, the cross network's copied in: a few small copies instead of the
        autograd engine, its per-tensor accumulation and fresh table-sized gradients every step). Call
        it instead of :meth:`loss` + ``backward()``, without zeroing or dropping the gradients in between."""
        layout, tensors, _ = self._fused_inputs()
        n_tables = len(self._emb._cat_groups)
        for t in tensors:
            if t.grad is None:
                t.grad = torch.zeros_like(t)
        with torch.no_grad():
            loss, grads = _fused_step(categorical, dense, label, self.models[0].task, self._workspace, self._lookup_plan(),
                                      layout, n_tables, *tensors, table_grads=[t.grad for t in tensors[2 : 2 + n_tables]])
            for t, g in zip(tensors, grads):
                if g is not t.grad:
                    t.grad.copy_(g)
        return loss

    def flatten(self) -> torch.Tensor:
        """Move every tensor into one flat buffer (the tensors become views of it, their ``.grad`` views of
        one flat gradient buffer) and return a leaf over the whole buffer whose ``.grad`` is that gradient
        buffer: for :meth:`fused_step`, which writes the gradients in place, so that the optimizer and
        the moving average make one pass over one tensor instead of one per tensor (the fused Adam on
        the 28 tensors of a 12-member stack: 760 µs a step, on one tensor of the same size 370 µs).

        The buffer is a sequence of member-major blocks ``(members, per-member size)``: each embedding
        table alone (the lookups need it contiguous), and the other tensors of the same members
        together (a rank group's factors of every layer; the logit layer), so that gradient clipping
        takes one norm and one scaling per block instead of per tensor."""
        blocks: dict = {}
        for k in self.names:
            for j, (t, sl) in enumerate(zip(self.params[k], self.slices[k])):
                key = (k,) if k.startswith("embedding.") else (sl.start, sl.stop)
                blocks.setdefault(key, []).append((k, j, t))
        ts = self.tensors()
        flat = ts[0].new_empty(sum(t.numel() for t in ts))
        grad = torch.zeros_like(flat)
        self._grad_blocks, off = [], 0
        for members in blocks.values():
            n, size = members[0][2].shape[0], sum(t[0].numel() for _, _, t in members)
            region, gregion, col = flat[off : off + n * size].view(n, size), grad[off : off + n * size].view(n, size), 0
            self._grad_blocks.append((gregion, self.slices[members[0][0]][members[0][1]]))
            for k, j, t in members:
                v = region[:, col : col + t[0].numel()].view(t.shape)
                v.copy_(t.detach())
                v.requires_grad_()
                v.grad = gregion[:, col : col + t[0].numel()].view(t.shape)
                self.params[k][j] = v
                col += t[0].numel()
            off += n * size
        leaf = flat.detach().requires_grad_()
        leaf.grad = grad
        self._flat = leaf
        return leaf

    def optimized(self) -> list[torch.Tensor]:
        """The tensors an optimizer updates: the flat leaf after :meth:`flatten`, else :meth:`tensors`."""
        return [self._flat] if self._flat is not None else self.tensors()

    def values_like(self, tensors: list[torch.Tensor]) -> dict[str, list[torch.Tensor]]:
        """``tensors`` shaped like :meth:`optimized` (e.g. their moving average) as ``params`` is: per name,
        one tensor per member slice (views into the flat tensor after :meth:`flatten`)."""
        if self._flat is None:
            it = iter(tensors)
            return {k: [next(it) for _ in self.params[k]] for k in self.names}
        # the same views of another tensor shaped like the buffer (the buffer's own storage starts at 0)
        return {k: [tensors[0].as_strided(t.shape, t.stride(), t.storage_offset()) for t in self.params[k]] for k in self.names}

    def _lookup_plan(self) -> tuple[list[tuple], torch.Tensor, torch.Tensor]:
        """How :func:`_lookup_into` builds ``x0``: its column blocks in the concatenation order
        (``("categorical", table, first feature, features, width)`` or ``("dense",)``), the categorical
        columns in that order, and per such feature and member the shift of its ids to its rows in the
        member-stacked table: ``(features, G, 1)`` (the feature's offset in its table + member x rows)."""
        if self._plan is None:
            emb, pieces, cols, shift = self._emb, [], [], []
            members = self._members.view(-1, 1)
            for kind, t in emb._blocks:
                if kind == "dense":
                    pieces.append(("dense",))
                    continue
                c, off = getattr(emb, f"cat_cols_{t}"), getattr(emb, f"cat_offsets_{t}")
                rows = self.params[f"embedding.cat_tables.{t}"][0].shape[1]
                pieces.append(("categorical", t, len(cols), c.numel(), emb._cat_groups[t][0]))
                cols += c.tolist()
                shift += [o + members * rows for o in off.tolist()]
            dev = self._members.device
            self._plan = (pieces, torch.tensor(cols, dtype=torch.long, device=dev),
                            torch.stack(shift) if shift else torch.zeros(0, self.G, 1, dtype=torch.long, device=dev))
        return self._plan

    def _x0(self, categorical, multivalent, dense, p: dict[str, list[torch.Tensor]]) -> torch.Tensor:
        emb = self._emb
        if not torch.is_grad_enabled() and not emb._mv_groups:  # evaluation: x0 in a kept buffer
            ref = p["logit.weight"][0]
            x0 = _buffer(self._workspace, "eval:x0", (self.G, categorical.shape[-2], emb.perm.numel()), ref)
            _lookup_into(x0, categorical, dense.to(ref.dtype), self._lookup_plan(),
                         [p[f"embedding.cat_tables.{t}"][0] for t in range(len(emb._cat_groups))])
            return x0
        flat = [[t[0].reshape(-1, t[0].shape[-1]) for t in (p[f"embedding.{kind}_tables.{i}"] for i in range(n))]
                for kind, n in (("cat", len(emb._cat_groups)), ("mv", len(emb._mv_groups)))]
        # with a permuted basis the parameters already are in the concatenation order
        return emb.lookup(categorical, multivalent, dense, *flat, copies=self.G, reorder=False)

    def _cross_layout(self, p: dict[str, list[torch.Tensor]]) -> tuple[tuple, list[torch.Tensor], list[slice]]:
        """The cross network's layout and flat parameter list, as :class:`_CrossNet` takes them, and the
        members (a slice) each tensor of that list holds."""
        cfg = self.models[0].config
        flat, members, low = [], [], cfg.cross == "low_rank"
        has_bias = cfg.cross_bias
        factors = ("UT", "VT") if low else ("W",)
        for i in range(cfg.cross_layers):
            pre = f"cross.layers.{i}."
            if has_bias and not low:
                flat += p[pre + "b"]
                members += self.slices[pre + "b"]
            for group, sl in zip(zip(*(p[pre + f] for f in factors)), self.slices[pre + factors[0]]):
                flat += group
                members += [sl] * len(group)
        slices = self.slices.get("cross.layers.0.UT", [slice(0, self.G)])
        return (cfg.cross, cfg.cross_residual, slices, cfg.cross_layers, has_bias), flat, members

    def _head(self, x0: torch.Tensor, p: dict[str, list[torch.Tensor]]) -> torch.Tensor:
        m, cfg = self.models[0], self.models[0].config

        def cross(x):
            layout, flat, _ = self._cross_layout(p)
            if torch.is_grad_enabled():
                return _CrossNet.apply(x, layout, *flat)
            # evaluation: nothing kept for a backward, every activation in a kept buffer
            out = _buffer(self._workspace, "eval:cross", x.shape, x)
            for i, cs in enumerate(layout[2]):
                _cross_group_forward(x[cs], i, layout, flat, dst=out[cs],
                                     buf=lambda name, like: _buffer(self._workspace, "eval:" + name, like.shape, like))
            return out

        def deep(h):
            for j, mod in enumerate(m.deep.net):
                if isinstance(mod, torch.nn.Linear):
                    w, b = p[f"deep.net.{j}.weight"][0], p[f"deep.net.{j}.bias"][0]
                    h = torch.baddbmm(b.unsqueeze(1), h, w.mT)
                elif isinstance(mod, torch.nn.ReLU):
                    h = h.relu()
            return h

        w, b = p["logit.weight"][0], p["logit.bias"][0]
        return _Logit.apply(combine(cfg.structure, x0, cross, deep), w, b)


def fit_batched(train: TabularData, val: TabularData, specs: Sequence[dict]) -> list[dict]:
    """Train the runs of one group together; returns per run ``model``, ``history``, ``best_epoch``, ``train_time_s``."""
    order = sorted(range(len(specs)), key=lambda i: specs[i]["model"].rank or 0)  # equal ranks side by side
    specs = [specs[i] for i in order]
    cfg0, tc = specs[0]["model"], specs[0]["train"]
    G = len(specs)
    device = resolve_device(tc.device)
    dtype = DTYPES[tc.dtype]
    task = train.task
    models = [DCNv2(train.schema, s["model"], task=task, seed=s["seed"]) for s in specs]
    stack = _Stack(models, device, dtype)
    names = stack.names
    fused = stack.fused_loss
    if fused:  # the fused step writes the gradients in place: one flat tensor for the optimizer and the average
        stack.flatten()
    tensors = stack.optimized()
    opt = dense_adam(tensors, tc.lr)
    n = len(train)
    steps_per_epoch = math.ceil(n / tc.batch_size)
    total_steps = steps_per_epoch * tc.epochs if tc.max_steps is None else min(tc.max_steps, steps_per_epoch * tc.epochs)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, total_steps)) if tc.lr_schedule == "cosine" else None
    gens = [torch.Generator().manual_seed(s["train"].seed) for s in specs]
    tr, va = train.to(device), val.to(device)
    ema = None
    ema_updates = 0
    key = _loss_key(task)

    def evaluate_members(values: dict[str, list[torch.Tensor]]) -> list[dict]:
        outs = []
        with torch.no_grad():
            chunk = min(tc.eval_batch_size, tc.batch_size)  # G stacked copies: keep them cache-sized
            for i in range(0, len(va), chunk):
                b = va.batch(slice(i, i + chunk))
                outs.append(stack.forward(b.categorical, b.multivalent, b.dense.to(dtype), shared=True, params=values).float())
        logits = torch.cat(outs, dim=1).cpu()
        return [metrics_from_outputs(logits[g], va.label.cpu(), task) for g in range(G)]

    l2_kernels = stack.kernels() if tc.l2 > 0 else []  # views: updated in place, fixed from step to step

    histories: list[list[dict]] = [[] for _ in range(G)]
    best = [{"value": math.inf, "epoch": 0, "state": None} for _ in range(G)]
    bad = [0] * G
    active = [True] * G
    step = 0
    start = time.perf_counter()
    for epoch in range(1, tc.epochs + 1):
        perms = [torch.randperm(n, generator=g).to(device) for g in gens]
        loss_sums = torch.zeros(G, dtype=torch.float64)
        seen = 0
        for i in range(0, n, tc.batch_size):
            if tc.max_steps is not None and step >= tc.max_steps:
                break
            idx = torch.stack([p[i : i + tc.batch_size] for p in perms])  # (G, B)
            b = tr.batch(idx)
            if fused:  # losses and gradients in one pass, no autograd graph
                per = stack.fused_step(b.categorical, b.dense.to(dtype), b.label.to(dtype))  # (G,)
            else:
                per = stack.loss(b.categorical, b.multivalent, b.dense.to(dtype), b.label.to(dtype))  # (G,)
            total = per.detach()
            if l2_kernels:  # λ Σ‖W‖²: its value for the check below, its gradient 2λW added after backward
                with torch.no_grad():
                    total = total + tc.l2 * stack.norms(None, squared=True)
            bad_members = ~torch.isfinite(total)
            if bool(bad_members.any()):
                g = int(bad_members.nonzero()[0])
                raise TrainingDivergedError(
                    f"batched run {order[g]} (seed {specs[g]['seed']}, {specs[g]['model'].label()}): loss became "
                    f"{float(total[g])} at step {step + 1} (epoch {epoch}); last good metrics: "
                    f"{histories[g][-1] if histories[g] else 'none (diverged in the first epoch)'}")
            if not fused:
                opt.zero_grad(set_to_none=True)
                per.sum().backward()
            if l2_kernels:
                with torch.no_grad():
                    torch._foreach_add_(stack.kernels(grads=True), l2_kernels, alpha=2 * tc.l2)
            if tc.clip_norm is not None:
                with torch.no_grad():
                    stack.scale_grads((tc.clip_norm / (stack.norms(names, grads=True) + 1e-6)).clamp(max=1.0))
            opt.step()
            if sched is not None:
                sched.step()
            if tc.ema_decay:
                ema_updates += 1
                with torch.no_grad():
                    if ema is None:
                        ema_tensors = [t.detach().clone() for t in tensors]
                        ema = stack.values_like(ema_tensors)
                    else:
                        m_ = ema_updates
                        d = min(tc.ema_decay, (1 + m_) / (10 + m_)) if tc.ema_warmup else tc.ema_decay
                        torch._foreach_lerp_(ema_tensors, [t.detach() for t in tensors], 1.0 - d)
            loss_sums += per.detach().double().cpu() * idx.shape[1]
            seen += idx.shape[1]
            step += 1
        current = ema if ema is not None else {k: [t.detach() for t in stack.params[k]] for k in names}
        metrics = evaluate_members(current)
        elapsed = time.perf_counter() - start
        for g in range(G):
            if not active[g]:
                continue
            row = {"epoch": epoch, "step": step, "train_loss": float(loss_sums[g]) / max(seen, 1),
                   "val_loss": metrics[g][key], **{f"val_{k}": v for k, v in metrics[g].items()},
                   "lr": opt.param_groups[0]["lr"], "time_s": elapsed}
            histories[g].append(row)
            if row["val_loss"] < best[g]["value"]:
                best[g] = {"value": row["val_loss"], "epoch": epoch, "state": stack.member_state(current, g)}
                bad[g] = 0
            else:
                bad[g] += 1
            if tc.early_stopping is not None and bad[g] >= tc.early_stopping:
                active[g] = False
        if not any(active) or (tc.max_steps is not None and step >= tc.max_steps):
            break
    elapsed = time.perf_counter() - start
    results: list[dict | None] = [None] * G  # in the callers' order
    last = {k: [t.detach() for t in stack.params[k]] for k in names}
    for g, m in enumerate(models):
        m.load_state_dict(best[g]["state"] if best[g]["state"] is not None else stack.member_state(last, g))
        m.to(device=device, dtype=dtype).eval()
        results[order[g]] = {"model": m, "history": pd.DataFrame(histories[g]), "best_epoch": best[g]["epoch"],
                             "train_time_s": elapsed / G, "device": str(device), "group_size": G}
    return results


def sweep_batched(data: TabularData, specs: Sequence[dict], results_dir=None, split=(0.8, 0.1, 0.1), split_seed: int = 0,
                  top_k: int = 10, progress: bool = True, callback: Callable[[dict], Any] | None = None) -> pd.DataFrame:
    """``dx.sweep(..., batched=True)``: like the one-by-one sweep (same records, same resume rules), but
    each group of compatible runs is trained as one stacked model."""
    from .sweep import _row, data_fingerprint, make_record, read_record, run_id, run_one

    tr, va, te = data.split(split, seed=split_seed)
    fp = data_fingerprint(data)
    out_dir = Path(results_dir) / "runs" if results_dir is not None else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    ids = [run_id(fp, s["model"], s["train"], s["seed"], split, split_seed) for s in specs]
    found = {i: read_record(out_dir / f"{rid}.json" if out_dir is not None else None) for i, rid in enumerate(ids)}
    records: dict[int, dict] = {i: r for i, r in found.items() if r is not None}
    reused: set[int] = set(records)
    groups: OrderedDict[str, list[int]] = OrderedDict()
    for i, s in enumerate(specs):
        if i not in records:
            groups.setdefault(group_key(s) if can_batch(s, data.schema) else f"single-{i}", []).append(i)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(specs), desc="sweep (batched)", unit="run")
        bar.update(len(records))
    rows: dict[int, dict] = {}

    def finish(i: int, rec: dict) -> None:
        rec["run_id"] = ids[i]
        if out_dir is not None and i not in reused:
            write_json_atomic(out_dir / f"{ids[i]}.json", rec)
        row = _row(rec, specs[i]["point"])
        row["reused"] = i in reused
        rows[i] = row
        if bar is not None:
            bar.update(1)
        if callback is not None:
            callback(row)

    for i in sorted(records):
        records[i]["run_id"] = ids[i]
        row = _row(records[i], specs[i]["point"])
        row["reused"] = True
        rows[i] = row
    try:
        for key, members in groups.items():
            if key.startswith("single-") or len(members) == 1:
                for i in members:
                    ck = str(out_dir / f"{ids[i]}.pt") if out_dir is not None else None
                    finish(i, run_one(tr, va, te, specs[i], top_k=top_k, checkpoint=ck))
                continue
            results = fit_batched(tr, va, [specs[i] for i in members])
            for i, res in zip(members, results):
                m = res["model"]
                if out_dir is not None:
                    save_checkpoint(out_dir / f"{ids[i]}.pt", m, specs[i]["train"], res["history"])
                rec = make_record(specs[i], m, res["history"], res["best_epoch"], res["train_time_s"], res["device"], va, te,
                                  top_k, batched_group_size=res["group_size"])
                finish(i, rec)
    finally:
        if bar is not None:
            bar.close()
    return pd.DataFrame([rows[i] for i in sorted(rows)])
