"""MovieLens quality benchmark: dcn-explore's DCN family against peer libraries, one process, one protocol.

Protocol (paper Sec. 7.1, MovieLens): ratings 1-2 -> 0, 4-5 -> 1, 3 dropped, 6 categorical features;
one random 80/10/10 split (``--split-seed``); batch 128; Adam; early stopping on validation log loss
(best weights kept); the same maximum number of epochs for every model. Every model gets the same
tuning budget: ``dcn_explore.tune`` draws ``--budget`` points of its search space (lr, L2, layers, rank
where it applies) and trains each with seed 0 on the training part; the point of lowest *validation*
log loss wins. Each model is then trained with seeds 0..``--seeds``-1 at that point (seed 0 is the
tuning trial itself: same point, same seed, same run) and evaluated on the test part: mean ± std of
log loss and AUC, parameters, forward FLOPs per example.

Our models are trained by ``dx.fit`` (its defaults: EMA of the weights with warm-up, gradient clipping
10, L2 on cross kernels). Peer modules (``benchmarks/peers/models.py``) are trained by one harness that
mirrors the protocol: Adam, batch 128, mean BCE + the peer's own regularisation term, gradient
clipping 10, early stopping on validation log loss, same max epochs; metrics for everyone come from
``dcn_explore.train.metrics_from_outputs``.

Run from the peers venv (``bash benchmarks/peers/setup.sh`` builds it)::

    benchmarks/.peers-venv/bin/python benchmarks/movielens_quality.py            # full run
    benchmarks/.peers-venv/bin/python benchmarks/movielens_quality.py --quick    # smoke run (~2 min)

Prints the table and writes ``benchmarks/out/movielens_quality.json`` (rows, per-seed runs, tuning
trials, metadata). ``--dataset 1m`` uses MovieLens-1M (downloaded by ``dx.data.movielens`` if absent).
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import json
import math
import os
import platform
import shlex
import statistics
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE / "peers"))
sys.path.insert(0, str(REPO))

import dcn_explore as dx  # noqa: E402
from dcn_explore.train import metrics_from_outputs  # noqa: E402
from dcn_explore.tune import tune  # noqa: E402

LR = [2e-3, 4e-3, 8e-3]  # 4e-3 won for 11 of 15 models on {1e-3, 2e-3, 4e-3}: the grid was binding
L2 = [0.0, 3e-5, 1e-4]  # the paper's grid
CROSS_LAYERS = [1, 2, 3]
RANK = [8, 16, 32]  # K=4 experts: total rank 32..128 for d = 96..134
DROPOUT = [0.0, 0.2]  # deep-network dropout, for every model whose library offers it (not TorchRec's MLP)
DEEP = (256, 128)
DNN_DEPTHS = [(256,), (256, 128), (256, 128, 64)]
EXPERTS = 4
PEER_EMBEDDING = 16


@dataclass
class Spec:
    """One model of the table: how to build it and which names its search space has."""

    name: str
    library: str
    family: str  # DNN | DCN | DCN-V2 | DCN-Mix | CrossNet | DCN-V2 low-rank
    space: dict
    build: Callable[..., Any]  # (schema, params, seed) -> model
    ours: bool
    info: dict = field(default_factory=dict)
    probe: bool = False  # an investigation variant: reported, but not counted in the acceptance check


def our_specs() -> list[Spec]:
    def ours(name, family, base: dx.DCNConfig, space):
        def build(schema, p, seed, _b=base):
            changes = {k: v for k, v in p.items() if k in ("cross_layers", "rank", "deep_layers")}
            changes["deep_dropout"] = p.get("dropout", 0.0)
            return dx.DCNv2(schema, _b.replace(**changes), seed=seed)

        return Spec(name, "dcn-explore", family, space, build, True)

    cross = {"lr": LR, "l2": L2, "cross_layers": CROSS_LAYERS, "dropout": DROPOUT}
    return [
        # ours' l2 is both TrainConfig.l2 (cross kernels) and TrainConfig.embedding_l2 (whole tables), as the
        # peers' one l2 knob covers their embeddings and networks; the DNN's l2 is its embeddings' only
        ours("DNN", "DNN", dx.DCNConfig(structure="deep_only", deep_layers=DEEP), {"lr": LR, "l2": L2, "deep_layers": DNN_DEPTHS, "dropout": DROPOUT}),
        ours("DCN", "DCN", dx.DCNConfig(cross="vector", deep_layers=DEEP), cross),
        ours("DCN-V2 (stacked)", "DCN-V2", dx.DCNConfig(cross="full", structure="stacked", deep_layers=DEEP), cross),
        ours("DCN-V2 (parallel)", "DCN-V2", dx.DCNConfig(cross="full", structure="parallel", deep_layers=DEEP), cross),
        ours("DCN-Mix", "DCN-Mix", dx.DCNConfig(cross="mixture", rank=32, experts=EXPERTS, deep_layers=DEEP), dict(cross, rank=RANK)),
        ours("CrossNet", "CrossNet", dx.DCNConfig(cross="full", structure="cross_only"), {"lr": LR, "l2": L2, "cross_layers": CROSS_LAYERS}),
    ]


def peer_specs(names: list[str] | None = None) -> list[Spec]:
    from models import PEERS, build_peer

    fam = {"full": "DCN-V2", "mixture": "DCN-Mix", "low_rank": "DCN-V2 low-rank", None: "DNN"}
    out = []
    for name, spec in PEERS.items():
        if names is not None and name not in names:
            continue
        space = {"lr": LR, "l2": L2}
        if spec["cross"] is None:
            space["deep_layers"] = DNN_DEPTHS
        else:
            space["cross_layers"] = CROSS_LAYERS
        if spec["cross"] in ("mixture", "low_rank"):
            space["rank"] = RANK
        if spec["library"] in ("deepctr", "fuxictr"):
            space["dropout"] = DROPOUT

        def build(schema, p, seed, _n=name):
            kw = dict(cross_layers=p.get("cross_layers", 3), deep_layers=p.get("deep_layers", DEEP), rank=p.get("rank", 32),
                      experts=EXPERTS, embedding_dim=PEER_EMBEDDING, l2=p.get("l2", 0.0), batch_size=128, seed=seed,
                      dropout=p.get("dropout", 0.0))
            return build_peer(_n, schema, **kw)

        out.append(Spec(name, spec["library"], fam[spec["cross"]], space, build, False))
    return out


def interleave(ours: list[Spec], peers: list[Spec]) -> list[Spec]:
    """The run order: the headline models first (ours DCN-V2/DNN/DCN-Mix against the peers' best-known),
    alternating ours and theirs, so that a partial result (``*.partial.json``) stays a fair comparison."""
    first = ["DCN-V2 (stacked)", "DeepCTR DNN", "DNN", "FuxiCTR DCNv2 (parallel)", "DCN-Mix", "DeepCTR DCN (matrix)",
             "DCN-V2 (parallel)", "TorchRec CrossNet (stacked)", "DCN", "DeepCTR DCNMix", "CrossNet", "FuxiCTR DCNv2 (stacked)",
             "TorchRec LowRankMixtureCrossNet (stacked)", "TorchRec LowRankCrossNet (stacked)"]
    allspecs = list(ours) + list(peers)
    ranked = [s for n in first for s in allspecs if s.name == n]
    return ranked + [s for s in allspecs if s not in ranked]


DEFAULT_PEERS = ["DeepCTR DCN (matrix)", "DeepCTR DCNMix", "DeepCTR DNN", "FuxiCTR DCNv2 (stacked)", "FuxiCTR DCNv2 (parallel)",
                 "TorchRec CrossNet (stacked)", "TorchRec LowRankCrossNet (stacked)", "TorchRec LowRankMixtureCrossNet (stacked)"]


# ------------------------------------------------------------------------------------------------------
# training
# ------------------------------------------------------------------------------------------------------
@torch.no_grad()
def _outputs(model, data, batch_size=8192):
    was = model.training
    model.eval()
    try:
        outs = [model(*data.batch(slice(i, i + batch_size)).inputs()).float() for i in range(0, len(data), batch_size)]
    finally:
        model.train(was)
    return torch.cat(outs)


def train_peer(model, tr, va, lr: float, epochs: int, patience: int, seed: int, batch_size: int = 128, clip: float = 10.0):
    """The common harness for peer modules: Adam, mean BCE + model.regularization_loss(), clipping,
    early stopping on validation log loss with the best weights restored. Returns (epochs run, best epoch)."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    n = len(tr)
    best, best_state, best_epoch, bad, ep = math.inf, None, 0, 0, 0
    for ep in range(1, epochs + 1):
        model.train()
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n, batch_size):
            b = tr.batch(perm[i:i + batch_size])
            loss = F.binary_cross_entropy_with_logits(model(*b.inputs()), b.label) + model.regularization_loss()
            if not torch.isfinite(loss):
                raise dx.TrainingDivergedError(f"peer loss became {float(loss)} in epoch {ep}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
        v = metrics_from_outputs(_outputs(model, va), va.label, "binary")["logloss"]
        if v < best:
            best, best_epoch, bad = v, ep, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            bad += 1
            if bad >= patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return ep, best_epoch


def run_one(spec: Spec, params: dict, seed: int, tr, va, te, args) -> dict:
    """Train one model at one point with one seed; val and test metrics, size and cost."""
    t0 = time.perf_counter()
    model = spec.build(tr.schema, params, seed)
    if spec.ours:
        cfg = dx.TrainConfig(epochs=args.max_epochs, batch_size=128, lr=params["lr"], l2=params.get("l2", 0.0),
                             embedding_l2=params.get("l2", 0.0),
                             early_stopping=args.patience, seed=seed, device="cpu", progress=False)
        res = dx.fit(model, tr, va, cfg)
        ep_run, best_ep = len(res.history), res.best_epoch
    else:
        ep_run, best_ep = train_peer(model, tr, va, params["lr"], args.max_epochs, args.patience, seed)
    secs = time.perf_counter() - t0
    val = metrics_from_outputs(_outputs(model, va), va.label, "binary")
    test = metrics_from_outputs(_outputs(model, te), te.label, "binary")
    from models import count_flops

    fb = te.batch(slice(0, 64))
    row = {"val_loss": val["logloss"], "val_auc": val["auc"], "test_logloss": test["logloss"], "test_auc": test["auc"],
           "epochs": ep_run, "best_epoch": best_ep, "train_s": secs,
           "params": sum(p.numel() for p in model.parameters() if p.requires_grad),
           "flops_counted": count_flops(model, fb)}
    row["flops"] = model.flops_per_example() if spec.ours else row["flops_counted"]
    if not spec.info:
        spec.info = dict(getattr(model, "info", {})) or {"cls": "dcn_explore.DCNv2", "config": model.config.label()}
    return row


def mean_std(xs):
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    if not xs:
        return math.nan, math.nan
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def fmt_params(p):
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={list(v) if isinstance(v, tuple) else v}" for k, v in p.items())


def git_state() -> dict:
    """The dcn-explore commit the run imported (and whether the working tree had local changes)."""
    import subprocess

    def git(*a):
        try:
            return subprocess.run(["git", "-C", str(REPO), *a], capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(status) if status is not None else None}


def versions() -> dict:
    out = {"python": platform.python_version()}
    for p in ("torch", "dcn-explore", "deepctr-torch", "fuxictr", "torchrec", "fbgemm-gpu-cpu", "numpy", "pandas", "torchmetrics"):
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = None
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=["100k", "1m"], default="100k")
    ap.add_argument("--data-root", default=None, help="folder holding ml-100k/ or ml-1m/ (default: dx.data.movielens's own resolution)")
    ap.add_argument("--budget", type=int, default=4, help="tuning trials per model (the same for every model)")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--max-epochs", type=int, default=10)
    ap.add_argument("--patience", type=int, default=2, help="early stopping: epochs without a validation improvement")
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--tune-seed", type=int, default=0, help="seed of the random search draw")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (0: torch's choice)")
    ap.add_argument("--models", default=None, help="comma-separated subset of model names")
    ap.add_argument("--quick", action="store_true", help="smoke run: 3000 training examples, budget 2, 2 seeds, 2 epochs")
    ap.add_argument("--out", default=str(HERE / "out" / "movielens_quality.json"))
    args = ap.parse_args(argv)
    if args.quick:
        args.budget, args.seeds, args.max_epochs = min(args.budget, 2), min(args.seeds, 2), min(args.max_epochs, 2)
    if args.threads:
        torch.set_num_threads(args.threads)
    command = " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv])
    started = time.time()

    ds = dx.data.movielens(args.dataset, root=args.data_root)
    tr, va, te = ds.split((0.8, 0.1, 0.1), seed=args.split_seed)
    if args.quick:
        tr = tr.sample(3000, seed=0)
    print(f"{ds!r}: train {len(tr)}, val {len(va)}, test {len(te)}; positive rate {ds.label_mean():.3f}", flush=True)

    specs = interleave(our_specs(), peer_specs(DEFAULT_PEERS))
    if args.models:
        wanted = [m.strip() for m in args.models.split(",")]
        unknown = sorted(set(wanted) - {s.name for s in specs} - set(__import__("models").PEERS))
        if unknown:
            ap.error(f"unknown model(s) {unknown}")
        specs = [s for s in our_specs() + peer_specs(None) if s.name in wanted]

    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"command": command, "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": "cpu"},
            "versions": versions(), "git": git_state(), "dataset": ds.name, "n": {"train": len(tr), "val": len(va), "test": len(te)},
            "protocol": {"split": [0.8, 0.1, 0.1], "split_seed": args.split_seed, "batch_size": 128, "optimizer": "Adam",
                         "max_epochs": args.max_epochs, "early_stopping_patience": args.patience, "seeds": list(range(args.seeds)),
                         "budget": args.budget, "tune_seed": args.tune_seed, "search": "dcn_explore.tune (random over the grid)",
                         "deep_layers": list(DEEP), "experts": EXPERTS, "peer_embedding_dim": PEER_EMBEDDING,
                         "our_embedding_dim": "auto (6*vocab^0.25 per feature)", "quick": args.quick}}
    rows, runs, trials_all = [], [], []

    def dump(final: bool):
        meta["wall_s"] = time.time() - started
        payload = {"meta": meta, "rows": rows, "runs": runs, "trials": trials_all, "complete": final}
        tmp = out_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(payload, indent=1, default=str))
        tmp.replace(out_path if final else out_path.with_suffix(".partial.json"))
        if final:
            out_path.with_suffix(".partial.json").unlink(missing_ok=True)

    for spec in specs:
        t_model = time.perf_counter()
        cache: dict = {}

        def objective(p, _spec=spec, _cache=cache):
            r = run_one(_spec, p, 0, tr, va, te, args)
            _cache[tuple(sorted((k, str(v)) for k, v in p.items()))] = r
            return {"val_loss": r["val_loss"], "val_auc": r["val_auc"], "epochs": r["epochs"], "train_s": r["train_s"]}

        res = tune(objective, space=spec.space, budget=args.budget, seed=args.tune_seed)
        best = res.best
        for rec in res.trials.to_dict("records"):
            trials_all.append({"model": spec.name, **{k: (list(v) if isinstance(v, tuple) else v) for k, v in rec.items()}})
        seed_rows = [dict(cache[tuple(sorted((k, str(v)) for k, v in best.items()))], seed=0)]
        for s in range(1, args.seeds):
            seed_rows.append(dict(run_one(spec, best, s, tr, va, te, args), seed=s))
        for r in seed_rows:
            runs.append({"model": spec.name, "library": spec.library, "params_point": {k: (list(v) if isinstance(v, tuple) else v) for k, v in best.items()}, **r})
        ll, ll_sd = mean_std([r["test_logloss"] for r in seed_rows])
        auc, auc_sd = mean_std([r["test_auc"] for r in seed_rows])
        vl, _ = mean_std([r["val_loss"] for r in seed_rows])
        row = {"model": spec.name, "library": spec.library, "family": spec.family, "ours": spec.ours, "probe": spec.probe,
               "best": {k: (list(v) if isinstance(v, tuple) else v) for k, v in best.items()},
               "test_logloss": ll, "test_logloss_std": ll_sd, "test_auc": auc, "test_auc_std": auc_sd, "val_logloss": vl,
               "params": seed_rows[0]["params"], "flops": seed_rows[0]["flops"], "flops_counted": seed_rows[0]["flops_counted"],
               "epochs": statistics.fmean(r["epochs"] for r in seed_rows), "train_s": statistics.fmean(r["train_s"] for r in seed_rows),
               "model_wall_s": time.perf_counter() - t_model, "info": spec.info}
        rows.append(row)
        print(f"[{time.time() - started:7.0f}s] {spec.name:42s} logloss {ll:.4f} ± {ll_sd:.4f}  AUC {auc:.4f} ± {auc_sd:.4f}  "
              f"({fmt_params(best)}; {row['model_wall_s']:.0f}s)", flush=True)
        dump(final=False)

    # -------- table --------
    print()
    hdr = f"{'model':42s} {'library':13s} {'test logloss':>17s} {'test AUC':>17s} {'params':>8s} {'FLOPs/ex':>9s} {'ep':>4s}  best point"
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        print(f"{r['model']:42s} {r['library']:13s} {r['test_logloss']:.4f} ± {r['test_logloss_std']:.4f} "
              f"{r['test_auc']:.4f} ± {r['test_auc_std']:.4f} {r['params']:8d} {r['flops'] / 1e3:8.1f}K {r['epochs']:4.1f}  {fmt_params(r['best'])}")
    ours_dcn = [r for r in rows if r["ours"] and not r["probe"] and r["family"] in ("DCN-V2", "DCN-Mix")]
    peers = [r for r in rows if not r["ours"]]
    verdict = {}
    if ours_dcn and peers:
        best_peer_ll = min(peers, key=lambda r: r["test_logloss"])
        best_peer_auc = max(peers, key=lambda r: r["test_auc"])
        ok = [r for r in ours_dcn if r["test_logloss"] <= best_peer_ll["test_logloss"] and r["test_auc"] >= best_peer_auc["test_auc"]]
        best_ours = min(ours_dcn, key=lambda r: r["test_logloss"])
        verdict = {"holds": bool(ok), "ours_meeting_it": [r["model"] for r in ok],
                   "best_ours_by_logloss": [best_ours["model"], best_ours["test_logloss"], best_ours["test_auc"]],
                   "best_peer_by_logloss": [best_peer_ll["model"], best_peer_ll["test_logloss"]],
                   "best_peer_by_auc": [best_peer_auc["model"], best_peer_auc["test_auc"]]}
        print(f"\nacceptance (an ours DCN-V2/DCN-Mix with mean logloss <= best peer's and mean AUC >= best peer's): "
              f"{'HOLDS' if ok else 'DOES NOT HOLD'}")
        print(f"  best peer by logloss: {best_peer_ll['model']} {best_peer_ll['test_logloss']:.4f}; "
              f"best peer by AUC: {best_peer_auc['model']} {best_peer_auc['test_auc']:.4f}")
        print(f"  best ours: {best_ours['model']} {best_ours['test_logloss']:.4f} / {best_ours['test_auc']:.4f}"
              + (f"; meeting it: {', '.join(verdict['ours_meeting_it'])}" if ok else ""))
    dnn = next((r for r in rows if r["ours"] and not r["probe"] and r["family"] == "DNN"), None)
    if dnn and ours_dcn:
        b = min(ours_dcn, key=lambda r: r["test_logloss"])
        d_ll, d_auc = b["test_logloss"] - dnn["test_logloss"], b["test_auc"] - dnn["test_auc"]
        verdict["ours_best_dcn_vs_dnn"] = {"model": b["model"], "delta_logloss": d_ll, "delta_auc": d_auc,
                                           "std_logloss": [b["test_logloss_std"], dnn["test_logloss_std"]],
                                           "std_auc": [b["test_auc_std"], dnn["test_auc_std"]]}
        print(f"  ours {b['model']} - ours DNN: logloss {d_ll:+.4f}, AUC {d_auc:+.4f} "
              f"(seed std: logloss {b['test_logloss_std']:.4f} / {dnn['test_logloss_std']:.4f}, AUC {b['test_auc_std']:.4f} / {dnn['test_auc_std']:.4f})")
    meta["verdict"] = verdict
    dump(final=True)
    print(f"\nwall time {time.time() - started:.0f}s; wrote {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
