"""Does bf16 autocast (``TrainConfig(amp=True)``) change what a model learns? MovieLens-100K, float32 against amp.

    .venv/bin/python benchmarks/amp_quality.py            # 3 models x 2 modes x 5 seeds, a few minutes on 2 cores
    .venv/bin/python benchmarks/amp_quality.py --quick    # smoke run: 1 model, 2 seeds, 1 epoch

For each model (DCN-V2 full rank and rank 8, both stacked on a (256, 128) deep net, and that deep net
alone), every seed is trained twice with ``dx.fit`` on the same split, once in float32 and once with
``amp=True`` (on the CPU: ``torch.autocast("cpu", torch.bfloat16)`` around the training forward;
evaluation stays float32). Reported per model and mode: the mean and standard deviation over seeds of
the test log loss and AUC, the mean of the per-seed differences (amp - float32) and that mean in units
of the float32 seed-to-seed standard deviation ("within seed noise" when its magnitude is below 1), and
the median wall time of a fit. Output: ``benchmarks/out/amp_quality.json``.
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
from dcn_explore.train import cpu_native_bf16  # noqa: E402

MODELS = {
    "DCN-V2 full": dict(cross="full", cross_layers=3, structure="stacked", deep_layers=(256, 128)),
    "DCN-V2 rank 8": dict(cross="low_rank", rank=8, cross_layers=3, structure="stacked", deep_layers=(256, 128)),
    "DNN": dict(structure="deep_only", deep_layers=(256, 128)),
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data-root", default=None, help="folder holding ml-100k/ (default: dx.data.movielens's own resolution)")
    ap.add_argument("--quick", action="store_true", help="smoke run: the first model, 2 seeds, 1 epoch")
    ap.add_argument("--out", default=str(Path(__file__).parent / "out" / "amp_quality.json"))
    args = ap.parse_args(argv)
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
            for amp in (False, True):
                model = dx.DCNv2(tr.schema, dx.DCNConfig(**cfg), seed=seed)
                tc = dx.TrainConfig(epochs=args.epochs, batch_size=128, early_stopping=2, seed=seed, device="cpu",
                                    progress=False, amp=amp)
                t0 = time.perf_counter()
                res = dx.fit(model, tr, va, tc)
                secs = time.perf_counter() - t0
                m = dx.evaluate(model, te)
                row = {"model": name, "seed": seed, "amp": amp, "amp_used": res.summary["amp"], "test_logloss": m["logloss"],
                       "test_auc": m["auc"], "best_epoch": res.best_epoch, "epochs": len(res.history), "fit_s": secs}
                rows.append(row)
                per[amp].append(row)
                print(f"  {name:14s} seed {seed} {'amp ' if amp else 'fp32'}: test log loss {m['logloss']:.4f}, AUC {m['auc']:.4f}, "
                      f"{len(res.history)} epochs, {secs:.1f} s", flush=True)
        s = {"model": name}
        for metric in ("test_logloss", "test_auc"):
            f32, amp = [r[metric] for r in per[False]], [r[metric] for r in per[True]]
            diffs = [b - a for a, b in zip(f32, amp)]
            sd = statistics.stdev(f32) if len(f32) > 1 else float("nan")
            s[metric] = {"fp32_mean": statistics.fmean(f32), "fp32_std": sd, "amp_mean": statistics.fmean(amp),
                         "amp_std": statistics.stdev(amp) if len(amp) > 1 else float("nan"),
                         "mean_diff": statistics.fmean(diffs), "mean_diff_in_fp32_std": statistics.fmean(diffs) / sd if sd else float("nan")}
        s["fit_s_median"] = {"fp32": statistics.median(r["fit_s"] for r in per[False]), "amp": statistics.median(r["fit_s"] for r in per[True])}
        summary.append(s)
    print(f"\n{'model':14s} {'metric':13s} {'float32 mean ± std':>20s} {'amp mean ± std':>20s} {'amp - fp32':>11s} {'in fp32 std':>11s}")
    for s in summary:
        for metric in ("test_logloss", "test_auc"):
            v = s[metric]
            print(f"{s['model']:14s} {metric:13s} {v['fp32_mean']:>11.4f} ± {v['fp32_std']:.4f} {v['amp_mean']:>11.4f} ± {v['amp_std']:.4f} "
                  f"{v['mean_diff']:>+11.4f} {v['mean_diff_in_fp32_std']:>+11.2f}")
        print(f"{'':14s} fit time (median): float32 {s['fit_s_median']['fp32']:.1f} s, amp {s['fit_s_median']['amp']:.1f} s")
    write_json_atomic(args.out, {
        "command": " ".join(["benchmarks/amp_quality.py", *(argv if argv is not None else sys.argv[1:])]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "torch_threads": torch.get_num_threads(), "cpu_native_bf16": cpu_native_bf16()},
        "versions": {"torch": torch.__version__, "dcn_explore": dx.__version__},
        "settings": vars(args), "summary": summary, "rows": rows})
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
