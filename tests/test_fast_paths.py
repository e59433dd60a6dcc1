"""The fast training paths give the same results as the plain ones: row-sparse embeddings with an
exactly-kept lazy moving average, sparse-aware gradient clipping, streamed batches."""

import pytest
import torch

import dcn_explore as dx
from dcn_explore.train import _EMA, _Batches, clip_gradients


class TwoPart(torch.nn.Module):
    def __init__(self, rows: int = 10):
        super().__init__()
        self.table = torch.nn.Parameter(torch.randn(rows, 3))
        self.w = torch.nn.Parameter(torch.randn(3))


def test_lazy_ema_of_row_sparse_tables_equals_the_dense_average():
    """Read (finalized) mid-training as well as at the end; rows 16-19 are never touched."""
    torch.manual_seed(0)
    m = TwoPart(rows=20)
    ema = _EMA(m, decay=0.9, warmup=True, lazy_tables=[m.table], max_updates=50)
    ref = None
    rng = torch.Generator().manual_seed(1)
    for step in range(1, 31):
        rows = torch.unique(torch.randint(0, 16, (3,), generator=rng))
        before = m.table.detach()[rows].clone()
        with torch.no_grad():  # "optimizer step": only the touched rows and the dense part change
            m.table[rows] += torch.randn(len(rows), 3, generator=rng)
            m.w += 0.1
        ema.update(m, {m.table: (rows, before, m.table.detach()[rows].clone())})
        d = min(0.9, (1 + step) / (10 + step))
        cur = torch.cat([m.table.detach().flatten(), m.w.detach()])
        ref = cur.clone() if ref is None else d * ref + (1 - d) * cur
        if step % 7 == 0 or step == 30:
            ema.finalize()
            got = torch.cat([ema.module.table.detach().flatten(), ema.module.w.detach()])
            assert torch.allclose(got, ref, atol=1e-6), step
    assert torch.equal(ema.module.table.detach()[16:], m.table.detach()[16:])


def test_sparse_aware_clipping_matches_clip_grad_norm():
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(6, 2))
    b = torch.nn.Parameter(torch.randn(4))
    dense_grad_a = torch.zeros(6, 2)
    rows = torch.tensor([1, 4, 1])  # an uncoalesced duplicate row
    vals = torch.randn(3, 2) * 10
    dense_grad_a.index_add_(0, rows, vals)
    gb = torch.randn(4) * 10
    a.grad, b.grad = torch.sparse_coo_tensor(rows[None], vals, (6, 2), check_invariants=True), gb.clone()
    norm = clip_gradients([a, b], 1.0)
    a2, b2 = torch.nn.Parameter(a.detach().clone()), torch.nn.Parameter(b.detach().clone())
    a2.grad, b2.grad = dense_grad_a.clone(), gb.clone()
    ref_norm = torch.nn.utils.clip_grad_norm_([a2, b2], 1.0)
    assert float(norm) == pytest.approx(float(ref_norm), rel=1e-6)
    assert torch.allclose(a.grad.to_dense(), a2.grad, atol=1e-6) and torch.allclose(b.grad, b2.grad, atol=1e-6)


@pytest.fixture(scope="module")
def parts():
    return dx.data.planted_crosses(n_samples=6000, seed=0).split((0.8, 0.1, 0.1), seed=0)


def test_sparse_embedding_path_trains_the_same_model_family_to_similar_quality(parts):
    train, val, test = parts
    res = {}
    for sparse in (False, True):
        m = dx.DCNv2(train.schema, dx.DCNConfig(cross="full", cross_layers=1, deep_layers=(32,)), seed=0)
        r = dx.fit(m, train, val, dx.TrainConfig(epochs=4, progress=False, sparse_embeddings=sparse))
        assert r.summary["sparse_embeddings"] is sparse
        assert not m.embedding.sparse_grad  # the switch does not leak out of fit
        res[sparse] = dx.evaluate(m, test)
    assert abs(res[True]["logloss"] - res[False]["logloss"]) < 0.02
    assert abs(res[True]["auc"] - res[False]["auc"]) < 0.02


