"""Render benchmarks/RESULTS.md from the JSON files the benchmarks write to benchmarks/out/.

    python benchmarks/results.py            # after the benchmarks ran (bash benchmarks/run_all.sh runs them all)
    python benchmarks/results.py --only speed,scoring_matmul   # rewrite those sections, keep the others

Each section carries the command that produced its numbers, the machine, the date and the
library versions, as recorded by the benchmark itself. A benchmark whose JSON is missing is
listed as not run; nothing is filled in by hand. ``--only`` renders the named sections from their
JSON and keeps every other section of the existing RESULTS.md as it is (``benchmarks/out/`` is not
kept in the repository, so a fresh checkout has only the JSON of the benchmarks it reran).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
sys.path.insert(0, str(HERE.parent))

from dcn_explore._io import write_text_atomic  # noqa: E402


def _load(name: str):
    p = OUT / f"{name}.json"
    return json.loads(p.read_text()) if p.is_file() else None


def _table(headers: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def _meta(m: dict) -> str:
    mach = m.get("machine", {})
    vers = ", ".join(f"{k} {v}" for k, v in (m.get("versions") or {}).items() if v)
    dev = m.get("device") or mach.get("device") or ""
    return (f"- command: `{m.get('command', '?')}`\n- date: {m.get('date', '?')}\n"
            f"- machine: {mach.get('platform', '?')}, {mach.get('cpu_count', mach.get('cpus', '?'))} CPUs {dev}\n"
            f"- versions: {vers}\n")


def _minutes(m: dict) -> str:
    w = m.get("wall_s")
    w = w.get("total") if isinstance(w, dict) else w
    return "?" if w is None else f"{w / 60:.1f} min"


def _e(x) -> str:
    return "n/a" if x is None else f"{x:.2e}"


def synthetic() -> str:
    d = _load("synthetic")
    if d is None:
        return "## Synthetic studies (paper Sec. 6)\n\nNot run: `.venv/bin/python benchmarks/synthetic.py`.\n"
    s = ["## Synthetic studies (paper Sec. 6)\n", _meta(d["meta"]), f"- wall time: {_minutes(d['meta'])}\n"]
    kept = d["meta"].get("kept_from_previous_run")
    if kept:
        s.append(f"- {', '.join(kept['studies'])}: from the earlier run `{kept['command']}` of {kept['date']} "
                 f"(wall {json.dumps(kept['wall_s'])} s); this run (`--only`) added the others\n")
    t1 = d["summaries"].get("table1", [])
    s.append("### Table 1 — RMSE (mean over seeds) and model size, ours beside the paper's\n")
    s.append(_table(["task", "model", "RMSE (ours)", "± std", "params (ours)", "RMSE (paper)", "params (paper)"],
                    [[r["task"], r["model"], _e(r["rmse"]), _e(r.get("rmse_std")), r["params"], _e(r.get("paper_rmse")),
                      r.get("paper_params") or "n/a"] for r in t1]))
    t2 = d["summaries"].get("table2", [])
    s.append("\n\n### Table 2 — combined orders 1–4, RMSE by number of layers\n")
    s.append(_table(["model", "layers", "RMSE (ours)", "± std", "params (ours)", "RMSE (paper)"],
                    [[r["model"], r["layers"], _e(r["rmse"]), _e(r.get("rmse_std")), r.get("params", "n/a"), _e(r.get("paper_rmse"))] for r in t2]))
    f4 = d["summaries"].get("fig4", [])
    s.append("\n\n### Fig. 4 — homogeneous polynomials, cross-layer ablation (RMSE)\n")
    if f4:  # one row per (order, variant): mean RMSE at each number of layers, and the best layer
        layers = [k for k in f4[0] if k.startswith("L") and k[1:].isdigit()]
        s.append("Mean test RMSE over seeds by number of cross layers (the paper gives a plot only). Variants of "
                 "`x_{l+1} = x0 ⊙ (W x_l [+ b]) [+ x_l]`.\n")
        s.append(_table(["order", "variant", *layers, "best"],
                        [[r["order"], r["variant"], *[_e(r[c]) for c in layers], f"L{r['best_layer']}"] for r in f4]))
    else:
        s.append("Not run: `.venv/bin/python benchmarks/synthetic.py --only fig4`.")
    s.append("\n\n### Checks\n")
    s.append(_table(["study", "claim", "measured", "holds"],
                    [[k, c["claim"], c["measured"], "yes" if c["holds"] else "**no**"] for k, v in d["checks"].items() for c in v]))
    return "\n".join(s) + "\n"


def movielens() -> str:
    d = _load("movielens_quality")
    title = "## MovieLens-100K quality against peer libraries (paper Sec. 7.1 protocol)\n"
    if d is None:
        return title + "\nNot run: `benchmarks/.peers-venv/bin/python benchmarks/movielens_quality.py`.\n"
    m = d["meta"]
    s = [title, _meta(m), f"- protocol: {json.dumps(m.get('protocol'))}\n- wall time: {_minutes(m)}\n"]
    rows = sorted(d["rows"], key=lambda r: r["test_logloss"])
    s.append(_table(["model", "library", "test log loss", "test AUC", "params", "FLOPs/example", "chosen point"],
                    [[r["model"], r["library"], f"{r['test_logloss']:.4f} ± {r['test_logloss_std']:.4f}",
                      f"{r['test_auc']:.4f} ± {r['test_auc_std']:.4f}", f"{r['params']:,}", f"{r['flops']:,.0f}",
                      ", ".join(f"{k}={v}" for k, v in r["best"].items())] for r in rows]))
    v = m.get("verdict") or {}
    if v:
        s.append(f"\nAcceptance (an ours DCN-V2/DCN-Mix at least as good as the best peer on both mean log loss and mean AUC): "
                 f"**{'holds' if v.get('holds') else 'does not hold'}**. Best peer by log loss: {v.get('best_peer_by_logloss')}; "
                 f"by AUC: {v.get('best_peer_by_auc')}; ours meeting it: {v.get('ours_meeting_it')}.")
        c = v.get("ours_best_dcn_vs_dnn")
        if c:
            s.append(f"\nOurs {c['model']} minus ours DNN: log loss {c['delta_logloss']:+.4f}, AUC {c['delta_auc']:+.4f} "
                     f"(seed std log loss {c['std_logloss'][0]:.4f} / {c['std_logloss'][1]:.4f}, AUC {c['std_auc'][0]:.4f} / {c['std_auc'][1]:.4f}).")
    s.append(_movielens_recheck({r["model"]: r for r in d["rows"]}))
    return "\n".join(s) + "\n"


def _movielens_recheck(full: dict) -> str:
    """A later re-run of some of our models (``movielens_quality.py --models ... --out benchmarks/out/movielens_recheck.json``),
    set beside the full run: quality after a change to the training path, within seed noise or not."""
    d = _load("movielens_recheck")
    if d is None:
        return ""
    m = d["meta"]
    git = m.get("git") or {}
    rows = []
    for r in d["rows"]:
        ref = full.get(r["model"])
        if ref is None:
            continue
        dl, da = r["test_logloss"] - ref["test_logloss"], r["test_auc"] - ref["test_auc"]
        inside = abs(dl) <= max(r["test_logloss_std"], ref["test_logloss_std"]) and abs(da) <= max(r["test_auc_std"], ref["test_auc_std"])
        rows.append([r["model"], f"{r['test_logloss']:.4f} ± {r['test_logloss_std']:.4f}", f"{r['test_auc']:.4f} ± {r['test_auc_std']:.4f}",
                     f"{dl:+.4f} / {da:+.4f}", "yes" if inside else "**no**",
                     ", ".join(f"{k}={v}" for k, v in r["best"].items()) + ("" if r["best"] == ref["best"] else " (full run chose another)")])
    return ("\n### Re-run of ours on a later commit\n\n" + _meta(m)
            + f"- commit: {git.get('commit', '?')}{' (uncommitted changes)' if git.get('dirty') else ''}; wall time: {_minutes(m)}\n\n"
            + _table(["model", "test log loss", "test AUC", "minus the full run (log loss / AUC)", "within a seed std",
                      "chosen point"], rows) + "\n")


def speed() -> str:
    return _speed("speed", "## Speed: Criteo-shaped workload, ours against the peers in the same run\n", "benchmarks/speed.py")


def speed_amp() -> str:
    return _speed("speed_amp", "## Speed under bf16 autocast: ours and the peers all train in bf16, in the same run\n",
                  "benchmarks/speed.py --amp --out benchmarks/out/speed_amp.json")


def _speed(name: str, title: str, how: str) -> str:
    d = _load(name)
    if d is None:
        return title + f"\nNot run: `benchmarks/.peers-venv/bin/python {how}`.\n"
    keys = ("batch", "infer_batch", "steps", "rounds", "threads", "sparse", "amp", "peer_optimizer")
    settings = {"peer_optimizer": "kept", **d["settings"]}  # files from before stop 19 kept the peers' Adam across rounds
    s = [title, _meta(d), f"- device: {d['device']}; settings: {json.dumps({k: settings[k] for k in keys if k in settings})}\n"]
    s.append(_table(["model", "library / model", "params", "train ex/s median (min..max)", "inference ex/s median (min..max)"],
                    [[r["model"], r["name"], f"{r['params']:,}", f"{r['train_median']:,.0f} ({r['train_min']:,.0f}..{r['train_max']:,.0f})",
                      f"{r['infer_median']:,.0f} ({r['infer_min']:,.0f}..{r['infer_max']:,.0f})"] for r in d["rows"]]))
    ratios, paired = {}, {}
    for r in d["rows"]:
        if r["library"] == "dcn-explore" and "train_ratio_vs_fastest_peer" in r:
            ratios[r["model"]] = (r["train_ratio_vs_fastest_peer"], r["infer_ratio_vs_fastest_peer"])
            if "train_ratio_per_round" in r:
                paired[r["model"]] = ((r["train_ratio_per_round"], r.get("train_ratio_per_round_ci90")),
                                      (r["infer_ratio_per_round"], r.get("infer_ratio_per_round_ci90")))
    if ratios:
        s.append("\n\nOurs divided by the fastest peer (medians): " + "; ".join(
            f"{k}: training {a:.2f}x, inference {b:.2f}x" for k, (a, b) in ratios.items()) + ".")
    if paired:
        def spread(v_ci):
            v, ci = v_ci
            ci = f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""  # files from before the interval was added have none
            return f"{statistics.median(v):.2f}x{ci} ({min(v):.2f}..{max(v):.2f})"

        has_ci = any(ci for pair in paired.values() for _, ci in pair)
        s.append("\nThe same per round (ours and that peer measured seconds apart), median "
                 + ("[90 % bootstrap interval of the median] " if has_ci else "") + "(min..max): " + "; ".join(
            f"{k}: training {spread(a)}, inference {spread(b)}" for k, (a, b) in paired.items()) + ".")
    return "\n".join(s) + "\n"


def sweep_speed() -> str:
    d = _load("sweep_speed")
    title = "## Batched sweep: 4 ranks × 3 seeds, batched against one by one\n"
    if d is None:
        return title + "\nNot run: `.venv/bin/python benchmarks/sweep_speed.py`.\n"
    one, bat = d["seconds"]["one_by_one"], d["seconds"]["batched"]
    one, bat = (one, bat) if isinstance(one, list) else ([one], [bat])  # files from before rounds were added
    rows = [[d["runs"], i + 1, f"{a:.1f}", f"{b:.1f}", f"{a / b:.2f}x"] for i, (a, b) in enumerate(zip(one, bat))]
    return (title + "\n" + _meta(d) + "\n" + _table(["runs", "round", "one by one (s)", "batched (s)", "ratio"], rows)
            + f"\n\nSpeed-up, median over rounds: **{d['speedup']:.2f}x**; max |Δ {d['metric']}| per run: {d['max_abs_diff']:.1e}.\n")


def criteo_memory() -> str:
    d = _load("criteo_memory")
    title = "## Criteo loader: bounded memory on a generated 2M-row file\n"
    if d is None:
        return title + "\nNot run: `.venv/bin/python benchmarks/criteo_memory.py`.\n"
    rows = [[r["run"], f"{r['wall_s']:.1f}", f"{r['loader_s']:.2f}", f"{r['peak_rss_mib']:.0f}"] for r in d["runs"]]
    return (title + "\n" + _meta(d) + "\n" + _table(["run", "wall (s)", "in criteo() (s)", "peak RSS (MiB)"], rows)
            + f"\n\nMalformed lines reported: {d['malformed_reported']} of {d['malformed_written']} written.\n")


def scoring_matmul() -> str:
    d = _load("scoring_matmul")
    title = "## The scorer's products on the CPU: oneDNN against the BLAS, paired\n"
    if d is None:
        return title + "\nNot run: `.venv/bin/python benchmarks/scoring_matmul.py`.\n"
    m = d["meta"]
    head = (f"- command: `{m['command']}`\n- date: {m['date']}\n- machine: {m['machine']}, CPU capability "
            f"{m['capability']}, {m['threads']} threads, torch {m['torch']}; {m['rows']:,} rows × {m['rounds']} rounds\n")
    rows = [[r["model"], r["d"], f"{r['chunk']:,}", f"{r['blas_ms']:.1f}", f"{r['onednn_ms']:.1f}", f"{r['per_round_ratio']:.2f}x",
             r["auto"]] for r in d["rows"]]
    return (title + "\n" + head + "\n" + _table(["model", "d", "rows per product", "BLAS (ms)", "oneDNN (ms)",
                                                 "per-round ratio (BLAS / oneDNN)", "auto chooses"], rows) + "\n")


def _path_quality(name: str, title: str, how: str, keys: tuple[str, str], names: tuple[str, str]) -> str:
    """A section of ``benchmarks/amp_quality.py``'s output ``name``: reference path ``keys[0]`` against ``keys[1]``."""
    d = _load(name)
    if d is None:
        return title + f"\nNot run: `{how}`.\n"
    m = d["machine"]
    head = _meta(d) + f"- {m['torch_threads']} threads, native bf16: {m['cpu_native_bf16']}; seeds: {d['settings']['seeds']}\n"
    if "cpu_matmul" in m:
        head += f"- `DCNX_CPU_MATMUL={m['cpu_matmul']}`" + (f" (oneDNN unusable: {m['onednn_unusable']})" if m.get("onednn_unusable") else "") + "\n"
    (ref, new), (ref_name, new_name) = keys, names
    rows = []
    for r in d["summary"]:
        for metric in ("test_logloss", "test_auc"):
            v = r[metric]
            rows.append([r["model"], metric, f"{v[ref + '_mean']:.4f} ± {v[ref + '_std']:.4f}", f"{v[new + '_mean']:.4f} ± {v[new + '_std']:.4f}",
                         f"{v['mean_diff']:+.4f}", f"{v['mean_diff_in_' + ref + '_std']:+.2f}"])
    return (title + "\n" + head + "\n" + _table(["model", "metric", f"{ref_name} mean ± std", f"{new_name} mean ± std",
                                                 f"{new_name} − {ref_name} (mean of per-seed)", f"in {ref_name} seed std"], rows) + "\n")


