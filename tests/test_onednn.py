"""Which products the scorer runs on the CPU (``DCNX_CPU_MATMUL``), and oneDNN's packed products.
``tests/test_scoring.py`` runs every scorer test with both."""

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import dcn_explore as dx
from dcn_explore.errors import ConfigError
from dcn_explore.model import onednn
from dcn_explore.model.scoring import Scorer
from dcn_explore.schema import FeatureSpec, Schema

needs_onednn = pytest.mark.skipif(onednn.onednn_unusable() is not None, reason=f"oneDNN: {onednn.onednn_unusable()}")


@pytest.fixture(autouse=True)
def fresh_choice():
    onednn.cpu_matmul.cache_clear()
    yield
    onednn.cpu_matmul.cache_clear()


def _criteo_width(n: int = 300, seed: int = 0) -> dx.data.TabularData:
    """The Criteo layout at small vocabularies: 13 dense + 26 × 16 = 429 columns (P = 432)."""
    rng = np.random.default_rng(seed)
    vocabs = [3 + i for i in range(26)]
    feats = [FeatureSpec(f"I{i}", "dense") for i in range(13)]
    feats += [FeatureSpec(f"C{i}", "categorical", vocab_size=v, embedding_dim=16) for i, v in enumerate(vocabs)]
    return dx.data.TabularData(
        Schema(feats), categorical=torch.from_numpy(np.stack([rng.integers(0, v, n) for v in vocabs], 1)),
        dense=torch.from_numpy(rng.standard_normal((n, 13)).astype(np.float32)),
        label=torch.from_numpy((rng.random(n) < 0.3).astype(np.float32)), name="criteo-width")


def _randomised(model):
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (p.shape[1] ** -0.5 if p.dim() > 1 else 0.3))
    return model.eval()


@pytest.mark.parametrize("capability,width,expected", [
    ("AVX512", 432, "onednn"), ("AVX512", 256, "onednn"), ("AVX512", 255, "blas"), ("AVX512", 136, "blas"),
    ("AVX2", 432, "blas"), ("DEFAULT", 432, "blas"),
])
@needs_onednn
def test_auto_takes_onednn_on_avx512_cpus_from_width_256(monkeypatch, capability, width, expected):
    monkeypatch.delenv(onednn.ENV, raising=False)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    assert onednn.cpu_matmul(width) == expected
    monkeypatch.setenv(onednn.ENV, " Auto ")  # case and spaces do not matter
    onednn.cpu_matmul.cache_clear()
    assert onednn.cpu_matmul(width) == expected


@needs_onednn
def test_the_variable_names_the_products_at_every_width(monkeypatch):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    monkeypatch.setenv(onednn.ENV, "onednn")
    assert onednn.cpu_matmul(40) == onednn.cpu_matmul(432) == "onednn"
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    monkeypatch.setenv(onednn.ENV, "blas")
    onednn.cpu_matmul.cache_clear()
    assert onednn.cpu_matmul(40) == onednn.cpu_matmul(432) == "blas"


def test_a_bad_value_is_an_error_naming_the_variable(monkeypatch):
    monkeypatch.setenv(onednn.ENV, "mkl")
    with pytest.raises(ConfigError, match=r"DCNX_CPU_MATMUL='mkl': expected one of auto, onednn, blas"):
        onednn.cpu_matmul(432)
    ds = _criteo_width(20)
    model = dx.DCNv2(ds.schema, dx.DCNConfig(cross="full", cross_layers=1, deep_layers=(8,)), seed=0)
    with pytest.raises(ConfigError, match="DCNX_CPU_MATMUL"):
        dx.predict(model, ds)
    with pytest.raises(ConfigError, match=r"matmul='mkl'"):
        Scorer(model, matmul="mkl")


def test_where_onednn_does_not_work_the_scorer_says_why_or_falls_back(monkeypatch):
    """``onednn`` asked for by the variable: a warning and the BLAS; asked for by the argument: an error."""
    monkeypatch.setattr(onednn, "onednn_unusable", lambda: "no oneDNN here (test)")
    monkeypatch.setenv(onednn.ENV, "onednn")
    with pytest.warns(RuntimeWarning, match=r"DCNX_CPU_MATMUL=onednn: no oneDNN here \(test\); scoring with the BLAS"):
        assert onednn.cpu_matmul(432) == "blas"
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    monkeypatch.setenv(onednn.ENV, "auto")
    onednn.cpu_matmul.cache_clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # auto falls back without a word
        assert onednn.cpu_matmul(432) == "blas"
    ds = _criteo_width(20)
    model = dx.DCNv2(ds.schema, dx.DCNConfig(cross="full", cross_layers=1, deep_layers=(8,)), seed=0)
    with pytest.raises(ConfigError, match=r"matmul='onednn': no oneDNN here \(test\)"):
        Scorer(model, matmul="onednn")
    assert Scorer(model).matmul == "blas"