def test_sparse_lookup_gradient_is_the_coalesced_dense_gradient():
    """Lookups on the sparse path hand back one row per distinct id, sorted, marked coalesced, whose
    values are the dense gradient's rows (ids repeat within the batch and across features)."""
    from dcn_explore.model.embedding import _SparseRows

    g = torch.Generator().manual_seed(0)
    table = torch.randn(50, 4, generator=g, requires_grad=True)
    ids = torch.randint(0, 12, (64, 3), generator=g)  # many repeats; rows 12.. never looked up
    upstream = torch.randn(64, 3, 4, generator=g)
    out = _SparseRows.apply(table, ids)
    assert torch.equal(out, table.detach()[ids])
    (grad,) = torch.autograd.grad(out, table, upstream)
    (dense,) = torch.autograd.grad(table[ids], table, upstream)
    assert grad.is_sparse and grad.is_coalesced()
    assert torch.equal(grad._indices()[0], torch.unique(ids))
    assert torch.allclose(grad.to_dense(), dense, rtol=0, atol=1e-6)
    ref = torch.sparse_coo_tensor(ids.reshape(1, -1), upstream.reshape(-1, 4), table.shape, check_invariants=True).coalesce()
    assert torch.equal(grad._indices(), ref._indices())


@pytest.mark.parametrize("ids", [
    [4], [4, 4], [9, 2, 9, 0, 2], list(range(10)), list(range(10))[::-1],
    torch.randint(0, 50, (2000,), generator=torch.Generator().manual_seed(0)).tolist(),  # many repeats
    torch.randint(0, 324_463, (13_312,), generator=torch.Generator().manual_seed(1)).tolist(),  # a Criteo batch
    [2**49 - 1, 3, 2**49 - 1],  # 3 ids take 2 bits: the packed key still fits in 63 bits
    [2**61, 5, 2**61, 0],  # too large to pack: torch.unique's path
    [],
])
def test_unique_rows_is_torch_unique(ids):
    from dcn_explore.model.embedding import unique_rows

    t = torch.tensor(ids, dtype=torch.long)
    rows, inverse = unique_rows(t)
    ref_rows, ref_inverse = torch.unique(t, sorted=True, return_inverse=True)
    assert rows.dtype == inverse.dtype == torch.long
    assert torch.equal(rows, ref_rows) and torch.equal(inverse, ref_inverse)
    assert torch.equal(rows[inverse], t)


def test_clipping_scales_dense_gradients_as_clip_grad_norm_and_leaves_small_ones_untouched():
    """The dense path clips with ``clip_gradients`` as well: the same norm and the same scaled gradients
    as ``torch.nn.utils.clip_grad_norm_``; under the bound the gradients keep their exact values."""
    g = torch.Generator().manual_seed(0)
    for scale, max_norm in ((10.0, 1.0), (1e-3, 1.0)):
        grads = [torch.randn(5, 3, generator=g) * scale, torch.randn(7, generator=g) * scale]
        ours = [torch.nn.Parameter(torch.zeros_like(x)) for x in grads]
        ref = [torch.nn.Parameter(torch.zeros_like(x)) for x in grads]
        for p, q, x in zip(ours, ref, grads):
            p.grad, q.grad = x.clone(), x.clone()
        norm = clip_gradients(ours, max_norm)
        ref_norm = torch.nn.utils.clip_grad_norm_(ref, max_norm)
        assert torch.equal(norm, ref_norm)
        for p, q, x in zip(ours, ref, grads):
            assert torch.equal(p.grad, q.grad)
            assert torch.equal(p.grad, x) == (float(ref_norm) <= max_norm)


@pytest.mark.parametrize("rows", [[0, 3, 4, 9], [3, 0, 4, 9], [0, 3, 3, 9], [7], []])
def test_coalesced_marks_sorted_distinct_rows_and_coalesces_the_rest(rows):
    from dcn_explore.train import coalesced

    vals = torch.arange(len(rows) * 2, dtype=torch.float32).view(-1, 2)
    g = torch.sparse_coo_tensor(torch.tensor([rows], dtype=torch.long).view(1, -1), vals, (10, 2), check_invariants=True)
    out = coalesced(g)
    assert out.is_coalesced()
    assert torch.equal(out.to_dense(), g.to_dense())
    assert torch.equal(out._indices(), g.coalesce()._indices())


