"""torchrun + DistributedDataParallel on the CPU (gloo, 2 processes) matches one process on the same data."""

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from dcn_explore.cli import main

TOL = 1e-5  # absolute, on per-epoch validation and final test log loss / AUC

ARGS = ["--data", "planted", "--samples", "2000", "--cross", "low_rank", "--rank", "8", "--cross-layers", "2",
        "--deep-layers", "32", "--epochs", "3", "--batch-size", "200", "--no-progress"]  # 1600 training rows = 8 global batches


def test_two_process_ddp_equals_one_process(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["train", "--out", str(one), *ARGS]) == 0
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "dcn_explore.cli", "train", "--distributed", "--out", str(two), *ARGS]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    m1, m2 = json.loads((one / "metrics.json").read_text()), json.loads((two / "metrics.json").read_text())
    assert m2["processes"] == 2 and m1["processes"] == 1
    for k in ("logloss", "auc"):
        assert abs(m1["test"][k] - m2["test"][k]) < TOL, (k, m1["test"][k], m2["test"][k])
    h1, h2 = pd.read_csv(one / "history.csv"), pd.read_csv(two / "history.csv")
    assert len(h1) == len(h2) == 3
    assert (h1.val_logloss - h2.val_logloss).abs().max() < TOL
    assert (h1.train_loss - h2.train_loss).abs().max() < TOL
    # rank 0 alone printed the summary and wrote the files
    assert r.stdout.count("test:") == 1
    assert sorted(p.name for p in two.iterdir()) == ["history.csv", "metrics.json", "model.pt"]


def test_distributed_without_torchrun_is_a_clear_error(tmp_path, capsys):
    if "RANK" in os.environ:
        pytest.skip("running under a launcher")
    assert main(["train", "--distributed", "--out", str(tmp_path / "o"), *ARGS]) == 2
    assert "launched by torchrun" in capsys.readouterr().err
