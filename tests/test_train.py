"""fit / evaluate: the training recipe, repeatability, early stopping, EMA, divergence, checkpoints."""

import math

import pandas as pd
import pytest
import torch

import dcn_explore as dx
from dcn_explore import ConfigError, DataError, TrainingDivergedError

FAST = dict(epochs=2, batch_size=256, progress=False)


@pytest.fixture(scope="module")
def parts():
    return dx.data.planted_crosses(n_samples=3000, seed=0).split((0.8, 0.1, 0.1), seed=0)


def _model(schema, **kw):
    cfg = dict(cross="full", cross_layers=1, deep_layers=(16,))
    cfg.update(kw)
    return dx.DCNv2(schema, dx.DCNConfig(**cfg), seed=0)


def test_fit_returns_history_and_metrics_from_kept_libraries(parts):
    train, val, test = parts
    m = _model(train.schema)
    r = dx.fit(m, train, val, dx.TrainConfig(**FAST))
    assert isinstance(r.history, pd.DataFrame)
    assert list(r.history.epoch) == [1, 2]
    assert {"train_loss", "val_loss", "val_logloss", "val_auc", "lr", "time_s"} <= set(r.history.columns)
    ev = dx.evaluate(m, test)
    assert set(ev) == {"logloss", "auc"}
    from torchmetrics.functional.classification import binary_auroc

    logits = dx.predict(m, test)
    assert ev["auc"] == pytest.approx(float(binary_auroc(torch.sigmoid(logits), test.label.long())), abs=1e-6)
    assert ev["logloss"] == pytest.approx(float(torch.nn.functional.binary_cross_entropy(torch.sigmoid(logits), test.label)), abs=1e-5)
    assert r.summary["params"] == m.num_parameters()


def test_cpu_runs_repeat_exactly_with_the_same_seed(parts):
    train, val, _ = parts
    h = []
    for _ in range(2):
        m = _model(train.schema)
        h.append(dx.fit(m, train, val, dx.TrainConfig(**FAST, seed=5)).history)
    assert h[0][["train_loss", "val_loss"]].equals(h[1][["train_loss", "val_loss"]])
    m3 = _model(train.schema)
    other = dx.fit(m3, train, val, dx.TrainConfig(**FAST, seed=6)).history
    assert not h[0]["train_loss"].equals(other["train_loss"])


def test_regression_task_reports_rmse():
    ds = dx.data.paper_polynomial("f1", n_samples=2000, seed=0)
    train, val = ds.split((0.8, 0.2), seed=0)
    m = dx.DCNv2(ds.schema, dx.DCNConfig(cross="full", cross_layers=1, structure="cross_only"), seed=0)
    r = dx.fit(m, train, val, dx.TrainConfig(epochs=3, progress=False, ema_decay=None))
    assert "val_rmse" in r.history.columns
    ev = dx.evaluate(m, val)
    assert set(ev) == {"rmse"}
    pred = dx.predict(m, val)
    assert ev["rmse"] == pytest.approx(float((pred - val.label).pow(2).mean().sqrt()), rel=1e-5)


def test_ema_weights_are_what_is_kept(parts):
    train, val, _ = parts
    m = _model(train.schema)
    raw = {}

    def grab(event):
        raw[event["epoch"]] = {k: v.clone() for k, v in event["model"].state_dict().items()}

    dx.fit(m, train, val, dx.TrainConfig(epochs=1, progress=False, ema_decay=0.5, early_stopping=None), callback=grab)
    # the callback sees the evaluated (EMA) weights, and the model ends up holding them
    assert all(torch.equal(raw[1][k], v) for k, v in m.state_dict().items())
    m2 = _model(train.schema)
    dx.fit(m2, train, val, dx.TrainConfig(epochs=1, progress=False, ema_decay=None))
    assert not torch.equal(m.cross.layers[0].W, m2.cross.layers[0].W)