def test_sparse_auto_threshold():
    from dcn_explore.train import SPARSE_AUTO_MIN_PARAMS, _use_sparse

    small = dx.DCNv2(dx.data.planted_crosses(n_samples=50).schema, dx.DCNConfig(cross_layers=1, deep_layers=(4,)))
    assert small.num_parameters("embedding") < SPARSE_AUTO_MIN_PARAMS
    assert not _use_sparse(dx.TrainConfig(), small) and _use_sparse(dx.TrainConfig(sparse_embeddings=True), small)


def test_multivalent_features_train_on_the_sparse_path():
    import pandas as pd

    df = pd.DataFrame({"u": [i % 7 for i in range(400)], "tags": ["a|b", "c", "", "b|c|d"] * 100,
                       "y": [i % 2 for i in range(400)]})
    ds = dx.data.from_frame(df, label="y", categorical=["u"], multivalent=["tags"])
    m = dx.DCNv2(ds.schema, dx.DCNConfig(cross_layers=1, structure="cross_only"), seed=0)
    before = m.embedding.mv_tables[0].detach().clone()
    dx.fit(m, ds, None, dx.TrainConfig(epochs=1, batch_size=64, progress=False, sparse_embeddings=True))
    after = m.embedding.mv_tables[0].detach()
    pad = m.embedding._mv_groups[0][2]
    assert not torch.equal(before[:pad], after[:pad])
    assert torch.count_nonzero(after[pad]) == 0  # the padding row stays zero


