"""The one-node training paths of dcn_explore/model/fused.py (full-rank cross stack, deep network): when they are taken,
that they give autograd's gradients, and that they fail loudly rather than silently when misused."""

import pytest
import torch

import dcn_explore as dx
from dcn_explore.model import fused
from dcn_explore.schema import FeatureSpec, Schema


def _schema() -> Schema:
    """d = 16 x 16 + 5 = 261 (>= TRAIN_PAD_MIN_D, not a multiple of 8)."""
    feats = [FeatureSpec(f"x{i}", "dense") for i in range(5)]
    return Schema(feats + [FeatureSpec(f"c{i}", "categorical", vocab_size=20 + i, embedding_dim=16) for i in range(16)])


def _model(dtype=torch.float32, **extra) -> dx.DCNv2:
    """Three full-rank layers on a (32,) deep network unless ``extra`` says otherwise; biases not zero,
    so that one in the wrong place would show."""
    m = dx.DCNv2(_schema(), dx.DCNConfig(**{"cross": "full", "cross_layers": 3, "deep_layers": (32,), **extra}), seed=0)
    m = m.to(dtype)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith(".b") or name.endswith(".bias"):
                p.normal_(0.0, 0.1)
    return m.train()


def _grads(m, x0, upstream, enabled: bool, monkeypatch) -> list[torch.Tensor]:
    monkeypatch.setattr(fused, "ENABLED", enabled)
    x = x0.clone().requires_grad_(True)
    m.zero_grad(set_to_none=True)
    out = m.head(x)
    out.backward(upstream)
    return [out.detach(), x.grad] + [p.grad for n, p in m.named_parameters() if not n.startswith("embedding")]


def _calls(monkeypatch) -> list[int]:
    calls = []
    real = fused._FullCrossStack.apply
    monkeypatch.setattr(fused._FullCrossStack, "apply", lambda *a: calls.append(1) or real(*a))
    return calls


