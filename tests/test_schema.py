import pytest

from dcn_explore import ConfigError, FeatureSpec, Schema
from dcn_explore.schema import auto_embedding_dim


def test_slices_follow_schema_order_with_unequal_widths():
    s = Schema([
        FeatureSpec("a", "categorical", vocab_size=10, embedding_dim=2),
        FeatureSpec("x", "dense"),
        FeatureSpec("g", "multivalent", vocab_size=5, embedding_dim=3, max_len=4),
    ])
    assert s.d == 6
    assert s.slices == {"a": slice(0, 2), "x": slice(2, 3), "g": slice(3, 6)}


def test_auto_width_is_the_papers_rule():
    assert auto_embedding_dim(10_000) == round(6 * 10_000 ** 0.25) == 60
    assert FeatureSpec("u", "categorical", vocab_size=10_000).embedding_dim == 60


def test_with_embedding_dims_global_and_per_feature():
    s = Schema([FeatureSpec("a", "categorical", vocab_size=10), FeatureSpec("b", "categorical", vocab_size=100),
                FeatureSpec("x", "dense")])
    assert s.with_embedding_dims(4).widths == [4, 4, 1]
    assert s.with_embedding_dims({"b": 7}).widths == [auto_embedding_dim(10), 7, 1]
    with pytest.raises(ConfigError, match="unknown features"):
        s.with_embedding_dims({"zzz": 3})


@pytest.mark.parametrize("kwargs, match", [
    (dict(name="a", kind="bogus"), "kind='bogus'"),
    (dict(name="a", kind="categorical", vocab_size=0), "vocab_size"),
    (dict(name="a", kind="multivalent", vocab_size=3), "max_len"),
    (dict(name="a", kind="dense", embedding_dim=4), "width 1"),
])
def test_bad_feature_specs_name_the_field(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        FeatureSpec(**kwargs)


def test_duplicate_names_rejected():
    with pytest.raises(ConfigError, match="duplicate"):
        Schema([FeatureSpec("a", "dense"), FeatureSpec("a", "dense")])


def test_round_trip_dict():
    s = Schema([FeatureSpec("a", "categorical", vocab_size=10, embedding_dim=2), FeatureSpec("x", "dense")])
    assert Schema.from_dict(s.to_dict()) == s
