"""`dcn-explore report`: a notebook executed with parameters becomes one standalone HTML file."""

import json

import nbformat
import pytest

pytest.importorskip("papermill")
pytest.importorskip("ipywidgets")
from dcn_explore import ConfigError  # noqa: E402
from dcn_explore.notebook_report import ReportError, parse_parameter, report  # noqa: E402

CELLS = [
    ("import os\nN = 3\nLABEL = 'default'", ["parameters"]),
    ("print(f'N={N} LABEL={LABEL} size={os.environ.get(\"DCNX_NOTEBOOK_SIZE\")}')", []),
    ("import plotly.graph_objects as go\ngo.Figure(go.Bar(x=['a', 'b'], y=[N, 2 * N], name='static-bar'))", []),
    ("import ipywidgets as W\nfw = go.FigureWidget(go.Figure(go.Scatter(x=[0], y=[0], name='before')))\n"
     "box = W.VBox([W.Dropdown(description='layer', options=['zero', 'one'], value='zero'), fw, W.HTML('<i>note-in-widget</i>')])\nbox", []),
    ("with fw.batch_update():\n    fw.data[0].name = 'after-update'\n    fw.layout.title.text = 'updated-title'\nbox.children[0].value = 'one'", []),
]


def _notebook(path, cells=CELLS):
    nb = nbformat.v4.new_notebook()
    for src, tags in cells:
        c = nbformat.v4.new_code_cell(src)
        if tags:
            c.metadata["tags"] = tags
        nb.cells.append(c)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def test_report_executes_with_parameters_and_writes_standalone_html(tmp_path):
    nb = _notebook(tmp_path / "demo.ipynb")
    kept = tmp_path / "executed.ipynb"
    out = report(nb, out=tmp_path / "out" / "demo.html", parameters={"N": 5, "LABEL": "from-cli"}, size="ci",
                 timeout=120, keep_notebook=kept)
    assert out == tmp_path / "out" / "demo.html" and out.is_file()
    body = out.read_text()
    assert "N=5 LABEL=from-cli size=ci" in body                      # parameters injected, size exported
    assert body.count("window.__dcnx_define = window.define") == 1    # plotly.js embedded exactly once
    assert "static-bar" in body                                        # the plotly output became HTML
    # the widget is shown in its final state: the update after display and the new dropdown value
    assert "updated-title" in body and "after-update" in body and "note-in-widget" in body
    assert "layer: <b>one</b>" in body
    assert "application/vnd.jupyter.widget-state+json" not in body    # widget metadata cleared
    assert "src=\"https://cdn.plot.ly" not in body and "src='https://cdn.plot.ly" not in body  # no plotly.js from a CDN
    ex = nbformat.read(kept, as_version=4)
    assert "widgets" not in ex.metadata
    assert not any("dcnx-report-snapshot" in c.metadata.get("tags", []) for c in ex.cells)  # helper cell removed
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in ex.cells)
    mimes = {m for c in ex.cells for o in c.get("outputs", []) for m in o.get("data", {})}
    assert "application/vnd.jupyter.widget-view+json" not in mimes and "application/vnd.plotly.v1+json" not in mimes


def test_report_stops_a_cell_that_runs_past_the_timeout(tmp_path):
    nb = _notebook(tmp_path / "slow.ipynb", [("import time\ntime.sleep(60)", [])])
    with pytest.raises(ReportError, match="longer than the timeout of 3 s"):
        report(nb, out=tmp_path / "slow.html", timeout=3)
    assert not (tmp_path / "slow.html").exists()


def test_report_rejects_bad_arguments(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        report(tmp_path / "missing.ipynb")
    nb = _notebook(tmp_path / "x.ipynb", [("1", [])])
    with pytest.raises(ConfigError, match="size='huge'"):
        report(nb, size="huge")
    with pytest.raises(ConfigError, match="timeout=0"):
        report(nb, timeout=0)
    (tmp_path / "broken.ipynb").write_text("{not json")
    with pytest.raises(ConfigError, match="cannot be read"):
        report(tmp_path / "broken.ipynb")


def test_parse_parameter():
    assert parse_parameter("12") == 12 and parse_parameter("None") is None
    assert parse_parameter("low_rank") == "low_rank" and parse_parameter("(1, 2)") == (1, 2)


def test_cli_report_runs_a_notebook_with_parameters(tmp_path, capsys):
    from dcn_explore.cli import main

    nb = _notebook(tmp_path / "demo.ipynb", CELLS[:2])
    out = tmp_path / "r" / "demo.html"
    assert main(["report", str(nb), "-p", "N=7", "-p", "LABEL=cli", "--size", "ci", "--out", str(out), "--timeout", "120"]) == 0
    assert "N=7 LABEL=cli size=ci" in out.read_text()
    assert f"wrote {out}" in capsys.readouterr().out
    # a malformed parameter is named, nothing is written
    assert main(["report", str(nb), "-p", "N 7", "--out", str(tmp_path / "bad.html")]) == 2
    assert "-p 'N 7': expected NAME=VALUE" in capsys.readouterr().err
    assert not (tmp_path / "bad.html").exists()
