"""The training forward and backward of a stack of full-rank cross layers (Eq. 1) in one autograd node.

Used by :meth:`DCNv2._padded_head <dcn_explore.model.dcn.DCNv2._padded_head>` when every cross layer is
a :class:`~dcn_explore.model.cross.FullCross` with its bias and residual and no diagonal scale (the
paper's layer, the default). ``x0`` arrives padded from ``d`` to ``P`` columns, the padding set to 1:

- the bias rides in the products: each layer's padded kernel ``Wp: (P, P)`` holds ``W`` in
  ``[:d, :d]`` and ``b`` in column ``d``, zeros elsewhere, so ``x_l Wpᵀ = x_l Wᵀ + b`` (``x_l``'s column
  ``d`` stays 1 through every layer, ``Wp``'s rows from ``d`` on being 0), and ``b``'s gradient is
  column ``d`` of ``W``'s padded gradient product: no bias broadcast before the product, no sum after;
- the backward is written out: per layer the two element-wise products the math needs
  (``g ⊙ x0`` and ``g ⊙ u``, the latter accumulated into ``x0``'s gradient in place) and the two
  products, the residual's gradient added inside the input-gradient product. Autograd's generic
  graph also multiplies both factors of each ``addcmul`` by its scalar ``value`` and adds the
  residual's gradient in a separate pass.

The padded kernels live in one buffer per layer that each forward overwrites (only ``[:d, :d]`` and
column ``d``); ``W`` and ``b`` are saved for the backward, so an in-place change to them between the
forward and the backward (an optimizer step) raises autograd's usual error rather than giving wrong
gradients. Outputs and gradients equal the autograd path's up to float rounding
(``tests/test_fused.py``).
"""

from __future__ import annotations

import torch

#: off: the plain layers (autograd's graph) everywhere; for comparisons
ENABLED = True


def usable(layers, x0: torch.Tensor) -> bool:
    """Whether :func:`full_cross_stack` computes ``layers`` here: full-rank layers with bias and residual
    and no diagonal scale, outside autocast and ``torch.compile`` (which take the plain layers)."""
    if not layers or any(L.kind != "full" or L.b is None or not L.residual or L.diag_scale for L in layers):
        return False
    if torch.is_autocast_enabled(x0.device.type) or torch.compiler.is_compiling():
        return False
    return x0.dtype in (torch.float32, torch.float64)


def _padded_kernel(layer, P: int, like: torch.Tensor) -> torch.Tensor:
    """The layer's ``(P, P)`` buffer (made zero on first use for this width, dtype and device), with the
    current ``W`` and ``b`` written into it."""
    W, b, d = layer.W, layer.b, layer.d
    buf = getattr(layer, "_padded_kernel_buffer", None)
    if buf is None or buf.shape != (P, P) or buf.dtype != like.dtype or buf.device != like.device:
        buf = like.new_zeros(P, P)
        layer._padded_kernel_buffer = buf
    with torch.no_grad():
        buf[:d, :d].copy_(W)
        buf[:d, d].copy_(b)
    return buf


class _FullCrossStack(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x0p, d, kernels, *params):
        xl, xs, us = x0p, [], []
        for l, Wp in enumerate(kernels):
            u = torch.mm(xl, Wp.t())  # x_l Wᵀ + b (the bias from the 1 column)
            xs.append(xl)
            us.append(u)
            xl = torch.addcmul(xl, x0p, u)
        ctx.d, ctx.kernels, ctx.n = d, kernels, len(kernels)
        ctx.save_for_backward(x0p, *params, *xs, *us)
        return xl

    @staticmethod
    def backward(ctx, g):
        d, kernels, n = ctx.d, ctx.kernels, ctx.n
        x0p, *rest = ctx.saved_tensors
        xs, us = rest[2 * n : 3 * n], rest[3 * n :]
        grads: list[torch.Tensor | None] = [None] * (2 * n)
        gx0 = None
        own = False  # whether g is a buffer made here (then the input gradient is added into it in place)
        for l in reversed(range(n)):
            gu = g * x0p
            if gx0 is None:
                gx0 = g * us[l]
            else:
                gx0.addcmul_(g, us[l])
            gWp = torch.mm(gu.t(), xs[l])
            grads[2 * l], grads[2 * l + 1] = gWp[:d, :d], gWp[:d, d]
            g = g.addmm_(gu, kernels[l]) if own else torch.addmm(g, gu, kernels[l])
            own = True
        gx0.add_(g)  # x0 is also the first layer's x_l
        return (gx0, None, None, *grads)


def full_cross_stack(layers, x0p: torch.Tensor, d: int) -> torch.Tensor:
    """``x_L`` of the full-rank cross ``layers`` for ``x0p: (B, P)``, ``x0`` padded from ``d`` to ``P > d``
    columns with ones (see the module docstring); ``x_L``'s padding columns come out as ones."""
    P = x0p.shape[-1]
    if P <= d:
        raise ValueError(f"full_cross_stack: x0p has {P} columns; expected more than d={d} (a padding column for the bias)")
    kernels = [_padded_kernel(L, P, x0p) for L in layers]
    params = [t for L in layers for t in (L.W, L.b)]
    return _FullCrossStack.apply(x0p, d, kernels, *params)
