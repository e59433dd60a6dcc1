"""Training and inference throughput on a Criteo-shaped workload, dcn-explore against the peers, in one run.

    bash benchmarks/peers/setup.sh                                   # once: the peers' own venv
    benchmarks/.peers-venv/bin/python benchmarks/speed.py            # CPU, 2 threads
    benchmarks/.peers-venv/bin/python benchmarks/speed.py --quick    # smoke run
    benchmarks/.peers-venv/bin/python benchmarks/speed.py --device cuda   # on a GPU machine
    benchmarks/.peers-venv/bin/python benchmarks/speed.py --amp     # everyone trains under bf16 autocast

Workload (the issue's): 13 dense + 26 categorical features, vocabularies 10..100,000 (log-spaced),
embedding width 16 for every feature, batch 512; three models, each in every library that has it:

- ``full``: full-rank cross network, 3 layers, stacked with a (512, 256) deep net
- ``lr64``: low-rank cross network, rank 64, 3 layers, stacked, (512, 256)
- ``mix4``: mixture of 4 rank-64 experts, 3 layers, stacked, (512, 256)

DeepCTR-Torch only builds parallel models (its DCN/DCNMix); the other peers are stacked as ours.
Every timed step gets a fresh batch (rows are never revisited, labels random with rate 0.25), so
no model memorises its batches (PEERS.md: memorised batches turn values denormal and slow the
mixtures several-fold). A training step is what each library's user runs: ours is ``dx.fit`` with
the default ``TrainConfig`` (Adam, L2 on cross kernels, clipping 10, EMA; row-sparse embedding
updates chosen automatically for these 5M-parameter tables; float32, ``amp=False``, unless ``--amp``,
which trains ours with ``amp=True`` and runs the peers' forward under the same
``torch.autocast(device, bfloat16)``, so that both sides of a ratio use one precision); peers run forward, mean BCE + their
regularisation term, backward, clipping 10 and ``torch.optim.Adam``. Every library starts each round
with a fresh optimizer, as a training run does: ``dx.fit`` builds its optimizers (and moving
average), and each peer gets a new ``torch.optim.Adam`` (``--peer-optimizer kept``: one Adam for all
of a peer's rounds, the protocol before stop 19, under which only ours paid each round for
allocating optimizer state). Inference is the forward
pass under ``torch.no_grad`` in batches of ``--infer-batch``. Libraries are measured in
alternation, ``--rounds`` times each, after a warm-up; the table reports the median and the
spread (min..max) of examples/s and, per model, ours divided by the fastest peer's median, and the
median of the per-round ratios (each round measures ours and the peer seconds apart; on shared
machines whose speed drifts by tens of per cent within minutes this is the steadier of the two).
Results go to ``benchmarks/out/speed.json``.
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

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

import dcn_explore as dx  # noqa: E402
from dcn_explore._io import write_json_atomic  # noqa: E402
from dcn_explore.schema import FeatureSpec, Schema  # noqa: E402

MODELS = {
    "full": dict(cfg=dict(cross="full", cross_layers=3), peers=["DeepCTR DCN (matrix)", "FuxiCTR DCNv2 (stacked)", "TorchRec CrossNet (stacked)"]),
    "lr64": dict(cfg=dict(cross="low_rank", rank=64, cross_layers=3), peers=["TorchRec LowRankCrossNet (stacked)"]),
    "mix4": dict(cfg=dict(cross="mixture", rank=64, experts=4, cross_layers=3),
                 peers=["DeepCTR DCNMix", "FuxiCTR DCNv2 Mix (parallel)", "TorchRec LowRankMixtureCrossNet (stacked)"]),
}


def criteo_shaped(n: int, seed: int = 0, emb: int = 16) -> dx.data.TabularData:
    """``n`` random rows with the Criteo layout (13 dense, 26 categorical with log-spaced vocabularies)."""
    rng = np.random.default_rng(seed)
    vocabs = [int(v) for v in np.geomspace(10, 100_000, 26)]
    feats = [FeatureSpec(f"I{i + 1}", "dense") for i in range(13)]
    feats += [FeatureSpec(f"C{i + 1}", "categorical", vocab_size=v, embedding_dim=emb) for i, v in enumerate(vocabs)]
    cat = np.stack([rng.integers(0, v, n) for v in vocabs], 1)
    return dx.data.TabularData(
        Schema(feats), categorical=torch.from_numpy(cat),
        dense=torch.from_numpy(rng.standard_normal((n, 13)).astype(np.float32)),
        label=torch.from_numpy((rng.random(n) < 0.25).astype(np.float32)), name="criteo-shaped")


class Ours:
    library = "dcn-explore"

    def __init__(self, schema, cfg: dict, device, train_config: dx.TrainConfig):
        self.model = dx.DCNv2(schema, dx.DCNConfig(structure="stacked", deep_layers=(512, 256), **cfg), seed=0)
        self.tc = train_config
        self.device = device
        self.name = f"dcn-explore {self.model.config.label()}"

    def train(self, data: dx.data.TabularData, batch: int) -> None:
        dx.fit(self.model, data, None, self.tc.replace(batch_size=batch))

    def infer(self, data, batch: int) -> None:
        dx.predict(self.model, data, batch_size=batch, device=self.device)

    def params(self) -> int:
        return self.model.num_parameters()


class Peer:
    def __init__(self, name: str, schema, cfg: dict, device, amp: bool = False, fresh_optimizer: bool = True):
        from peers.models import PEERS, build_peer

        self.name, self.library = name, PEERS[name]["library"]
        self.model = build_peer(name, schema, cross_layers=cfg["cross_layers"], deep_layers=(512, 256), rank=cfg.get("rank", 64),
                                experts=cfg.get("experts", 4), embedding_dim=16, l2=0.0, batch_size=512, seed=0).to(device)
        self.opt: torch.optim.Adam | None = None  # made by the first train()
        self.device = device
        self.amp = amp
        self.fresh_optimizer = fresh_optimizer

    def train(self, data, batch: int) -> None:
        if self.opt is None or self.fresh_optimizer:  # fresh: a training run of its own, like ours (dx.fit builds its optimizers)
            self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.model.train()
        for i in range(0, len(data), batch):
            b = data.batch(slice(i, i + batch))
            # --amp: the forward under the same bf16 autocast as ours (TrainConfig(amp=True)), the loss in float32
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                logits = self.model(b.categorical, b.multivalent, b.dense)
            loss = F.binary_cross_entropy_with_logits(logits.float(), b.label)
            loss = loss + self.model.regularization_loss()
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 10.0)
            self.opt.step()

    @torch.no_grad()
    def infer(self, data, batch: int) -> None:
        self.model.eval()
        for i in range(0, len(data), batch):
            b = data.batch(slice(i, i + batch))
            self.model(b.categorical, b.multivalent, b.dense)

    def params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def median_ci(ratios: list[float], level: float = 0.9) -> list[float] | None:
    """Percentile-bootstrap interval of the median per-round ratio (rounds resampled; seeded, so a rerun
    on the same samples prints the same interval), or ``None`` under 5 rounds, where it means little."""
    if len(ratios) < 5:
        return None
    from scipy.stats import bootstrap  # in the peers' venv (benchmarks/peers/setup.sh)

    ci = bootstrap((np.asarray(ratios),), np.median, confidence_level=level, n_resamples=10_000,
                   method="percentile", rng=np.random.default_rng(0)).confidence_interval
    return [float(ci.low), float(ci.high)]


def _fmt_ci(ci: list[float] | None) -> str:
    return f"[{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "[-]"


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(libs, pool, steps: int, batch: int, infer_batch: int, rounds: int, device) -> dict:
    """Alternate the libraries; in every round each trains on ``steps`` batches of rows no one has seen
    and scores the fixed inference block (forward passes do not learn, so that block may repeat)."""
    per_round = steps * batch
    samples = {lib.name: {"train": [], "infer": []} for lib in libs}
    offset = 0

    def fresh(n):
        nonlocal offset
        if offset + n > len(pool) - per_round:
            raise RuntimeError("the row pool is too small for this many rounds")
        part = pool.subset(torch.arange(offset, offset + n))
        offset += n
        return part.to(device)

    scoring = pool.subset(torch.arange(len(pool) - per_round, len(pool))).to(device)
    for lib in libs:  # warm-up: allocator, lazy init, first-call costs
        lib.train(fresh(max(2, steps // 4) * batch), batch)
        lib.infer(scoring, infer_batch)
    for r in range(rounds):
        for lib in (libs if r % 2 == 0 else list(reversed(libs))):
            d = fresh(per_round)
            _sync(device)
            t = time.perf_counter()
            lib.train(d, batch)
            _sync(device)
            samples[lib.name]["train"].append(per_round / (time.perf_counter() - t))
            t = time.perf_counter()
            lib.infer(scoring, infer_batch)
            _sync(device)
            samples[lib.name]["infer"].append(per_round / (time.perf_counter() - t))
    return samples


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="full,lr64,mix4")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--infer-batch", type=int, default=512)
    p.add_argument("--steps", type=int, default=40, help="timed training steps per library per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--sparse", default="auto", choices=["auto", "on", "off"], help="ours: row-sparse embedding updates")
    p.add_argument("--no-ema", action="store_true", help="ours: train without the moving average")
    p.add_argument("--compile", action="store_true", help="ours: torch.compile the training forward")
    p.add_argument("--amp", action="store_true",
                   help="train everyone with bf16 autocast: ours with TrainConfig(amp=True), the peers' forward under "
                        "torch.autocast(device, bfloat16); inference stays float32")
    p.add_argument("--peer-optimizer", default="fresh", choices=["fresh", "kept"],
                   help="fresh (default): every peer round starts with a new torch.optim.Adam, as each of ours is a whole "
                        "dx.fit; kept: one Adam across a peer's rounds (the protocol before stop 19)")
    p.add_argument("--no-peers", action="store_true")
    p.add_argument("--quick", action="store_true", help="2 rounds of 8 steps (smoke run)")
    p.add_argument("--out", default=str(Path(__file__).parent / "out" / "speed.json"))
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.rounds = 8, 2
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sparse = {"auto": "auto", "on": True, "off": False}[args.sparse]
    tc = dx.TrainConfig(epochs=1, batch_size=args.batch, progress=False, early_stopping=None, device=args.device,
                        sparse_embeddings=sparse, ema_decay=None if args.no_ema else 0.9999, compile=args.compile,
                        amp=bool(args.amp))
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {args.threads} threads ({platform.processor() or platform.machine()})"
    print(f"device: {dev_name}; torch {torch.__version__}; batch {args.batch}, inference batch {args.infer_batch}, "
          f"{args.steps} steps x {args.rounds} rounds per library; peers' optimizer per round: {args.peer_optimizer}"
          + ("; training under bf16 autocast (--amp)" if args.amp else ""))
    results = []
    schema = criteo_shaped(10).schema
    for key in [m.strip() for m in args.models.split(",") if m.strip()]:
        spec = MODELS[key]
        libs = [Ours(schema, spec["cfg"], device, tc)]
        if not args.no_peers:
            for name in spec["peers"]:
                try:
                    libs.append(Peer(name, schema, spec["cfg"], device, amp=args.amp,
                                     fresh_optimizer=args.peer_optimizer == "fresh"))
                except Exception as e:  # a peer that does not build here is reported, not hidden
                    print(f"  {name}: not measured ({type(e).__name__}: {e})")
        per_round = args.steps * args.batch
        pool = criteo_shaped(len(libs) * (args.rounds * per_round + max(2, args.steps // 4) * args.batch) + per_round, seed=1)
        samples = measure(libs, pool, args.steps, args.batch, args.infer_batch, args.rounds, device)
        print(f"\n[{key}] {libs[0].name}")
        print(f"  {'library / model':48s} {'params':>10s} {'train ex/s (median, min..max)':>34s} {'infer ex/s (median, min..max)':>36s}")
        rows = []
        for lib in libs:
            s = samples[lib.name]
            row = {"model": key, "name": lib.name, "library": lib.library, "params": lib.params(),
                   "train_median": statistics.median(s["train"]), "train_min": min(s["train"]), "train_max": max(s["train"]),
                   "infer_median": statistics.median(s["infer"]), "infer_min": min(s["infer"]), "infer_max": max(s["infer"]),
                   "train_samples": s["train"], "infer_samples": s["infer"]}
            rows.append(row)
            print(f"  {lib.name:48s} {row['params']:>10,d} {row['train_median']:>12,.0f} ({row['train_min']:,.0f}..{row['train_max']:,.0f})"
                  f"   {row['infer_median']:>12,.0f} ({row['infer_min']:,.0f}..{row['infer_max']:,.0f})")
        peers = [r for r in rows if r["library"] != "dcn-explore"]
        if peers:
            bt = max(peers, key=lambda r: r["train_median"])
            bi = max(peers, key=lambda r: r["infer_median"])
            ratio_t, ratio_i = rows[0]["train_median"] / bt["train_median"], rows[0]["infer_median"] / bi["infer_median"]
            # the same comparison round by round: ours and the peer were measured seconds apart, so a
            # drift of the machine's speed over minutes cancels in each round's ratio
            paired_t = [a / b for a, b in zip(rows[0]["train_samples"], bt["train_samples"])]
            paired_i = [a / b for a, b in zip(rows[0]["infer_samples"], bi["infer_samples"])]
            ci_t, ci_i = median_ci(paired_t), median_ci(paired_i)
            print(f"  ours / fastest peer: training {ratio_t:.2f}x (vs {bt['name']}), inference {ratio_i:.2f}x (vs {bi['name']})")
            print(f"  per-round ratios, median [90 % bootstrap CI] (min..max): training {statistics.median(paired_t):.2f}x "
                  f"{_fmt_ci(ci_t)} ({min(paired_t):.2f}..{max(paired_t):.2f}), inference {statistics.median(paired_i):.2f}x "
                  f"{_fmt_ci(ci_i)} ({min(paired_i):.2f}..{max(paired_i):.2f})")
            for r in rows:
                r.update(train_ratio_vs_fastest_peer=ratio_t, infer_ratio_vs_fastest_peer=ratio_i)
            rows[0].update(train_ratio_per_round=paired_t, infer_ratio_per_round=paired_i,
                           train_ratio_per_round_ci90=ci_t, infer_ratio_per_round_ci90=ci_i)
        results.extend(rows)
    versions = {"torch": torch.__version__, "dcn_explore": dx.__version__}
    for mod in ("deepctr_torch", "fuxictr", "torchrec"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:
            versions[mod] = None
    write_json_atomic(args.out, {
        "command": " ".join(["benchmarks/speed.py", *(argv if argv is not None else sys.argv[1:])]),
        "date": datetime.now(timezone.utc).isoformat(), "device": dev_name,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()}, "versions": versions,
        "settings": vars(args), "rows": results,
    })
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
