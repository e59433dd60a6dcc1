"""``dcn-explore report NOTEBOOK``: execute a notebook with parameters and write one standalone HTML file.

Steps: papermill runs a copy of the notebook (parameters injected after its
``parameters`` cell, ``DCNX_NOTEBOOK_SIZE`` set for the kernel, a finite per-cell
timeout); one extra cell, run last and removed afterwards, asks the kernel for a
static snapshot of every widget's *final* state (figures of ``FigureWidget`` s,
HTML, control values), because the widget state nbclient stores does not follow
updates made after a widget is shown; widget outputs are replaced by those
snapshots and the widget metadata is cleared; plotly outputs become HTML with
plotly.js embedded once; nbconvert writes the HTML. The file needs no network.

The executed notebook can be kept (``keep_notebook=``) next to the report.
"""

from __future__ import annotations

import ast
import html
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

from ._io import write_text_atomic
from .errors import ConfigError, DCNExploreError

SIZES = ("default", "ci")
SIZE_ENV = "DCNX_NOTEBOOK_SIZE"
SNAPSHOT_TAG = "dcnx-report-snapshot"
SNAPSHOT_MIME = "application/vnd.dcnx.widget-snapshots+json"
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
PLOTLY_MIME = "application/vnd.plotly.v1+json"
DEFAULT_OUT_DIR = Path("runs") / "reports"


class ReportError(DCNExploreError):
    """The notebook could not be executed (a cell raised, or timed out) or the report not written."""


# -- kernel side -------------------------------------------------------------------------------
def snapshot_widgets() -> None:
    """Run inside the kernel: display ``{model_id: static HTML}`` for every top-level widget.

    Top-level = a widget that is not a child of a box; its HTML includes its children.
    """
    from IPython.display import display
    from ipywidgets import Box, DOMWidget
    from ipywidgets.widgets.widget import _instances

    widgets = list(_instances.values())
    children = {c.model_id for w in widgets if isinstance(w, Box) for c in w.children}
    snaps = {w.model_id: widget_html(w) for w in widgets if isinstance(w, DOMWidget) and w.model_id not in children}
    display({SNAPSHOT_MIME: snaps}, raw=True)


def widget_html(w: Any) -> str:
    """Static HTML of a widget's current state (figures via plotly, without plotly.js)."""
    import ipywidgets as W
    import plotly.graph_objects as go
    import plotly.io as pio
    from plotly.basewidget import BaseFigureWidget

    if isinstance(w, BaseFigureWidget):
        return pio.to_html(go.Figure(w), include_plotlyjs=False, full_html=False, config={"displaylogo": False})
    if isinstance(w, W.Box):
        direction = "row" if isinstance(w, W.HBox) else "column"
        inner = "".join(widget_html(c) for c in w.children)
        return f"<div style='display:flex;flex-direction:{direction};gap:.5rem;flex-wrap:wrap'>{inner}</div>"
    if isinstance(w, (W.HTML, W.HTMLMath)):
        return f"<div>{w.value}</div>"
    if isinstance(w, W.Label):
        return f"<span>{html.escape(str(w.value))}</span>"
    if isinstance(w, W.Button):
        return ""  # an action, not a state
    if isinstance(w, (W.IntProgress, W.FloatProgress)):
        return (f"<span>{html.escape(w.description)} <progress value='{w.value}' max='{w.max}'></progress> "
                f"{w.value}/{w.max}</span>")
    if isinstance(w, W.Output):
        parts = []
        for o in w.outputs:
            data = o.get("data", {})
            if "text/html" in data:
                parts.append(data["text/html"])
            elif "text/plain" in data or "text" in o:
                parts.append(f"<pre>{html.escape(data.get('text/plain', o.get('text', '')))}</pre>")
        return "".join(parts)
    if hasattr(w, "value"):
        shown = getattr(w, "label", None) if isinstance(w, W.widgets.widget_selection._Selection) else w.value
        desc = getattr(w, "description", "") or ""
        return (f"<span style='border:1px solid #ccc;border-radius:3px;padding:.1rem .4rem'>"
                f"{html.escape(desc)}{': ' if desc else ''}<b>{html.escape(str(shown))}</b></span>")
    return ""