@pytest.mark.parametrize("epochs, max_steps", [(2, None), (4, 20), (6, None)])
def test_the_kept_weights_are_the_best_epochs_evaluated_weights(parts, epochs, max_steps):
    """With the moving average on, the model ends up holding exactly the weights evaluated at the best
    epoch, whether that is the last epoch (ended by ``epochs`` or by ``max_steps``) or an earlier one."""
    train, val, _ = parts
    m = _model(train.schema)
    seen = {}

    def grab(event):
        seen[event["epoch"]] = {k: v.clone() for k, v in event["model"].state_dict().items()}

    r = dx.fit(m, train, val, dx.TrainConfig(epochs=epochs, batch_size=256, lr=0.01, progress=False, ema_decay=0.9,
                                             early_stopping=None, max_steps=max_steps), callback=grab)
    last = int(r.history.epoch.iloc[-1])
    assert last == (2 if max_steps else epochs)
    assert all(torch.equal(seen[r.best_epoch][k], v) for k, v in m.state_dict().items())
    if epochs == 6:  # the case where an earlier epoch wins: the model does not hold the last one's weights
        assert r.best_epoch < last and not torch.equal(seen[last]["cross.layers.0.W"], m.cross.layers[0].W)
    else:
        assert r.best_epoch == last


def test_ema_decay_warmup_rule():
    from dcn_explore.train import _EMA

    lin = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        lin.weight.fill_(0.0)
    ema = _EMA(lin, decay=0.9999, warmup=True)
    ema.update(lin)                       # first update copies
    with torch.no_grad():
        lin.weight.fill_(1.0)
    ema.update(lin)                       # n = 2: decay = min(0.9999, 3/12) = 0.25
    assert float(ema.module.weight.detach()) == pytest.approx(0.75)


def test_early_stopping_restores_the_best_epoch(parts):
    train, val, _ = parts
    m = _model(train.schema, deep_layers=(256,))
    r = dx.fit(m, train, val, dx.TrainConfig(epochs=40, lr=0.01, progress=False, early_stopping=2, ema_decay=None))
    h = r.history
    assert r.stopped_early and len(h) < 40
    assert r.best_epoch == int(h.loc[h.val_loss.idxmin(), "epoch"])
    assert (h.epoch > r.best_epoch).sum() == 2
    assert dx.evaluate(m, val)["logloss"] == pytest.approx(h.val_loss.min(), rel=1e-5)


def test_l2_penalty_shrinks_cross_weights(parts):
    train, val, _ = parts
    norms = []
    for l2 in (0.0, 1.0):
        m = _model(train.schema)
        dx.fit(m, train, val, dx.TrainConfig(**FAST, lr=0.01, l2=l2, ema_decay=None))
        norms.append(float(m.cross.layers[0].W.detach().norm()))
    assert norms[1] < 0.5 * norms[0]


def test_gradient_clipping_bounds_the_update():
    ds = dx.data.paper_polynomial("f1", n_samples=64, seed=0)
    ds.label.mul_(1e4)  # huge targets -> huge gradients
    outs = []
    for clip in (None, 1e-3):
        m = dx.DCNv2(ds.schema, dx.DCNConfig(cross="full", cross_layers=1, structure="cross_only"), seed=0)
        before = m.cross.layers[0].W.detach().clone()
        dx.fit(m, ds, None, dx.TrainConfig(epochs=1, batch_size=64, lr=0.1, clip_norm=clip, ema_decay=None, progress=False,
                                            early_stopping=None))
        outs.append(float((m.cross.layers[0].W.detach() - before).abs().max()))
    # Adam's first step moves each weight by ~lr regardless of scale; clipping keeps it the same, not bigger
    assert outs[1] <= outs[0] + 1e-6


def test_lr_schedules(parts):
    train, val, _ = parts
    m = _model(train.schema)
    r = dx.fit(m, train, val, dx.TrainConfig(epochs=2, progress=False, lr_schedule="cosine"))
    assert r.history.lr.iloc[-1] < 1e-6


