"""A real browser: Voilà serves a notebook built on the workbench's widgets; headless Chromium renders it.

Checks that the CrossExplorer's plotly heatmap, table and controls render, and that moving a widget
(the norm toggle, the top-k slider) changes the figure it drives,
through the whole stack (kernel -> comm -> anywidget/plotly.js). Every request that does not go
to 127.0.0.1 is aborted; Jupyter and Chromium write only into the test's temporary folder.
A screenshot is kept in tests/artifacts/ (git-ignored).

Chromium is Debian's (/usr/bin/chromium, installed by .ci/setup.sh); Playwright's own browser
download is never used. Without Chromium the test fails under CI (env CI set) and skips otherwise.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import nbformat
import pytest

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "tests" / "artifacts"
RENDER_TIMEOUT_MS = 240_000

# A small notebook with the CrossExplorer, used the way the notebooks use it. (One FigureWidget on
# the page: anywidget gives each widget model 2 s to initialise, and several FigureWidgets loading
# plotly's 5 MB module at once on a slow machine can exceed that, after which a model ignores updates.)
CELLS = [
    "import dcn_explore as dx\nfrom dcn_explore.widgets import CrossExplorer",
    "ds = dx.data.planted_crosses(n_samples=3000, seed=0)\ntrain, val, test = ds.split((0.8, 0.1, 0.1), seed=0)\n"
    "model = dx.DCNv2(ds.schema, dx.DCNConfig(cross='full', cross_layers=1, structure='cross_only'), seed=0)\n"
    "result = dx.fit(model, train, val, dx.TrainConfig(epochs=1, batch_size=256, lr=3e-3, progress=False))",
    "CrossExplorer(model, test, truth=ds.truth, k=6, show_diagonal=False)",
]

# all plotly graphs on the page: their title, first trace type and a fingerprint of the heatmap values
# rows of the CrossExplorer's top-crosses table
TABLE_ROWS_JS = "() => document.querySelectorAll('.dcnx-top-crosses-table tbody tr').length"

PLOTS_JS = """() => Array.from(document.querySelectorAll('.js-plotly-plot')).map(gd => ({
    title: (gd.layout && gd.layout.title && (gd.layout.title.text || gd.layout.title)) || '',
    type: gd.data && gd.data[0] ? gd.data[0].type : null,
    z: gd.data && gd.data[0] && gd.data[0].z ? JSON.stringify(gd.data[0].z) : null,
    svg: gd.querySelectorAll('.main-svg').length,
}))"""


def _need_browser():
    if not CHROMIUM.exists():
        msg = f"{CHROMIUM} not found (Debian package chromium; .ci/setup.sh test installs it)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    try:
        from playwright.sync_api import sync_playwright  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("playwright is not installed (pip install -e .[test])")
        pytest.skip("playwright is not installed")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"voila exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"voila did not listen on 127.0.0.1:{port} within {timeout} s")


@pytest.fixture
def voila(tmp_path):
    _need_browser()
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) for c in CELLS]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb_path = tmp_path / "workbench.ipynb"
    nbformat.write(nb, nb_path)
    env = dict(os.environ)
    for var, sub in (("JUPYTER_CONFIG_DIR", "jupyter-config"), ("JUPYTER_DATA_DIR", "jupyter-data"),
                     ("JUPYTER_RUNTIME_DIR", "jupyter-runtime"), ("IPYTHONDIR", "ipython")):
        env[var] = str(tmp_path / sub)
        (tmp_path / sub).mkdir()
    env["DCNX_NOTEBOOK_SIZE"] = "ci"
    port = _free_port()
    log = open(tmp_path / "voila.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "voila", str(nb_path), f"--port={port}", "--no-browser", "--Voila.ip=127.0.0.1"],
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        _wait_for_port(port, proc)
        yield f"http://127.0.0.1:{port}/", tmp_path
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=20)
        log.close()


def test_voila_renders_the_widgets_and_a_widget_moves_the_figure(voila):
    from playwright.sync_api import sync_playwright

    url, tmp = voila
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "browser_voila_workbench.png"
    aborted: list[str] = []

    def route(r):
        u = urlparse(r.request.url)
        if u.scheme in ("data", "blob", "about") or u.hostname == "127.0.0.1":
            r.continue_()
        else:
            aborted.append(r.request.url)
            r.abort()

    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            str(tmp / "chromium-profile"), executable_path=str(CHROMIUM), headless=True,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"],
            viewport={"width": 1200, "height": 3200},
        )
        try:
            ctx.route("**/*", route)
            page = ctx.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url, timeout=RENDER_TIMEOUT_MS, wait_until="domcontentloaded")
            # the CrossExplorer is the last cell: its heatmap appears once the whole notebook ran
            page.wait_for_function(
                "() => Array.from(document.querySelectorAll('.js-plotly-plot')).some("
                "gd => gd.layout && gd.layout.title && String(gd.layout.title.text || '').startsWith('Block norms'))",
                timeout=RENDER_TIMEOUT_MS,
            )
            page.wait_for_timeout(3000)  # let every widget model finish initialising before interacting
            plots = page.evaluate(PLOTS_JS)
            heat = [q for q in plots if q["type"] == "heatmap" and q["title"].startswith("Block norms")]
            assert len(heat) == 1 and heat[0]["svg"] >= 1, plots
            assert "‖W_ij‖_F (weights)" in heat[0]["title"]
            assert page.evaluate(TABLE_ROWS_JS) == 6, "the top-crosses table renders"
            assert page.locator(".widget-toggle-button").count() >= 2, "the norm toggle renders"
            assert page.locator(".widget-slider, .widget-hslider").count() >= 1, "the top-k slider renders"

            # 1. the CrossExplorer's norm toggle: weights -> data-aware redraws the heatmap
            page.locator(".widget-toggle-button", has_text="data-aware").click()
            page.wait_for_function(
                "() => Array.from(document.querySelectorAll('.js-plotly-plot')).some("
                "gd => String((gd.layout.title || {}).text || '').includes('over data'))", timeout=60_000)
            after = [q for q in page.evaluate(PLOTS_JS) if "over data" in q["title"]]
            assert len(after) == 1 and after[0]["z"] != heat[0]["z"], "the heatmap values changed"

            # 2. the top-k slider: one step right adds a row to the top-crosses table
            rows_before = page.evaluate(TABLE_ROWS_JS)
            assert rows_before == 6, rows_before
            handle = page.locator(".widget-slider .noUi-handle, .widget-hslider .noUi-handle").first
            handle.focus()
            handle.press("ArrowRight")
            page.wait_for_function(f"() => ({TABLE_ROWS_JS})() === 7", timeout=60_000)
            assert page.locator(".widget-readout").first.inner_text().strip() == "7"

            page.screenshot(path=str(shot), full_page=True)
            assert not [e for e in errors if "widget" in e.lower() or "plotly" in e.lower()], errors  # incl. anywidget's init timeout
        finally:
            ctx.close()
    assert shot.stat().st_size > 10_000
    assert all(urlparse(u).hostname != "127.0.0.1" for u in aborted)
    (ARTIFACTS / "browser_voila_aborted_requests.json").write_text(json.dumps(aborted, indent=1))
