"""The cross layers compute the paper's equations (Eq. 1–4), checked against each other and by hand."""

import pytest
import torch

import dcn_explore as dx
from dcn_explore.model.cross import CrossNetwork, FullCross, LowRankCross, MixtureCross, VectorCross
from dcn_explore.model.embedding import FeatureEmbedding

D = 7


@pytest.fixture(autouse=True)
def _float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _inputs(b=5, d=D, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, d, generator=g), torch.randn(b, d, generator=g)


def test_full_layer_is_eq1():
    layer = FullCross(D)
    with torch.no_grad():
        layer.b.normal_()
    x0, xl = _inputs()
    expected = x0 * (xl @ layer.W.T + layer.b) + xl
    assert torch.allclose(layer(x0, xl), expected)
    # one example by hand, element by element
    i = 3
    W, b = layer.W.detach(), layer.b.detach()
    by_hand = [float(x0[0, i] * (sum(W[i, j] * xl[0, j] for j in range(D)) + b[i]) + xl[0, i])]
    assert float(layer(x0, xl)[0, i].detach()) == pytest.approx(by_hand[0])


def test_low_rank_with_full_rank_factors_equals_full_layer():
    full, low = FullCross(D), LowRankCross(D, rank=D)
    with torch.no_grad():
        full.b.normal_()
        low.b.copy_(full.b)
        low.U.copy_(full.W)            # U Vᵀ = W · I = W
        low.V.copy_(torch.eye(D))
    x0, xl = _inputs()
    assert torch.allclose(low(x0, xl), full(x0, xl))
    # and a random factorisation: W := U Vᵀ
    with torch.no_grad():
        low.U.normal_(), low.V.normal_()
        full.W.copy_(low.U @ low.V.T)
    assert torch.allclose(low(x0, xl), full(x0, xl))


def test_mixture_with_constant_gate_and_one_expert_is_eq2():
    low = LowRankCross(D, rank=3)
    mix = MixtureCross(D, rank=3, experts=1, gate="constant", activation="identity")
    with torch.no_grad():
        low.b.normal_()
        mix.b.copy_(low.b)
        mix.U[0].copy_(low.U)
        mix.V[0].copy_(low.V)
        mix.C[0].copy_(torch.eye(3))
    x0, xl = _inputs()
    assert torch.allclose(mix(x0, xl), low(x0, xl))


def test_mixture_is_the_gate_weighted_sum_of_experts_eq3_eq4():
    K, r = 3, 2
    for gate in ("softmax", "sigmoid", "constant"):
        for act in ("identity", "relu", "tanh", "hard_tanh"):
            mix = MixtureCross(D, rank=r, experts=K, gate=gate, activation=act)
            with torch.no_grad():
                mix.b.normal_()
                mix.C.normal_()
            x0, xl = _inputs()
            g = {"identity": lambda z: z, "relu": torch.relu, "tanh": torch.tanh,
                 "hard_tanh": lambda z: z.clamp(-1, 1)}[act]
            if gate == "constant":
                G = torch.ones(xl.shape[0], K)
            else:
                logits = xl @ mix.G
                G = torch.softmax(logits, -1) if gate == "softmax" else torch.sigmoid(logits)
            expected = xl.clone()
            for i in range(K):
                inner = g(g(xl @ mix.V[i]) @ mix.C[i].T) @ mix.U[i].T    # U_i g(C_i g(V_iᵀ x))
                expected = expected + G[:, i:i + 1] * (x0 * (inner + mix.b))  # G_i E_i
            assert torch.allclose(mix(x0, xl), expected), (gate, act)


def test_vector_cross_is_eq1_with_W_equal_one_w_transpose():
    vec, full = VectorCross(D, bias=False), FullCross(D, bias=False)
    with torch.no_grad():
        full.W.copy_(torch.ones(D, 1) @ vec.w[None])  # W = 1 wᵀ
    x0, xl = _inputs()
    assert torch.allclose(vec(x0, xl), full(x0, xl))
    # DCN-v1's bias is added outside x0 ⊙ (·): x_{l+1} = x0 (x_lᵀ w) + b + x_l
    vb = VectorCross(D)
    with torch.no_grad():
        vb.b.normal_()
    assert torch.allclose(vb(x0, xl), x0 * (xl @ vb.w)[:, None] + vb.b + xl)


