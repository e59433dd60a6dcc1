"""The training forward and backward of the full-rank cross stack (Eq. 1) and of the deep network,
each in one autograd node with a hand-written backward.

Used by :meth:`DCNv2._padded_head <dcn_explore.model.dcn.DCNv2._padded_head>` (the padded training
forward of wide models, ``d >= TRAIN_PAD_MIN_D``): the cross stack when every layer is a
:class:`~dcn_explore.model.cross.FullCross` with its bias and residual and no diagonal scale (the
paper's layer, the default), the deep network when it is Linear + ReLU layers without dropout.
``x0`` then arrives padded from ``d`` to ``P`` columns, the padding set to 1:

- the cross layers' biases ride in the products: each layer's padded kernel ``Wp: (P, P)`` holds ``W``
  in ``[:d, :d]`` and ``b`` in column ``d``, zeros elsewhere, so ``x_l Wpᵀ = x_l Wᵀ + b`` (``x_l``'s
  column ``d`` stays 1 through every layer, ``Wp``'s rows from ``d`` on being 0), and ``b``'s gradient
  is column ``d`` of ``W``'s padded gradient product: no bias broadcast before the product, no sum after;
- the cross backward does per layer the two element-wise products the math needs (``g ⊙ x0`` and
  ``g ⊙ u``, the latter accumulated into ``x0``'s gradient in place) and the two products, the
  residual's gradient added inside the input-gradient product. Autograd's generic graph also
  multiplies both factors of each ``addcmul`` by its scalar ``value`` and adds the residual's gradient
  in a separate pass;
- the deep network's first weight is padded with zero columns (so it ignores the padding's values),
  and each layer's product, bias and ReLU are one call;
- float32 on the CPU: the forward and input-gradient products go through oneDNN's linear
  (``torch.ops.mkldnn._linear_pointwise``, the addition and the ReLU inside its kernel) where
  :func:`~dcn_explore.model.onednn.cpu_matmul` picks oneDNN (AVX-512 hosts), the BLAS elsewhere; the
  weight-gradient products stay on the BLAS. On a 2-core Zen 4 host lone ``512 x 432 x 432`` products
  took 0.92-1.01 ms through oneDNN against 1.08-1.25 ms through the BLAS, weight gradients 1.27-1.51
  against 1.12-1.40 ms.

The padded kernels live in one buffer per layer that each forward overwrites; the parameters are
saved for the backward, so an in-place change to them between the forward and the backward (an
optimizer step) raises autograd's usual error rather than giving wrong gradients. Outputs and
gradients equal the plain graph's up to float rounding (``tests/test_fused.py``). Measured on the
Criteo-shaped full-rank model (paired, this host): forward + backward 1.06-1.07x, ``dx.fit`` 1.047x
per round (16 rounds of 40 steps) against the plain graph.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from . import onednn

#: off: the plain layers (autograd's graph) everywhere; for comparisons
ENABLED = True


def _eager_float(x: torch.Tensor) -> bool:
    """``x`` is float32/float64 and no autocast, ``torch.compile`` or ``torch.func`` transform (``vmap``,
    as in the batched sweep engine, ``grad``, ...) is active: the nodes below are plain autograd
    Functions, which those do not take."""
    if torch.is_autocast_enabled(x.device.type) or torch.compiler.is_compiling():
        return False
    if torch._C._are_functorch_transforms_active():  # what autograd.Function.apply itself asks
        return False
    return x.dtype in (torch.float32, torch.float64)


def usable(layers, x0: torch.Tensor) -> bool:
    """Whether :func:`full_cross_stack` computes ``layers`` here: :data:`ENABLED`, full-rank layers with
    bias and residual and no diagonal scale, outside autocast, ``torch.compile`` and ``torch.func``
    transforms (which take the plain layers)."""
    if not ENABLED or not layers or any(L.kind != "full" or L.b is None or not L.residual or L.diag_scale for L in layers):
        return False
    return _eager_float(x0)


def _zero_buffer(owner, attr: str, shape: tuple[int, int], like: torch.Tensor) -> torch.Tensor:
    """``owner.<attr>``: a buffer of ``shape`` with ``like``'s dtype and device, made zero when missing or
    of another shape, dtype or device (later writes keep to the same entries, so the rest stays 0)."""
    buf = getattr(owner, attr, None)
    if buf is None or buf.shape != shape or buf.dtype != like.dtype or buf.device != like.device:
        buf = like.new_zeros(shape)
        setattr(owner, attr, buf)
    return buf


def _padded_kernel(layer, P: int, like: torch.Tensor) -> torch.Tensor:
    """The layer's ``(P, P)`` buffer with the current ``W`` and ``b`` written into it."""
    buf, d = _zero_buffer(layer, "_padded_kernel_buffer", (P, P), like), layer.d
    with torch.no_grad():
        buf[:d, :d].copy_(layer.W)
        buf[:d, d].copy_(layer.b)
    return buf


