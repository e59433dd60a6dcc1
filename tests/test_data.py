"""DataFrame encoding, synthetic generators and splits."""

import numpy as np
import pandas as pd
import pytest
import torch

import dcn_explore as dx
from dcn_explore import ConfigError, DataError


def _frame(n=40, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "city": rng.choice(["paris", "rome", "oslo"], n),
        "device": pd.Categorical(rng.choice(["ios", "android"], n)),
        "item": rng.integers(100, 110, n),
        "price": rng.normal(10, 2, n),
        "tags": ["a|b", "b", "", "c|a|b"] * (n // 4),
        "y": rng.integers(0, 2, n),
    })


def test_from_frame_encodes_strings_categories_ints_lists_and_dense():
    df = _frame()
    ds = dx.data.from_frame(df, label="y", categorical=["city", "device", "item"], dense=["price"], multivalent=["tags"])
    assert ds.schema.names == ["city", "device", "item", "tags", "price"]
    assert [f.kind for f in ds.schema] == ["categorical"] * 3 + ["multivalent", "dense"]
    enc = ds.encoder
    # ids 1.. for known values, most frequent first; 0 is out-of-vocabulary
    city_ids = ds.categorical[:, 0]
    assert set(city_ids.tolist()) == {1, 2, 3}
    assert enc.vocabulary("city")[int(city_ids[0]) - 1] == df.city.iloc[0]
    # dense standardised on the fitted frame
    assert float(ds.dense[:, 0].mean()) == pytest.approx(0.0, abs=1e-5)
    assert float(ds.dense[:, 0].std(unbiased=False)) == pytest.approx(1.0, abs=1e-4)
    # multivalent: 0 = padding, ids 2.. known values
    row3 = ds.multivalent[3, 0].tolist()
    assert sorted(enc.vocabulary("tags")[i - 2] for i in row3 if i) == ["a", "b", "c"]
    assert ds.multivalent[2, 0].tolist() == [0, 0, 0]
    assert ds.schema["tags"].max_len == 3


def test_batch_takes_rows_by_slice_or_row_numbers_of_any_shape():
    ds = dx.data.from_frame(_frame(), label="y", categorical=["city", "device", "item"], dense=["price"], multivalent=["tags"])
    tensors = lambda b: (b.categorical, b.multivalent, b.dense, b.label)  # noqa: E731
    for index in (torch.tensor([5, 0, 5, 39]), torch.tensor([[3, 1, 2], [0, 0, 7]]), torch.tensor([], dtype=torch.long),
                  torch.tensor([[1, 2]], dtype=torch.int32), torch.arange(40) % 3 == 0, slice(2, 9)):
        got = tensors(ds.batch(index))
        want = (ds.categorical[index], ds.multivalent[index], ds.dense[index], ds.label[index])
        assert all(g.shape == w.shape and torch.equal(g, w) for g, w in zip(got, want)), index
    assert ds.batch(torch.tensor([[3, 1, 2], [0, 0, 7]])).multivalent.shape == (2, 3, 1, 3)


def test_unseen_categories_and_missing_values_map_to_oov_and_mean():
    train = pd.DataFrame({"c": ["a", "b", "a"], "m": ["x|y", "y", "x"], "p": [1.0, 3.0, np.nan], "y": [0, 1, 1]})
    ds = dx.data.from_frame(train, label="y", categorical=["c"], dense=["p"], multivalent=["m"])
    assert float(ds.dense[2, 0]) == pytest.approx(0.0)  # missing -> fitted mean -> 0 after standardising
    test = pd.DataFrame({"c": ["zzz", None], "m": ["x|new", None], "p": [np.nan, 2.0], "y": [1, 0]})
    enc = ds.encoder.transform(test)
    assert enc.categorical[:, 0].tolist() == [0, 0]
    assert enc.multivalent[0, 0].tolist()[:2] == [ds.encoder.vocabulary("m").index("x") + 2, 1]
    assert enc.multivalent[1, 0].tolist() == [0, 0]
    assert enc.dense[:, 0].tolist() == pytest.approx([0.0, 0.0])


