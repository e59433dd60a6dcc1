"""oneDNN's matrix products for scoring on the CPU, with their weights reordered once.

:class:`~dcn_explore.model.scoring.Scorer` runs its products here instead of through the BLAS
(``torch.mm``, MKL in PyTorch's x86 builds) when :func:`cpu_matmul` says ``"onednn"``. Each
product is PyTorch's own oneDNN linear (``torch.ops.mkldnn._linear_pointwise``, what Inductor's
CPU backend emits for ``nn.Linear``): the weight is reordered into the blocked layout of oneDNN's
kernel once, when the scorer is built, and the element-wise step that follows a product runs inside
it (``x0 ⊙ (W x_l + b)`` for a cross layer, the ReLU for a deep layer). The results equal the BLAS
products up to float rounding.

Which one, by ``DCNX_CPU_MATMUL``:

- ``auto`` (default): oneDNN where PyTorch's CPU kernels run with AVX-512
  (``torch.backends.cpu.get_cpu_capability()``) and ``x0`` is at least :data:`AUTO_MIN_WIDTH`
  wide, the BLAS elsewhere. Measured on a 2-core AMD EPYC with AVX-512 (Zen 4), ``predict`` of the
  Criteo-shaped models paired against the BLAS scorer (two runs of ``benchmarks/scoring_matmul.py``
  and two of its prototype): full rank 1.18–1.31× at batch 512 and 1.10–1.31× at 16,384, rank 64
  1.11–1.17× and 1.09–1.27×, deep only 1.16–1.21× and 1.15–1.34×. With oneDNN held to AVX2 on the
  same machine (``ONEDNN_MAX_CPU_ISA=AVX2``) it was 1.06× (full rank) and 1.00× (rank 64), and on an AVX2-only
  Zen 3 machine a lone ``512 × 432 × 432`` product through oneDNN measured slower than MKL's
  (96–127 against 126–139 GFLOP/s), hence the BLAS there.
- ``onednn``: oneDNN wherever its operators work (a warning and the BLAS where they do not).
- ``blas``: always the BLAS.

The choice is made once per process and width (:func:`cpu_matmul`; ``cpu_matmul.cache_clear()``
reads the variable again) and only for float32 models on the CPU; other devices and dtypes use
``torch.mm``.
"""

from __future__ import annotations

import functools
import os
import warnings

import torch

from ..errors import ConfigError

ENV = "DCNX_CPU_MATMUL"
CHOICES = ("auto", "onednn", "blas")


@functools.lru_cache(maxsize=1)
def onednn_unusable() -> str | None:
    """``None`` when PyTorch's oneDNN linear operators run and agree with ``F.linear`` on a small
    case, else why not."""
    if not torch.backends.mkldnn.is_available():
        return "this PyTorch build has no oneDNN (torch.backends.mkldnn.is_available() is False)"
    ops = torch.ops.mkldnn
    if not (hasattr(ops, "_linear_pointwise") and hasattr(ops, "_reorder_linear_weight")):
        return "this PyTorch has no torch.ops.mkldnn._linear_pointwise / _reorder_linear_weight"
    g = torch.Generator().manual_seed(0)
    x, w, b, m = (torch.randn(*s, generator=g) for s in ((8, 16), (12, 16), (12,), (8, 12)))
    try:
        lin = PackedLinear(w, b, rows=8)
        got = (lin(x), lin(x, relu=True), lin(x, mul=m))
    except Exception as e:  # noqa: BLE001 - any failure of an internal operator means: do not use it
        return f"oneDNN linear failed: {type(e).__name__}: {e}"
    ref = torch.nn.functional.linear(x, w, b)
    if not all(torch.allclose(a, r, rtol=1e-5, atol=1e-5) for a, r in zip(got, (ref, ref.relu(), ref * m))):
        return "oneDNN linear disagrees with torch.nn.functional.linear"
    return None


#: under ``auto``, products over a padded width under this stay on the BLAS: on models of width
#: 134 and 180 (MovieLens-100K, the planted crosses) oneDNN measured 0.93–1.36× the BLAS, slower for
#: one-layer cross-only models at batch 512, against 1.09–1.34× at the Criteo shape's 432; below
#: it the notebooks' and tests' models (widths 134 and 180) also keep the numerics they had
AUTO_MIN_WIDTH = 256


@functools.lru_cache(maxsize=None)
def cpu_matmul(width: int = AUTO_MIN_WIDTH) -> str:
    """``"onednn"`` or ``"blas"``: the products :class:`~dcn_explore.model.scoring.Scorer` uses for a
    float32 model on the CPU whose padded ``x0`` is ``width`` wide, by ``DCNX_CPU_MATMUL`` (module
    docstring; ``auto`` also keeps widths under :data:`AUTO_MIN_WIDTH` on the BLAS). Read once per
    width; ``cpu_matmul.cache_clear()`` reads the variable again. Raises
    :class:`~dcn_explore.errors.ConfigError` for a value other than ``auto``, ``onednn`` or ``blas``."""
    want = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if want not in CHOICES:
        raise ConfigError(f"environment variable {ENV}={os.environ[ENV]!r}: expected one of {', '.join(CHOICES)}")
    if want == "blas":
        return "blas"
    if want == "auto" and (width < AUTO_MIN_WIDTH or torch.backends.cpu.get_cpu_capability() != "AVX512"):
        return "blas"
    why = onednn_unusable()
    if why is not None:
        if want == "onednn":
            warnings.warn(f"{ENV}=onednn: {why}; scoring with the BLAS products instead", RuntimeWarning, stacklevel=2)
        return "blas"
    return "onednn"


class PackedLinear:
    """``x Wᵀ + b`` for ``weight: (out, in)`` by oneDNN, the weight reordered once for batches of
    about ``rows`` rows (other batch sizes work too). ``relu=True`` applies the ReLU and ``mul=t``
    multiplies by ``t: (B, out)`` element-wise, both inside the product's kernel. The weight is a
    copy: later changes to ``weight`` are not seen."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, rows: int = 512) -> None:
        self.weight = torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), rows)
        self.bias = None if bias is None else bias.detach().contiguous()

    def __call__(self, x: torch.Tensor, relu: bool = False, mul: torch.Tensor | None = None) -> torch.Tensor:
        if mul is not None:
            if relu:
                raise ValueError("PackedLinear: relu and mul cannot be combined")
            return torch.ops.mkldnn._linear_pointwise.binary(x, mul, self.weight, self.bias, "mul")
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "relu" if relu else "none", [None], "")