def _mm_t(a: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """``a Wᵀ``."""
    return torch.mm(a, W.t())


def _mm_add(a: torch.Tensor, W: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """``a W + c``."""
    return torch.addmm(c, a, W)


def _mm_t_bias_relu(a, W, b):
    """``ReLU(a Wᵀ + b)``."""
    return torch.addmm(b, a, W.t()).relu_()


def _dnn_mm_t(a, W):
    return torch.ops.mkldnn._linear_pointwise(a, W, None, "none", [None], "")


def _dnn_mm_t_bias_relu(a, W, b):
    return torch.ops.mkldnn._linear_pointwise(a, W, b, "relu", [None], "")


def _dnn_mm_add(a, W, c):
    return torch.ops.mkldnn._linear_pointwise.binary(a, c, W.t(), None, "add")


def products(x: torch.Tensor):
    """``(a, W ↦ a Wᵀ;  a, W, c ↦ a W + c;  a, W, b ↦ ReLU(a Wᵀ + b))`` for activations like ``x``:
    oneDNN's linear where :func:`~dcn_explore.model.onednn.cpu_matmul` picks it for float32 on the CPU
    at ``x``'s width (the weight given as it is, not reordered: it changes every step; the addition
    and the ReLU inside its kernel), else the BLAS. Weight gradients ``gᵀ a`` stay on the BLAS, which
    was as fast for them."""
    if x.device.type == "cpu" and x.dtype == torch.float32 and onednn.cpu_matmul(x.shape[-1]) == "onednn":
        return _dnn_mm_t, _dnn_mm_add, _dnn_mm_t_bias_relu
    return _mm_t, _mm_add, _mm_t_bias_relu


class _FullCrossStack(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x0p, d, kernels, *params):
        xl, xs, us = x0p, [], []
        mm_t, ctx.mm_add, _ = products(x0p)
        for l, Wp in enumerate(kernels):
            u = mm_t(xl, Wp)  # x_l Wᵀ + b (the bias from the 1 column)
            xs.append(xl)
            us.append(u)
            xl = torch.addcmul(xl, x0p, u)
        ctx.d, ctx.kernels = d, kernels
        ctx.save_for_backward(x0p, *params, *xs, *us)
        return xl

    @staticmethod
    @once_differentiable  # the padded kernels are copies: a second derivative through them would be wrong
    def backward(ctx, g):
        d, kernels, n = ctx.d, ctx.kernels, len(ctx.kernels)
        x0p, *rest = ctx.saved_tensors
        xs, us = rest[2 * n : 3 * n], rest[3 * n :]
        grads: list[torch.Tensor | None] = [None] * (2 * n)
        gx0 = None
        for l in reversed(range(n)):
            gu = g * x0p
            if gx0 is None:
                gx0 = g * us[l]
            else:
                gx0.addcmul_(g, us[l])
            gWp = torch.mm(gu.t(), xs[l])
            grads[2 * l], grads[2 * l + 1] = gWp[:d, :d], gWp[:d, d]
            g = ctx.mm_add(gu, kernels[l], g)
        gx0.add_(g)  # x0 is also the first layer's x_l
        return (gx0, None, None, *grads)


def _padded_weight(lin, P: int, like: torch.Tensor) -> torch.Tensor:
    """``lin``'s ``(out, P)`` buffer: its weight in the first ``in`` columns, zeros after them."""
    W = lin.weight
    buf = _zero_buffer(lin, "_padded_weight_buffer", (W.shape[0], P), like)
    with torch.no_grad():
        buf[:, : W.shape[1]].copy_(W)
    return buf


def usable_mlp(deep, h: torch.Tensor) -> bool:
    """Whether :func:`relu_mlp` computes the deep network ``deep`` here: :data:`ENABLED`, Linear + ReLU
    layers only (no dropout), outside autocast, ``torch.compile`` and ``torch.func`` transforms."""
    mods = list(deep.net)
    if not ENABLED or not mods or len(mods) % 2 or not all(
            isinstance(a, torch.nn.Linear) and isinstance(r, torch.nn.ReLU) for a, r in zip(mods[::2], mods[1::2])):
        return False
    return _eager_float(h)


class _ReluMLP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, d, first, *params):
        mm_t, _, relu_lin = products(h)
        ins, outs = [], []
        for i in range(len(params) // 2):
            W, b = (first if i == 0 else params[2 * i]), params[2 * i + 1]
            ins.append(h)
            h = relu_lin(h, W, b)
            outs.append(h)
        ctx.d, ctx.first, ctx.mm_t = d, first, mm_t
        ctx.save_for_backward(*params, *ins, *outs)
        return h

    @staticmethod
    @once_differentiable  # the padded kernels are copies: a second derivative through them would be wrong
    def backward(ctx, g):
        n = len(ctx.saved_tensors) // 4
        params, ins, outs = ctx.saved_tensors[: 2 * n], ctx.saved_tensors[2 * n : 3 * n], ctx.saved_tensors[3 * n :]
        grads: list[torch.Tensor | None] = [None] * (2 * n)
        for i in reversed(range(n)):
            g = torch.ops.aten.threshold_backward(g, outs[i], 0)
            gW = torch.mm(g.t(), ins[i])
            grads[2 * i], grads[2 * i + 1] = (gW[:, : ctx.d] if i == 0 else gW), g.sum(0)
            if i or ctx.needs_input_grad[0]:
                W = ctx.first if i == 0 else params[2 * i]
                g = ctx.mm_t(g, W.t())  # g W
        return (g if ctx.needs_input_grad[0] else None, None, None, *grads)


def relu_mlp(deep, h: torch.Tensor, d: int) -> torch.Tensor:
    """The deep network's output for ``h: (B, P)``, its first ``d`` columns the network's input and the
    rest padding (any values: the first layer's padded weight columns are 0), in one autograd node:
    each layer's product, bias and ReLU in one call, the backward written out."""
    lins = list(deep.net)[::2]
    first = _padded_weight(lins[0], h.shape[-1], h)
    params = [t for lin in lins for t in (lin.weight, lin.bias)]
    return _ReluMLP.apply(h, d, first, *params)


def full_cross_stack(layers, x0p: torch.Tensor, d: int) -> torch.Tensor:
    """``x_L`` of the full-rank cross ``layers`` for ``x0p: (B, P)``, ``x0`` padded from ``d`` to ``P > d``
    columns with ones (see the module docstring); ``x_L``'s padding columns come out as ones."""
    P = x0p.shape[-1]
    if P <= d:
        raise ValueError(f"full_cross_stack: x0p has {P} columns; expected more than d={d} (a padding column for the bias)")
    kernels = [_padded_kernel(L, P, x0p) for L in layers]
    params = [t for L in layers for t in (L.W, L.b)]
    return _FullCrossStack.apply(x0p, d, kernels, *params)