def test_split_frame_fits_vocabulary_on_the_training_part_only():
    df = pd.DataFrame({"c": [f"v{i}" for i in range(100)], "y": [i % 2 for i in range(100)]})
    train, val, test = dx.data.split_frame(df, (0.8, 0.1, 0.1), seed=0, label="y", categorical=["c"])
    assert (len(train), len(val), len(test)) == (80, 10, 10)
    assert train.schema["c"].vocab_size == 81          # 80 seen values + OOV
    assert val.categorical.eq(0).all() and test.categorical.eq(0).all()


def test_min_count_sends_rare_values_to_oov():
    df = pd.DataFrame({"c": ["a"] * 5 + ["b"], "y": [0, 1] * 3})
    ds = dx.data.from_frame(df, label="y", categorical=["c"], min_count=2)
    assert ds.categorical[:, 0].tolist() == [1, 1, 1, 1, 1, 0]


def test_embedding_dim_override():
    ds = dx.data.from_frame(_frame(), label="y", categorical=["city", "item"], embedding_dim={"item": 5})
    assert ds.schema["item"].width == 5
    assert ds.schema["city"].width == round(6 * 4 ** 0.25)


# -- bad input --------------------------------------------------------------------------------
def test_missing_label_column_is_named():
    df = _frame().drop(columns="y")
    with pytest.raises(DataError, match=r"missing column\(s\) \['y'\]"):
        dx.data.from_frame(df, label="y", categorical=["city"])


def test_non_numeric_dense_column_names_column_row_and_value():
    df = _frame()
    df["price"] = df["price"].astype(object)
    df.loc[7, "price"] = "cheap"
    with pytest.raises(DataError, match=r"dense column 'price', row 7 .*'cheap' is not a number"):
        dx.data.from_frame(df, label="y", dense=["price"])


def test_empty_frame_rejected():
    with pytest.raises(DataError, match="empty"):
        dx.data.from_frame(_frame().iloc[:0], label="y", categorical=["city"])


def test_non_binary_labels_rejected_for_binary_task():
    df = _frame()
    df.loc[3, "y"] = 4
    with pytest.raises(DataError, match=r"labels 0/1 .*row 3 .* has 4"):
        dx.data.from_frame(df, label="y", categorical=["city"])
    assert len(dx.data.from_frame(df, label="y", categorical=["city"], task="regression")) == len(df)


def test_missing_label_value_and_infinite_dense_rejected():
    df = _frame()
    df["y"] = df["y"].astype(float)
    df.loc[2, "y"] = np.nan
    with pytest.raises(DataError, match="label column 'y' is missing at row 2"):
        dx.data.from_frame(df, label="y", categorical=["city"])
    df = _frame()
    df.loc[5, "price"] = np.inf
    with pytest.raises(DataError, match="row 5 .*not finite"):
        dx.data.from_frame(df, label="y", dense=["price"])


