"""Memory and time of the Criteo loader on a generated file (not a timed test).

Writes a file in the Kaggle ``train.txt`` format (default 2,000,000 lines, a few
of them malformed), then loads it twice with ``dcn_explore.data.criteo.criteo``,
each time in a fresh child process: first building the memmap cache from
scratch, then from the cache. For each run it prints the wall time, the child's
peak resident set size (``ru_maxrss`` from ``os.wait4``, i.e. what
``resource.getrusage(RUSAGE_CHILDREN)`` reports for that one child) next to
the child's resident memory right after its imports (torch, pandas, the package), and the
malformed-line report.

    .venv/bin/python benchmarks/criteo_memory.py                 # 2M lines, 10 malformed
    .venv/bin/python benchmarks/criteo_memory.py --rows 200000   # quicker

Files go to ``benchmarks/out/criteo_memory/`` (git-ignored); ``--clean`` removes
them afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
from dcn_explore.data.criteo import criteo
unit = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
try:  # resident now (the imports' own transient peak is not the loader's)
    import os
    after_imports = int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
except OSError:
    after_imports = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit
path, cache, min_count = sys.argv[1], sys.argv[2], int(sys.argv[3])
t = time.perf_counter()
train, val, test = criteo(path, cache_dir=cache, min_count=min_count, on_error="skip")
load_s = time.perf_counter() - t
batch = train.batch(slice(0, 4096))  # touch one batch, as training would
checksum = float(batch.dense.sum()) + int(batch.categorical.sum())
m = train.meta
print(json.dumps({
    "load_s": load_s, "built": m["cache"]["built"], "cache_dir": m["cache"]["dir"],
    "sizes": [len(train), len(val), len(test)], "malformed": m["malformed"], "blank_lines": m["blank_lines"],
    "vocab_total": sum(m["vocab_sizes"].values()), "rss_after_imports": after_imports,
    "rss_peak_self": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit,
}))
"""


# Generated in a child too: this process stays small, because a child's ru_maxrss starts from
# the RSS of the process that spawned it (Linux counts the pre-exec memory in the child's peak).
GENERATE = r"""
import json, sys
from dcn_explore.data.criteo import write_criteo_sample
s = write_criteo_sample(sys.argv[1], n_rows=int(sys.argv[2]), seed=int(sys.argv[3]), malformed=int(sys.argv[4]))
print(json.dumps(sorted(s.malformed.items())))
"""


def run_child(path: Path, cache: Path, min_count: int) -> dict:
    """Run one load in a fresh interpreter; its peak RSS comes from os.wait4 on that very child."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", CHILD, str(path), str(cache), str(min_count)],
                                stdout=out, stderr=err, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise SystemExit(f"child failed ({proc.returncode}):\n{stderr}")
    res = json.loads(stdout.strip().splitlines()[-1])
    res["wall_s"] = wall
    res["ru_maxrss"] = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    res["stderr"] = stderr
    return res


def mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def folder_size(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--malformed", type=int, default=10)
    ap.add_argument("--min-count", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "criteo_memory")
    ap.add_argument("--clean", action="store_true", help="delete the generated file and cache at the end")
    args = ap.parse_args(argv)

    args.out.mkdir(parents=True, exist_ok=True)
    path, cache = args.out / "train.txt", args.out / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    t = time.perf_counter()
    gen = subprocess.run([sys.executable, "-c", GENERATE, str(path), str(args.rows), str(args.seed), str(args.malformed)],
                         capture_output=True, text=True, cwd=ROOT)
    if gen.returncode != 0:
        raise SystemExit(f"generating the file failed:\n{gen.stderr}")
    malformed = {int(k): v for k, v in json.loads(gen.stdout)}
    print(f"generated {path}: {args.rows:,} lines, {mib(path.stat().st_size)}, "
          f"{len(malformed)} malformed at lines {sorted(malformed)} ({time.perf_counter() - t:.1f} s)")

    import resource

    parent = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    print(f"this (parent) process: peak RSS {mib(parent)}, the floor of each child's ru_maxrss")
    runs = {"build (no cache)": run_child(path, cache, args.min_count), "cached": run_child(path, cache, args.min_count)}
    print(f"\n{'run':<18} {'wall':>8} {'in criteo()':>12} {'peak RSS':>10} {'RSS after imports':>18} {'loader part':>12}")
    for name, r in runs.items():
        print(f"{name:<18} {r['wall_s']:>7.1f}s {r['load_s']:>11.2f}s {mib(r['ru_maxrss']):>10} "
              f"{mib(r['rss_after_imports']):>18} {mib(r['ru_maxrss'] - r['rss_after_imports']):>12}")
    first, second = runs["build (no cache)"], runs["cached"]
    assert first["built"] and not second["built"], "the second run should have used the cache"
    print(f"\nsplit sizes (train, val, test): {first['sizes']}; total vocabulary {first['vocab_total']:,}; "
          f"cache on disk {mib(folder_size(Path(first['cache_dir'])))} at {first['cache_dir']}")
    print(f"parse+build throughput: {sum(first['sizes']) / first['load_s']:,.0f} rows/s")
    bad = first["malformed"]
    print(f"\nmalformed lines skipped: {bad['count']} (expected {len(malformed)})")
    for line in bad["lines"]:
        print("  " + line[:160])
    got = sorted(int(s.split(", line ")[1].split(":")[0]) for s in bad["lines"])
    assert got == sorted(malformed)[: len(got)] and bad["count"] == len(malformed), (got, sorted(malformed))
    import platform
    from datetime import datetime, timezone

    import torch

    from dcn_explore._io import write_json_atomic

    write_json_atomic(ROOT / "benchmarks" / "out" / "criteo_memory.json", {
        "command": " ".join(["benchmarks/criteo_memory.py", *(argv if argv is not None else sys.argv[1:])]),
        "date": datetime.now(timezone.utc).isoformat(),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()},
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
        "rows": args.rows, "file_mib": path.stat().st_size / 2**20, "sizes": first["sizes"],
        "runs": [{"run": name, "wall_s": r["wall_s"], "loader_s": r["load_s"], "peak_rss_mib": r["ru_maxrss"] / 2**20}
                 for name, r in runs.items()],
        "malformed_written": len(malformed), "malformed_reported": bad["count"], "malformed_lines": bad["lines"],
    })
    if args.clean:
        shutil.rmtree(args.out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