def test_nan_loss_stops_with_step_and_last_good_metrics_and_keeps_checkpoint(parts, tmp_path):
    train, val, _ = parts
    ckpt = tmp_path / "best.pt"
    m = _model(train.schema)

    def poison(event):
        if event["epoch"] == 2:
            with torch.no_grad():
                m.cross.layers[0].W.fill_(float("nan"))

    with pytest.raises(TrainingDivergedError, match=r"became nan at step \d+ \(epoch 3, batch 1\); last good metrics: \{'epoch': 2"):
        dx.fit(m, train, val, dx.TrainConfig(epochs=5, progress=False, checkpoint=str(ckpt), early_stopping=None), callback=poison)
    # the model holds finite (best) weights again, and the checkpoint is the last good one, intact
    assert torch.isfinite(m.cross.layers[0].W).all()
    loaded, info = dx.load_checkpoint(ckpt)
    assert torch.isfinite(loaded.cross.layers[0].W).all()
    assert list(info["history"].epoch) == [1, 2] or list(info["history"].epoch) == [1]


def test_divergence_on_the_first_step_says_so():
    ds = dx.data.paper_polynomial("f1", n_samples=64, seed=0)
    ds.label.fill_(3e38)  # finite labels whose squared error overflows float32
    m = dx.DCNv2(ds.schema, dx.DCNConfig(cross="full", cross_layers=1, structure="cross_only"), seed=0)
    with pytest.raises(TrainingDivergedError, match="step 1 .*none \\(diverged in the first epoch\\)"):
        dx.fit(m, ds, None, dx.TrainConfig(epochs=1, progress=False))


def test_embedding_l2_shrinks_the_tables_and_leaves_the_cross_penalty_alone(parts):
    train, val, _ = parts
    emb, cross = [], []
    for el2 in (0.0, 1e-2):
        m = _model(train.schema)
        dx.fit(m, train, val, dx.TrainConfig(**FAST, lr=0.01, l2=0.0, embedding_l2=el2, ema_decay=None))
        emb.append(sum(float(t.detach().pow(2).sum()) for t in m.embedding.tables()) ** 0.5)
        cross.append(float(m.cross.layers[0].W.detach().norm()))
    assert emb[1] < 0.5 * emb[0]
    assert cross[1] > 0.5 * cross[0]  # the cross kernels are not what embedding_l2 penalises
    with pytest.raises(ConfigError, match="TrainConfig.embedding_l2=0.1: a penalty on whole tables needs dense"):
        dx.TrainConfig(embedding_l2=0.1, sparse_embeddings=True)


@pytest.mark.parametrize("field, value, match", [
    ("embedding_l2", -1.0, "TrainConfig.embedding_l2=-1.0"),
    ("epochs", 0, "TrainConfig.epochs=0"),
    ("lr", -1.0, "TrainConfig.lr=-1.0"),
    ("ema_decay", 1.0, "TrainConfig.ema_decay=1.0"),
    ("device", "tpu", "TrainConfig.device='tpu'"),
    ("lr_schedule", "wild", "TrainConfig.lr_schedule='wild'"),
    ("dtype", "float16", "TrainConfig.dtype='float16'"),
])
def test_invalid_train_config_names_the_field(field, value, match):
    with pytest.raises(ConfigError, match=match):
        dx.TrainConfig(**{field: value})