def test_the_self_check_reports_a_failing_operator(monkeypatch):
    onednn.onednn_unusable.cache_clear()

    def broken(*a, **k):
        raise RuntimeError("no kernel")

    monkeypatch.setattr(onednn.PackedLinear, "__call__", broken)
    try:
        assert onednn.onednn_unusable() == "oneDNN linear failed: RuntimeError: no kernel"
    finally:
        onednn.onednn_unusable.cache_clear()
    monkeypatch.undo()
    monkeypatch.setattr(onednn.PackedLinear, "__call__", lambda self, x, relu=False, mul=None: torch.zeros(8, 12))
    try:
        assert onednn.onednn_unusable() == "oneDNN linear disagrees with torch.nn.functional.linear"
    finally:
        monkeypatch.undo()
        onednn.onednn_unusable.cache_clear()


@needs_onednn
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("rows", [1, 7, 512])
def test_packed_linear_equals_f_linear(bias, rows):
    g = torch.Generator().manual_seed(rows)
    w = torch.randn(40, 24, generator=g).t()  # a non-contiguous (24, 40) weight
    b = torch.randn(24, generator=g) if bias else None
    x, m = torch.randn(rows, 40, generator=g), torch.randn(rows, 24, generator=g)
    lin = onednn.PackedLinear(w, b, rows=512)
    ref = F.linear(x, w, b)
    assert torch.allclose(lin(x), ref, rtol=1e-5, atol=1e-5)
    assert torch.allclose(lin(x, relu=True), ref.relu(), rtol=1e-5, atol=1e-5)
    assert torch.allclose(lin(x, mul=m), ref * m, rtol=1e-5, atol=1e-5)
    assert (lin(x, relu=True) == 0).any() and (lin(x) < 0).any()  # the ReLU had work to do
    with torch.no_grad():
        w.mul_(2.0)  # the packed weight is a copy
    assert torch.allclose(lin(x), ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="relu and mul"):
        lin(x, relu=True, mul=m)


@needs_onednn
@pytest.mark.parametrize("cfg", [dict(structure=s, **c) for s in ("stacked", "parallel", "cross_only")
                                 for c in (dict(cross="full"), dict(cross="low_rank", rank=16))] + [dict(structure="deep_only")])
def test_at_the_criteo_width_auto_scores_with_onednn_on_avx512(monkeypatch, cfg):
    """d = 429 (P = 432): ``auto`` takes oneDNN on an AVX-512 CPU, the BLAS on an AVX2 one; both give
    the forward's logits, and each other's."""
    ds = _criteo_width()
    model = _randomised(dx.DCNv2(ds.schema, dx.DCNConfig(cross_layers=3, deep_layers=(64, 32), **cfg), seed=0))
    with torch.no_grad():
        ref = model(*ds.batch(slice(0, len(ds))).inputs())
    assert ref.std() > 0.1
    monkeypatch.delenv(onednn.ENV, raising=False)
    calls, packed_call = [], onednn.PackedLinear.__call__
    monkeypatch.setattr(onednn.PackedLinear, "__call__", lambda self, *a, **k: calls.append(1) or packed_call(self, *a, **k))
    products = 0 if cfg["structure"] == "deep_only" else 3 * (1 if cfg["cross"] == "full" else 2)
    products += 0 if cfg["structure"] == "cross_only" else 2
    got = {}
    for capability, expected in (("AVX512", "onednn"), ("AVX2", "blas")):
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda c=capability: c)
        onednn.cpu_matmul.cache_clear()
        assert Scorer.build(model).matmul == expected
        calls.clear()
        got[expected] = dx.predict(model, ds, batch_size=128)
        # 300 rows in 3 chunks: every product of every chunk ran through oneDNN, or none did
        assert len(calls) == (3 * products if expected == "onednn" else 0)
        assert torch.allclose(got[expected], ref, rtol=1e-5, atol=1e-5), (got[expected] - ref).abs().max()
    assert torch.allclose(got["onednn"], got["blas"], rtol=1e-5, atol=1e-5)


def test_other_dtypes_and_devices_use_the_blas(monkeypatch):
    monkeypatch.setenv(onednn.ENV, "onednn")
    ds = _criteo_width(20)
    model = dx.DCNv2(ds.schema, dx.DCNConfig(cross="full", cross_layers=1, deep_layers=(8,)), seed=0).double()
    assert Scorer.build(model).matmul == "blas"
    assert Scorer.build(model, matmul="onednn").matmul == "blas"