def amp_quality() -> str:
    return _path_quality("amp_quality", "## bf16 autocast and quality: MovieLens-100K, float32 against `amp=True`\n",
                         ".venv/bin/python benchmarks/amp_quality.py", ("fp32", "amp"), ("float32", "amp"))


def fused_quality() -> str:
    return _path_quality("fused_quality", "## One-node cross stack and deep network and quality: MovieLens-100K, plain graph against `model/fused.py`\n",
                         ".venv/bin/python benchmarks/amp_quality.py --compare fused", ("plain", "fused"), ("plain graph", "fused"))


SECTIONS = {"synthetic": synthetic, "movielens": movielens, "speed": speed, "speed_amp": speed_amp, "amp_quality": amp_quality,
            "fused_quality": fused_quality,
            "sweep_speed": sweep_speed, "scoring_matmul": scoring_matmul, "criteo_memory": criteo_memory}


def _existing_sections(text: str) -> dict[str, str]:
    """The ``## `` sections of a RESULTS.md, by their title line."""
    parts = text.split("\n## ")
    return {("## " + p).split("\n", 1)[0]: "## " + p for p in parts[1:]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=None, help=f"comma-separated sections to render ({', '.join(SECTIONS)}); the others are kept")
    args = ap.parse_args(argv)
    only = list(SECTIONS) if args.only is None else [x.strip() for x in args.only.split(",") if x.strip()]
    unknown = [x for x in only if x not in SECTIONS]
    if unknown:
        ap.error(f"--only: unknown section(s) {', '.join(unknown)}; expected some of {', '.join(SECTIONS)}")
    target = HERE / "RESULTS.md"
    kept = _existing_sections(target.read_text()) if args.only is not None and target.is_file() else {}
    body = []
    for name, render in SECTIONS.items():
        text = render()
        title = text.split("\n", 1)[0]
        body.append(text if name in only or title not in kept else kept[title])
    parts = ["# Benchmark results\n",
             "Generated by `python benchmarks/results.py` from `benchmarks/out/*.json`; `bash benchmarks/run_all.sh` "
             "reruns every benchmark and then this script. Every number below was printed by the command listed with it.\n",
             *body]
    write_text_atomic(target, "\n".join(parts))
    print(f"wrote {target}" + ("" if args.only is None else f" (rendered: {', '.join(only)}; the other sections kept)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
