"""Standalone HTML reports: figures, tables and text in one file that opens offline.

plotly.js is embedded once (about 4.8 MB), so the file needs no network.

>>> import tempfile, os, pandas as pd, plotly.graph_objects as go
>>> p = os.path.join(tempfile.mkdtemp(), "r.html")
>>> write_html_report(p, "Demo", [("A table", pd.DataFrame({"a": [1]})), ("A figure", go.Figure())])
>>> "Demo" in open(p).read()
True
"""

from __future__ import annotations

import html
import os
from datetime import datetime, timezone
from typing import Any, Sequence

import pandas as pd
import plotly.graph_objects as go

from ._io import write_text_atomic

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1200px;color:#222}
h1{font-size:1.6rem} h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd}
table.dataframe{border-collapse:collapse;font-size:.85rem} table.dataframe td,table.dataframe th{border:1px solid #ccc;padding:.2rem .5rem}
pre{background:#f6f6f6;padding:.6rem;overflow-x:auto} .meta{color:#666;font-size:.85rem}
"""


def _section_html(obj: Any, first_figure: bool) -> tuple[str, bool]:
    if isinstance(obj, go.Figure):
        return obj.to_html(full_html=False, include_plotlyjs=first_figure, config={"displaylogo": False}), False
    if isinstance(obj, pd.DataFrame):
        return obj.to_html(index=False, float_format=lambda v: f"{v:.4g}", border=0), first_figure
    if isinstance(obj, dict):
        rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in obj.items())
        return f"<table class='dataframe'>{rows}</table>", first_figure
    return f"<pre>{html.escape(str(obj))}</pre>", first_figure


def write_html_report(path: str | os.PathLike, title: str, sections: Sequence[tuple[str, Any]], subtitle: str = "") -> None:
    """Write ``sections`` (``(heading, Figure | DataFrame | dict | text)``) to ``path`` atomically."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>",
             f"<p class='meta'>{html.escape(subtitle)} generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC} by dcn-explore</p>"]
    first = True
    for heading, obj in sections:
        body, first = _section_html(obj, first)
        parts.append(f"<h2>{html.escape(heading)}</h2>{body}")
    parts.append("</body></html>")
    write_text_atomic(path, "\n".join(parts))