def _finite_differences(values: list[torch.Tensor], order: int) -> torch.Tensor:
    v = torch.stack(values)
    for _ in range(order):
        v = v[1:] - v[:-1]
    return v


@pytest.mark.parametrize("cross", ["full", "low_rank", "mixture", "vector"])
@pytest.mark.parametrize("layers", [1, 2, 3])
def test_l_layer_cross_network_is_a_polynomial_of_degree_l_plus_1(cross, layers):
    """x_L(t·x0) is a polynomial in t of degree exactly L+1: its (L+2)-th finite difference
    vanishes and its (L+1)-th does not (Theorems 4.1/4.2: crosses of order 1 … L+1)."""
    cfg = dx.DCNConfig(cross=cross, cross_layers=layers, structure="cross_only",
                       rank=4 if cross in ("low_rank", "mixture") else None,
                       experts=2 if cross == "mixture" else 1, gate="constant")
    torch.manual_seed(layers)
    net = CrossNetwork(D, cfg)
    with torch.no_grad():
        for layer in net.layers:
            layer.b.normal_()
    x0 = torch.randn(3, D)
    with torch.no_grad():
        vals = [net(t * x0) for t in torch.arange(layers + 3, dtype=torch.float64)]
    top = _finite_differences(vals, layers + 1)
    vanish = _finite_differences(vals, layers + 2)
    assert top.abs().max() > 1e-3
    assert vanish.abs().max() < 1e-9 * max(1.0, float(torch.stack(vals).abs().max()))


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_without_bias_and_residual_the_cross_network_is_homogeneous(layers):
    """Fig. 4 ablation: x0 ⊙ (W x_l) alone gives only crosses of order exactly L+1."""
    cfg = dx.DCNConfig(cross="full", cross_layers=layers, structure="cross_only", cross_bias=False, cross_residual=False)
    net = CrossNetwork(D, cfg)
    x0 = torch.randn(4, D)
    assert torch.allclose(net(2.0 * x0), 2.0 ** (layers + 1) * net(x0))


def test_diag_scale_adds_alpha_identity():
    full, scaled = FullCross(D), FullCross(D, diag_scale=0.5)
    with torch.no_grad():
        scaled.W.copy_(full.W)
        full.W.add_(0.5 * torch.eye(D))
    x0, xl = _inputs()
    assert torch.allclose(scaled(x0, xl), full(x0, xl))


@pytest.mark.parametrize("structure", ["stacked", "parallel", "cross_only", "deep_only"])
def test_structures_compose_as_in_fig1(structure, planted_small):
    torch.set_default_dtype(torch.float32)
    cfg = dx.DCNConfig(cross="full", cross_layers=2, structure=structure, deep_layers=(8, 4))
    m = dx.DCNv2(planted_small.schema, cfg, seed=0).eval()
    b = planted_small.batch(slice(0, 6))
    x0 = m.embed(*b.inputs())
    if structure == "stacked":
        expected = m.logit(m.deep(m.cross(x0)))
    elif structure == "parallel":
        expected = m.logit(torch.cat([m.cross(x0), m.deep(x0)], 1))
    elif structure == "cross_only":
        expected = m.logit(m.cross(x0))
    else:
        expected = m.logit(m.deep(x0))
        assert m.cross is None
    assert torch.allclose(m(*b.inputs()), expected.squeeze(-1))


def test_initialisation_is_he_normal_with_zero_biases():
    torch.set_default_dtype(torch.float32)
    d = 400
    layer = FullCross(d)
    assert float(layer.W.detach().std()) == pytest.approx((2 / d) ** 0.5, rel=0.02)
    assert torch.count_nonzero(layer.b) == 0
    low = LowRankCross(d, rank=50)
    assert float(low.V.detach().std()) == pytest.approx((2 / d) ** 0.5, rel=0.05)
    assert float(low.U.detach().std()) == pytest.approx((2 / 50) ** 0.5, rel=0.05)


