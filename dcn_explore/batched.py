"""Batched sweeps: train several runs of one shape family at once, as one stacked model.

Runs that differ only in their seed and rank (and share everything else: data, structure,
training settings) are trained together: their parameters are stacked along a leading
"member" axis with ``torch.func.stack_module_state`` and the forward pass is ``vmap``-ed over
``functional_call``, so every step is one set of batched kernels instead of one per run.
Lower ranks are zero-padded to the group's largest rank; the padded columns of ``U``, ``V``
(and rows/columns of ``C``) get exactly zero gradients, so they stay zero and each member
computes exactly its own ``U Vᵀ``. Everything per run is kept: each member draws its own
batches from its own seed, Adam and the moving average are elementwise, gradient clipping
uses each member's own norm, early stopping picks each member's own best epoch. The results
match one-by-one training up to floating-point reordering (see ``tests/test_batched.py`` for
the tolerance). Groups whose settings cannot be reproduced this way (row-sparse embeddings,
dropout, the plateau schedule) are trained one by one.

>>> import dcn_explore as dx
>>> ds = dx.data.planted_crosses(n_samples=1200, seed=0)
>>> base = dx.DCNConfig(cross="low_rank", rank=2, cross_layers=1, structure="cross_only")
>>> df = dx.sweep(ds, base, {"rank": [2, 4]}, seeds=2, train=dx.TrainConfig(epochs=1, progress=False),
...               batched=True, progress=False)
>>> len(df), sorted(df["rank"].unique().tolist())
(4, [2, 4])
"""

from __future__ import annotations

import json
import math
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd
import torch
import torch.nn.functional as F
from torch.func import functional_call, stack_module_state, vmap

from ._io import write_json_atomic
from .checkpoint import save_checkpoint
from .data.dataset import TabularData
from .errors import TrainingDivergedError
from .model.dcn import DCNv2
from .train import DTYPES, SPARSE_AUTO_MIN_PARAMS, _loss_key, metrics_from_outputs, resolve_device


def group_key(spec: dict) -> str:
    """Runs with the same key can share one stacked model (they differ in seed and rank only)."""
    m = spec["model"].to_dict()
    m.pop("rank")
    t = spec["train"].to_dict()
    for k in ("seed", "progress", "checkpoint"):
        t.pop(k)
    return json.dumps({"model": m, "train": t}, sort_keys=True, default=str)


def can_batch(spec: dict, schema) -> bool:
    cfg, tc = spec["model"], spec["train"]
    if cfg.deep_dropout or tc.lr_schedule == "plateau" or tc.compile or tc.embedding_l2:
        return False
    if tc.sparse_embeddings is True:
        return False
    if tc.sparse_embeddings == "auto":
        emb = sum(f.vocab_size * f.width for f in schema.with_embedding_dims(cfg.embedding_dims) if f.kind != "dense")
        if emb >= SPARSE_AUTO_MIN_PARAMS:
            return False
    return True


def _pad_to_rank(model: DCNv2, rank: int) -> DCNv2:
    """A copy of ``model`` with rank ``rank`` whose extra factor columns are zero (same function)."""
    cfg = model.config
    if cfg.rank is None or cfg.rank == rank:
        return model
    big = DCNv2(model.schema, cfg.replace(rank=rank), task=model.task, seed=0)
    src = model.state_dict()
    with torch.no_grad():
        for name, t in big.state_dict().items():
            s = src[name]
            if s.shape == t.shape:
                t.copy_(s)
                continue
            t.zero_()
            t[tuple(slice(0, n) for n in s.shape)].copy_(s)
    return big


def _unpad(stacked: dict[str, torch.Tensor], g: int, model: DCNv2) -> dict[str, torch.Tensor]:
    """Member ``g``'s parameters cut back to ``model``'s (smaller) rank."""
    out = {}
    for name, t in model.state_dict().items():
        s = stacked[name][g]
        out[name] = s[tuple(slice(0, n) for n in t.shape)].clone()
    return out


