"""Cross layers (Sec. 3): one class per variant, parameters named after the math.

Shapes: ``x0, x_l: (B, d)``; every layer returns ``x_{l+1}: (B, d)``.
Each layer also exposes the matrices needed to read what it learned
(:mod:`dcn_explore.crosses`).

>>> import torch
>>> layer = FullCross(4)
>>> x0 = torch.randn(2, 4)
>>> torch.allclose(layer(x0, x0), x0 * (x0 @ layer.W.T + layer.b) + x0)
True
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATION_FNS = {
    "identity": lambda z: z,
    "relu": F.relu,
    "tanh": torch.tanh,
    "hard_tanh": F.hardtanh,
}


def he_normal_(t: torch.Tensor, fan_in: int) -> torch.Tensor:
    """He-normal initialisation ``N(0, 2 / fan_in)`` (Sec. 7.1: kernels He-normal, biases 0)."""
    with torch.no_grad():
        return t.normal_(0.0, math.sqrt(2.0 / fan_in))


class CrossLayer(nn.Module):
    """Common parts: the bias ``b_l``, the residual ``+ x_l`` and the diagonal scale."""

    kind = "base"

    def __init__(self, d: int, bias: bool = True, residual: bool = True, diag_scale: float = 0.0):
        super().__init__()
        self.d = d
        self.residual = residual
        self.diag_scale = float(diag_scale)
        self.b = nn.Parameter(torch.zeros(d)) if bias else None

    def _bias(self, pad: int = 0) -> torch.Tensor | None:
        """``b``, with ``pad`` zeros after it (for inputs padded with zero columns)."""
        return self.b if self.b is None or not pad else F.pad(self.b, (0, pad))

    def _finish(self, x0: torch.Tensor, xl: torch.Tensor, wx: torch.Tensor, bias_added: bool = False) -> torch.Tensor:
        # x_{l+1} = x0 ⊙ (W x_l + b + α x_l) + x_l; multiply and residual add fused in one addcmul
        if self.diag_scale:
            wx = wx + self.diag_scale * xl
        if self.b is not None and not bias_added:
            wx = wx + self.b
        return torch.addcmul(xl, x0, wx) if self.residual else x0 * wx

    def kernels(self) -> list[torch.Tensor]:
        """The weights the paper's L2 term ``λ Σ‖W_l‖²`` applies to (Sec. 3.4)."""
        raise NotImplementedError

    def effective_matrices(self) -> torch.Tensor:
        """``(E, d, d)``: the cross matrix of each expert (``E = 1`` unless a mixture)."""
        raise NotImplementedError

    def flops(self) -> int:
        """Multiply-adds ×2 per example."""
        raise NotImplementedError


class FullCross(CrossLayer):
    """Eq. 1: ``x_{l+1} = x0 ⊙ (W x_l + b) + x_l`` with ``W: (d, d)``."""

    kind = "full"

    def __init__(self, d: int, **kw):
        super().__init__(d, **kw)
        self.W = nn.Parameter(he_normal_(torch.empty(d, d), d))

    def forward(self, x0: torch.Tensor, xl: torch.Tensor, pad: int = 0) -> torch.Tensor:
        """``pad``: ``x0`` and ``x_l`` carry that many zero columns after ``d`` (``W`` is padded to match)."""
        W = F.pad(self.W, (0, pad, 0, pad)) if pad else self.W
        return self._finish(x0, xl, F.linear(xl, W, self._bias(pad)), bias_added=True)  # W x_l + b in one addmm

    def kernels(self):
        return [self.W]

    def effective_matrices(self):
        return self.W.detach()[None] + self.diag_scale * torch.eye(self.d, device=self.W.device)[None]

    def flops(self):
        return 2 * self.d * self.d + 3 * self.d


class LowRankCross(CrossLayer):
    """Eq. 2: ``x_{l+1} = x0 ⊙ (U (Vᵀ x_l) + b) + x_l`` with ``U, V: (d, r)``."""

    kind = "low_rank"

    def __init__(self, d: int, rank: int, **kw):
        super().__init__(d, **kw)
        self.rank = rank
        self.U = nn.Parameter(he_normal_(torch.empty(d, rank), rank))
        self.V = nn.Parameter(he_normal_(torch.empty(d, rank), d))

    def forward(self, x0, xl, pad: int = 0):
        """``pad``: as :meth:`FullCross.forward` (``U`` and ``V`` get zero rows)."""
        U, V = (F.pad(self.U, (0, 0, 0, pad)), F.pad(self.V, (0, 0, 0, pad))) if pad else (self.U, self.V)
        return self._finish(x0, xl, F.linear(xl @ V, U, self._bias(pad)), bias_added=True)

    def kernels(self):
        return [self.U, self.V]

    def effective_matrices(self):
        W = self.U.detach() @ self.V.detach().T
        return W[None] + self.diag_scale * torch.eye(self.d, device=W.device)[None]

    def flops(self):
        return 4 * self.d * self.rank + 3 * self.d


