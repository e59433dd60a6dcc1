"""The Sec. 6 study runners: rows, columns, models, parameter counts, claim checks, and one quality check."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from dcn_explore import studies as S
from dcn_explore.errors import ConfigError

COLUMNS = {"study", "task", "model", "layers", "seed", "rmse", "val_rmse", "train_rmse", "params",
           "train_time_s", "steps", "best_epoch", "epochs", "n_train", "n_test", "d"}

#: our parameter counts (every trainable parameter, the output bias included)
PARAMS = {
    ("f1", "DCN (1 layer)"): 13, ("f1", "DCN-V2 (1 layer)"): 25, ("f1", "DNN (1 layer)"): 25, ("f1", "DNN (large)"): 41_401,
    ("f2", "DCN (1 layer)"): 10, ("f2", "DCN-V2 (1 layer)"): 16, ("f2", "DNN (1 layer)"): 16, ("f2", "DNN (large)"): 41_201,
    ("f3", "DCN (1 layer)"): 301, ("f3", "DCN-V2 (1 layer)"): 10_201, ("f3", "DNN (1 layer)"): 10_201, ("f3", "DNN (large)"): 759_809,
}


@pytest.fixture(scope="module")
def t1_small() -> pd.DataFrame:
    torch.set_num_threads(1)
    return S.table1(seeds=2, n_samples=400, epochs=1, large_train={})


def test_table1_rows_models_and_sizes(t1_small):
    df = t1_small
    assert COLUMNS <= set(df.columns)
    assert len(df) == 3 * 4 * 2
    assert all(sorted(s) == [0, 1] for _, s in df.groupby(["task", "model"]).seed)
    assert set(df.study) == {"table1"} and set(df.layers) == {1}
    assert list(df.model.unique()) == list(S.TABLE1_MODELS)
    got = df.groupby(["task", "model"]).params.agg(["min", "max"])
    assert (got["min"] == got["max"]).all()  # size does not depend on the seed
    assert got["min"].to_dict() == PARAMS
    assert df.rmse.map(math.isfinite).all() and (df.rmse > 0).all()
    assert (df.n_train == 320).all() and (df.n_test == 40).all()
    assert df.set_index("task").d.groupby(level=0).first().to_dict() == {"f1": 4, "f2": 3, "f3": 100}


def test_table1_sizes_match_the_paper(t1_small):
    t = S.table1_vs_paper(t1_small)
    assert len(t) == 12 and t.paper_rmse.notna().all()
    exact = t[t.paper_params < 1000]  # the paper prints these exactly; ours add the output bias
    assert (exact.params == exact.paper_params + 1).all()
    rounded = t[t.paper_params >= 1000]  # "10K", "41K", "758K"
    assert ((rounded.params - rounded.paper_params).abs() / rounded.paper_params < 0.03).all()
    # the same-size DNN really is the same size as the DCN-V2 layer
    s = t.set_index(["task", "model"]).params
    for task in S.TABLE1_TASKS:
        assert s[(task, "DNN (1 layer)")] == s[(task, "DCN-V2 (1 layer)")]


def test_table1_quality_dcnv2_fits_f1_far_better_than_dnn():
    df = S.table1(tasks=["f1"], models=["DCN-V2 (1 layer)", "DNN (1 layer)"], seeds=[0], n_samples=1500,
                  epochs=25, train={"lr": 0.02, "batch_size": 64})
    r = df.set_index("model").rmse
    assert r["DCN-V2 (1 layer)"] < 1e-3, r.to_dict()
    assert r["DNN (1 layer)"] > 100 * r["DCN-V2 (1 layer)"], r.to_dict()


def test_table1_training_recipe_and_overrides():
    specs = S.table1_specs(tasks=["f3"], seeds=[3], n_samples=500, epochs=7, train={"lr": 0.01})
    by = {s.model: s for s in specs}
    assert by["DCN-V2 (1 layer)"].train.dtype == "float64" and by["DCN-V2 (1 layer)"].train.epochs == 7
    assert by["DCN-V2 (1 layer)"].train.lr == 0.01 and by["DCN-V2 (1 layer)"].train.l2 == 0.0
    assert by["DCN-V2 (1 layer)"].train.ema_decay is None and by["DCN-V2 (1 layer)"].train.lr_schedule == "cosine"
    # the large DNN on f3 gets its own (cheaper) recipe by default, overriding epochs too
    large = by["DNN (large)"].train
    assert large.dtype == "float32" and large.epochs == S.TABLE1_DEFAULTS["large_train"]["f3"]["epochs"]
    assert {s.seed for s in specs} == {3}
    default = S.table1_specs(seeds=1)
    assert {s.task: s.n_samples for s in default} == S.TABLE1_DEFAULTS["n_samples"]


def test_table2_rows_and_equal_sizes():
    df = S.table2(layers=[1, 2, 3], seeds=1, n_samples=400, epochs=1, d=8)
    assert COLUMNS <= set(df.columns)
    assert len(df) == 2 * 3 and set(df.task) == {"combined"}
    p = df.pivot(index="layers", columns="model", values="params")
    d = 8
    assert list(p.index) == [1, 2, 3]
    assert (p["DCN-V2"] == p["DNN"]).all()
    assert p["DCN-V2"].tolist() == [l * (d * d + d) + d + 1 for l in (1, 2, 3)]
    assert (df.d == d).all()


def test_fig4_rows_variants_and_sizes():
    d = 10
    df = S.fig4(orders=[3, 4], layers=[1, 2], seeds=1, n_samples=400, epochs=1, d=d)
    assert len(df) == 2 * 4 * 2
    assert {"order", "variant"} <= set(df.columns)
    assert set(zip(df.task, df.order)) == {("order3", 3), ("order4", 4)}
    for r in df.itertuples():
        bias, _ = S.FIG4_VARIANTS[r.variant]
        assert r.params == r.layers * (d * d + (d if bias else 0)) + d + 1, r
    cfgs = {v: S.fig4_config(v, 2) for v in S.FIG4_VARIANTS}
    assert [(c.cross_bias, c.cross_residual) for c in cfgs.values()] == [(False, False), (True, False), (False, True), (True, True)]


def test_fig4_quality_homogeneous_layer_matches_order():
    # x0 ⊙ (W x_l) alone is a homogeneous polynomial of degree l + 1: an order-3 target is
    # reachable at 2 layers and not at 1
    df = S.fig4(orders=[3], layers=[1, 2], variants=["x0*(Wx)"], seeds=[0], n_samples=3000, epochs=10, d=6,
                train={"lr": 0.02, "batch_size": 64})
    r = df.set_index("layers").rmse
    assert r[2] < 0.1 * r[1], r.to_dict()


def test_dcn_variants_and_warm_restart_cycles():
    dcn, dcn_res = S.table1_config("DCN (1 layer)", "f1"), S.table1_config("DCN (1 layer, +x_l)", "f1")
    assert (dcn.cross, dcn.cross_residual, dcn_res.cross, dcn_res.cross_residual) == ("vector", False, "vector", True)
    assert S.table1_config("DCN-V2 (1 layer)", "f1").cross_residual  # Eq. 1 as printed
    spec = S.table1_specs(tasks=["f3"], models=["DCN-V2 (1 layer)"], seeds=[4], epochs=7,
                          train={"lr": 1e-2, "cycles": 3, "cycle_decay": 0.5})[0]
    cyc = spec.cycle_configs()
    assert [c.epochs for c in cyc] == [3, 2, 2]
    assert [c.lr for c in cyc] == pytest.approx([1e-2, 5e-3, 2.5e-3])
    assert len({c.seed for c in cyc}) == 3 and cyc[0].seed == 4
    assert all(c.lr_schedule == "cosine" and c.dtype == "float64" for c in cyc)
    with pytest.raises(ConfigError, match="cycles"):
        S.table1_specs(tasks=["f1"], epochs=2, train={"cycles": 0})
    with pytest.raises(ConfigError, match="cycle_decay"):
        S.fig4_specs(train={"cycle_decay": 1.5})
    # a run trains every cycle: steps add up over the restarts
    df = S.table1(tasks=["f2"], models=["DCN-V2 (1 layer)"], seeds=1, n_samples=500, epochs=3, train={"cycles": 3})
    assert df.steps.iloc[0] == 3 * math.ceil(400 / 256) and df.cycles.iloc[0] == 3


def _fake(rows, **fixed):
    df = pd.DataFrame(rows)
    for k, v in fixed.items():
        df[k] = v
    df["params"] = 1
    df["train_time_s"] = 0.0
    return df


def test_summarize_means_over_seeds():
    df = _fake([{"task": "f1", "model": "m", "seed": s, "rmse": r} for s, r in enumerate([1e-2, 1e-4])], study="x", layers=1)
    s = S.summarize(df)
    assert len(s) == 1 and s.seeds.iloc[0] == 2
    assert s.rmse.iloc[0] == pytest.approx(0.00505) and s.rmse_gmean.iloc[0] == pytest.approx(1e-3)
    assert s.rmse_min.iloc[0] == 1e-4 and s.rmse_max.iloc[0] == 1e-2


def _t1_frame(values):
    return _fake([{"task": t, "model": m, "seed": 0, "rmse": values.get((t, m), v)}
                  for (t, m, v) in S.PAPER_TABLE1[["task", "model", "rmse"]].itertuples(index=False)],
                 study="table1", layers=1)


def test_table1_checks_pass_on_paper_numbers_and_catch_failures():
    # the paper's own numbers, floored at our float32 precision, satisfy every claim
    paper = {(t, m): max(v, 5e-8) for t, m, v in S.PAPER_TABLE1[["task", "model", "rmse"]].itertuples(index=False)}
    ok = S.table1_checks(_t1_frame(paper))
    assert len(ok) == 3 * 4 + 1 and ok.holds.all(), ok
    bad = S.table1_checks(_t1_frame({**paper, ("f3", "DCN-V2 (1 layer)"): 3e-2, ("f1", "DNN (large)"): 5e-4,
                                     ("f2", "DNN (1 layer)"): 1e-3}))
    failed = set(bad.claim[~bad.holds])
    assert failed == {
        "f3: DCN-V2 (1 layer) RMSE <= 0.0001",
        "f1: DNN (large) RMSE >= 0.001",
        "f3: DCN (1 layer) RMSE >= 100 x DCN-V2's",  # 2.6 / 3e-2 < 100
        "f2: the paper's ordering of the models",  # DNN (1 layer) 1e-3 now beats DNN (large) 1.4e-3
    }, bad


def _t2_frame(v2, dnn):
    rows = [{"model": "DCN-V2", "layers": l, "seed": 0, "rmse": r} for l, r in enumerate(v2, 1)]
    rows += [{"model": "DNN", "layers": l, "seed": 0, "rmse": r} for l, r in enumerate(dnn, 1)]
    return _fake(rows, study="table2", task="combined")


def test_table2_checks():
    paper = S.PAPER_TABLE2
    good = _t2_frame(paper[paper.model == "DCN-V2"].rmse.tolist(), paper[paper.model == "DNN"].rmse.tolist())
    assert S.table2_checks(good).holds.all()
    rising = S.table2_checks(_t2_frame([0.14, 0.03, 0.01, 0.02, 0.03], [0.13, 0.1, 0.1, 0.1, 0.1]))
    assert rising.set_index("claim").holds.to_dict() == {
        "DCN-V2: RMSE falls from 1 to 2 to 3 layers": True,
        "DCN-V2: no rise beyond 3 layers (<= 1.1 x layer 3)": False,
        "DNN: flat over layers (best >= layer-1 / 2)": True,
        "DNN above DCN-V2 from 3 layers on": True,
    }
    dnn_learns = S.table2_checks(_t2_frame([0.14, 0.03, 0.01, 0.01, 0.01], [0.13, 0.05, 0.02, 0.005, 0.005]))
    assert not dnn_learns.holds.all()


def test_fig4_checks():
    rows = []
    for p in (3, 4):
        for v in S.FIG4_VARIANTS:
            for l in range(1, 6):
                r = (1e-3 if l == p - 1 else 0.5) if v == "x0*(Wx)" else (1e-2 if l >= p - 1 else 0.3)
                rows.append({"order": p, "variant": v, "layers": l, "seed": 0, "rmse": r})
    df = _fake(rows, study="fig4")
    assert S.fig4_checks(df).holds.all()
    df.loc[(df.order == 3) & (df.variant == "+bias+residual") & (df.layers == 5), "rmse"] = 0.2
    df.loc[(df.order == 4) & (df.variant == "x0*(Wx)") & (df.layers == 2), "rmse"] = 5e-3
    c = S.fig4_checks(df).set_index("claim").holds
    assert len(c) == 6
    assert not c["order 3: with bias+residual, layers >= 2 stay within 2x of their best"]
    assert not c["order 3: with bias+residual, layers >= 2 fit (<= 0.5 x the 1-layer RMSE)"]  # 0.2 > 0.5 * 0.3
    assert c["order 4: with bias+residual, layers >= 3 fit (<= 0.5 x the 1-layer RMSE)"]

    assert not c["order 4: x0*(Wx) fits only at layer 3 (others >= 10x worse)"]
    assert c["order 3: x0*(Wx) fits only at layer 2 (others >= 10x worse)"]
    w = S.fig4_summary(df)
    assert w[w.variant == "x0*(Wx)"].best_layer.tolist() == [2, 3]


def test_formatted_tables_show_ours_beside_the_paper(t1_small):
    text = S.format_table1(t1_small)
    assert "8.90e-13" in text and "6.70e-07" in text and "758K" in text  # paper columns
    assert "760K" in text  # ours (759,809)
    t2 = S.format_table2(_t2_frame([0.2] * 5, [0.3] * 5))
    assert "1.43e-01" in t2 and "2.00e-01" in t2


def test_bad_arguments_are_refused():
    with pytest.raises(ConfigError, match="allowed"):
        S.table1_specs(models=["DCN-V3"])
    with pytest.raises(ConfigError, match="allowed"):
        S.table1_specs(tasks=["f4"])
    with pytest.raises(ConfigError, match="seeds"):
        S.table2_specs(seeds=0)
    with pytest.raises(ConfigError, match="allowed"):
        S.fig4_specs(orders=[5])
    with pytest.raises(ConfigError, match="no value for task"):
        S.table1_specs(tasks=["f1"], n_samples={"f2": 100})
    with pytest.raises(ConfigError, match="workers"):
        S.run([], workers=0)