# -- client side -------------------------------------------------------------------------------
def parse_parameter(value: str) -> Any:
    """A command-line parameter value: a Python literal when it parses as one, else the string.

    >>> parse_parameter("3"), parse_parameter("0.5"), parse_parameter("[1, 2]"), parse_parameter("ci")
    (3, 0.5, [1, 2], 'ci')
    """
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value


_PLOTLYJS_GUARD = "window.__dcnx_define = window.define; window.define = undefined;"


def _plotlyjs() -> str:
    """plotly.js inline, loaded as a global even when the page also has require.js."""
    from plotly.offline import get_plotlyjs

    return (f"<script type='text/javascript'>{_PLOTLYJS_GUARD}</script>"
            f"<script type='text/javascript'>window.PlotlyConfig = {{MathJaxConfig: 'local'}};</script>"
            f"<script type='text/javascript'>{get_plotlyjs()}</script>"
            "<script type='text/javascript'>window.define = window.__dcnx_define;</script>")


def _static_outputs(nb, snapshots: Mapping[str, str]) -> int:
    """Replace widget and plotly outputs by HTML in place; returns the number of outputs replaced."""
    import plotly.graph_objects as go
    import plotly.io as pio

    js_done = False
    n = 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data")
            if not data:
                continue
            if WIDGET_MIME in data:
                mid = data[WIDGET_MIME].get("model_id")
                body = snapshots.get(mid, "<p><em>(an interactive widget: open the notebook to use it)</em></p>")
                out["data"] = {"text/html": body, "text/plain": data.get("text/plain", "")}
                n += 1
            elif PLOTLY_MIME in data:
                fig = go.Figure(data[PLOTLY_MIME])
                out["data"] = {"text/html": pio.to_html(fig, include_plotlyjs=False, full_html=False, config={"displaylogo": False})}
                n += 1
            else:
                continue
            if not js_done and "plotly-graph-div" in out["data"]["text/html"]:
                out["data"]["text/html"] = _plotlyjs() + out["data"]["text/html"]
                js_done = True
    return n


def report(notebook: str | os.PathLike, out: str | os.PathLike | None = None, parameters: Mapping[str, Any] | None = None,
           size: str = "default", timeout: int = 900, kernel_name: str | None = None, cwd: str | os.PathLike | None = None,
           keep_notebook: str | os.PathLike | None = None, hide_code: bool = False) -> Path:
    """Execute ``notebook`` and write a standalone HTML report; returns the report's path.

    - ``out``: the HTML file (default ``runs/reports/<notebook name>.html``).
    - ``parameters``: papermill parameters, injected after the notebook's ``parameters`` cell.
    - ``size``: ``"default"`` or ``"ci"``, exported to the kernel as ``DCNX_NOTEBOOK_SIZE``.
    - ``timeout``: seconds each cell may run (papermill's ``execution_timeout``); a cell that
      runs longer stops the report with :class:`ReportError`.
    - ``kernel_name``: default: the notebook's kernel; ``cwd``: default: the notebook's folder.
    - ``keep_notebook``: also write the executed notebook (static outputs, no widget state) there.
    - ``hide_code``: leave the code cells' input out of the report.
    """
    import nbformat

    src = Path(notebook)
    if not src.is_file():
        raise ConfigError(f"notebook {src}: no such file")
    if size not in SIZES:
        raise ConfigError(f"size={size!r}; allowed: {', '.join(SIZES)}")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ConfigError(f"timeout={timeout!r}: must be a positive number of seconds")
    out_path = Path(out) if out is not None else DEFAULT_OUT_DIR / f"{src.stem}.html"
    try:
        nb = nbformat.read(src, as_version=4)
    except Exception as e:  # nbformat raises several types for a broken file
        raise ConfigError(f"notebook {src}: cannot be read as a notebook ({e})") from e
    snap = nbformat.v4.new_code_cell("from dcn_explore.notebook_report import snapshot_widgets\nsnapshot_widgets()")
    snap.metadata["tags"] = [SNAPSHOT_TAG]
    nb.cells.append(snap)
    with tempfile.TemporaryDirectory(prefix="dcnx-report-") as tmp:
        executed = _execute(nb, Path(tmp), parameters or {}, size, timeout, kernel_name, Path(cwd) if cwd else src.parent.resolve(), src)
    snapshots: dict = {}
    keep = []
    for cell in executed.cells:
        if SNAPSHOT_TAG in cell.get("metadata", {}).get("tags", []):
            for o in cell.get("outputs", []):
                snapshots.update(o.get("data", {}).get(SNAPSHOT_MIME, {}))
        else:
            keep.append(cell)
    executed.cells = keep
    _static_outputs(executed, snapshots)
    executed.metadata.pop("widgets", None)
    body = _to_html(executed, hide_code)
    write_text_atomic(out_path, body)
    os.chmod(out_path, 0o644)  # atomic writes create 0600 files; a report is meant to be shared
    if keep_notebook is not None:
        write_text_atomic(keep_notebook, nbformat.writes(executed))
        os.chmod(keep_notebook, 0o644)
    return out_path