class MixtureCross(CrossLayer):
    """Eq. 3 and 4: ``x_{l+1} = Σ_i G_i(x_l) E_i(x_l) + x_l`` with
    ``E_i(x_l) = x0 ⊙ (U_i g(C_i g(V_iᵀ x_l)) + b)``.

    ``U, V: (K, d, r)``, ``C: (K, r, r)`` (initialised to the identity, so a fresh
    identity-activation expert computes ``U_i V_iᵀ``), gate ``G: (d, K)`` (``x_lᵀ G``
    gives the gate logits; ``"constant"`` means ``G_i ≡ 1``). All experts are
    evaluated with two dense matmuls (``x_l V`` over the concatenated ``V_i``, and
    the gate-weighted projections through the concatenated ``U_i``) plus a batched
    ``r×r`` product for ``C``.
    """

    kind = "mixture"

    def __init__(self, d: int, rank: int, experts: int, gate: str = "softmax", activation: str = "identity", **kw):
        super().__init__(d, **kw)
        self.rank, self.experts, self.gate_kind, self.activation = rank, experts, gate, activation
        self.g = ACTIVATION_FNS[activation]
        self.U = nn.Parameter(he_normal_(torch.empty(experts, d, rank), rank))
        self.V = nn.Parameter(he_normal_(torch.empty(experts, d, rank), d))
        self.C = nn.Parameter(torch.eye(rank).repeat(experts, 1, 1))
        self.G = nn.Parameter(he_normal_(torch.empty(d, experts), d)) if gate != "constant" else None

    def gate_weights(self, xl: torch.Tensor) -> torch.Tensor:
        """``(B, K)`` gate values ``G_i(x_l)``."""
        if self.G is None:
            return xl.new_ones(xl.shape[0], self.experts)
        logits = xl @ self.G
        return torch.softmax(logits, dim=-1) if self.gate_kind == "softmax" else torch.sigmoid(logits)

    def expert_hidden(self, xl: torch.Tensor) -> torch.Tensor:
        """``(B, K, r)``: ``g(C_i g(V_iᵀ x_l))`` for every expert."""
        B, K, r = xl.shape[0], self.experts, self.rank
        v = xl @ self.V.permute(1, 0, 2).reshape(self.d, K * r)  # (B, K*r)
        v = self.g(v).view(B, K, r)
        if K == 1:
            h = v @ self.C[0].T
        else:
            h = torch.einsum("bkr,ksr->bks", v, self.C)
        return self.g(h)

    def forward(self, x0, xl):
        B, K, r = xl.shape[0], self.experts, self.rank
        gates = self.gate_weights(xl)  # (B, K)
        h = self.expert_hidden(xl) * gates.unsqueeze(-1)  # (B, K, r)
        wx = h.reshape(B, K * r) @ self.U.permute(0, 2, 1).reshape(K * r, self.d)  # Σ_i G_i U_i h_i
        if self.diag_scale:
            wx = wx + self.diag_scale * gates.sum(-1, keepdim=True) * xl
        if self.b is not None:
            wx = wx + (self.b if self.G is None and K == 1 else gates.sum(-1, keepdim=True) * self.b)
        return torch.addcmul(xl, x0, wx) if self.residual else x0 * wx

    def kernels(self):
        return [self.U, self.V, self.C]

    def effective_matrices(self):
        """``U_i C_i V_iᵀ`` per expert: exact for identity activations (see ``crosses`` for Eq. 4 Jacobians)."""
        W = self.U.detach() @ self.C.detach() @ self.V.detach().transpose(1, 2)
        return W + self.diag_scale * torch.eye(self.d, device=W.device)[None]

    def flops(self):
        K, r, d = self.experts, self.rank, self.d
        gate = 2 * d * K if self.G is not None else 0
        return K * (4 * d * r + 2 * r * r) + gate + 4 * d


class VectorCross(CrossLayer):
    """DCN (v1): ``x_{l+1} = x0 (x_lᵀ w) + b + x_l`` — Eq. 1 with ``W = 1 wᵀ``, bias added outside
    ``x0 ⊙ (·)`` as in the original DCN."""

    kind = "vector"

    def __init__(self, d: int, **kw):
        super().__init__(d, **kw)
        self.w = nn.Parameter(he_normal_(torch.empty(d), d))

    def forward(self, x0, xl):
        out = x0 * (xl @ self.w).unsqueeze(-1)
        if self.diag_scale:
            out = out + self.diag_scale * x0 * xl
        if self.b is not None:
            out = out + self.b
        return out + xl if self.residual else out

    def kernels(self):
        return [self.w]

    def effective_matrices(self):
        W = torch.ones(self.d, 1, device=self.w.device) @ self.w.detach()[None]
        return W[None] + self.diag_scale * torch.eye(self.d, device=W.device)[None]

    def flops(self):
        return 5 * self.d


class CrossNetwork(nn.Module):
    """``cross_layers`` cross layers applied in turn: ``x_{l+1} = layer_l(x0, x_l)``."""

    def __init__(self, d: int, cfg) -> None:
        super().__init__()
        kw = dict(bias=cfg.cross_bias, residual=cfg.cross_residual, diag_scale=cfg.diag_scale)
        layers = []
        for _ in range(cfg.cross_layers):
            if cfg.cross == "full":
                layers.append(FullCross(d, **kw))
            elif cfg.cross == "low_rank":
                layers.append(LowRankCross(d, cfg.rank, **kw))
            elif cfg.cross == "mixture":
                layers.append(MixtureCross(d, cfg.rank, cfg.experts, cfg.gate, cfg.activation, **kw))
            else:
                layers.append(VectorCross(d, **kw))
        self.layers = nn.ModuleList(layers)

    def forward(self, x0: torch.Tensor, return_states: bool = False, pad: int = 0):
        """``pad``: ``x0`` carries that many zero columns after ``d`` (full-rank and low-rank layers)."""
        xl = x0
        states = [x0]
        for layer in self.layers:
            xl = layer(x0, xl, pad) if pad else layer(x0, xl)
            if return_states:
                states.append(xl)
        return (xl, states) if return_states else xl
