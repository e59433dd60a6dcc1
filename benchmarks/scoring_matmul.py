"""The scorer's products on this CPU: oneDNN's (packed, fused) against the BLAS, paired in one process.

    .venv/bin/python benchmarks/scoring_matmul.py              # Criteo-shaped models, ~2 min on 2 cores
    .venv/bin/python benchmarks/scoring_matmul.py --quick      # smoke run

``dcn_explore.model.onednn.cpu_matmul`` picks oneDNN on AVX-512 CPUs for models at least 256 columns
wide (``DCNX_CPU_MATMUL`` overrides it). This benchmark says whether that rule fits the machine it
runs on: for two of the speed benchmark's Criteo-shaped models (full rank and rank 64; the mixture
scores through its forward), a deep-only model of the same shape and a planted-crosses model
(d = 180, under ``auto``'s width threshold), it scores the same rows with
``Scorer(model, matmul="blas")`` and ``matmul="onednn"`` in alternation, ``--rounds`` times, and prints the medians and the median of the per-round ratios, with what ``auto``
chooses here. Output: ``benchmarks/out/scoring_matmul.json``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import dcn_explore as dx  # noqa: E402
from dcn_explore._io import write_json_atomic  # noqa: E402
from dcn_explore.model import onednn  # noqa: E402
from dcn_explore.model.scoring import Scorer  # noqa: E402
from speed import criteo_shaped  # noqa: E402

MODELS = {
    "full": dict(cross="full", cross_layers=3, structure="stacked", deep_layers=(512, 256)),
    "lr64": dict(cross="low_rank", rank=64, cross_layers=3, structure="stacked", deep_layers=(512, 256)),
    "dnn": dict(structure="deep_only", deep_layers=(512, 256)),
}


def score_ms(scorer: Scorer, inputs, chunk: int) -> float:
    """Milliseconds to score ``inputs`` as ``predict`` does: lookups for 2,048 rows, layers on ``chunk``."""
    n, group = inputs[0].shape[0], Scorer.lookup_group(chunk)
    t = time.perf_counter()
    for i in range(0, n, group):
        scorer.score(*(x[i : i + group] for x in inputs), chunk=chunk)
    return (time.perf_counter() - t) * 1e3


@torch.no_grad()
def pair(model: dx.DCNv2, inputs, chunk: int, rounds: int) -> dict:
    # a scorer per timing, as predict builds one per call (its packing is timed with it)
    run = lambda mm: score_ms(Scorer(model, matmul=mm), inputs, chunk)  # noqa: E731
    run("blas"), run("onednn")  # warm-up
    blas, ours = [], []
    for r in range(rounds):
        for mm in (("blas", "onednn") if r % 2 == 0 else ("onednn", "blas")):
            (blas if mm == "blas" else ours).append(run(mm))
    ratio = statistics.median(b / o for b, o in zip(blas, ours))
    return dict(blas_ms=statistics.median(blas), onednn_ms=statistics.median(ours), per_round_ratio=ratio,
                auto=onednn.cpu_matmul(Scorer.padded_width(model.d)))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=20480)
    p.add_argument("--chunks", default="512,16384", help="rows per product (predict's batch_size)")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="4,096 rows, 2 rounds")
    p.add_argument("--out", default=str(Path(__file__).parent / "out" / "scoring_matmul.json"))
    args = p.parse_args(argv)
    if args.quick:
        args.rows, args.rounds = 4096, 2
    if (why := onednn.onednn_unusable()) is not None:
        print(f"oneDNN's products cannot run here: {why}")
        return 1
    torch.set_num_threads(args.threads)
    chunks = [int(c) for c in args.chunks.split(",")]
    print(f"CPU capability {torch.backends.cpu.get_cpu_capability()}, {args.threads} threads, torch {torch.__version__}; "
          f"{args.rows} rows x {args.rounds} rounds; ratio = BLAS time / oneDNN time (> 1: oneDNN faster)")
    cases = [(name, criteo_shaped(args.rows), cfg) for name, cfg in MODELS.items()]
    planted = dx.data.planted_crosses(n_samples=args.rows, seed=0)  # d = 180 with the default widths
    cases.append(("planted d=180 stacked", planted, dict(cross="full", cross_layers=2, deep_layers=(256, 128))))
    rows = []
    for name, ds, cfg in cases:
        model = dx.DCNv2(ds.schema, dx.DCNConfig(**cfg), seed=0).eval()
        inputs = ds.batch(slice(0, args.rows)).inputs()
        for chunk in chunks:
            r = dict(model=name, label=model.config.label(), d=model.d, chunk=chunk, **pair(model, inputs, chunk, args.rounds))
            rows.append(r)
            print(f"  {name:24s} d={r['d']:4d} chunk {chunk:6d}: BLAS {r['blas_ms']:8.2f} ms, oneDNN {r['onednn_ms']:8.2f} ms, "
                  f"per-round ratio {r['per_round_ratio']:.3f}; auto here: {r['auto']}", flush=True)
    meta = dict(command=" ".join(sys.argv), date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                machine=f"{platform.platform()}, {os.cpu_count()} CPUs", capability=torch.backends.cpu.get_cpu_capability(),
                torch=torch.__version__, threads=args.threads, rows=args.rows, rounds=args.rounds)
    write_json_atomic(Path(args.out), dict(meta=meta, rows=rows))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
