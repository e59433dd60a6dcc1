"""The paper's synthetic studies (Sec. 6): Table 1, Table 2 and Fig. 4, reproduced and measured.

Runs :func:`dcn_explore.studies.table1`, :func:`~dcn_explore.studies.table2` and
:func:`~dcn_explore.studies.fig4` at full size (5 seeds; each seed draws its own data,
split 80/10/10, initialisation and batch order), prints each table with our mean test RMSE
and model size beside the paper's numbers, checks the paper's claims
(:func:`~dcn_explore.studies.table1_checks` and friends) and writes
``benchmarks/out/synthetic.json``: every run as a record, the summaries, the checks, and
metadata (exact command, machine, date, library versions, wall time per study).

Sizes and recipes (the paper gives neither sample counts nor training details) are the
defaults in :mod:`dcn_explore.studies` (``TABLE1_DEFAULTS``, ``TABLE2_DEFAULTS``,
``FIG4_DEFAULTS``, ``EXACT_FIT``):

- Table 1: ``f1``/``f2`` 10,000 samples, 60 epochs, lr 3e-2, 3 cosine cycles; ``f3`` 100,000 samples,
  28 epochs, lr 5e-3, 7 cosine cycles (peak lr x0.3 per restart); batch 256, float64, no L2/EMA/clipping.
  The 760K-parameter DNN on ``f3``: float32, batch 256, lr 3e-3, 3 epochs (one cycle; ~75x the
  per-step cost of the others).
- Table 2: 100,000 samples (d = 50), 8 epochs, lr 3e-2, one cosine cycle, batch 256, float64.
- Fig. 4: 100,000 samples (d = 50), lr 3e-2, batch 256, float64; order 3: 6 epochs, one cosine cycle;
  order 4 (a 3-layer product): 12 epochs, two cycles.

Usage (from the repository root)::

    .venv/bin/python benchmarks/synthetic.py             # full run, 2 worker processes
    .venv/bin/python benchmarks/synthetic.py --quick     # smoke run (about a minute)
    .venv/bin/python benchmarks/synthetic.py --only table1 --workers 1
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import shlex
import sys
import time
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from dcn_explore import studies as S  # noqa: E402

STUDIES = ("table1", "table2", "fig4")

QUICK = {
    "table1": dict(seeds=2, n_samples={"f1": 2000, "f2": 2000, "f3": 4000}, epochs={"f1": 12, "f2": 12, "f3": 3},
                   large_train={"f3": dict(dtype="float32", lr=1e-3, batch_size=512, epochs=1, cycles=1)}),
    "table2": dict(seeds=1, n_samples=4000, epochs=2),
    "fig4": dict(seeds=1, n_samples=4000, epochs=2),
}


def _versions() -> dict:
    out = {"python": platform.python_version()}
    for pkg in ("torch", "numpy", "pandas", "dcn-explore"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def _machine(workers: int) -> dict:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "workers": workers,
        "torch_threads_per_worker": 1,
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "cuda": torch.cuda.is_available(),
    }


def _records(df: pd.DataFrame) -> list[dict]:
    return json.loads(df.to_json(orient="records", double_precision=15))


def run_table1(args, sizes: dict) -> pd.DataFrame:
    main = S.table1(workers=args.workers, progress=True, **sizes)
    # the package's DCN layer with its residual, where it matters (f1/f2; see studies.table1_config)
    extra_sizes = {k: v for k, v in sizes.items() if k != "large_train"}
    extra = S.table1(tasks=["f1", "f2"], models=list(S.TABLE1_EXTRA_MODELS), workers=args.workers, progress=True, **extra_sizes)
    return pd.concat([main, extra], ignore_index=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small smoke run (minutes -> about a minute)")
    ap.add_argument("--workers", type=int, default=2, help="training processes (one torch thread each)")
    ap.add_argument("--seeds", type=int, default=None, help="seeds per setting (default 5; --quick: 1-2)")
    ap.add_argument("--only", choices=STUDIES, action="append", help="run only this study (repeatable)")
    ap.add_argument("--out", type=Path, default=HERE / "out" / ("synthetic_quick.json" if "--quick" in (argv or sys.argv) else "synthetic.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    studies = args.only or list(STUDIES)
    start = time.perf_counter()
    meta = {
        "command": shlex.join([sys.executable, *sys.argv]) if argv is None else shlex.join(["benchmarks/synthetic.py", *argv]),
        "cwd": os.getcwd(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": _machine(args.workers),
        "versions": _versions(),
        "quick": args.quick,
        "defaults": {"EXACT_FIT": S.EXACT_FIT, "TABLE1": S.TABLE1_DEFAULTS, "TABLE2": S.TABLE2_DEFAULTS, "FIG4": S.FIG4_DEFAULTS},
        "precision_floor": S.PRECISION_FLOOR,
        "wall_s": {},
    }
    out: dict = {"meta": meta, "tables": {}, "summaries": {}, "checks": {}}
    if args.only and args.out.is_file():
        # --only reruns some studies: keep the other studies' results (and their own metadata) from the file
        old = json.loads(args.out.read_text())
        if bool(old.get("meta", {}).get("quick")) == bool(args.quick):
            for key in ("tables", "summaries", "checks"):
                out[key] = {k: v for k, v in old.get(key, {}).items() if k not in studies}
            kept = sorted(out["tables"])
            if kept:
                meta["kept_from_previous_run"] = {k: old["meta"].get(k) for k in ("command", "date", "wall_s")} | {"studies": kept}
                print(f"keeping {', '.join(kept)} from {args.out} ({old['meta'].get('date')})", file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save():
        meta["wall_s"]["total"] = round(time.perf_counter() - start, 1)
        tmp = args.out.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(out, indent=1, default=str))
        tmp.replace(args.out)

    for name in studies:
        sizes = dict(QUICK[name]) if args.quick else {}
        if args.seeds is not None:
            sizes["seeds"] = args.seeds
        sizes.setdefault("seeds", 5)
        t0 = time.perf_counter()
        print(f"\n=== {name}: running ({sizes}) ===", file=sys.stderr, flush=True)
        if name == "table1":
            df = run_table1(args, sizes)
            summary, text, checks = S.table1_vs_paper(df), S.format_table1(df), S.table1_checks(df)
            title = "Table 1: polynomial fitting of increasing difficulty (test RMSE, mean of seeds; params)"
        elif name == "table2":
            df = S.table2(workers=args.workers, progress=True, **sizes)
            summary, text, checks = S.table2_vs_paper(df), S.format_table2(df), S.table2_checks(df)
            title = "Table 2: combined-order (1-4) polynomial, RMSE by number of layers (mean of seeds)"
        else:
            df = S.fig4(workers=args.workers, progress=True, **sizes)
            summary, text, checks = S.fig4_summary(df), S.format_fig4(df), S.fig4_checks(df)
            title = "Fig. 4: homogeneous order-3 / order-4 polynomials, RMSE by layers (mean of seeds; the paper gives a plot only)"
        wall = time.perf_counter() - t0
        meta["wall_s"][name] = round(wall, 1)
        out["tables"][name] = _records(df)
        out["summaries"][name] = _records(summary)
        out["checks"][name] = _records(checks)
        save()
        seeds = int(df.seed.nunique())
        cpu = f", {df.cpu_time_s.sum() / 60:.1f} CPU-min in the workers" if "cpu_time_s" in df.columns else ""
        print(f"\n{title}\n[{seeds} seed(s), {len(df)} runs, {wall / 60:.1f} min wall, "
              f"{df.train_time_s.sum() / 60:.1f} min of training summed over runs{cpu}]")
        print(text)
        print("claims:")
        for r in checks.itertuples():
            print(f"  [{'holds' if r.holds else 'FAILS'}] {r.claim}: {r.measured}")
        sys.stdout.flush()
    total = time.perf_counter() - start
    save()
    print(f"\ntotal wall time {total / 60:.1f} min on {meta['machine']['cpu_count']} CPUs ({args.workers} workers); wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