def test_streamed_batches_equal_indexed_batches(parts):
    train, _, _ = parts
    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
    direct = list(_Batches(train, torch.device("cpu"), 700).epoch(perm))
    streamed_src = _Batches(train, torch.device("cpu"), 700)
    streamed_src.stream = True  # force the prefetching path (a thread gathers the next batch)
    streamed = list(streamed_src.epoch(perm))
    assert len(direct) == len(streamed) == -(-len(train) // 700)
    for a, b in zip(direct, streamed):
        assert torch.equal(a.categorical, b.categorical) and torch.equal(a.label, b.label)


def test_compiled_training_forward_gives_the_same_run(parts):
    """torch.compile plumbing (the aot_eager backend traces forward and backward without C++ codegen)."""
    train, val, _ = parts
    for sparse in (False, True):  # row-sparse embedding gradients stay eager; the networks above are compiled
        hist = []
        for comp in (False, "aot_eager"):
            m = dx.DCNv2(train.schema, dx.DCNConfig(cross="low_rank", rank=4, cross_layers=1, deep_layers=(8,)), seed=0)
            cfg = dx.TrainConfig(epochs=1, progress=False, compile=comp, sparse_embeddings=sparse)
            hist.append(dx.fit(m, train, val, cfg).history)
        assert abs(hist[0].val_logloss.iloc[0] - hist[1].val_logloss.iloc[0]) < 1e-5


def test_lazy_adam_updates_exactly_as_sparse_adam_and_refuses_dense_gradients():
    import torch.nn.functional as F

    from dcn_explore.errors import ConfigError
    from dcn_explore.train import LazyAdam

    torch.manual_seed(0)
    start = torch.randn(50, 4)
    ours, ref = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    opts = [LazyAdam([ours], lr=1e-2), torch.optim.SparseAdam([ref], lr=1e-2)]
    seen = torch.zeros(50, dtype=torch.bool)
    for step in range(5):
        ids, go = torch.randint(0, 40, (16, 3)), torch.randn(16, 3, 4)  # repeated ids: gradients add up
        seen[ids.flatten()] = True
        for p, o in zip((ours, ref), opts):
            p.grad = None
            F.embedding(ids, p, sparse=True).backward(go)
            o.step()
        assert torch.equal(ours, ref), step
    assert torch.equal(ours[~seen], start[~seen]) and not torch.equal(ours[seen], start[seen])  # lazy: rows 40.. untouched
    ours.grad = torch.ones_like(ours)
    with pytest.raises(ConfigError, match="row-sparse"):
        opts[0].step()


def _wide_schema():
    """d = 16 x 16 + 5 = 261 columns: wide enough for the padded training products, not a multiple of 8."""
    from dcn_explore.schema import FeatureSpec, Schema

    feats = [FeatureSpec(f"x{i}", "dense") for i in range(5)]
    feats += [FeatureSpec(f"c{i}", "categorical", vocab_size=20 + i, embedding_dim=16) for i in range(16)]
    return Schema(feats)


_CROSS_VARIANTS = [
    ("full", {}), ("low_rank", {"rank": 8}), ("full", {"cross_bias": False}), ("full", {"cross_residual": False}),
    ("full", {"diag_scale": 0.5}), ("low_rank", {"rank": 8, "cross_bias": False, "diag_scale": 0.5}),
]


@pytest.mark.parametrize("structure, cross, extra", [(s, c, e) for s in ("stacked", "parallel", "cross_only")
                                                     for c, e in _CROSS_VARIANTS] + [("deep_only", "full", {})])
def test_padded_training_head_equals_the_plain_head_with_the_same_gradients(structure, cross, extra):
    """The training forward pads x0 (261 -> 264 columns) and the kernels that meet it; its output and the
    gradients of x0 and of every parameter equal the unpadded head's."""
    schema = _wide_schema()
    m = dx.DCNv2(schema, dx.DCNConfig(cross=cross, cross_layers=2, deep_layers=(32, 16), structure=structure, **extra), seed=0)
    with torch.no_grad():  # a bias that is not zero, so that a padded bias in the wrong place would show
        for name, p in m.named_parameters():
            if name.endswith(".b") or name.endswith(".bias"):
                p.normal_(0.0, 0.1)
    m.train()
    x0 = torch.randn(64, schema.d, generator=torch.Generator().manual_seed(0))
    upstream = torch.randn(64, generator=torch.Generator().manual_seed(1))
    grads = []
    for padded in (True, False):
        m.TRAIN_PAD_MIN_D = 256 if padded else 10**9  # on the instance: the class keeps its value
        assert m.train_pad() == (3 if padded else 0)
        x = x0.clone().requires_grad_(True)
        m.zero_grad(set_to_none=True)
        out = m.head(x)
        out.backward(upstream)
        grads.append([out.detach(), x.grad] + [p.grad for _, p in m.named_parameters() if p.grad is not None])
    assert len(grads[0]) == len(grads[1]) == 2 + sum(1 for n, _ in m.named_parameters() if not n.startswith("embedding"))
    for a, b in zip(*grads):
        assert a.shape == b.shape and float((a - b).abs().max()) <= 1e-5 * float(b.abs().max())  # float rounding


def test_training_pad_applies_only_while_training_wide_full_or_low_rank_models():
    schema = _wide_schema()
    full = dx.DCNv2(schema, dx.DCNConfig(cross="full", cross_layers=1, deep_layers=(8,)), seed=0)
    mix = dx.DCNv2(schema, dx.DCNConfig(cross="mixture", rank=4, experts=2, cross_layers=1, deep_layers=(8,)), seed=0)
    v1 = dx.DCNv2(schema, dx.DCNConfig(cross="vector", cross_layers=1, deep_layers=(8,)), seed=0)
    narrow = dx.DCNv2(dx.data.planted_crosses(n_samples=50).schema, dx.DCNConfig(cross_layers=1, deep_layers=(8,)))
    assert narrow.d < dx.DCNv2.TRAIN_PAD_MIN_D and narrow.d % 8
    assert full.train_pad() == 3 and mix.train_pad() == 0 and v1.train_pad() == 0 and narrow.train_pad() == 0
    with torch.no_grad():
        assert full.train_pad() == 0
    full.eval()
    assert full.train_pad() == 0