@pytest.mark.parametrize("structure", ["stacked", "parallel", "cross_only"])
def test_fused_stack_gives_autograds_output_and_gradients_in_float64(structure, monkeypatch):
    m = _model(torch.float64, structure=structure)
    x0 = torch.randn(32, m.d, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    up = torch.randn(32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    calls = _calls(monkeypatch)
    got = _grads(m, x0, up, True, monkeypatch)
    assert len(calls) == 1  # the fused node was used
    want = _grads(m, x0, up, False, monkeypatch)
    assert len(calls) == 1  # and not when switched off
    n_params = 2 * 3 + 2 + (2 if structure != "cross_only" else 0)  # cross W, b; logit; the deep layer
    assert len(got) == len(want) == 2 + n_params
    for a, b in zip(got, want):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("extra", [{"cross_bias": False}, {"cross_residual": False}, {"diag_scale": 0.5}])
def test_other_full_rank_layers_take_the_plain_graph(extra, monkeypatch):
    m = _model(**extra)
    calls = _calls(monkeypatch)
    m.head(torch.randn(8, m.d)).sum().backward()
    assert calls == [] and m.train_pad() == 3  # padded, but through the layers' own forward


def test_autocast_and_no_grad_take_the_plain_graph(monkeypatch):
    m = _model()
    calls = _calls(monkeypatch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        m.head(torch.randn(8, m.d)).float().sum().backward()
    with torch.no_grad():
        m.head(torch.randn(8, m.d))
    assert calls == []
    m.head(torch.randn(8, m.d)).sum().backward()
    assert calls == [1]


def test_an_optimizer_step_between_forward_and_backward_raises():
    """The padded kernels are a reused buffer; saving W and b makes autograd's version check guard it."""
    m = _model()
    out = m.head(torch.randn(8, m.d))
    with torch.no_grad():
        m.cross.layers[1].W.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


def test_two_forwards_before_their_backwards_and_a_dtype_change(monkeypatch):
    """Each forward rewrites the layers' buffers with the same W and b, so both graphs stay right; a model
    moved to float64 gets new buffers of that dtype."""
    m = _model()
    xa, xb = torch.randn(8, m.d), torch.randn(8, m.d)
    oa, ob = m.head(xa), m.head(xb)
    (oa.sum() + 2 * ob.sum()).backward()
    got = [p.grad.clone() for p in m.cross.parameters()]
    monkeypatch.setattr(fused, "ENABLED", False)
    m.zero_grad(set_to_none=True)
    (m.head(xa).sum() + 2 * m.head(xb).sum()).backward()
    for a, b in zip(got, [p.grad for p in m.cross.parameters()]):  # float rounding (oneDNN or BLAS products)
        assert float((a - b).abs().max()) <= 1e-5 * float(b.abs().max())
    monkeypatch.setattr(fused, "ENABLED", True)
    m.double()
    out = m.head(torch.randn(8, m.d, dtype=torch.float64))
    assert out.dtype == torch.float64 and m.cross.layers[0]._padded_kernel_buffer.dtype == torch.float64
    out.sum().backward()


def test_the_stack_needs_a_padding_column():
    m = _model()
    with pytest.raises(ValueError, match="expected more than d=261"):
        fused.full_cross_stack(m.cross.layers, torch.randn(4, m.d), m.d)


def test_fit_with_the_fused_stack_matches_the_plain_graph(monkeypatch):
    """20 dx.fit steps (Adam, L2 on the kernels, clipping, EMA, row-sparse tables): every parameter agrees
    with the plain graph's run up to float rounding."""
    schema, n = _schema(), 20 * 64
    g = torch.Generator().manual_seed(0)
    data = dx.data.TabularData(
        schema, categorical=torch.stack([torch.randint(0, 20 + i, (n,), generator=g) for i in range(16)], 1),
        dense=torch.randn(n, 5, generator=g), label=(torch.rand(n, generator=g) < 0.3).float())
    tc = dx.TrainConfig(epochs=1, batch_size=64, progress=False, early_stopping=None, l2=1e-3)
    runs = []
    for enabled in (True, False):
        monkeypatch.setattr(fused, "ENABLED", enabled)
        m = dx.DCNv2(schema, dx.DCNConfig(cross="full", cross_layers=3, deep_layers=(32,)), seed=0)
        calls = _calls(monkeypatch)
        dx.fit(m, data, None, tc)
        assert len(calls) == (20 if enabled else 0)
        runs.append(dict(m.named_parameters()))
    for name, p in runs[0].items():
        torch.testing.assert_close(p, runs[1][name], rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("backend", ["blas", "onednn"])
@pytest.mark.parametrize("structure", ["stacked", "parallel", "deep_only"])
def test_float32_products_on_either_backend_give_the_plain_graphs_gradients(structure, backend, monkeypatch):
    """float32 on the CPU: the fused nodes' products go through oneDNN's linear where
    ``onednn.cpu_matmul`` picks it (AVX-512 hosts) and the BLAS elsewhere; both agree with the plain graph
    up to float rounding."""
    from dcn_explore.model import onednn

    if backend == "onednn" and onednn.onednn_unusable():
        pytest.skip(onednn.onednn_unusable())
    monkeypatch.setattr(onednn, "cpu_matmul", lambda width=0: backend)
    m = _model(structure=structure, deep_layers=(48, 24))
    x0 = torch.randn(64, m.d, generator=torch.Generator().manual_seed(0))
    up = torch.randn(64, generator=torch.Generator().manual_seed(1))
    seen = []
    real = fused.products
    monkeypatch.setattr(fused, "products", lambda x: seen.append(real(x)[0].__name__) or real(x))
    got = _grads(m, x0, up, True, monkeypatch)
    assert seen and set(seen) == {"_dnn_mm_t" if backend == "onednn" else "_mm_t"}
    want = _grads(m, x0, up, False, monkeypatch)
    assert len(seen) == (2 if structure != "deep_only" else 1)  # the switched-off run used neither node
    for a, b in zip(got, want):
        assert a.shape == b.shape and float((a - b).abs().max()) <= 1e-5 * float(b.abs().max())


def test_deep_network_with_dropout_takes_the_plain_graph_and_an_input_without_gradient_works(monkeypatch):
    m = dx.DCNv2(_schema(), dx.DCNConfig(structure="deep_only", deep_layers=(16,), deep_dropout=0.1), seed=0).train()
    assert not fused.usable_mlp(m.deep, torch.randn(2, 264))
    m = dx.DCNv2(_schema(), dx.DCNConfig(structure="deep_only", deep_layers=(16, 8)), seed=0).train()
    x = torch.randn(8, m.d)  # no gradient wanted for the input: only the parameters get one
    out = m.head(x)
    out.sum().backward()
    got = [p.grad.clone() for p in m.deep.parameters()]
    monkeypatch.setattr(fused, "ENABLED", False)
    m.zero_grad(set_to_none=True)
    m.head(x).sum().backward()
    for a, b in zip(got, [p.grad for p in m.deep.parameters()]):
        assert a.shape == b.shape and float((a - b).abs().max()) <= 1e-5 * float(b.abs().max())


def test_batched_sweep_through_torch_func_takes_the_plain_graph():
    """The batched sweep's vmap engine (here: full rank with a diagonal scale, a deep network, d = 261)
    runs the model under ``torch.func.vmap``, which autograd Functions without ``setup_context`` do not
    take: the deep network must not go through the fused node there. Same metrics as one by one."""
    schema, n = _schema(), 600
    g = torch.Generator().manual_seed(0)
    data = dx.data.TabularData(
        schema, categorical=torch.stack([torch.randint(0, 20 + i, (n,), generator=g) for i in range(16)], 1),
        dense=torch.randn(n, 5, generator=g), label=(torch.rand(n, generator=g) < 0.3).float())
    base = dx.DCNConfig(cross="full", cross_layers=2, deep_layers=(16,), diag_scale=0.5)
    tc = dx.TrainConfig(epochs=1, progress=False)
    runs = [dx.sweep(data, base, {"cross_layers": [2]}, seeds=2, train=tc, batched=b, progress=False) for b in (True, False)]
    for col in ("test_auc", "val_auc", "test_logloss"):
        assert list(runs[0][col]) == pytest.approx(list(runs[1][col]), abs=1e-5), col


def test_a_second_derivative_through_the_fused_nodes_raises():
    m = _model()
    x = torch.randn(8, m.d, requires_grad=True)
    (gx,) = torch.autograd.grad(m.head(x).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiate twice a function that was marked with @once_differentiable"):
        gx.sum().backward()
