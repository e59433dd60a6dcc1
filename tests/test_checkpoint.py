"""Checkpoints: round trip, weights_only loading, truncated / tampered files, atomic writes."""

import pickle

import pytest
import torch

import dcn_explore as dx
from dcn_explore import CheckpointError


@pytest.fixture
def saved(planted_small, tmp_path):
    m = dx.DCNv2(planted_small.schema, dx.DCNConfig(cross="mixture", rank=4, experts=2, cross_layers=2, deep_layers=(8,)), seed=0)
    path = tmp_path / "m.pt"
    dx.save_checkpoint(path, m, dx.TrainConfig(epochs=3), extra={"note": "hello"})
    return m, path


@pytest.mark.parametrize("cfg", [
    dict(cross="full"), dict(cross="low_rank", rank=3), dict(cross="vector", structure="parallel"),
    dict(cross="mixture", rank=3, experts=3, gate="sigmoid", activation="tanh"), dict(structure="deep_only"),
    dict(cross="full", embedding_dim={"user_id": 4}),
])
def test_round_trip_every_variant(planted_small, tmp_path, cfg):
    m = dx.DCNv2(planted_small.schema, dx.DCNConfig(cross_layers=2, deep_layers=(8,), **cfg), seed=1)
    p = tmp_path / "x.pt"
    dx.save_checkpoint(p, m)
    loaded, info = dx.load_checkpoint(p)
    assert info["dcn_config"] == m.config and info["schema"] == m.schema
    b = planted_small.batch(slice(0, 10))
    m.eval(), loaded.eval()
    assert torch.equal(m(*b.inputs()), loaded(*b.inputs()))


def test_info_holds_train_config_and_extra(saved):
    m, path = saved
    _, info = dx.load_checkpoint(path)
    assert info["train_config"]["epochs"] == 3 and info["extra"] == {"note": "hello"}


def test_loading_uses_weights_only(saved, monkeypatch):
    calls = []
    real = torch.load

    def spy(*a, **kw):
        calls.append(kw.get("weights_only"))
        return real(*a, **kw)

    monkeypatch.setattr(torch, "load", spy)
    dx.load_checkpoint(saved[1])
    assert calls == [True]


def test_truncated_checkpoint_is_refused_and_left_alone(saved):
    _, path = saved
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    before = path.read_bytes()
    with pytest.raises(CheckpointError, match=f"{path.name} is truncated or not a torch checkpoint"):
        dx.load_checkpoint(path)
    assert path.read_bytes() == before


def test_tampered_weights_fail_the_integrity_check(saved):
    _, path = saved
    payload = torch.load(path, weights_only=True)
    key = next(k for k in payload["state_dict"] if k.endswith("W") or k.endswith("U"))
    payload["state_dict"][key][0].add_(1.0)
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="failed its integrity check"):
        dx.load_checkpoint(path)


def test_flipped_bytes_are_caught(saved):
    _, path = saved
    data = bytearray(path.read_bytes())
    for offset in (len(data) // 3, len(data) // 2, 2 * len(data) // 3):
        corrupted = bytearray(data)
        corrupted[offset] ^= 0xFF
        path.write_bytes(bytes(corrupted))
        with pytest.raises(CheckpointError):
            dx.load_checkpoint(path)


class Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_a_pickle_with_arbitrary_objects_is_refused(tmp_path, capsys):
    p = tmp_path / "evil.pt"
    torch.save({"format": "dcn-explore/checkpoint", "payload": Evil()}, p)
    with pytest.raises(CheckpointError, match="refused: it holds objects other than tensors"):
        dx.load_checkpoint(p)
    assert "this must never run" not in capsys.readouterr().out
    p2 = tmp_path / "plain.pkl"
    p2.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(CheckpointError):
        dx.load_checkpoint(p2)


def test_other_torch_files_and_missing_files(tmp_path):
    p = tmp_path / "sd.pt"
    torch.save({"weight": torch.zeros(2)}, p)
    with pytest.raises(CheckpointError, match="not a dcn-explore checkpoint"):
        dx.load_checkpoint(p)
    with pytest.raises(CheckpointError, match="no such file"):
        dx.load_checkpoint(tmp_path / "nope.pt")


def test_a_failed_write_leaves_the_old_checkpoint_intact(saved, planted_small, monkeypatch):
    m, path = saved
    before = path.read_bytes()

    def broken_save(obj, f, *a, **kw):
        with open(f, "wb") as fh:
            fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    other = dx.DCNv2(planted_small.schema, dx.DCNConfig(cross_layers=1, deep_layers=(4,)), seed=9)
    with pytest.raises(OSError, match="disk full"):
        dx.save_checkpoint(path, other)
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left behind
