"""The dcn-explore command: quickstart, train, crosses, and one-line errors on bad input."""

import json
import subprocess
import sys

import pandas as pd
import pytest

from dcn_explore.cli import main


def test_quickstart_writes_report_and_prints_truth(tmp_path, capsys):
    out = tmp_path / "qs"
    assert main(["quickstart", "--out", str(out), "--samples", "4000", "--epochs", "2", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "Top learned crosses" in text and "truth_feature_a" in text and "recovery:" in text
    html = (out / "report.html").read_text()
    assert "Block norms" in html and "plotly" in html.lower() and len(html) > 1_000_000  # plotly.js embedded
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["test"]) == {"logloss", "auc"} and metrics["recovery"]["k"] == 6
    top = pd.read_csv(out / "top_crosses.csv")
    assert list(top.columns[:3]) == ["feature_a", "feature_b", "norm"]
    assert (out / "model.pt").is_file()


def test_train_then_crosses_from_the_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", "--out", str(out), "--data", "planted", "--samples", "3000", "--cross", "low_rank", "--rank", "8",
               "--cross-layers", "2", "--deep-layers", "16", "--epochs", "1", "--no-progress"])
    assert rc == 0
    capsys.readouterr()
    assert main(["crosses", str(out / "model.pt"), "--top", "5"]) == 0
    text = capsys.readouterr().out
    assert "feature_a" in text and "numerical rank" in text
    assert main(["crosses", str(out / "model.pt"), "--block-norms", "--layer", "1"]) == 0
    assert "user_id" in capsys.readouterr().out


def test_train_with_amp_on_the_cpu_records_it(tmp_path, capsys):
    for flag, used in (("on", True), ("auto", False)):
        out = tmp_path / flag
        rc = main(["train", "--out", str(out), "--data", "planted", "--samples", "2000", "--cross-layers", "1",
                   "--deep-layers", "16", "--epochs", "1", "--device", "cpu", "--amp", flag, "--no-progress"])
        assert rc == 0
        assert json.loads((out / "metrics.json").read_text())["amp"] is used
    with pytest.raises(SystemExit):
        main(["train", "--out", str(tmp_path / "x"), "--amp", "maybe"])
    assert "--amp: invalid choice: 'maybe'" in capsys.readouterr().err


def test_csv_source(tmp_path, capsys):
    df = pd.DataFrame({"a": list("xyzxyzxyzx") * 30, "p": range(300), "y": [0, 1, 1] * 100})
    f = tmp_path / "d.csv"
    df.to_csv(f, index=False)
    rc = main(["train", "--out", str(tmp_path / "o"), "--data", f"csv:{f}", "--label", "y", "--categorical", "a",
               "--dense", "p", "--epochs", "1", "--deep-layers", "8", "--no-progress"])
    assert rc == 0


def test_bad_csv_gives_a_one_line_error_and_keeps_existing_files(tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "model.pt").write_bytes(b"previous model")
    f = tmp_path / "bad.csv"
    pd.DataFrame({"a": ["x", "y", "z"], "p": ["1", "two", "3"], "y": [0, 1, 0]}).to_csv(f, index=False)
    rc = main(["train", "--out", str(out), "--data", f"csv:{f}", "--label", "y", "--categorical", "a", "--dense", "p",
               "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "error:" in err and "dense column 'p', row 1" in err and "'two' is not a number" in err
    assert "Traceback" not in err
    assert (out / "model.pt").read_bytes() == b"previous model"


def test_invalid_model_option_is_named(tmp_path, capsys):
    rc = main(["train", "--out", str(tmp_path / "o"), "--cross", "low_rank", "--no-progress"])
    assert rc == 2 and "DCNConfig.rank=None" in capsys.readouterr().err


def test_tampered_checkpoint_via_cli(tmp_path, capsys):
    p = tmp_path / "m.pt"
    p.write_bytes(b"PK\x03\x04 not really a zip")
    assert main(["crosses", str(p)]) == 2
    assert "truncated or not a torch checkpoint" in capsys.readouterr().err


def test_console_entry_point_runs():
    r = subprocess.run([sys.executable, "-m", "dcn_explore.cli", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "quickstart" in r.stdout


def test_sweep_command_writes_a_tidy_table_and_resumes(tmp_path, capsys):
    args = ["sweep", "--results", str(tmp_path / "s"), "--samples", "1500", "--cross", "low_rank", "--rank", "2",
            "--structure", "cross_only", "--cross-layers", "1", "--grid", "rank=2,4", "--seeds", "2", "--epochs", "1",
            "--no-progress"]
    assert main(args) == 0
    first = pd.read_csv(tmp_path / "s" / "results.csv")
    assert len(first) == 4 and set(first["rank"]) == {2, 4} and not first.reused.any()
    assert {"test_logloss", "test_auc", "params", "flops", "train_time_s", "top_crosses"} <= set(first.columns)
    assert "test_logloss over seeds" in capsys.readouterr().out
    assert main(args) == 0
    assert pd.read_csv(tmp_path / "s" / "results.csv").reused.all()


def test_sweep_grid_errors_are_named(tmp_path, capsys):
    assert main(["sweep", "--results", str(tmp_path), "--grid", "rank"]) == 2
    assert "expected FIELD=V1,V2" in capsys.readouterr().err
    assert main(["sweep", "--results", str(tmp_path), "--grid", "colour=1,2", "--samples", "500"]) == 2
    assert "'colour' is not a DCNConfig or TrainConfig field" in capsys.readouterr().err
