"""Does a faster training path change what a model learns? MovieLens-100K, each seed trained both ways.

    .venv/bin/python benchmarks/amp_quality.py                    # bf16 autocast: float32 against amp=True
    .venv/bin/python benchmarks/amp_quality.py --compare fused    # the plain autograd graph against model/fused.py
    .venv/bin/python benchmarks/amp_quality.py --quick            # smoke run: 1 model, 2 seeds, 1 epoch

3 models x 2 paths x 5 seeds take about 10 minutes on 2 cores. For each model (DCN-V2 full rank and rank 8,
both stacked on a (256, 128) deep net, and that deep net alone), every seed is trained twice with
``dx.fit`` on the same split:

- ``--compare amp``: once in float32 and once with ``amp=True`` (on the CPU:
  ``torch.autocast("cpu", torch.bfloat16)`` around the training forward; evaluation stays float32).
  Output: ``benchmarks/out/amp_quality.json``.
- ``--compare fused``: once through the plain autograd graph and once through the one-node cross stack
  and deep network of ``dcn_explore.model.fused`` (``fused.ENABLED``). MovieLens-100K's ``d = 134`` is
  under ``TRAIN_PAD_MIN_D``, so both runs set the model's ``TRAIN_PAD_MIN_D = 0`` (the padded training
  forward at 136 columns, which the fused nodes need) and the process runs with
  ``DCNX_CPU_MATMUL=onednn`` (the fused nodes' products through oneDNN where it works, as at the
  Criteo shape's width; scoring through the same products for both). Output:
  ``benchmarks/out/fused_quality.json``.

Reported per model and path: the mean and standard deviation over seeds of the test log loss and AUC,
the mean of the per-seed differences (new path - reference) and that mean in units of the reference's
seed-to-seed standard deviation ("within seed noise" when its magnitude is below 1), and the median
wall time of a fit.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dcn_explore as dx  # noqa: E402
from dcn_explore._io import write_json_atomic  # noqa: E402
from dcn_explore.model import fused, onednn  # noqa: E402
from dcn_explore.train import cpu_native_bf16  # noqa: E402

MODELS = {
    "DCN-V2 full": dict(cross="full", cross_layers=3, structure="stacked", deep_layers=(256, 128)),
    "DCN-V2 rank 8": dict(cross="low_rank", rank=8, cross_layers=3, structure="stacked", deep_layers=(256, 128)),
    "DNN": dict(structure="deep_only", deep_layers=(256, 128)),
}


#: per comparison: the JSON key prefixes and printed names of (reference, new path), and the output name
COMPARISONS = {
    "amp": {"keys": ("fp32", "amp"), "names": ("float32", "amp"), "out": "amp_quality.json"},
    "fused": {"keys": ("plain", "fused"), "names": ("plain graph", "fused"), "out": "fused_quality.json"},
}


def _prepare(compare: str, new_path: bool, model: dx.DCNv2, tc: dx.TrainConfig) -> dx.TrainConfig:
    """Set up one run of ``compare``: the new path when ``new_path``, else the reference."""
    if compare == "amp":
        return tc.replace(amp=new_path)
    model.TRAIN_PAD_MIN_D = 0  # on the instance: the padded training forward at MovieLens' width
    fused.ENABLED = new_path
    return tc


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data-root", default=None, help="folder holding ml-100k/ (default: dx.data.movielens's own resolution)")
    ap.add_argument("--quick", action="store_true", help="smoke run: the first model, 2 seeds, 1 epoch")
    ap.add_argument("--compare", choices=sorted(COMPARISONS), default="amp",
                    help="amp: float32 against bf16 autocast; fused: the plain graph against model/fused.py")
    ap.add_argument("--out", default=None, help="default: benchmarks/out/amp_quality.json or fused_quality.json")
    args = ap.parse_args(argv)
    comp = COMPARISONS[args.compare]
    (ref_key, new_key), (ref_name, new_name) = comp["keys"], comp["names"]
    args.out = args.out or str(Path(__file__).parent / "out" / comp["out"])
    if args.compare == "fused":
        os.environ[onednn.ENV] = "onednn"
        onednn.cpu_matmul.cache_clear()
    models = dict(MODELS)
    if args.quick:
        args.seeds, args.epochs = 2, 1
        models = dict(list(models.items())[:1])
    torch.set_num_threads(args.threads)
    ds = dx.data.movielens("100k", root=args.data_root)
    tr, va, te = ds.split((0.8, 0.1, 0.1), seed=0)
    print(f"{ds.name}: train {len(tr)}, val {len(va)}, test {len(te)}; CPU with native bf16: {cpu_native_bf16()}")
    rows, summary = [], []
    for name, cfg in models.items():
        per = {False: [], True: []}
        for seed in range(args.seeds):
            for new in (False, True):
                model = dx.DCNv2(tr.schema, dx.DCNConfig(**cfg), seed=seed)
                tc = _prepare(args.compare, new, model, dx.TrainConfig(
                    epochs=args.epochs, batch_size=128, early_stopping=2, seed=seed, device="cpu", progress=False, amp=False))
                t0 = time.perf_counter()
                res = dx.fit(model, tr, va, tc)
                secs = time.perf_counter() - t0
                m = dx.evaluate(model, te)
                row = {"model": name, "seed": seed, "path": new_key if new else ref_key, "amp_used": res.summary["amp"],
                       "test_logloss": m["logloss"], "test_auc": m["auc"], "best_epoch": res.best_epoch,
                       "epochs": len(res.history), "fit_s": secs}
                rows.append(row)
                per[new].append(row)
                print(f"  {name:14s} seed {seed} {new_name if new else ref_name:>11s}: test log loss {m['logloss']:.4f}, "
                      f"AUC {m['auc']:.4f}, {len(res.history)} epochs, {secs:.1f} s", flush=True)
        fused.ENABLED = True
        s = {"model": name}
        for metric in ("test_logloss", "test_auc"):
            ref, alt = [r[metric] for r in per[False]], [r[metric] for r in per[True]]
            diffs = [b - a for a, b in zip(ref, alt)]
            sd = statistics.stdev(ref) if len(ref) > 1 else float("nan")
            s[metric] = {f"{ref_key}_mean": statistics.fmean(ref), f"{ref_key}_std": sd, f"{new_key}_mean": statistics.fmean(alt),
                         f"{new_key}_std": statistics.stdev(alt) if len(alt) > 1 else float("nan"), "mean_diff": statistics.fmean(diffs),
                         f"mean_diff_in_{ref_key}_std": statistics.fmean(diffs) / sd if sd else float("nan")}
        s["fit_s_median"] = {ref_key: statistics.median(r["fit_s"] for r in per[False]),
                             new_key: statistics.median(r["fit_s"] for r in per[True])}
        summary.append(s)
    print(f"\n{'model':14s} {'metric':13s} {ref_name + ' mean ± std':>22s} {new_name + ' mean ± std':>22s} {'difference':>11s} "
          f"{'in ref. std':>11s}")
    for s in summary:
        for metric in ("test_logloss", "test_auc"):
            v = s[metric]
            print(f"{s['model']:14s} {metric:13s} {v[ref_key + '_mean']:>13.4f} ± {v[ref_key + '_std']:.4f} "
                  f"{v[new_key + '_mean']:>13.4f} ± {v[new_key + '_std']:.4f} {v['mean_diff']:>+11.4f} "
                  f"{v['mean_diff_in_' + ref_key + '_std']:>+11.2f}")
        print(f"{'':14s} fit time (median): {ref_name} {s['fit_s_median'][ref_key]:.1f} s, {new_name} {s['fit_s_median'][new_key]:.1f} s")
    write_json_atomic(args.out, {
        "command": " ".join(["benchmarks/amp_quality.py", *(argv if argv is not None else sys.argv[1:])]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "torch_threads": torch.get_num_threads(), "cpu_native_bf16": cpu_native_bf16(),
                    "cpu_matmul": os.environ.get(onednn.ENV, "auto"), "onednn_unusable": onednn.onednn_unusable()},
        "versions": {"torch": torch.__version__, "dcn_explore": dx.__version__},
        "compare": args.compare, "paths": {ref_key: ref_name, new_key: new_name},
        "settings": vars(args), "summary": summary, "rows": rows})
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