@pytest.mark.parametrize("kwargs, match", [
    (dict(categorical=["city"], dense=["city"]), "both categorical and dense"),
    (dict(), "at least one feature"),
    (dict(categorical=["city"], task="multiclass"), "task='multiclass'"),
    (dict(dense=["price"], dense_transform="cube"), "dense_transform"),
])
def test_bad_encoder_options_name_the_field(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        dx.data.from_frame(_frame(), label="y", **kwargs)


def test_not_a_dataframe():
    with pytest.raises(DataError, match="expected a pandas DataFrame"):
        dx.data.from_frame({"y": [1]}, label="y", categorical=["a"])


# -- tensors, splits ------------------------------------------------------------------------------
def test_split_is_a_seeded_partition():
    ds = dx.data.planted_crosses(n_samples=1000, seed=1)
    a = ds.split((0.8, 0.1, 0.1), seed=3)
    b = ds.split((0.8, 0.1, 0.1), seed=3)
    assert [len(p) for p in a] == [800, 100, 100]
    assert all(torch.equal(x.label, y.label) and torch.equal(x.categorical, y.categorical) for x, y in zip(a, b))
    keys = [set(map(tuple, torch.cat([p.categorical, p.dense], 1).tolist())) for p in a]
    assert sum(len(k) for k in keys) == len(set().union(*keys)) == 1000
    with pytest.raises(ConfigError, match="sum to 1"):
        ds.split((0.5, 0.2))


def test_tabular_data_validates_ids_against_vocabulary():
    s = dx.Schema([dx.FeatureSpec("a", "categorical", vocab_size=3)])
    with pytest.raises(DataError, match="outside its vocabulary"):
        dx.data.TabularData(s, categorical=torch.tensor([[0], [5]]), label=torch.tensor([0.0, 1.0]))


# -- synthetic generators ------------------------------------------------------------------------
def test_planted_crosses_truth_and_named_features():
    ds = dx.data.planted_crosses(n_samples=5000, seed=0)
    cats = ds.schema.of_kind("categorical")
    assert len(cats) >= 12 and len(ds.schema.of_kind("dense")) == 3
    assert len({f.vocab_size for f in cats}) >= 6  # varied vocabulary sizes
    t = ds.truth
    assert len(t) == 6 and set(t.columns) >= {"feature_a", "feature_b", "order", "weight"}
    assert set(t.feature_a) | set(t.feature_b) <= set(ds.schema.names)
    assert 0.2 < ds.label_mean() < 0.8
    tri = dx.data.planted_crosses(n_samples=500, seed=0, n_triples=2)
    assert (tri.truth.order == 3).sum() == 2
    with pytest.raises(ConfigError, match="pairs"):
        dx.data.planted_crosses(n_samples=500, pairs=[("user_id", "nope")])


def test_planted_label_follows_the_planted_logit():
    ds = dx.data.planted_crosses(n_samples=20000, seed=0)
    logit = torch.from_numpy(ds.meta["bayes_logit"])
    # the Bayes logit explains the labels far better than the base rate
    base = torch.nn.functional.binary_cross_entropy(torch.full_like(ds.label, ds.label_mean()), ds.label)
    bayes = torch.nn.functional.binary_cross_entropy_with_logits(logit, ds.label)
    assert float(bayes) < float(base) - 0.1


@pytest.mark.parametrize("kind, d", [("f1", 4), ("f2", 3), ("f3", 100), ("combined", 50), ("order3", 50), ("order4", 50)])
def test_paper_polynomials_match_their_truth(kind, d):
    ds = dx.data.paper_polynomial(kind, n_samples=256, seed=0)
    x = ds.dense.double()
    assert x.shape == (256, d) and float(x.abs().max()) <= 1.0
    y = torch.zeros(256, dtype=torch.float64)
    idx = {n: i for i, n in enumerate(ds.schema.names)}
    for feats, w in zip(ds.truth.features, ds.truth.weight):
        y += w * torch.prod(x[:, [idx[f] for f in feats]], dim=1)
    if kind == "combined":
        wl = torch.tensor(ds.meta["linear_weights"], dtype=torch.float64)
        ws = torch.tensor(ds.meta["sine_weights"], dtype=torch.float64)
        y += x @ wl + 0.1 * torch.sin(2 * x @ ws + 0.1)
        assert float((ds.label.double() - y).std()) == pytest.approx(0.01, rel=0.2)  # the 0.01·ε noise
        assert [int((ds.truth.order == o).sum()) for o in (2, 3, 4)] == [20, 10, 5]
    else:
        assert torch.allclose(ds.label.double(), y, atol=1e-5)
    if kind == "f3":
        assert len(ds.truth) == 100
    if kind.startswith("order"):
        assert set(ds.truth.order) == {int(kind[-1])} and len(ds.truth) == 20
