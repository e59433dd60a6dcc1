"""dx.sweep(..., batched=True) gives the same per-run results as running the runs one by one."""

import pytest

import dcn_explore as dx
from dcn_explore.batched import can_batch, group_key
from dcn_explore.sweep import expand

TOL = 1e-5  # absolute, on test/val metrics: float reordering of batched vs single matmuls (observed <= 1e-7)


def _both_modes(data, base, grid, train, cols=("test_logloss", "test_auc", "val_logloss", "val_auc")):
    """The sweep one by one and batched (two seeds); asserts the ``cols`` metrics agree within TOL."""
    seq = dx.sweep(data, base, grid, seeds=2, train=train, progress=False)
    bat = dx.sweep(data, base, grid, seeds=2, train=train, progress=False, batched=True)
    for col in cols:
        assert (seq[col] - bat[col]).abs().max() < TOL, col
    return seq, bat


@pytest.fixture(scope="module")
def data():
    return dx.data.planted_crosses(n_samples=2000, seed=0)


@pytest.mark.parametrize("base, grid", [
    (dx.DCNConfig(cross="low_rank", rank=4, cross_layers=2, structure="stacked", deep_layers=(16,)), {"rank": [2, 4, 8]}),
    (dx.DCNConfig(cross="mixture", rank=4, experts=2, cross_layers=1, structure="parallel", deep_layers=(8,)), {"rank": [2, 6]}),
    (dx.DCNConfig(cross="full", cross_layers=1, structure="cross_only"), {}),
])
def test_batched_equals_one_by_one(data, base, grid):
    train = dx.TrainConfig(epochs=3, batch_size=256, progress=False, early_stopping=1)  # early stopping is exercised
    seq, bat = _both_modes(data, base, grid, train)
    assert list(seq.run_id) == list(bat.run_id)
    assert list(seq.epochs) == list(bat.epochs) and list(seq.best_epoch) == list(bat.best_epoch)
    assert list(seq.params) == list(bat.params)


def test_grouping_rules(data):
    base = dx.DCNConfig(cross="low_rank", rank=4, cross_layers=1)
    specs = expand(base, {"rank": [2, 4], "cross_layers": [1, 2]}, dx.TrainConfig(), seeds=2)
    keys = {group_key(s) for s in specs}
    assert len(keys) == 2  # ranks and seeds share a group; depth does not
    assert all(can_batch(s, data.schema) for s in specs)
    assert not can_batch(expand(base, {}, dx.TrainConfig(lr_schedule="plateau"), 1)[0], data.schema)
    assert not can_batch(expand(base.replace(deep_dropout=0.1), {}, dx.TrainConfig(), 1)[0], data.schema)
    assert not can_batch(expand(base, {}, dx.TrainConfig(amp=True), 1)[0], data.schema)  # bf16 autocast: one by one


def test_batched_sweep_resumes_and_reuses(data, tmp_path):
    base = dx.DCNConfig(cross="low_rank", rank=2, cross_layers=1, structure="cross_only")
    train = dx.TrainConfig(epochs=1, progress=False)
    first = dx.sweep(data, base, {"rank": [2, 4]}, seeds=1, train=train, results_dir=tmp_path, progress=False, batched=True)
    assert not first.reused.any()
    again = dx.sweep(data, base, {"rank": [2, 4, 8]}, seeds=1, train=train, results_dir=tmp_path, progress=False, batched=True)
    assert list(again.reused) == [True, True, False]
    from dcn_explore.sweep import load_run

    model, record = load_run(tmp_path, again.run_id.iloc[2])
    assert model.config.rank == 8 and record["test"]["auc"] == pytest.approx(again.test_auc.iloc[2])


