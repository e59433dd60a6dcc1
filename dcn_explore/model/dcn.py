"""``DCNv2``: embedding layer -> cross network and/or deep network -> logit (Fig. 1).

- stacked (Fig. 1a): ``logit(deep(cross(x0)))``
- parallel (Fig. 1b): ``logit([cross(x0); deep(x0)])``
- cross_only (CrossNet): ``logit(cross(x0))``
- deep_only (DNN): ``logit(deep(x0))``

The output is a raw logit ``(B,)``: ``σ(·)`` for ``task="binary"``, the prediction
itself for ``"regression"``.

>>> from dcn_explore.data import planted_crosses
>>> ds = planted_crosses(n_samples=100)
>>> model = DCNv2(ds.schema, DCNConfig(cross="low_rank", rank=8, cross_layers=2, deep_layers=(16,)))
>>> b = ds.batch(slice(0, 5))
>>> model(*b.inputs()).shape
torch.Size([5])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..schema import Schema
from .config import DCNConfig
from . import fused
from .cross import CrossNetwork, he_normal_
from .embedding import FeatureEmbedding


class DeepNetwork(nn.Module):
    """``h_{l+1} = ReLU(W_l h_l + b_l)`` (He-normal kernels, zero biases)."""

    def __init__(self, d_in: int, widths: tuple[int, ...], dropout: float = 0.0):
        super().__init__()
        mods: list[nn.Module] = []
        for w in widths:
            lin = nn.Linear(d_in, w)
            he_normal_(lin.weight, d_in)
            nn.init.zeros_(lin.bias)
            mods += [lin, nn.ReLU(inplace=True)]
            if dropout:
                mods.append(nn.Dropout(dropout))
            d_in = w
        self.net = nn.Sequential(*mods)
        self.d_out = d_in

    def forward(self, h: torch.Tensor, pad: int = 0) -> torch.Tensor:
        """``pad``: ``h`` carries that many zero columns (the first layer's weight is padded to match)."""
        if not pad:
            return self.net(h)
        if fused.usable_mlp(self, h):  # one autograd node (model/fused.py)
            return fused.relu_mlp(self, h, h.shape[-1] - pad)
        first, *rest = self.net
        h = F.linear(h, F.pad(first.weight, (0, pad)), first.bias)
        for mod in rest:
            h = mod(h)
        return h

    def flops(self) -> int:
        return sum(2 * m.in_features * m.out_features + 2 * m.out_features for m in self.net if isinstance(m, nn.Linear))


def combine(structure: str, x0: torch.Tensor, cross, deep) -> torch.Tensor:
    """What the logit layer sees for ``structure`` (Fig. 1), given the cross and deep networks as callables."""
    if structure == "stacked":
        return deep(cross(x0))
    if structure == "parallel":
        return torch.cat([cross(x0), deep(x0)], dim=-1)
    if structure == "cross_only":
        return cross(x0)
    return deep(x0)


class DCNv2(nn.Module):
    """The DCN-V2 family on one :class:`~dcn_explore.schema.Schema` (Eq. 1–4, Fig. 1)."""

    def __init__(self, schema: Schema, config: DCNConfig | None = None, task: str = "binary", seed: int | None = None):
        super().__init__()
        if seed is None:
            self._build(schema, config, task)
        else:  # initialise from its own seed without disturbing the global RNG
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                self._build(schema, config, task)

    def _build(self, schema: Schema, config: DCNConfig | None, task: str) -> None:
        cfg = config or DCNConfig()
        if not isinstance(cfg, DCNConfig):
            raise ConfigError(f"config must be a DCNConfig, got {type(cfg).__name__}")
        if not isinstance(schema, Schema):
            raise ConfigError(f"schema must be a dcn_explore Schema, got {type(schema).__name__}")
        self.schema = schema.with_embedding_dims(cfg.embedding_dims)
        self.config = cfg
        self.task = task
        d = self.schema.d
        if cfg.has_cross and cfg.rank is not None and cfg.rank > d:
            raise ConfigError(f"DCNConfig.rank={cfg.rank}: must be <= d={d}, the width of x0 for this schema")
        self.embedding = FeatureEmbedding(self.schema, cfg.init_std)
        self.cross = CrossNetwork(d, cfg) if cfg.has_cross else None
        deep_in = d
        self.deep = DeepNetwork(deep_in, cfg.deep_layers, cfg.deep_dropout) if cfg.has_deep else None
        if cfg.structure == "stacked":
            d_final = self.deep.d_out
        elif cfg.structure == "parallel":
            d_final = d + self.deep.d_out
        elif cfg.structure == "cross_only":
            d_final = d
        else:
            d_final = self.deep.d_out
        self.logit = nn.Linear(d_final, 1)
        he_normal_(self.logit.weight, d_final)
        nn.init.zeros_(self.logit.bias)

    @property
    def d(self) -> int:
        return self.schema.d

    def embed(self, categorical: torch.Tensor, multivalent: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        return self.embedding(categorical, multivalent, dense)

    #: the training forward pads ``x0`` with zero columns up to a multiple of ``TRAIN_PAD`` when
    #: ``d >= TRAIN_PAD_MIN_D`` (see :meth:`_padded_head`)
    TRAIN_PAD = 8
    TRAIN_PAD_MIN_D = 256

    def head(self, x0: torch.Tensor) -> torch.Tensor:
        """``x0: (B, d)`` -> logit ``(B,)``."""
        pad = self.train_pad()
        if pad:
            return self._padded_head(x0, pad)
        return self.logit(combine(self.config.structure, x0, self.cross, self.deep)).squeeze(-1)

    def train_pad(self) -> int:
        """How many zero columns the forward adds to ``x0`` now: only while training (gradients on),
        for full-rank, low-rank or no cross layers, from ``d = TRAIN_PAD_MIN_D`` on (0 otherwise)."""
        if not (self.training and torch.is_grad_enabled()) or self.d < self.TRAIN_PAD_MIN_D:
            return 0
        if self.cross is not None and self.cross.layers[0].kind not in ("full", "low_rank"):
            return 0
        return -self.d % self.TRAIN_PAD

    def _padded_head(self, x0: torch.Tensor, pad: int) -> torch.Tensor:
        """:meth:`head` with ``x0`` and the kernels that meet it zero-padded from ``d`` to ``d + pad``
        columns, a width at which the CPU's matrix products run faster: on the Criteo shape
        (d = 429 -> 432) a lone ``512 x 429 x 429`` product took 1.66 ms and ``512 x 432 x 432``
        1.52 ms, and paired ``dx.fit`` runs were 1.031x (full rank) and 1.022x (rank 64) faster, with
        the parameters after 20 steps equal bit for bit. The padded columns stay 0 through every cross
        layer (``x0``'s are 0), so the output and every gradient are the unpadded head's up to float
        rounding; the cross network's output is cut back to ``d`` columns where the logit reads it.
        Each layer pads its own parameters (the ``pad`` argument of the cross layers and the deep
        network). Full-rank cross stacks with bias and residual and Linear + ReLU deep networks
        instead go through one autograd node each (:mod:`~dcn_explore.model.fused`; ``x0``'s padding
        is then 1, which carries the cross biases)."""
        d, structure = self.d, self.config.structure
        # full-rank cross layers with bias and residual: one autograd node, the bias in a padding column
        # of ones (fused.py); the deep network's padded weight columns are 0, so it ignores the padding
        stack = self.cross is not None and fused.usable(self.cross.layers, x0)

        def cross(x: torch.Tensor) -> torch.Tensor:
            xl = fused.full_cross_stack(self.cross.layers, x, d) if stack else self.cross(x, pad=pad)
            return xl if structure == "stacked" else xl[..., :d]

        x = F.pad(x0, (0, pad), value=1.0 if stack else 0.0)
        return self.logit(combine(structure, x, cross, lambda h: self.deep(h, pad))).squeeze(-1)

    def forward(self, categorical: torch.Tensor, multivalent: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(categorical, multivalent, dense))

    # -- reporting ----------------------------------------------------------------------
    def cross_kernels(self) -> list[torch.Tensor]:
        """Weights under the L2 term ``λ Σ_l ‖W_l‖²`` (Sec. 3.4)."""
        return [k for layer in (self.cross.layers if self.cross else []) for k in layer.kernels()]

    def num_parameters(self, part: str | None = None) -> int:
        """Trainable parameters; ``part`` in ``embedding``, ``cross``, ``deep``, ``logit`` or ``None`` for all."""
        mods = {"embedding": self.embedding, "cross": self.cross, "deep": self.deep, "logit": self.logit}
        if part is not None:
            if part not in mods:
                raise ConfigError(f"part={part!r}; allowed: {', '.join(mods)} or None")
            m = mods[part]
            return 0 if m is None else sum(p.numel() for p in m.parameters() if p.requires_grad)
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def flops_per_example(self) -> int:
        """Forward FLOPs per example (2 per multiply-add) of the cross, deep and logit parts
        (embedding lookups and the mean of multivalent ids are not counted)."""
        f = 0
        if self.cross is not None:
            f += sum(layer.flops() for layer in self.cross.layers)
        if self.deep is not None:
            f += self.deep.flops()
        f += 2 * self.logit.in_features
        return int(f)

    def summary(self) -> dict:
        return {
            "model": self.config.label(),
            "d": self.d,
            "params": self.num_parameters(),
            "params_embedding": self.num_parameters("embedding"),
            "params_cross": self.num_parameters("cross"),
            "params_deep": self.num_parameters("deep"),
            "flops_per_example": self.flops_per_example(),
        }
