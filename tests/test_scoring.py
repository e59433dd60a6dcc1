"""``predict``'s scorer (padded, bias-folded products for full-rank, low-rank and deep-only models)
gives the model's own forward, for every structure and cross-layer option it covers."""

import warnings

import numpy as np
import pandas as pd
import pytest
import torch

import dcn_explore as dx
from dcn_explore.data import planted_crosses
from dcn_explore.model import onednn
from dcn_explore.model.scoring import Scorer
from dcn_explore.schema import FeatureSpec, Schema


@pytest.fixture(autouse=True, params=["blas", "onednn"])
def matmul(request, monkeypatch):
    """Every test of this module runs with the BLAS products and with oneDNN's (``DCNX_CPU_MATMUL``
    names one explicitly, so it applies at every width, whatever the CPU)."""
    if request.param == "onednn" and onednn.onednn_unusable():
        pytest.skip(f"oneDNN's products: {onednn.onednn_unusable()}")
    monkeypatch.setenv(onednn.ENV, request.param)
    onednn.cpu_matmul.cache_clear()
    yield request.param
    onednn.cpu_matmul.cache_clear()


def _randomised(model: dx.DCNv2, seed: int = 0) -> dx.DCNv2:
    """Every parameter random (biases are zero at initialisation and would hide a misplaced bias)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * (0.3 if p.dim() > 1 else 0.5))
    return model.eval()


def _reference(model: dx.DCNv2, data) -> torch.Tensor:
    with torch.no_grad():
        return model(*data.batch(slice(0, len(data))).inputs())


@pytest.mark.parametrize("cross", [dict(cross="full"), dict(cross="low_rank", rank=5)])
@pytest.mark.parametrize("structure", ["stacked", "parallel", "cross_only", "deep_only"])
@pytest.mark.parametrize("cross_residual,cross_bias,diag_scale",
                         [(True, True, 0.0), (False, True, 0.0), (True, False, 0.5), (False, False, 0.3)])
def test_scorer_equals_the_forward(cross, structure, cross_residual, cross_bias, diag_scale, matmul):
    ds = planted_crosses(n_samples=300, seed=1)
    cfg = dx.DCNConfig(structure=structure, cross_layers=3, deep_layers=(16, 8), embedding_dim=4,
                       cross_residual=cross_residual, cross_bias=cross_bias, diag_scale=diag_scale, **cross)
    model = _randomised(dx.DCNv2(ds.schema, cfg, seed=0))
    # a low-rank layer's diagonal scale cannot ride in its factors: that model scores through its forward
    covered = structure == "deep_only" or cross["cross"] == "full" or not diag_scale
    assert (Scorer.build(model) is not None) == covered
    assert not covered or Scorer.build(model).matmul == matmul
    # 300 rows in chunks of 128: the buffers are reused, the last chunk is shorter, and each
    # chunk's logits must survive the next chunk
    got = dx.predict(model, ds, batch_size=128)
    ref = _reference(model, ds)
    assert ref.abs().max() > 1.0  # the comparison is not between near-zero outputs
    assert torch.allclose(got, ref, rtol=1e-5, atol=1e-5), (got - ref).abs().max()


@pytest.mark.parametrize("widths,d,P", [(3, 39, 40), (4, 51, 56), ({"user_id": 9, "item_id": 4}, None, None)])
def test_padding_columns_stay_zero_and_the_bias_column_stays_one(widths, d, P):
    ds = planted_crosses(n_samples=64, seed=2)
    emb = widths if isinstance(widths, int) else {**{f.name: 4 for f in ds.schema.of_kind("categorical")}, **widths}
    cfg = dx.DCNConfig(cross="full", cross_layers=2, deep_layers=(8,), embedding_dim=emb)
    model = _randomised(dx.DCNv2(ds.schema, cfg, seed=0))
    d = d or model.d
    if P is None:
        assert d % 8 == 0  # this case: d a multiple of 8, the constant column starts a new block of 8
        P = d + 8
    s = Scorer.build(model)
    assert (s.d, s.P) == (d, P)
    x0 = model.embed(*ds.batch(slice(0, 64)).inputs())
    got = s(x0)
    assert torch.allclose(got, _reference(model, ds), rtol=1e-5, atol=1e-5)
    assert torch.equal(s.xL[:64, d], torch.ones(64))  # x_L's constant column
    assert not s.xL[:64, d + 1 :].any() and not s.x0[:64, d + 1 :].any()


def test_float64_model_and_multivalent_features():
    rng = np.random.default_rng(0)
    n = 200
    df = pd.DataFrame({
        "a": rng.choice(list("xyz"), n), "b": rng.choice(list("pqrs"), n), "v": rng.normal(size=n),
        "tags": ["|".join(rng.choice(list("klmno"), rng.integers(1, 4))) for _ in range(n)],
        "y": rng.integers(0, 2, n),
    })
    ds = dx.data.from_frame(df, label="y", categorical=["a", "b"], dense=["v"], multivalent=["tags"])
    model = _randomised(dx.DCNv2(ds.schema, dx.DCNConfig(cross="full", cross_layers=2, deep_layers=(8,)), seed=0).double())
    got = dx.predict(model, ds, batch_size=64)
    assert got.dtype == torch.float32
    assert torch.allclose(got.double(), _reference(model, ds), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("cfg", [dict(cross="mixture", rank=4, experts=2), dict(cross="vector"),
                                 dict(cross="low_rank", rank=4, diag_scale=0.5)])
def test_other_cross_kinds_score_through_the_forward(cfg):
    ds = planted_crosses(n_samples=100, seed=3)
    model = _randomised(dx.DCNv2(ds.schema, dx.DCNConfig(cross_layers=2, deep_layers=(8,), **cfg), seed=0))
    assert Scorer.build(model) is None
    assert torch.allclose(dx.predict(model, ds, batch_size=64), _reference(model, ds), atol=1e-6)
    assert Scorer.build(torch.nn.Linear(2, 1)) is None


def test_scorer_copies_the_padded_kernels_when_built():
    """The padded kernels are copies: a scorer built before the weights change scores the old model
    (``predict`` builds one per call, so it always scores the current weights)."""
    ds = planted_crosses(n_samples=50, seed=4)
    model = _randomised(dx.DCNv2(ds.schema, dx.DCNConfig(cross="full", structure="cross_only", cross_layers=1), seed=0))
    x0 = model.embed(*ds.batch(slice(0, 50)).inputs()).detach()
    s = Scorer.build(model)
    before = s(x0).clone()
    with torch.no_grad():
        model.cross.layers[0].W.mul_(2.0)
    assert torch.equal(s(x0), before)
    assert torch.allclose(dx.predict(model, ds), _reference(model, ds), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(dx.predict(model, ds), before, atol=1e-3)


def _interleaved(order: str, n: int = 240, seed: int = 0) -> dx.data.TabularData:
    """Rows whose features come in ``order`` (``c`` an id feature, ``d`` a dense one), e.g. ``"cdcdc"``."""
    rng = np.random.default_rng(seed)
    feats = [FeatureSpec(f"c{i}", "categorical", vocab_size=5 + 3 * i) if k == "c" else FeatureSpec(f"d{i}", "dense")
             for i, k in enumerate(order)]
    cats = [f for f in feats if f.kind == "categorical"]
    return dx.data.TabularData(
        Schema(feats), categorical=torch.from_numpy(np.stack([rng.integers(0, f.vocab_size, n) for f in cats], 1)),
        dense=torch.from_numpy(rng.standard_normal((n, order.count("d"))).astype(np.float32)),
        label=torch.from_numpy((rng.random(n) < 0.3).astype(np.float32)), name="interleaved")


@pytest.mark.parametrize("order", ["dddccc", "cdcdcd", "cccddd", "cccc", "dcccccccc"])
@pytest.mark.parametrize("cross", [dict(cross="full"), dict(cross="low_rank", rank=3)])
@pytest.mark.parametrize("structure", ["stacked", "parallel", "cross_only", "deep_only"])
def test_the_lookup_into_the_padded_buffer_equals_the_forward(order, cross, structure):
    """One id width that divides the padded width: ``score`` writes x0 with one lookup, in its own
    column order (ids, dense features, the constant), whatever the schema's order; the kernels are
    laid out to match. Dense features first, between the ids, last or absent; one or more slots
    after the ids."""
    ds = _interleaved(order)
    cfg = dx.DCNConfig(structure=structure, cross_layers=2, deep_layers=(16,), embedding_dim=4, **cross)
    model = _randomised(dx.DCNv2(ds.schema, cfg, seed=0))
    s = Scorer.build(model)
    assert s.slots is not None and s.P % 4 == 0
    ref = _reference(model, ds)
    assert ref.std() > 0.1  # logits that differ from row to row: a wrong column would show
    assert torch.allclose(dx.predict(model, ds, batch_size=100), ref, rtol=1e-5, atol=1e-5)
    b = ds.batch(slice(0, 64))
    got = s.score(*b.inputs())
    assert torch.allclose(got, ref[:64], rtol=1e-5, atol=1e-5)
    assert torch.equal(s.x0[:64, s.d], torch.ones(64)) and not s.x0[:64, s.d + 1 :].any()
    # the buffer holds x0 itself, its columns in the scorer's order
    assert torch.equal(s.x0[:64, : s.d], model.embed(*b.inputs()).index_select(1, s.cols))
    # x0 from the model's embed gives the same logits through __call__
    assert torch.allclose(s(model.embed(*b.inputs())), got, rtol=1e-6, atol=1e-6)


def test_the_lookup_into_the_padded_buffer_only_where_one_lookup_can_fill_it():
    """Two id widths, multivalent features or a width that does not divide P: x0 from ``embed``."""
    ds = _interleaved("dcdcc")
    widths = {"c1": 4, "c3": 4, "c4": 8}
    for emb, slotted in [(4, True), (8, True), (widths, False), (3, False)]:  # d = 2 + 3w: P = 16, 32, -, 16
        model = _randomised(dx.DCNv2(ds.schema, dx.DCNConfig(cross="full", cross_layers=1, embedding_dim=emb), seed=0))
        s = Scorer.build(model)
        assert (s.slots is not None) == slotted, emb
        assert torch.allclose(dx.predict(model, ds, batch_size=64), _reference(model, ds), rtol=1e-5, atol=1e-5)


def test_float64_model_with_the_lookup_into_the_padded_buffer():
    ds = _interleaved("dcdc")
    model = _randomised(dx.DCNv2(ds.schema, dx.DCNConfig(cross="full", cross_layers=2, deep_layers=(8,), embedding_dim=2), seed=0).double())
    assert Scorer.build(model).slots is not None
    got = dx.predict(model, ds, batch_size=64)
    assert torch.allclose(got.double(), _reference(model, ds), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("emb", [4, 3])  # the lookup into the padded buffer / x0 from embed (3 does not divide P = 16)
def test_predict_looks_up_in_groups_and_runs_the_layers_in_chunks(emb):
    """5,000 rows with batch_size 300: lookups for 1,800 rows at a time, the layers on 300 rows at a
    time (the last group has 1,400 rows, its last chunk 200)."""
    ds = _interleaved("dcdcc", n=5000)
    model = _randomised(dx.DCNv2(ds.schema, dx.DCNConfig(cross="full", cross_layers=2, deep_layers=(16,), embedding_dim=emb), seed=0))
    s = Scorer.build(model)
    assert (s.slots is not None) == (emb == 4) and Scorer.LOOKUP_ROWS // 300 == 6
    ref = _reference(model, ds)
    assert torch.allclose(dx.predict(model, ds, batch_size=300), ref, rtol=1e-5, atol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a product into an out= buffer of the wrong size resizes it, with a warning
        got = s.score(*ds.batch(slice(0, 1800)).inputs(), chunk=300)
    assert torch.allclose(got, ref[:1800], rtol=1e-5, atol=1e-5)
    if s.matmul == "blas":
        assert s.x.shape[0] == 300  # the layers' buffers hold one chunk (oneDNN's products need none)
    assert s.x0.shape[0] == (1800 if emb == 4 else 300)  # x0 holds the whole lookup where it is written there
    assert s.score(*ds.batch(slice(0, 0)).inputs()).shape == (0,)