def _tagged_frame(n=1500, seed=0):
    """Categorical ids of several vocabularies (so several embedding widths), a multivalent column
    and dense columns: the embedding's concatenation order differs from the schema order."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    tags = [list(rng.choice(list("abcdefgh"), size=rng.integers(0, 4), replace=False)) for _ in range(n)]
    df = pd.DataFrame({
        "user": rng.integers(0, 300, n), "item": rng.integers(0, 40, n), "city": rng.integers(0, 5, n),
        "tags": tags, "price": rng.normal(size=n), "age": rng.normal(size=n),
    })
    df["y"] = ((df.user % 3 == 0) ^ (df.price > 0) ^ df.tags.map(lambda t: "a" in t)).astype(int)
    df["score"] = df.price * (df.item % 4) + df.tags.map(len) + 0.1 * rng.normal(size=n)
    return df


@pytest.mark.parametrize("task", ["binary", "regression"])
@pytest.mark.parametrize("base, grid", [
    (dx.DCNConfig(cross="full", cross_layers=2, structure="stacked", deep_layers=(16, 8)), {}),
    (dx.DCNConfig(cross="low_rank", rank=2, cross_layers=2, structure="parallel", deep_layers=(8,), cross_bias=False),
     {"rank": [2, 3, 12]}),  # three rank groups
    (dx.DCNConfig(cross="low_rank", rank=4, cross_layers=1, structure="cross_only", cross_residual=False), {}),
    (dx.DCNConfig(structure="deep_only", deep_layers=(16,)), {}),
])
def test_stacked_engine_equals_one_by_one_with_multivalent_and_dense(task, base, grid):
    df = _tagged_frame()
    label = "y" if task == "binary" else "score"
    data = dx.data.from_frame(df.drop(columns=["score" if task == "binary" else "y"]), label=label,
                              categorical=["user", "item", "city"], dense=["price", "age"], multivalent=["tags"], task=task)
    # user and city share a table (width 4), item has its own: the concatenation is not the schema order
    base = base.replace(embedding_dim={"user": 4, "item": 6, "city": 4})
    emb = dx.DCNv2(data.schema, base).embedding
    assert not emb.identity_order and emb.mv_tables  # the case the stacked engine must re-order and pad
    from dcn_explore.batched import _Stack

    assert _Stack([dx.DCNv2(data.schema, base, task=task)], "cpu", dx.train.DTYPES["float32"]).fast
    train = dx.TrainConfig(epochs=2, batch_size=128, progress=False)
    _both_modes(data, base, grid, train, ("test_logloss", "test_auc") if task == "binary" else ("test_rmse", "val_rmse"))


@pytest.mark.parametrize("kind, residual, bias", [("low_rank", True, True), ("low_rank", False, False), ("full", True, True),
                                                   ("full", False, False)])
def test_stacked_cross_network_backward_is_the_gradient(kind, residual, bias):
    import torch

    from dcn_explore.batched import _CrossNet, _Logit

    torch.manual_seed(0)
    G, B, d, layers = 5, 3, 4, 2
    slices = [slice(0, 2), slice(2, 5)] if kind == "low_rank" else [slice(0, G)]
    ranks = [2, 3]

    def leaf(*shape):
        return torch.randn(*shape, dtype=torch.double, requires_grad=True)

    x0 = leaf(G, B, d)
    per_layer = []
    for _ in range(layers):
        if kind == "low_rank":  # per rank group UT = [Uᵀ; bᵀ] (r + 1, d) or Uᵀ, and VT = Vᵀ (r, d)
            ps = [t for s, r in zip(slices, ranks) for t in (leaf(s.stop - s.start, r + bias, d), leaf(s.stop - s.start, r, d))]
        else:
            ps = ([leaf(G, d)] if bias else []) + [leaf(G, d, d)]
        per_layer.append(ps)
    flat = [t for ps in per_layer for t in ps]
    layout = (kind, residual, slices, layers, bias)
    assert torch.autograd.gradcheck(lambda x0, *p: _CrossNet.apply(x0, layout, *p), (x0, *flat))
    # and the forward is Eq. 1 / Eq. 2, layer by layer, member by member
    out = _CrossNet.apply(x0, layout, *flat)
    for i, s in enumerate(slices):
        for j, g in enumerate(range(s.start, s.stop)):
            x = x0[g]
            for ps in per_layer:
                if kind == "low_rank":
                    ut, vt = ps[2 * i][j], ps[2 * i + 1][j]
                    W, b = ut[: ranks[i]].T @ vt, ut[-1] if bias else 0
                else:
                    W, b = ps[-1][g], ps[0][g] if bias else 0
                x = x0[g] * (x @ W.T + b) + (x if residual else 0)
            assert torch.allclose(out[g], x)
    h, w, b = leaf(G, B, d), leaf(G, 1, d), leaf(G, 1)
    assert torch.autograd.gradcheck(_Logit.apply, (h, w, b))
    assert torch.allclose(_Logit.apply(h, w, b), torch.stack([h[g] @ w[g, 0] + b[g] for g in range(G)]))


@pytest.mark.parametrize("task", ["binary", "regression"])
@pytest.mark.parametrize("cfg, ranks", [
    (dx.DCNConfig(cross="low_rank", rank=2, cross_layers=2, structure="cross_only"), [2, 2, 5]),  # two rank groups
    (dx.DCNConfig(cross="low_rank", rank=3, cross_layers=1, structure="cross_only", cross_residual=False, cross_bias=False),
     [3, 20]),
    (dx.DCNConfig(cross="full", cross_layers=2, structure="cross_only"), [None, None]),
])
def test_fused_cross_only_step_is_the_autograd_gradient(task, cfg, ranks):
    """The fused training step of cross-only models (lookup, cross network, logit, loss and their
    backward in one pass, activations in kept buffers) gives the losses and every parameter's
    gradient of the plain autograd path, also under per-member upstream weights; the evaluation
    forward (kept buffers, no graph) gives the same outputs."""
    import torch

    from dcn_explore.batched import _Stack

    planted = dx.data.planted_crosses(n_samples=400, seed=1)  # 12 id features, widths 8..34, 3 dense
    label = planted.label if task == "binary" else torch.randn(len(planted), generator=torch.Generator().manual_seed(0))
    data = dx.data.TabularData(planted.schema, categorical=planted.categorical, dense=planted.dense, label=label, task=task)
    models = [dx.DCNv2(data.schema, cfg.replace(rank=r), task=task, seed=s) for s, r in enumerate(ranks)]
    stack = _Stack(models, "cpu", torch.float64)
    assert stack.fused_loss
    G = len(models)
    batch = data.batch(torch.randint(0, len(data), (G, 128), generator=torch.Generator().manual_seed(2)))
    # the tables of 4..46 rows take the transposed accumulation (128 lookups per member), the larger ones row by row
    assert {t.shape[1] for t in stack.params["embedding.cat_tables.0"]} == {4}
    weights = torch.linspace(0.5, 2.0, G, dtype=torch.float64)
    inputs = (batch.categorical, batch.multivalent, batch.dense.double())
    results = []
    for fused in (True, False):
        stack._workspace.clear()
        if fused:
            per = stack.loss(*inputs, batch.label.double())
        else:
            out = stack.forward(*inputs)
            lossf = torch.nn.functional.binary_cross_entropy_with_logits if task == "binary" else torch.nn.functional.mse_loss
            per = lossf(out, batch.label.double(), reduction="none").mean(1)
        tensors = stack.tensors()
        for t in tensors:
            t.grad = None
        (per * weights).sum().backward()
        results.append((per.detach(), [t.grad.clone() for t in tensors]))
    (loss_f, grads_f), (loss_a, grads_a) = results
    assert torch.allclose(loss_f, loss_a, rtol=1e-12, atol=1e-12)
    assert len(grads_f) == len(grads_a) == len(stack.tensors())
    for name_grad_f, name_grad_a in zip(grads_f, grads_a):
        assert torch.allclose(name_grad_f, name_grad_a, rtol=1e-10, atol=1e-12)
    with torch.no_grad():
        kept = stack.forward(*inputs)
    assert torch.allclose(kept, stack.forward(*inputs).detach(), rtol=1e-12, atol=1e-12)
    # the step without autograd (what fit_batched runs): the gradients of the summed loss in .grad,
    # overwritten (not accumulated) by the next call, in contiguous tensors (the fused Adam needs them)
    tensors = stack.tensors()
    for t in tensors:
        t.grad = None
    per = stack.loss(*inputs, batch.label.double())
    per.sum().backward()
    reference = [t.grad.clone() for t in tensors]
    for t in tensors:
        t.grad = None
    for _ in range(2):
        per_direct = stack.fused_step(batch.categorical, batch.dense.double(), batch.label.double())
    assert not per_direct.requires_grad and torch.allclose(per_direct, loss_f, rtol=1e-12, atol=1e-12)
    for t, ref in zip(tensors, reference):
        assert t.grad.is_contiguous() and t.grad.shape == t.shape
        assert torch.allclose(t.grad, ref, rtol=1e-10, atol=1e-12)


def test_batched_records_match_one_by_one_on_tie_heavy_data():
    """Two id features only: many validation rows are identical, so their predictions tie, and a
    metric like AUC moves with how ties break. The records' metrics must still match one-by-one
    training (a stacked scoring pass broke the ties differently: validation AUC off by 5.7e-4)."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    n = 600
    a, b, _, _ = rng.normal(size=(4, n))
    df = pd.DataFrame({"a": a, "b": b, "c": rng.integers(0, 5, n), "d": rng.integers(0, 300, n)})
    df["y"] = ((df.a * df.b + (df.c == 2)) > 0.3).astype(int)
    data = dx.data.from_frame(df[["c", "d", "y"]], label="y", categorical=["c", "d"], dense=[])
    base = dx.DCNConfig(cross="low_rank", rank=2, cross_layers=2, structure="cross_only")
    train = dx.TrainConfig(epochs=2, batch_size=64, progress=False)
    _both_modes(data, base, {"rank": [2, 3]}, train)