@pytest.mark.parametrize("kwargs, match", [
    (dict(cross="low_rank"), "DCNConfig.rank=None"),
    (dict(cross="low_rank", rank=0), "DCNConfig.rank=0"),
    (dict(cross="full", rank=4), "DCNConfig.rank=4"),
    (dict(cross="mixture", rank=4, experts=0), "DCNConfig.experts=0"),
    (dict(cross="full", experts=2), "DCNConfig.experts=2"),
    (dict(cross="mixture", rank=4, gate="argmax"), "DCNConfig.gate='argmax'"),
    (dict(cross="mixture", rank=4, activation="gelu"), "DCNConfig.activation='gelu'"),
    (dict(cross="low_rank", rank=4, activation="relu"), "DCNConfig.activation='relu'"),
    (dict(structure="stacked", deep_layers=()), "DCNConfig.deep_layers=()"),
    (dict(structure="diagonal"), "DCNConfig.structure='diagonal'"),
    (dict(cross="tensor"), "DCNConfig.cross='tensor'"),
    (dict(cross_layers=0), "DCNConfig.cross_layers=0"),
    (dict(embedding_dim=0), "DCNConfig.embedding_dim=0"),
])
def test_invalid_model_config_names_the_field(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        dx.DCNConfig(**kwargs)


def test_rank_above_d_is_rejected_with_d(planted_small):
    d = planted_small.schema.d
    with pytest.raises(ConfigError, match=f"rank={d + 1}: must be <= d={d}"):
        dx.DCNv2(planted_small.schema, dx.DCNConfig(cross="low_rank", rank=d + 1))


def test_fit_rejects_mismatched_or_empty_data(parts):
    train, val, _ = parts
    m = _model(train.schema)
    other = dx.data.paper_polynomial("f1", n_samples=100)
    with pytest.raises(DataError, match="does not match the model"):
        dx.fit(m, other, None, dx.TrainConfig(**FAST))
    with pytest.raises(DataError, match="empty"):
        dx.fit(m, train.subset([]), None, dx.TrainConfig(**FAST))


def test_device_auto_is_cpu_without_a_gpu_and_cuda_is_refused():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert dx.resolve_device("auto").type == "cpu"
    with pytest.raises(ConfigError, match="CUDA is not available"):
        dx.resolve_device("cuda")


def test_float64_training_for_precise_fits():
    ds = dx.data.paper_polynomial("f1", n_samples=512, seed=0)
    m = dx.DCNv2(ds.schema, dx.DCNConfig(cross="full", cross_layers=1, structure="cross_only"), seed=0)
    dx.fit(m, ds, None, dx.TrainConfig(epochs=1, dtype="float64", progress=False))
    assert m.cross.layers[0].W.dtype == torch.float64
    assert math.isfinite(dx.evaluate(m, ds)["rmse"])


def test_l2_gradient_added_after_the_backward_equals_autograd_of_the_penalty(parts):
    from dcn_explore.train import _loss, add_l2_gradient, l2_value

    train, _, _ = parts
    lam = 0.3
    grads = []
    for after in (False, True):
        m = _model(train.schema, cross="low_rank", rank=4, cross_layers=2)
        b = train.batch(slice(0, 256))
        loss = _loss(m(*b.inputs()), b.label, "binary")
        kernels = m.cross_kernels()
        if after:
            loss.backward()
            add_l2_gradient(kernels, lam)
            assert float(l2_value(kernels)) == pytest.approx(sum(float(k.detach().pow(2).sum()) for k in kernels), rel=1e-6)
        else:
            (loss + lam * sum(k.pow(2).sum() for k in kernels)).backward()
        grads.append([k.grad.clone() for k in kernels])
    assert len(grads[0]) == 4
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7)
        assert float(b.abs().max()) > 0


def test_amp_on_the_cpu_trains_under_bf16_autocast_and_keeps_float32_weights(parts):
    train, val, _ = parts
    seen = []
    results = {}
    for amp in ("auto", True):
        m = _model(train.schema, cross_layers=2)
        hook = m.logit.register_forward_hook(lambda mod, inp, out: seen.append((mod.training, out.dtype)))
        r = dx.fit(m, train, val, dx.TrainConfig(**FAST, device="cpu", amp=amp, seed=1))
        hook.remove()
        results[amp] = (r, m)
        assert r.summary["amp"] is (amp is True)
        assert all(p.dtype == torch.float32 for p in m.parameters())
        assert dx.predict(m, val).dtype == torch.float32
    # training forwards ran in bf16 only with amp=True; evaluation stayed float32 either way
    train_dtypes = [dt for training, dt in seen if training]
    assert torch.bfloat16 in train_dtypes and torch.float32 in train_dtypes
    assert all(dt == torch.float32 for training, dt in seen if not training)
    (r32, m32), (r16, m16) = results["auto"], results[True]
    assert not torch.equal(m32.cross.layers[0].W, m16.cross.layers[0].W)
    assert r16.best_metrics["val_logloss"] == pytest.approx(r32.best_metrics["val_logloss"], abs=0.02)
    # float64 models are never autocast
    m = _model(train.schema)
    r = dx.fit(m, train, None, dx.TrainConfig(epochs=1, progress=False, device="cpu", amp=True, dtype="float64", max_steps=2))
    assert r.summary["amp"] is False


def test_cpu_native_bf16_reads_the_cpu_flags():
    from dcn_explore.train import cpu_native_bf16

    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
    except (OSError, StopIteration):
        flags = []
    assert cpu_native_bf16() is bool({"avx512_bf16", "amx_bf16"} & set(flags))
