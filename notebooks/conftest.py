"""nbval set-up for the notebooks (run by `pytest`, strict `--nbval` from pyproject's addopts).

- The kernels run at CI size: ``DCNX_NOTEBOOK_SIZE=ci`` unless the caller set it (the kernels
  nbval starts inherit this process's environment). The stored outputs are the CI-size outputs.
- Compared: every printed number, DataFrame and text repr. Not compared, because it is not
  reproducible by construction: plotly figure JSON (a dict that nbval's regex sanitizing cannot
  reach; trace ``uid`` s are random) — the numbers behind each figure are printed in the cell
  next to it. Widget views (random model ids) are skipped by nbval itself; the widgets' text
  repr is compared. Random ids, addresses and timings in text are masked by nbval_sanitize.cfg.
"""

import os

os.environ.setdefault("DCNX_NOTEBOOK_SIZE", "ci")

NOT_COMPARED = ("application/vnd.plotly.v1+json",)


def pytest_collectstart(collector):
    if str(getattr(collector, "path", getattr(collector, "fspath", ""))).endswith(".ipynb") and hasattr(collector, "skip_compare"):
        collector.skip_compare = tuple(collector.skip_compare) + NOT_COMPARED