def test_parameter_count_and_flops(planted_small):
    torch.set_default_dtype(torch.float32)
    s = planted_small.schema
    d = s.d
    emb = sum(f.vocab_size * f.width for f in s if f.kind == "categorical")
    m = dx.DCNv2(s, dx.DCNConfig(cross="full", cross_layers=2, structure="cross_only"))
    assert m.num_parameters() == emb + 2 * (d * d + d) + (d + 1)
    assert m.flops_per_example() == 2 * (2 * d * d + 3 * d) + 2 * d
    lr = dx.DCNv2(s, dx.DCNConfig(cross="low_rank", rank=5, cross_layers=1, structure="parallel", deep_layers=(16,)))
    assert lr.num_parameters("cross") == 2 * d * 5 + d
    assert lr.num_parameters("deep") == d * 16 + 16
    assert lr.num_parameters("logit") == (d + 16) + 1
    mix = dx.DCNv2(s, dx.DCNConfig(cross="mixture", rank=5, experts=3, cross_layers=1, structure="cross_only"))
    assert mix.num_parameters("cross") == 3 * (2 * d * 5 + 25) + d * 3 + d


def test_embedding_init_auto_rule(planted_small):
    torch.set_default_dtype(torch.float32)
    assert dx.DCNConfig(structure="cross_only").init_std == 0.2
    assert dx.DCNConfig(structure="stacked").init_std == 0.01
    assert dx.DCNConfig(embedding_init_std=0.05).init_std == 0.05
    m = dx.DCNv2(planted_small.schema, dx.DCNConfig(cross_layers=1, deep_layers=(4,)), seed=0)
    assert float(m.embedding.cat_tables[0].detach().std()) == pytest.approx(0.01, rel=0.1)
    with pytest.raises(dx.ConfigError, match="embedding_init_std=0"):
        dx.DCNConfig(embedding_init_std=0)


@pytest.mark.parametrize("order, identity", [
    (["x1", "x2", "a", "b", "c"], True),    # Criteo's layout: dense first, then ids of one width
    (["a", "x1", "b", "tags", "x2"], False),  # interleaved kinds
    (["a", "c", "b", "tags", "x1", "x2"], False),  # a and b share a table but are not adjacent
])
def test_x0_holds_each_feature_in_schema_order(order, identity):
    """``x0 = [e_1; ...; e_k]`` in the schema's order whatever the layout; the column permutation is
    skipped exactly when the pieces' concatenation already is that order."""
    from dcn_explore.schema import FeatureSpec, Schema

    specs = {"x1": FeatureSpec("x1", "dense"), "x2": FeatureSpec("x2", "dense"),
             "a": FeatureSpec("a", "categorical", vocab_size=7, embedding_dim=3),
             "b": FeatureSpec("b", "categorical", vocab_size=5, embedding_dim=3),
             "c": FeatureSpec("c", "categorical", vocab_size=4, embedding_dim=3 if identity else 2),
             "tags": FeatureSpec("tags", "multivalent", vocab_size=6, embedding_dim=2, max_len=3)}
    schema = Schema([specs[n] for n in order])
    emb = FeatureEmbedding(schema)
    assert emb.identity_order is identity
    g = torch.Generator().manual_seed(0)
    cats = schema.of_kind("categorical")
    cat = torch.stack([torch.randint(0, f.vocab_size, (4,), generator=g) for f in cats], 1)
    mv = torch.tensor([[[1, 2, 0]], [[3, 0, 0]], [[5, 4, 2]], [[1, 1, 0]]]) if "tags" in order else torch.zeros(4, 0, 0, dtype=torch.long)
    dense = torch.randn(4, 2, generator=g)
    x0 = emb(cat, mv, dense).detach()
    assert x0.shape == (4, schema.d)
    for name, cols in schema.slices.items():
        f = schema[name]
        if f.kind == "dense":
            expected = dense[:, [n for n in order if specs[n].kind == "dense"].index(name)].unsqueeze(1)
        elif f.kind == "categorical":
            expected = emb.table(name)[cat[:, cats.index(f)]]
        else:
            expected = torch.stack([emb.table(name)[row[0][row[0] > 0]].mean(0) for row in mv])
        assert torch.allclose(x0[:, cols], expected.detach(), rtol=0, atol=1e-7), name