def test_flatten_keeps_values_and_shares_the_gradient_buffer():
    """After ``flatten()`` every stacked tensor is a view of one flat leaf (values unchanged), its
    ``.grad`` the matching view of the leaf's gradient, and ``values_like`` maps a tensor shaped like the
    leaf back to the same views; Adam on the leaf moves each tensor as Adam on the tensors one by one;
    the per-block gradient norms and scaling equal the per-tensor ones."""
    import torch

    from dcn_explore.batched import _Stack

    data = dx.data.planted_crosses(n_samples=200, seed=3)
    base = dx.DCNConfig(cross="low_rank", rank=2, cross_layers=2, structure="cross_only")

    def stack():
        return _Stack([dx.DCNv2(data.schema, base.replace(rank=r), seed=s) for s, r in enumerate([2, 2, 5])], "cpu", torch.float64)

    flat, plain = stack(), stack()
    before = [t.detach().clone() for t in flat.tensors()]
    leaf = flat.flatten()
    assert flat.optimized() == [leaf] and leaf.numel() == sum(t.numel() for t in before)
    leaf.grad.copy_(torch.randn(leaf.numel(), dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    size = leaf.element_size()
    for t, b, p in zip(flat.tensors(), before, plain.tensors()):
        offset = (t.data_ptr() - leaf.data_ptr()) // size
        assert torch.equal(t, b) and t.grad.data_ptr() == leaf.grad.data_ptr() + offset * size and t.grad.stride() == t.stride()
        p.grad = t.grad.clone()
    # the views tile the buffer: every element belongs to exactly one tensor
    covered = torch.zeros(leaf.numel(), dtype=torch.int64)
    for t in flat.tensors():
        covered.as_strided(t.shape, t.stride(), (t.data_ptr() - leaf.data_ptr()) // size).add_(1)
    assert bool((covered == 1).all())
    doubled = flat.values_like([leaf.detach() * 2])
    assert all(torch.equal(v, 2 * t) for k in flat.names for v, t in zip(doubled[k], flat.params[k]))
    assert torch.allclose(flat.norms(flat.names, grads=True), plain.norms(plain.names, grads=True), rtol=1e-12)
    coef = torch.tensor([0.5, 2.0, 3.0], dtype=torch.float64)
    flat.scale_grads(coef)
    plain.scale_grads(coef)
    assert all(torch.equal(t.grad, p.grad) for t, p in zip(flat.tensors(), plain.tensors()))
    torch.optim.Adam([leaf], lr=0.1).step()
    torch.optim.Adam(plain.tensors(), lr=0.1).step()
    assert all(torch.allclose(t, p, rtol=0, atol=1e-15) for t, p in zip(flat.tensors(), plain.tensors()))


def test_batched_dense_only_cross_only_matches_one_by_one(monkeypatch):
    """Cross-only models of dense features alone (no tables: the fused step's lookup has no ids)."""
    import numpy as np
    import pandas as pd

    from dcn_explore.batched import _Stack

    calls = []
    fused_step = _Stack.fused_step
    monkeypatch.setattr(_Stack, "fused_step", lambda self, *a: calls.append(1) or fused_step(self, *a))

    rng = np.random.default_rng(1)
    df = pd.DataFrame(rng.normal(size=(500, 4)), columns=list("abcd"))
    df["y"] = ((df.a * df.b + df.c) > 0).astype(int)
    data = dx.data.from_frame(df, label="y", categorical=[], dense=list("abcd"))
    base = dx.DCNConfig(cross="low_rank", rank=2, cross_layers=2, structure="cross_only")
    train = dx.TrainConfig(epochs=2, batch_size=64, progress=False)
    _both_modes(data, base, {"rank": [2, 3]}, train)
    assert calls  # the batched runs went through the fused step


def test_batched_l2_term_spares_the_bias():
    """The L2 term covers the cross kernels (U, V) but not the bias, which the batched engine keeps as
    the last row of ``[Uᵀ; bᵀ]``: with a strong L2 the batched runs still match one by one (a penalty
    that took in the bias row moved the validation log loss by ~1e-3)."""
    data = dx.data.planted_crosses(n_samples=1500, seed=2)
    base = dx.DCNConfig(cross="low_rank", rank=2, cross_layers=2, structure="cross_only")
    train = dx.TrainConfig(epochs=2, batch_size=128, progress=False, l2=0.5)
    _both_modes(data, base, {"rank": [2, 3]}, train)
