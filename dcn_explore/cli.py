"""The ``dcn-explore`` command.

Subcommands: ``quickstart`` (the main job on the built-in planted-cross data),
``train``, ``crosses``, ``sweep``, ``report``. Bad input ends with a one-line
error naming what was wrong (exit status 2), never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Sequence

from .errors import DCNExploreError

DEFAULT_RUNS = Path("runs")


# -- shared argument groups ------------------------------------------------------------------
def _add_data_args(p: argparse.ArgumentParser, default: str = "planted") -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", default=default, help="planted | polynomial:KIND | movielens:100k|1m | criteo:PATH[,PATH...] | csv:PATH (default: %(default)s)")
    g.add_argument("--samples", type=int, default=None, help="examples to generate (synthetic sources)")
    g.add_argument("--data-seed", type=int, default=0, help="seed of the synthetic generator (default: %(default)s)")
    g.add_argument("--data-root", default=None, help="folder holding/downloading MovieLens (default: data/, then ../shared/data)")
    g.add_argument("--label", default=None, help="csv: label column")
    g.add_argument("--categorical", default="", help="csv: comma-separated categorical columns")
    g.add_argument("--dense", default="", help="csv: comma-separated dense columns")
    g.add_argument("--multivalent", default="", help="csv: comma-separated multivalent columns")
    g.add_argument("--task", default="binary", choices=["binary", "regression"], help="csv: task")
    g.add_argument("--split-seed", type=int, default=0, help="seed of the 80/10/10 split (default: %(default)s)")


def _add_model_args(p: argparse.ArgumentParser, cross="full", structure="stacked", layers=3) -> None:
    g = p.add_argument_group("model (DCNConfig)")
    g.add_argument("--cross", default=cross, help="full | low_rank | mixture | vector (default: %(default)s)")
    g.add_argument("--structure", default=structure, help="stacked | parallel | cross_only | deep_only (default: %(default)s)")
    g.add_argument("--cross-layers", type=int, default=layers)
    g.add_argument("--rank", type=int, default=None)
    g.add_argument("--experts", type=int, default=1)
    g.add_argument("--gate", default="softmax")
    g.add_argument("--activation", default="identity")
    g.add_argument("--deep-layers", default="512,256", help="comma-separated widths (default: %(default)s)")
    g.add_argument("--embedding-dim", default="auto", help="'auto' (6·vocab^0.25 per feature) or an integer")


def _add_train_args(p: argparse.ArgumentParser) -> None:
    from .train import TrainConfig

    d = TrainConfig()
    g = p.add_argument_group("training (TrainConfig)")
    g.add_argument("--epochs", type=int, default=d.epochs)
    g.add_argument("--batch-size", type=int, default=d.batch_size)
    g.add_argument("--lr", type=float, default=d.lr)
    g.add_argument("--l2", type=float, default=d.l2)
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument("--device", default=d.device)
    g.add_argument("--amp", default="auto", choices=["auto", "on", "off"],
                   help="bf16 autocast of the training forward: auto = on for CUDA only; on = on the CPU too "
                        "(fast where the CPU has native bf16) (default: %(default)s)")
    g.add_argument("--no-progress", action="store_true")


def _csv_list(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def _load(args):
    from .data.sources import load_source

    csv = {}
    if args.data.startswith("csv:"):
        csv = dict(label=args.label, categorical=_csv_list(args.categorical), dense=_csv_list(args.dense),
                   multivalent=_csv_list(args.multivalent), task=args.task)
    return load_source(args.data, seed=args.data_seed, n_samples=args.samples, root=args.data_root, **csv)


def _model_config(args):
    from .errors import ConfigError
    from .model import DCNConfig

    try:
        deep = tuple(int(x) for x in _csv_list(args.deep_layers))
        emb = args.embedding_dim if args.embedding_dim == "auto" else int(args.embedding_dim)
    except ValueError as e:
        raise ConfigError(f"--deep-layers / --embedding-dim: expected integers, got {args.deep_layers!r} / {args.embedding_dim!r}") from e
    return DCNConfig(cross=args.cross, structure=args.structure, cross_layers=args.cross_layers, rank=args.rank,
                     experts=args.experts, gate=args.gate, activation=args.activation, deep_layers=deep, embedding_dim=emb)


def _train_config(args, **extra):
    from .train import TrainConfig

    return TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, l2=args.l2, seed=args.seed,
                       device=args.device, amp={"auto": "auto", "on": True, "off": False}[args.amp],
                       progress=not args.no_progress, **extra)


def _print_table(df, floatfmt: str = "{:.4f}") -> None:
    print(df.to_string(index=False, float_format=lambda v: floatfmt.format(v)))


# -- subcommands ------------------------------------------------------------------------------
def cmd_quickstart(args) -> int:
    """Train a 1-layer full-rank DCN-V2 cross network on the planted-cross data; compare with the truth; write a report."""
    import pandas as pd

    from . import plots
    from ._io import write_json_atomic, write_text_atomic
    from .crosses import crosses
    from .data import planted_crosses
    from .model import DCNConfig, DCNv2
    from .report import write_html_report
    from .train import evaluate, fit

    out = Path(args.out)
    ds = planted_crosses(n_samples=args.samples or 100_000, seed=args.data_seed)
    train, val, test = ds.split((0.8, 0.1, 0.1), seed=args.split_seed)
    cfg = DCNConfig(cross=args.cross, cross_layers=1, structure="cross_only",
                    rank=args.rank if args.cross in ("low_rank", "mixture") else None,
                    experts=args.experts if args.cross == "mixture" else 1)
    model = DCNv2(ds.schema, cfg, seed=args.seed)
    print(f"data: {ds.name}, {len(ds)} examples, {len(ds.schema)} features (d={ds.schema.d}), planted pairs: {len(ds.truth)}")
    print(f"model: {cfg.label()}, {model.num_parameters():,} parameters, {model.flops_per_example():,} FLOPs/example")
    t0 = time.perf_counter()
    result = fit(model, train, val, _train_config(args, checkpoint=str(out / "model.pt")))
    metrics = evaluate(model, test)
    print(f"trained {len(result.history)} epochs in {time.perf_counter() - t0:.1f} s on {result.device}; "
          f"test logloss {metrics['logloss']:.4f}, AUC {metrics['auc']:.4f}")
    rep = crosses(model, test)
    k = len(ds.truth)
    top = rep.top(k=max(k, 10), aggregate=True)
    planted = {frozenset((a, b)): w for a, b, w in zip(ds.truth.feature_a, ds.truth.feature_b, ds.truth.weight)}
    top["planted_weight"] = [planted.get(frozenset((a, b)), float("nan")) for a, b in zip(top.feature_a, top.feature_b)]
    print(f"\nTop learned crosses (block norms, unordered pairs) beside the planted truth:")
    side = pd.concat([top[["feature_a", "feature_b", "norm", "planted_weight"]].head(max(k, 10)).reset_index(drop=True),
                      ds.truth[["feature_a", "feature_b", "weight"]].rename(columns=lambda c: f"truth_{c}")], axis=1)
    print(side.to_string(index=False, na_rep="", float_format=lambda v: f"{v:.3f}"))
    rec = rep.recovery(ds.truth)
    print(f"\nrecovery: {rec['hits']}/{rec['k']} planted pairs in the top {rec['k']}; "
          f"Spearman (planted) {rec['spearman_planted']:.2f}; pair AUC {rec['auc_pairs']:.3f}")
    sections = [
        ("Summary", {"model": cfg.label(), "parameters": model.num_parameters(), "test logloss": round(metrics["logloss"], 4),
                     "test AUC": round(metrics["auc"], 4), "recovered": f"{rec['hits']}/{rec['k']}", "epochs": len(result.history)}),
        ("Block norms of the learned cross matrix (Fig. 6b)", plots.block_norm_heatmap(rep, layer=0)),
        ("Learned vs planted crosses", plots.learned_vs_planted(rep, ds.truth)),
        ("|W| with feature blocks (Fig. 6a)", plots.weight_heatmap(rep, layer=0)),
        ("Top crosses", side),
        ("Singular values (Fig. 3a)", plots.spectrum_plot(rep)),
        ("Training history", plots.history_plot(result.history)),
    ]
    write_html_report(out / "report.html", "dcn-explore quick start: planted crosses", sections)
    write_text_atomic(out / "top_crosses.csv", top.to_csv(index=False))
    write_json_atomic(out / "metrics.json", {"test": metrics, "recovery": {k_: v for k_, v in rec.items()}, "model": model.summary()})
    print(f"\nwrote {out / 'report.html'}, {out / 'model.pt'}, {out / 'top_crosses.csv'}, {out / 'metrics.json'}")
    return 0


def cmd_train(args) -> int:
    from ._io import write_json_atomic, write_text_atomic
    from .data.criteo import split_by_day
    from .model import DCNv2
    from .train import evaluate, fit

    main_process = True
    if args.distributed:
        from . import distributed

        rank, world = distributed.init()
        main_process = rank == 0
    try:
        out = Path(args.out)
        ds = _load(args)
        # Criteo: the paper's day-based split (no copy of the memory-mapped arrays); otherwise random 80/10/10
        train, val, test = split_by_day(ds) if "splits" in ds.meta else ds.split((0.8, 0.1, 0.1), seed=args.split_seed)
        cfg = _model_config(args)
        model = DCNv2(ds.schema, cfg, seed=args.seed)
        if main_process:
            print(f"data: {ds.name} ({len(ds)} examples, d={model.d}); model: {cfg.label()}, {model.num_parameters():,} parameters")
        tc = _train_config(args, checkpoint=str(out / "model.pt"), distributed=bool(args.distributed))
        if not main_process:
            tc = tc.replace(progress=False)
        result = fit(model, train, val, tc)
        if not main_process:
            return 0
        metrics = evaluate(model, test)
        _print_table(result.history)
        print("test:", {k: round(v, 5) for k, v in metrics.items()})
        write_text_atomic(out / "history.csv", result.history.to_csv(index=False))
        write_json_atomic(out / "metrics.json", {"test": metrics, "model": model.summary(), "train_time_s": result.train_time_s,
                                                 "processes": result.summary.get("processes", 1), "amp": result.summary.get("amp", False)})
        print(f"wrote {out / 'model.pt'}, {out / 'history.csv'}, {out / 'metrics.json'}")
        return 0
    finally:
        if args.distributed:
            from . import distributed

            distributed.shutdown()


def cmd_crosses(args) -> int:
    from .checkpoint import load_checkpoint
    from .crosses import crosses

    model, info = load_checkpoint(args.checkpoint)
    data = None
    if args.data:
        data = _load(args)
    rep = crosses(model, data)
    expert = args.expert if args.expert in (None, "combined", "each") else int(args.expert)
    if args.block_norms:
        layer = None if args.layer is None else int(args.layer)
        _print_table(rep.block_norms(layer=layer, expert=None if expert == "each" else expert, mode=args.mode).reset_index())
    else:
        top = rep.top(args.top, layer=args.layer, expert=expert or "combined", mode=args.mode, ordered=args.ordered)
        _print_table(top)
    for l in range(rep.n_layers):
        print(f"layer {l}: numerical rank R_T (T={args.tol:g}) = {rep.numerical_rank(l, tol=args.tol)} of d={model.d}")
    return 0


def _parse_value(v: str):
    for conv in (int, float):
        try:
            return conv(v)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(v.lower(), v)


def _parse_grid(items: list[str]) -> dict:
    from .errors import ConfigError

    grid = {}
    for item in items:
        name, sep, values = item.partition("=")
        if not sep or not name or not values:
            raise ConfigError(f"--grid {item!r}: expected FIELD=V1,V2,... (e.g. rank=4,8,16)")
        if name in grid:
            raise ConfigError(f"--grid {name!r} is given twice")
        vals = [_parse_value(v.strip()) for v in values.split(",")]
        grid[name] = [tuple(int(x) for x in str(v).split(":")) if name == "deep_layers" else v for v in vals]
    return grid


def cmd_sweep(args) -> int:
    from ._io import write_text_atomic
    from .sweep import sweep

    ds = _load(args)
    grid = _parse_grid(args.grid)
    base = _model_config(args)
    out = Path(args.results)
    df = sweep(ds, base, grid, seeds=args.seeds, train=_train_config(args), results_dir=out, batched=args.batched,
               engine=args.engine, progress=not args.no_progress, split_seed=args.split_seed)
    metric = "test_logloss" if "test_logloss" in df else "test_rmse"
    cols = [c for c in [*grid, "seed", "model", metric, "test_auc", "params", "flops", "train_time_s", "reused"] if c in df]
    _print_table(df[cols])
    if grid:
        summary = df.groupby(list(grid), dropna=False)[metric].agg(["mean", "std", "count"]).reset_index()
        print(f"\n{metric} over seeds:")
        _print_table(summary)
    write_text_atomic(out / "results.csv", df.to_csv(index=False))
    print(f"\nwrote {out / 'results.csv'} and one record + checkpoint per run under {out / 'runs'}")
    return 0


def cmd_report(args) -> int:
    """Execute a notebook with parameters (papermill) and write one standalone HTML report."""
    from .errors import ConfigError
    from .notebook_report import parse_parameter, report

    params = {}
    for item in args.parameter:
        name, sep, value = item.partition("=")
        if not sep or not name.strip().isidentifier():
            raise ConfigError(f"-p {item!r}: expected NAME=VALUE with a Python identifier as NAME")
        params[name.strip()] = parse_parameter(value)
    t0 = time.perf_counter()
    out = report(args.notebook, out=args.out, parameters=params, size=args.size, timeout=args.timeout,
                 keep_notebook=args.keep_notebook, hide_code=args.hide_code)
    print(f"executed {args.notebook} (size {args.size}) in {time.perf_counter() - t0:.1f} s; wrote {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dcn-explore", description="Train DCN-V2 models and see which feature crosses they learned.")
    sub = p.add_subparsers(dest="command", required=True)

    q = sub.add_parser("quickstart", help="train on the built-in planted-cross data, compare with the truth, write an HTML report")
    q.add_argument("--out", default=str(DEFAULT_RUNS / "quickstart"), help="output folder (default: %(default)s)")
    q.add_argument("--samples", type=int, default=None, help="examples to generate (default: 100000)")
    q.add_argument("--data-seed", type=int, default=0)
    q.add_argument("--split-seed", type=int, default=0)
    q.add_argument("--cross", default="full", help="full | low_rank | mixture (default: %(default)s)")
    q.add_argument("--rank", type=int, default=16)
    q.add_argument("--experts", type=int, default=4)
    _add_train_args(q)
    q.set_defaults(func=cmd_quickstart)

    t = sub.add_parser("train", help="train one model and save a checkpoint")
    t.add_argument("--out", required=True, help="output folder for model.pt, history.csv, metrics.json")
    t.add_argument("--distributed", action="store_true",
                   help="DistributedDataParallel over a torchrun launch: torchrun --nproc_per_node=N -m dcn_explore.cli train --distributed ...")
    _add_data_args(t)
    _add_model_args(t)
    _add_train_args(t)
    t.set_defaults(func=cmd_train)

    c = sub.add_parser("crosses", help="print the learned crosses of a checkpoint")
    c.add_argument("checkpoint")
    _add_data_args(c, default=None)
    c.add_argument("--top", type=int, default=10)
    c.add_argument("--layer", type=int, default=None)
    c.add_argument("--expert", default=None, help="combined (default) | each | an expert index")
    c.add_argument("--mode", default="weight", choices=["weight", "data"])
    c.add_argument("--ordered", action="store_true", help="keep blocks (i,j) and (j,i) apart")
    c.add_argument("--block-norms", action="store_true", help="print the k×k block-norm matrix instead of the top list")
    c.add_argument("--tol", type=float, default=0.01, help="tolerance T of the numerical rank")
    c.set_defaults(func=cmd_crosses)

    w = sub.add_parser("sweep", help="train a grid of configurations x seeds; resumable; one tidy table")
    w.add_argument("--results", default=str(DEFAULT_RUNS / "sweep"), help="results folder (default: %(default)s)")
    w.add_argument("--grid", action="append", default=[], metavar="FIELD=V1,V2",
                   help="a swept DCNConfig/TrainConfig field, repeatable (e.g. --grid rank=4,8,16 --grid experts=1,4)")
    w.add_argument("--seeds", type=int, default=3)
    w.add_argument("--batched", action="store_true", help="train runs that differ in seed/rank together")
    w.add_argument("--engine", default="local", choices=["local", "ray"])
    _add_data_args(w)
    _add_model_args(w)
    _add_train_args(w)
    w.set_defaults(func=cmd_sweep)

    r = sub.add_parser("report", help="execute a notebook with parameters and write a standalone HTML report")
    r.add_argument("notebook", help="e.g. notebooks/04_rank_sweep.ipynb")
    r.add_argument("-p", "--parameter", action="append", default=[], metavar="NAME=VALUE",
                   help="override a variable of the notebook's parameters cell (a Python literal or a string), repeatable")
    r.add_argument("--out", default=None, help="the HTML file (default: runs/reports/<notebook name>.html)")
    r.add_argument("--size", default="default", choices=["default", "ci"], help="DCNX_NOTEBOOK_SIZE for the kernel")
    r.add_argument("--timeout", type=int, default=1800, help="seconds one cell may run (default: %(default)s)")
    r.add_argument("--keep-notebook", default=None, help="also write the executed notebook here")
    r.add_argument("--hide-code", action="store_true", help="leave the code cells out of the report")
    r.set_defaults(func=cmd_report)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except DCNExploreError as e:
        print(f"dcn-explore {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dcn-explore {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
