"""Peer DCN-V2 implementations behind one interface, for benchmarks in the peers venv.

Every builder takes a dcn_explore ``Schema`` and returns an ``nn.Module`` (a :class:`PeerModel`) with

- ``forward(categorical (B, n_cat) int64, multivalent (B, n_mv, L) int64, dense (B, n_dense) float) -> logits (B,)``
  (feature order = the schema's order of each kind; multivalent id 0 is padding, as in dcn_explore);
- ``regularization_loss()``: the peer's own regularisation term, scaled for a loss that is the
  *mean* BCE over the batch (see each builder);
- ``info``: library, class(es) used, structure and what differs from dcn_explore.

Run inside ``benchmarks/.peers-venv`` (``bash benchmarks/peers/setup.sh``); the peer libraries are never
dependencies of dcn_explore. Only the peers' public classes are used; nothing is copied from them.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections import OrderedDict
from typing import Any

import torch
from torch import nn

os.environ.setdefault("TORCHREC_DISABLE_VERSION_CHECK", "1")


def _kinds(schema):
    return schema.of_kind("categorical"), schema.of_kind("multivalent"), schema.of_kind("dense")


class PeerModel(nn.Module):
    """Common interface; subclasses implement ``forward`` and may override ``regularization_loss``."""

    info: dict[str, Any]

    def regularization_loss(self) -> torch.Tensor:
        return torch.zeros((), device=next(self.parameters()).device)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


# --------------------------------------------------------------------------------------------------
# DeepCTR-Torch 0.3.0: its own model classes DCN (vector/matrix) and DCNMix
# --------------------------------------------------------------------------------------------------
class DeepCTRPeer(PeerModel):
    """DeepCTR-Torch's ``DCN`` / ``DCNMix`` models, fed our id tensors.

    DeepCTR models take one float matrix ``X`` with a column per sparse feature (the id), ``maxlen``
    columns per variable-length feature (ids, 0 = padding, pooled by ``combiner="mean"``) and the dense
    values; we build ``X`` from our tensors in the order of the feature columns. Their
    ``PredictionLayer`` adds a bias and applies a sigmoid; we switch it to ``task="regression"`` so the
    same module (same bias) returns the logit. Everything else is theirs: the wide ``linear_model`` logit
    (added by default), N(0, init_std=1e-4) embeddings and DNN kernels, Xavier-normal cross kernels, and
    ``get_regularization_loss()`` (L2 on embeddings, linear part, cross kernels, DNN kernels when
    ``l2_reg_dnn > 0``). Their own ``fit`` adds that term to a *sum*-reduced BCE; for a mean-reduced BCE
    the equivalent term is ``get_regularization_loss() / batch_size``, which is what we return.
    """

    def __init__(self, schema, variant: str = "dcn_matrix", cross_layers: int = 3, deep_layers=(256, 128),
                 rank: int = 32, experts: int = 4, embedding_dim: int = 16, l2: float = 1e-5,
                 batch_size: int = 128, seed: int = 1024, dropout: float = 0.0):
        super().__init__()
        from deepctr_torch.inputs import DenseFeat, SparseFeat, VarLenSparseFeat
        from deepctr_torch.models import DCN, DCNMix

        cat, mv, dense = _kinds(schema)
        cols = [SparseFeat(f.name, f.vocab_size, embedding_dim) for f in cat]
        cols += [VarLenSparseFeat(SparseFeat(f.name, f.vocab_size, embedding_dim), maxlen=f.max_len, combiner="mean") for f in mv]
        cols += [DenseFeat(f.name, 1) for f in dense]
        common = dict(dnn_hidden_units=tuple(deep_layers), l2_reg_linear=l2, l2_reg_embedding=l2, l2_reg_cross=l2,
                      dnn_dropout=dropout, seed=seed, task="binary", device="cpu")
        if variant == "dcn_matrix":
            self.net = DCN(cols, cols, cross_num=cross_layers, cross_parameterization="matrix", **common)
            name, cls = "DeepCTR DCN (matrix)", "deepctr_torch.models.DCN(cross_parameterization='matrix')"
        elif variant == "dcn_vector":
            self.net = DCN(cols, cols, cross_num=cross_layers, cross_parameterization="vector", **common)
            name, cls = "DeepCTR DCN (vector)", "deepctr_torch.models.DCN(cross_parameterization='vector')"
        elif variant == "dcnmix":
            self.net = DCNMix(cols, cols, cross_num=cross_layers, low_rank=rank, num_experts=experts, **common)
            name, cls = "DeepCTR DCNMix", "deepctr_torch.models.DCNMix"
        elif variant == "dnn":
            self.net = DCN(cols, cols, cross_num=0, **common)
            name, cls = "DeepCTR DNN", "deepctr_torch.models.DCN(cross_num=0)"
        else:
            raise ValueError(f"DeepCTR variant={variant!r}; allowed: dcn_matrix, dcn_vector, dcnmix, dnn")
        self.net.out.task = "regression"  # their PredictionLayer without the sigmoid: the logit
        self.batch_size = batch_size
        self.n_cat, self.n_mv = len(cat), len(mv)
        structure = "deep_only (+wide linear)" if variant == "dnn" else "parallel (+wide linear)"
        self.info = dict(library="deepctr-torch", name=name, cls=cls, structure=structure,
                         regularisation=f"their get_regularization_loss() (L2 {l2:g} on embeddings, linear, cross kernels) / batch_size",
                         init="theirs: embeddings & DNN kernels N(0, 1e-4), cross kernels Xavier-normal")

    def forward(self, categorical, multivalent, dense):
        parts = [categorical.float()]
        if self.n_mv:
            parts.append(multivalent.flatten(1).float())
        if dense.shape[1]:
            parts.append(dense.float())
        return self.net(torch.cat(parts, dim=1)).squeeze(-1)

    def regularization_loss(self):
        dev = next(self.parameters()).device
        self.net.device = dev  # they keep a device string for the accumulator
        return self.net.get_regularization_loss().squeeze() / self.batch_size


# --------------------------------------------------------------------------------------------------
# FuxiCTR 2.3.10: DCNv2 assembled from its wheel's layers, following its model zoo's DCNv2
# --------------------------------------------------------------------------------------------------
def _fuxi_feature_map(schema, embedding_dim: int):
    from fuxictr.features import FeatureMap

    fm = FeatureMap("dcn_explore_benchmark", data_dir=tempfile.gettempdir())
    cat, mv, dense = _kinds(schema)
    feats = OrderedDict()
    for f in cat:
        feats[f.name] = {"source": "", "type": "categorical", "vocab_size": f.vocab_size}
    for f in mv:
        feats[f.name] = {"source": "", "type": "sequence", "vocab_size": f.vocab_size, "max_len": f.max_len,
                         "padding_idx": 0, "feature_encoder": "layers.MaskedAveragePooling()"}
    for f in dense:
        feats[f.name] = {"source": "", "type": "numeric"}
    fm.features = feats
    fm.labels = ["label"]
    fm.default_emb_dim = embedding_dim
    fm.num_fields = fm.get_num_fields()
    fm.set_column_index()
    return fm


def _fuxi_model_class():
    from fuxictr.pytorch.layers import CrossNetMix, CrossNetV2, FeatureEmbedding, MLP_Block
    from fuxictr.pytorch.models import BaseModel

    class FuxiDCNv2(BaseModel):
        """FuxiCTR's model-zoo DCNv2 structure on its wheel's layers (the zoo class is not in the wheel).

        Built on their ``BaseModel`` so that their ``reset_parameters`` (Xavier-normal for every
        ``nn.Linear``, zero biases, embeddings N(0, 1e-4) via ``FeatureEmbedding.init_weights``) and
        their ``regularization_loss`` (``λ/2·‖p‖²`` with ``embedding_regularizer`` on embedding
        tables and ``net_regularizer`` on all other parameters) are theirs. The output activation
        (sigmoid) is left out: ``forward`` returns the logit.
        """

        def __init__(self, feature_map, model_structure="parallel", use_low_rank_mixture=False, low_rank=32,
                     num_experts=4, embedding_dim=16, stacked_dnn_hidden_units=(), parallel_dnn_hidden_units=(),
                     num_cross_layers=3, embedding_regularizer=None, net_regularizer=None, net_dropout=0.0):
            super().__init__(feature_map, model_id="DCNv2", gpu=-1, embedding_regularizer=embedding_regularizer,
                             net_regularizer=net_regularizer, verbose=0, model_root=tempfile.gettempdir(),
                             metrics=["logloss", "AUC"])
            self.embedding_layer = FeatureEmbedding(feature_map, embedding_dim)
            input_dim = feature_map.sum_emb_out_dim()
            if use_low_rank_mixture:
                self.crossnet = CrossNetMix(input_dim, num_cross_layers, low_rank=low_rank, num_experts=num_experts)
            else:
                self.crossnet = CrossNetV2(input_dim, num_cross_layers)
            self.model_structure = model_structure
            if model_structure not in ("crossnet_only", "stacked", "parallel", "stacked_parallel"):
                raise ValueError(f"model_structure={model_structure!r}")
            final_dim = input_dim
            if model_structure in ("stacked", "stacked_parallel"):
                self.stacked_dnn = MLP_Block(input_dim=input_dim, output_dim=None, hidden_units=list(stacked_dnn_hidden_units),
                                             hidden_activations="ReLU", output_activation=None, dropout_rates=net_dropout)
                final_dim = stacked_dnn_hidden_units[-1]
            if model_structure in ("parallel", "stacked_parallel"):
                self.parallel_dnn = MLP_Block(input_dim=input_dim, output_dim=None, hidden_units=list(parallel_dnn_hidden_units),
                                              hidden_activations="ReLU", output_activation=None, dropout_rates=net_dropout)
                final_dim = input_dim + parallel_dnn_hidden_units[-1]
            if model_structure == "stacked_parallel":
                final_dim = stacked_dnn_hidden_units[-1] + parallel_dnn_hidden_units[-1]
            self.fc = nn.Linear(final_dim, 1)
            self.reset_parameters()

        def forward(self, inputs):
            feature_emb = self.embedding_layer(inputs, flatten_emb=True)
            cross_out = self.crossnet(feature_emb)
            s = self.model_structure
            if s == "crossnet_only":
                final = cross_out
            elif s == "stacked":
                final = self.stacked_dnn(cross_out)
            elif s == "parallel":
                final = torch.cat([cross_out, self.parallel_dnn(feature_emb)], dim=-1)
            else:
                final = torch.cat([self.stacked_dnn(cross_out), self.parallel_dnn(feature_emb)], dim=-1)
            return self.fc(final)  # logit (their forward would apply the sigmoid here)

    return FuxiDCNv2


class FuxiCTRPeer(PeerModel):
    """FuxiCTR ``DCNv2`` (model-zoo structure) from ``CrossNetV2``/``CrossNetMix``, ``MLP_Block``,
    ``FeatureEmbedding``. Inputs become their ``{feature: tensor}`` dict. Their regularisation is already
    for a mean-reduced BCE (their ``add_loss`` uses ``reduction='mean'``): returned as is."""

    def __init__(self, schema, structure: str = "parallel", mixture: bool = False, cross_layers: int = 3,
                 deep_layers=(256, 128), rank: int = 32, experts: int = 4, embedding_dim: int = 16, l2: float = 0.0,
                 dropout: float = 0.0):
        super().__init__()
        cls = _fuxi_model_class()
        self.fm = _fuxi_feature_map(schema, embedding_dim)
        reg = float(l2) if l2 else None
        self.net = cls(self.fm, model_structure=structure, use_low_rank_mixture=mixture, low_rank=rank, num_experts=experts,
                       embedding_dim=embedding_dim, stacked_dnn_hidden_units=tuple(deep_layers),
                       parallel_dnn_hidden_units=tuple(deep_layers), num_cross_layers=cross_layers,
                       embedding_regularizer=reg, net_regularizer=reg, net_dropout=dropout)
        cat, mv, dense = _kinds(schema)
        self.cat_names, self.mv_names, self.dense_names = [f.name for f in cat], [f.name for f in mv], [f.name for f in dense]
        nm = "FuxiCTR DCNv2" + (" Mix" if mixture else "") + f" ({structure})"
        self.info = dict(library="fuxictr", name=nm,
                         cls="FuxiCTR BaseModel + " + ("CrossNetMix" if mixture else "CrossNetV2") + ", MLP_Block, FeatureEmbedding (model-zoo DCNv2 structure)",
                         structure=structure,
                         regularisation=f"their BaseModel.regularization_loss(): embedding_regularizer = net_regularizer = {l2:g} (λ/2·‖p‖²)",
                         init="theirs: Xavier-normal Linear, embeddings N(0, 1e-4)")

    def forward(self, categorical, multivalent, dense):
        X = {n: categorical[:, j] for j, n in enumerate(self.cat_names)}
        X.update({n: multivalent[:, j] for j, n in enumerate(self.mv_names)})
        X.update({n: dense[:, j] for j, n in enumerate(self.dense_names)})
        return self.net(X).squeeze(-1)

    def regularization_loss(self):
        r = self.net.regularization_loss()
        return r if torch.is_tensor(r) else torch.zeros((), device=next(self.parameters()).device)


# --------------------------------------------------------------------------------------------------
# TorchRec 1.9.2: its crossnet modules inside an embedding + deep scaffold built from TorchRec modules
# --------------------------------------------------------------------------------------------------
class TorchRecPeer(PeerModel):
    """TorchRec ``CrossNet`` / ``LowRankCrossNet`` / ``LowRankMixtureCrossNet`` / ``VectorCrossNet``.

    TorchRec ships cross modules but no DCN model and no training loop, so they sit in one scaffold:
    ``EmbeddingBagCollection`` (one table per id feature, ``embedding_dim`` wide, TorchRec's default init
    U(-√(1/n), √(1/n)); multivalent features pooled with ``PoolingType.MEAN``) fed a
    ``KeyedJaggedTensor`` -> ``x0 = [e_1; ...; dense]`` -> the crossnet -> ``torchrec.modules.mlp.MLP``
    (ReLU) in the stacked or parallel structure -> ``nn.Linear`` logit. With no regulariser of its own,
    the paper's ``λ Σ_l ‖W_l‖²`` over the crossnet's kernels is used (as in dcn_explore).
    """

    def __init__(self, schema, cross: str = "full", structure: str = "stacked", cross_layers: int = 3,
                 deep_layers=(256, 128), rank: int = 32, experts: int = 4, embedding_dim: int = 16, l2: float = 0.0):
        super().__init__()
        from torchrec.modules.crossnet import CrossNet, LowRankCrossNet, LowRankMixtureCrossNet, VectorCrossNet
        from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
        from torchrec.modules.embedding_modules import EmbeddingBagCollection
        from torchrec.modules.mlp import MLP

        cat, mv, dense = _kinds(schema)
        tables = [EmbeddingBagConfig(name=f"t_{f.name}", embedding_dim=embedding_dim, num_embeddings=f.vocab_size,
                                     feature_names=[f.name], pooling=PoolingType.SUM) for f in cat]
        tables += [EmbeddingBagConfig(name=f"t_{f.name}", embedding_dim=embedding_dim, num_embeddings=f.vocab_size,
                                      feature_names=[f.name], pooling=PoolingType.MEAN) for f in mv]
        self.ebc = EmbeddingBagCollection(tables=tables, device=torch.device("cpu"))
        self.keys = [f.name for f in cat] + [f.name for f in mv]
        self.n_cat, self.n_mv = len(cat), len(mv)
        d = embedding_dim * len(self.keys) + len(dense)
        if cross == "full":
            self.crossnet, cls = CrossNet(d, cross_layers), "CrossNet"
        elif cross == "low_rank":
            self.crossnet, cls = LowRankCrossNet(d, cross_layers, low_rank=rank), "LowRankCrossNet"
        elif cross == "mixture":
            self.crossnet, cls = LowRankMixtureCrossNet(d, cross_layers, num_experts=experts, low_rank=rank), "LowRankMixtureCrossNet"
        elif cross == "vector":
            self.crossnet, cls = VectorCrossNet(d, cross_layers), "VectorCrossNet"
        else:
            raise ValueError(f"TorchRec cross={cross!r}")
        self.structure = structure
        if structure not in ("stacked", "parallel", "cross_only"):
            raise ValueError(f"TorchRec structure={structure!r}")
        self.deep = MLP(d, list(deep_layers)) if structure != "cross_only" else None
        final = {"stacked": deep_layers[-1] if deep_layers else d, "parallel": d + (deep_layers[-1] if deep_layers else 0),
                 "cross_only": d}[structure]
        self.logit = nn.Linear(final, 1)
        self.l2 = float(l2)
        self.info = dict(library="torchrec", name=f"TorchRec {cls} ({structure})",
                         cls=f"torchrec.modules.crossnet.{cls} + EmbeddingBagCollection + modules.mlp.MLP", structure=structure,
                         regularisation=f"paper's λ Σ‖W_l‖² on crossnet kernels, λ = {l2:g} (TorchRec has none)",
                         init="theirs: Xavier-normal cross kernels, zero bias; EBC uniform; MLP/logit torch default")

    def kernels(self):
        return [p for n, p in self.crossnet.named_parameters() if "kernel" in n.lower()]

    def _kjt(self, categorical, multivalent):
        from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

        B = categorical.shape[0]
        values = [categorical.t().reshape(-1)]
        lengths = [torch.ones(B * self.n_cat, dtype=torch.int32, device=categorical.device)]
        if self.n_mv:
            ids = multivalent.transpose(0, 1).reshape(self.n_mv * B, -1)  # key-major
            mask = ids != 0
            values.append(ids[mask])
            lengths.append(mask.sum(1).to(torch.int32))
        return KeyedJaggedTensor.from_lengths_sync(keys=self.keys, values=torch.cat(values), lengths=torch.cat(lengths))

    def forward(self, categorical, multivalent, dense):
        pooled = self.ebc(self._kjt(categorical, multivalent)).values()  # (B, n_keys * embedding_dim), key order
        x0 = torch.cat([pooled, dense.to(pooled.dtype)], dim=1) if dense.shape[1] else pooled
        c = self.crossnet(x0)
        if self.structure == "stacked":
            z = self.deep(c)
        elif self.structure == "parallel":
            z = torch.cat([c, self.deep(x0)], dim=1)
        else:
            z = c
        return self.logit(z).squeeze(-1)

    def regularization_loss(self):
        if not self.l2:
            return torch.zeros((), device=self.logit.weight.device)
        return self.l2 * sum(k.pow(2).sum() for k in self.kernels())


# --------------------------------------------------------------------------------------------------
# registry used by the benchmark
# --------------------------------------------------------------------------------------------------
PEERS = {
    "DeepCTR DCN (matrix)": dict(library="deepctr", variant="dcn_matrix", cross="full", structure="parallel"),
    "DeepCTR DCNMix": dict(library="deepctr", variant="dcnmix", cross="mixture", structure="parallel"),
    "DeepCTR DNN": dict(library="deepctr", variant="dnn", cross=None, structure="deep_only"),
    "FuxiCTR DCNv2 (stacked)": dict(library="fuxictr", structure="stacked", mixture=False, cross="full"),
    "FuxiCTR DCNv2 (parallel)": dict(library="fuxictr", structure="parallel", mixture=False, cross="full"),
    "FuxiCTR DCNv2 Mix (parallel)": dict(library="fuxictr", structure="parallel", mixture=True, cross="mixture"),
    "TorchRec CrossNet (stacked)": dict(library="torchrec", cross="full", structure="stacked"),
    "TorchRec LowRankCrossNet (stacked)": dict(library="torchrec", cross="low_rank", structure="stacked"),
    "TorchRec LowRankMixtureCrossNet (stacked)": dict(library="torchrec", cross="mixture", structure="stacked"),
}


def build_peer(name: str, schema, *, cross_layers: int = 3, deep_layers=(256, 128), rank: int = 32, experts: int = 4,
               embedding_dim: int = 16, l2: float = 0.0, batch_size: int = 128, seed: int = 0, dropout: float = 0.0) -> PeerModel:
    """One peer model by its name in :data:`PEERS`, initialised from ``seed`` (global RNG restored afterwards).
    ``dropout`` applies to the deep network of the libraries that offer it (DeepCTR, FuxiCTR; TorchRec's MLP has none)."""
    spec = PEERS[name]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if spec["library"] == "deepctr":
            return DeepCTRPeer(schema, spec["variant"], cross_layers, deep_layers, rank, experts, embedding_dim, l2,
                               batch_size, seed=seed, dropout=dropout)
        if spec["library"] == "fuxictr":
            return FuxiCTRPeer(schema, spec["structure"], spec["mixture"], cross_layers, deep_layers, rank, experts,
                               embedding_dim, l2, dropout)
        return TorchRecPeer(schema, spec["cross"], spec["structure"], cross_layers, deep_layers, rank, experts,
                            embedding_dim, l2)


def count_flops(model: nn.Module, batch, n: int = 64) -> float:
    """Forward FLOPs per example counted by ``torch.utils.flop_counter`` (matmul/addmm/bmm only, 2 per
    multiply-add; element-wise ops and embedding lookups are not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    was = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            model(batch.categorical[:n], batch.multivalent[:n], batch.dense[:n])
    finally:
        model.train(was)
    return fc.get_total_flops() / min(n, batch.categorical.shape[0])


def _smoke():  # pragma: no cover - run by hand: python benchmarks/peers/models.py
    import dcn_explore as dx

    ds = dx.data.planted_crosses(n_samples=512, seed=0)
    b = ds.batch(slice(0, 128))
    for name in PEERS:
        m = build_peer(name, ds.schema, rank=8, l2=1e-4)
        opt = torch.optim.Adam(m.parameters(), lr=1e-3)
        out = m(*b.inputs())
        assert out.shape == (128,), (name, out.shape)
        loss = nn.functional.binary_cross_entropy_with_logits(out, b.label) + m.regularization_loss()
        opt.zero_grad()
        loss.backward()
        opt.step()
        print(f"{name:45s} params={m.num_parameters():8d} flops/ex={count_flops(m, b):10.0f} loss={float(loss):.4f} reg={float(m.regularization_loss().detach()):.2e}")


if __name__ == "__main__":
    _smoke()