def _execute(nb, tmp: Path, parameters: Mapping[str, Any], size: str, timeout: float, kernel_name: str | None, cwd: Path, src: Path):
    import nbformat
    import papermill
    from papermill.exceptions import PapermillExecutionError

    inp, outp = tmp / src.name, tmp / f"executed-{src.name}"
    nbformat.write(nb, inp)
    old = os.environ.get(SIZE_ENV)
    os.environ[SIZE_ENV] = size
    try:
        return papermill.execute_notebook(
            str(inp), str(outp), parameters=dict(parameters), kernel_name=kernel_name, cwd=str(cwd),
            execution_timeout=timeout, start_timeout=120, progress_bar=False, log_output=False,
            request_save_on_cell_execute=False,
        )
    except PapermillExecutionError as e:
        raise ReportError(f"{src}: cell {e.exec_count} raised {e.ename}: {e.evalue}") from e
    except Exception as e:  # nbclient's CellTimeoutError, DeadKernelError, kernel start-up failures
        name = type(e).__name__
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        if "Timeout" in name:
            raise ReportError(f"{src}: a cell ran longer than the timeout of {timeout:g} s ({name})") from e
        raise ReportError(f"{src}: execution failed: {name}: {msg}") from e
    finally:
        if old is None:
            os.environ.pop(SIZE_ENV, None)
        else:
            os.environ[SIZE_ENV] = old


def _to_html(nb, hide_code: bool) -> str:
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(template_name="lab", exclude_input=hide_code, exclude_input_prompt=hide_code)
    body, _ = exporter.from_notebook_node(nb)
    return body


def store_outputs(notebook: str | os.PathLike, size: str = "ci", timeout: int = 900, kernel_name: str | None = None) -> Path:
    """Re-execute ``notebook`` in its folder and write it back with its outputs (what nbval compares).

    Widget state (megabytes of JavaScript per ``FigureWidget``) and papermill's timing metadata
    are dropped, so the stored file holds only outputs that the code reproduces.
    """
    import nbformat

    src = Path(notebook)
    if not src.is_file():
        raise ConfigError(f"notebook {src}: no such file")
    nb = nbformat.read(src, as_version=4)
    with tempfile.TemporaryDirectory(prefix="dcnx-store-") as tmp:
        executed = _execute(nb, Path(tmp), {}, size, timeout, kernel_name, src.parent.resolve(), src)
    executed.metadata.pop("widgets", None)
    executed.metadata.pop("papermill", None)
    for cell in executed.cells:
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)
    write_text_atomic(src, nbformat.writes(executed))
    os.chmod(src, 0o644)
    return src


if __name__ == "__main__":  # python -m dcn_explore.notebook_report store notebooks/01_quickstart.ipynb ...
    import argparse
    import time

    p = argparse.ArgumentParser(prog="python -m dcn_explore.notebook_report")
    p.add_argument("action", choices=["store"], help="store: re-execute at CI size and keep the outputs in place")
    p.add_argument("notebooks", nargs="+")
    p.add_argument("--size", default="ci", choices=SIZES)
    p.add_argument("--timeout", type=int, default=900)
    a = p.parse_args()
    for path in a.notebooks:
        t0 = time.perf_counter()
        store_outputs(path, size=a.size, timeout=a.timeout)
        print(f"{path}: executed at size {a.size} in {time.perf_counter() - t0:.1f} s", flush=True)