def fit_batched(train: TabularData, val: TabularData, specs: Sequence[dict]) -> list[dict]:
    """Train the runs of one group together; returns per run ``model``, ``history``, ``best_epoch``, ``train_time_s``."""
    cfg0, tc = specs[0]["model"], specs[0]["train"]
    G = len(specs)
    device = resolve_device(tc.device)
    dtype = DTYPES[tc.dtype]
    task = train.task
    models = [DCNv2(train.schema, s["model"], task=task, seed=s["seed"]) for s in specs]
    rank = max((m.config.rank or 0) for m in models) or None
    padded = [(_pad_to_rank(m, rank) if rank else m).to(device=device, dtype=dtype) for m in models]
    params, buffers = stack_module_state(padded)
    template = padded[0]
    names = list(params)
    tensors = [params[k] for k in names]

    def one(p, b, cat, mv, dense):
        return functional_call(template, (p, b), (cat, mv, dense))

    fwd_train = vmap(one, in_dims=(0, 0, 0, 0, 0))
    fwd_eval = vmap(one, in_dims=(0, 0, None, None, None))
    kernel_names = [k for k in names if k.startswith("cross.") and not k.endswith(".b")
                    and any(k.endswith(s) for s in (".W", ".U", ".V", ".C", ".w"))]
    opt = torch.optim.Adam(tensors, lr=tc.lr, foreach=True)
    n = len(train)
    steps_per_epoch = math.ceil(n / tc.batch_size)
    total_steps = steps_per_epoch * tc.epochs if tc.max_steps is None else min(tc.max_steps, steps_per_epoch * tc.epochs)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, total_steps)) if tc.lr_schedule == "cosine" else None
    gens = [torch.Generator().manual_seed(s["train"].seed) for s in specs]
    tr, va = train.to(device), val.to(device)
    ema = None
    ema_updates = 0
    key = _loss_key(task)

    def evaluate_members(p: dict) -> list[dict]:
        outs = []
        with torch.no_grad():
            for i in range(0, len(va), tc.eval_batch_size):
                b = va.batch(slice(i, i + tc.eval_batch_size))
                outs.append(fwd_eval(p, buffers, b.categorical, b.multivalent, b.dense.to(dtype)).float())
        logits = torch.cat(outs, dim=1).cpu()
        return [metrics_from_outputs(logits[g], va.label.cpu(), task) for g in range(G)]

    histories: list[list[dict]] = [[] for _ in range(G)]
    best = [{"value": math.inf, "epoch": 0, "state": None} for _ in range(G)]
    bad = [0] * G
    active = [True] * G
    step = 0
    start = time.perf_counter()
    for epoch in range(1, tc.epochs + 1):
        perms = [torch.randperm(n, generator=g).to(device) for g in gens]
        loss_sums = torch.zeros(G, dtype=torch.float64)
        seen = 0
        for i in range(0, n, tc.batch_size):
            if tc.max_steps is not None and step >= tc.max_steps:
                break
            idx = torch.stack([p[i : i + tc.batch_size] for p in perms])  # (G, B)
            b = tr.batch(idx)
            out = fwd_train(params, buffers, b.categorical, b.multivalent, b.dense.to(dtype))  # (G, B)
            label = b.label.to(dtype)
            if task == "binary":
                per = F.binary_cross_entropy_with_logits(out, label, reduction="none").mean(1)
            else:
                per = F.mse_loss(out, label, reduction="none").mean(1)
            total = per
            if tc.l2 > 0:
                total = total + tc.l2 * sum(params[k].pow(2).flatten(1).sum(1) for k in kernel_names)
            bad_members = ~torch.isfinite(total)
            if bool(bad_members.any()):
                g = int(bad_members.nonzero()[0])
                raise TrainingDivergedError(
                    f"batched run {g} (seed {specs[g]['seed']}, {specs[g]['model'].label()}): loss became "
                    f"{float(total[g])} at step {step + 1} (epoch {epoch}); last good metrics: "
                    f"{histories[g][-1] if histories[g] else 'none (diverged in the first epoch)'}")
            opt.zero_grad(set_to_none=True)
            total.sum().backward()
            if tc.clip_norm is not None:
                with torch.no_grad():
                    sq = sum(t.grad.pow(2).flatten(1).sum(1) for t in tensors if t.grad is not None)
                    coef = (tc.clip_norm / (sq.sqrt() + 1e-6)).clamp(max=1.0)
                    for t in tensors:
                        if t.grad is not None:
                            t.grad.mul_(coef.view(-1, *([1] * (t.dim() - 1))))
            opt.step()
            if sched is not None:
                sched.step()
            if tc.ema_decay:
                ema_updates += 1
                with torch.no_grad():
                    if ema is None:
                        ema = {k: params[k].detach().clone() for k in names}
                    else:
                        m_ = ema_updates
                        d = min(tc.ema_decay, (1 + m_) / (10 + m_)) if tc.ema_warmup else tc.ema_decay
                        torch._foreach_lerp_([ema[k] for k in names], [params[k].detach() for k in names], 1.0 - d)
            loss_sums += per.detach().double().cpu() * idx.shape[1]
            seen += idx.shape[1]
            step += 1
        current = ema if ema is not None else {k: params[k].detach() for k in names}
        metrics = evaluate_members(current)
        elapsed = time.perf_counter() - start
        for g in range(G):
            if not active[g]:
                continue
            row = {"epoch": epoch, "step": step, "train_loss": float(loss_sums[g]) / max(seen, 1),
                   "val_loss": metrics[g][key], **{f"val_{k}": v for k, v in metrics[g].items()},
                   "lr": opt.param_groups[0]["lr"], "time_s": elapsed}
            histories[g].append(row)
            if row["val_loss"] < best[g]["value"]:
                best[g] = {"value": row["val_loss"], "epoch": epoch,
                           "state": {k: current[k][g].detach().clone() for k in names}}
                bad[g] = 0
            else:
                bad[g] += 1
            if tc.early_stopping is not None and bad[g] >= tc.early_stopping:
                active[g] = False
        if not any(active) or (tc.max_steps is not None and step >= tc.max_steps):
            break
    elapsed = time.perf_counter() - start
    results = []
    for g, (spec, m) in enumerate(zip(specs, models)):
        stacked = {k: v[None] for k, v in best[g]["state"].items()} if best[g]["state"] is not None else {k: params[k].detach()[g : g + 1] for k in names}
        state = _unpad(stacked, 0, m)
        m.load_state_dict(state)
        m.to(device=device, dtype=dtype).eval()
        results.append({"model": m, "history": pd.DataFrame(histories[g]), "best_epoch": best[g]["epoch"],
                        "train_time_s": elapsed / G, "device": str(device), "group_size": G})
    return results


