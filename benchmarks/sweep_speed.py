"""Wall time of a 4 ranks x 3 seeds sweep, batched (one stacked model per group) vs one run after another.

    .venv/bin/python benchmarks/sweep_speed.py            # planted-cross data, CPU
    .venv/bin/python benchmarks/sweep_speed.py --data movielens:100k --structure stacked

The two modes alternate for ``--rounds`` rounds (wall times on shared machines drift by tens of
per cent within minutes); prints every round's times and ratio, the median ratio, and the largest
per-run difference of the test metrics (the two modes must agree: same seeds, same batches).
Writes benchmarks/out/sweep_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

import dcn_explore as dx
from dcn_explore._io import write_json_atomic
from dcn_explore.data.sources import load_source


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="planted")
    p.add_argument("--samples", type=int, default=30_000)
    p.add_argument("--ranks", default="4,8,16,32")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--structure", default="cross_only")
    p.add_argument("--cross-layers", type=int, default=2)
    p.add_argument("--deep-layers", default="256,128")
    p.add_argument("--device", default="auto")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds of both modes")
    p.add_argument("--out", default=str(Path(__file__).parent / "out" / "sweep_speed.json"))
    args = p.parse_args(argv)
    ranks = [int(r) for r in args.ranks.split(",")]
    data = load_source(args.data, n_samples=args.samples if args.data == "planted" else None)
    base = dx.DCNConfig(cross="low_rank", rank=ranks[0], cross_layers=args.cross_layers, structure=args.structure,
                        deep_layers=tuple(int(x) for x in args.deep_layers.split(",")))
    train = dx.TrainConfig(epochs=args.epochs, early_stopping=None, device=args.device, progress=False)
    grid = {"rank": ranks}
    # warm-up (imports, allocator) so neither mode pays it
    dx.sweep(data.sample(2000), base, {"rank": ranks[:1]}, seeds=1, train=train.replace(epochs=1), progress=False)
    times: dict[str, list[float]] = {"one_by_one": [], "batched": []}
    frames = {}
    for _ in range(args.rounds):
        for mode in ("one_by_one", "batched"):
            t = time.perf_counter()
            frames[mode] = dx.sweep(data, base, grid, seeds=args.seeds, train=train, progress=False, batched=(mode == "batched"))
            times[mode].append(time.perf_counter() - t)
    ratios = [a / b for a, b in zip(times["one_by_one"], times["batched"])]
    speedup = statistics.median(ratios)
    a, b = frames["one_by_one"], frames["batched"]
    metric = "test_logloss" if "test_logloss" in a else "test_rmse"
    diff = float((a[metric] - b[metric]).abs().max())
    device = dx.resolve_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"sweep: {len(a)} runs = ranks {ranks} x {args.seeds} seeds, {base.label()}, {args.epochs} epochs, "
          f"data {data.name} ({len(data)} rows), device {name}")
    for r, (a_s, b_s) in enumerate(zip(times["one_by_one"], times["batched"]), 1):
        print(f"round {r}: one by one {a_s:.1f} s   batched {b_s:.1f} s   ratio {a_s / b_s:.2f}x")
    print(f"speed-up (median of {args.rounds} rounds): {speedup:.2f}x   max |delta {metric}| per run: {diff:.2e}")
    print(b[["rank", "seed", metric]].assign(one_by_one=a[metric].round(6), batched=b[metric].round(6)).to_string(index=False))
    write_json_atomic(args.out, {
        "command": " ".join([Path(sys.executable).name, *sys.argv]), "date": datetime.now(timezone.utc).isoformat(),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(), "device": name},
        "versions": {"torch": torch.__version__, "dcn_explore": dx.__version__},
        "runs": len(a), "rounds": args.rounds, "seconds": times, "ratios": ratios, "speedup": speedup, "max_abs_diff": diff,
        "metric": metric,
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