def sweep_batched(data: TabularData, specs: Sequence[dict], results_dir=None, split=(0.8, 0.1, 0.1), split_seed: int = 0,
                  top_k: int = 10, progress: bool = True, callback: Callable[[dict], Any] | None = None) -> pd.DataFrame:
    """``dx.sweep(..., batched=True)``: like the one-by-one sweep (same records, same resume rules), but
    each group of compatible runs is trained as one stacked model."""
    from .sweep import _row, data_fingerprint, make_record, run_id, run_one

    tr, va, te = data.split(split, seed=split_seed)
    fp = data_fingerprint(data)
    out_dir = Path(results_dir) / "runs" if results_dir is not None else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    ids = [run_id(fp, s["model"], s["train"], s["seed"], split, split_seed) for s in specs]
    records: dict[int, dict] = {}
    reused: set[int] = set()
    for i, rid in enumerate(ids):
        p = out_dir / f"{rid}.json" if out_dir is not None else None
        if p is not None and p.is_file():
            try:
                records[i] = json.loads(p.read_text())
                reused.add(i)
            except (json.JSONDecodeError, OSError):
                pass
    groups: OrderedDict[str, list[int]] = OrderedDict()
    for i, s in enumerate(specs):
        if i not in records:
            groups.setdefault(group_key(s) if can_batch(s, data.schema) else f"single-{i}", []).append(i)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(specs), desc="sweep (batched)", unit="run")
        bar.update(len(records))
    rows: dict[int, dict] = {}

    def finish(i: int, rec: dict) -> None:
        rec["run_id"] = ids[i]
        if out_dir is not None and i not in reused:
            write_json_atomic(out_dir / f"{ids[i]}.json", rec)
        row = _row(rec, specs[i]["point"])
        row["reused"] = i in reused
        rows[i] = row
        if bar is not None:
            bar.update(1)
        if callback is not None:
            callback(row)

    for i in sorted(records):
        records[i]["run_id"] = ids[i]
        row = _row(records[i], specs[i]["point"])
        row["reused"] = True
        rows[i] = row
    try:
        for key, members in groups.items():
            if key.startswith("single-") or len(members) == 1:
                for i in members:
                    ck = str(out_dir / f"{ids[i]}.pt") if out_dir is not None else None
                    finish(i, run_one(tr, va, te, specs[i], top_k=top_k, checkpoint=ck))
                continue
            results = fit_batched(tr, va, [specs[i] for i in members])
            for i, res in zip(members, results):
                m = res["model"]
                if out_dir is not None:
                    save_checkpoint(out_dir / f"{ids[i]}.pt", m, specs[i]["train"], res["history"])
                rec = make_record(specs[i], m, res["history"], res["best_epoch"], res["train_time_s"], res["device"], va, te,
                                  top_k, batched_group_size=res["group_size"])
                finish(i, rec)
    finally:
        if bar is not None:
            bar.close()
    return pd.DataFrame([rows[i] for i in sorted(rows)])
