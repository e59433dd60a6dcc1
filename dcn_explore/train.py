"""Training and evaluation (Sec. 7.1's recipe).

Adam; log loss (binary) or MSE (regression) plus ``λ Σ_l ‖W_l‖²`` on the cross
kernels; gradient clipping (norm 10); an exponential moving average of the
weights (``torch.optim.swa_utils.AveragedModel``); early stopping on validation
loss; checkpoints of the best weights written atomically. Batches are taken by
indexing tensors that live on the training device.

>>> from dcn_explore import DCNv2, DCNConfig
>>> from dcn_explore.data import planted_crosses
>>> train, val = planted_crosses(n_samples=2000).split((0.8, 0.2), seed=0)
>>> model = DCNv2(train.schema, DCNConfig(cross_layers=1, deep_layers=(16,)), seed=0)
>>> result = fit(model, train, val, TrainConfig(epochs=2, progress=False))
>>> list(result.history.columns[:4]), sorted(evaluate(model, val))
(['epoch', 'step', 'train_loss', 'val_loss'], ['auc', 'logloss'])
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Mapping

import pandas as pd
import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel

from .checkpoint import save_checkpoint
from .data.dataset import TabularData
from .errors import ConfigError, DataError, TrainingDivergedError
from .model.dcn import DCNv2
from .model.scoring import Scorer

LR_SCHEDULES = ("constant", "plateau", "cosine")
#: ``sparse_embeddings="auto"`` switches to row-sparse updates from this many embedding parameters on
SPARSE_AUTO_MIN_PARAMS = 1_000_000
DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass(frozen=True)
class TrainConfig:
    """How to train (Sec. 7.1 defaults where the paper gives them).

    - ``l2``: ``λ`` of ``λ Σ_l ‖W_l‖²`` on the cross kernels (``U, V, C`` for low-rank/mixture).
    - ``embedding_l2``: ``λ_e`` of ``λ_e Σ_t ‖E_t‖²`` over the whole embedding tables, added to the
      loss every step as DeepCTR-Torch and FuxiCTR do (with Adam it pulls rarely seen ids towards 0);
      default 0 (the paper regularises the cross kernels only). Needs dense embedding gradients.
    - ``clip_norm``: gradient clipping by global norm (``None`` disables).
    - ``ema_decay``: decay of the moving average of the weights that is evaluated and
      kept (``None`` disables). With ``ema_warmup`` the decay used at update ``n`` is
      ``min(ema_decay, (1 + n) / (10 + n))`` (TensorFlow's ``num_updates`` rule), so
      that the paper's 0.9999 is usable on short runs.
    - ``early_stopping``: stop after this many epochs without a validation-loss
      improvement (``None`` disables); the best weights are restored.
    - ``device``: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
    - ``amp``: bf16 autocast of the training forward (float32 models only; the weights, the optimizer,
      the moving average and evaluation stay float32); ``"auto"`` = on for CUDA, off on the CPU;
      ``True`` = on for either. On the CPU it pays off where the processor multiplies bf16 natively
      (AVX512-BF16 or AMX; :func:`cpu_native_bf16`): on a 2-core Zen 4 host ``dx.fit`` on the
      Criteo-shaped full-rank model was 1.47x faster in a paired A/B, and ``benchmarks/speed.py
      --amp`` measured 22.3-22.9k training examples/s against float32's 15.4-16.2k; on the small
      MovieLens-100K models of ``benchmarks/amp_quality.py``, where the products are a small part of
      a step, it was no faster (median fits 6.5 s against 6.4 s, 6.3 s against 4.9 s, 4.2 s against
      3.5 s). Elsewhere PyTorch emulates bf16, slower than float32. bf16 products round each factor
      to 8 significant bits: check the metric you care about (``benchmarks/amp_quality.py`` does so on
      MovieLens-100K).
    - ``lr_schedule``: ``"constant"``, ``"plateau"`` (lr ×0.1 when validation loss stalls)
      or ``"cosine"`` (to 0 over all steps).
    - ``dtype``: ``"float32"`` or ``"float64"`` (for the high-precision polynomial fits).
    - ``checkpoint``: a path; the best weights are saved there (atomically) as training goes.
    - ``sparse_embeddings``: train embedding tables with row-sparse gradients and lazy Adam
      (:class:`LazyAdam`, ``torch.optim.SparseAdam``'s rule: only the rows a batch touches are updated; their moving
      average is kept exactly, see ``_EMA``). ``"auto"`` = on when the tables hold at least
      ``SPARSE_AUTO_MIN_PARAMS`` parameters, where dense Adam over every row dominates a step.
    - ``compile``: run the training forward through ``torch.compile`` (``True`` = the default
      inductor backend; a string names another backend, e.g. ``"aot_eager"``); the embedding lookup
      stays eager, the cross and deep networks are compiled (one process; under DDP the whole module). Compiling costs
      tens of seconds up front, so it pays off on long runs only (see ``benchmarks/speed.py``).
    - ``data_on_device``: ``"auto"`` moves data to a CUDA device when it takes under half of the
      free memory, else streams pinned batches from host (or memory-mapped) memory.
    - ``distributed``: train with ``DistributedDataParallel`` over the processes of a ``torchrun``
      launch (see :mod:`dcn_explore.distributed`); ``"auto"`` = when a process group with more
      than one process is initialised. ``batch_size`` is then the global batch.
    """

    epochs: int = 20
    batch_size: int = 512
    lr: float = 1e-3
    l2: float = 1e-4
    embedding_l2: float = 0.0
    clip_norm: float | None = 10.0
    ema_decay: float | None = 0.9999
    ema_warmup: bool = True
    early_stopping: int | None = 3
    seed: int = 0
    device: str = "auto"
    amp: Any = "auto"
    lr_schedule: str = "constant"
    dtype: str = "float32"
    eval_batch_size: int = 16384
    progress: bool = True
    checkpoint: str | None = None
    max_steps: int | None = None
    sparse_embeddings: Any = "auto"
    compile: Any = False
    data_on_device: Any = "auto"
    distributed: Any = "auto"

    def __post_init__(self):
        def bad(name, why):
            raise ConfigError(f"TrainConfig.{name}={getattr(self, name)!r}: {why}")

        def pos_int(name):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                bad(name, "must be an integer >= 1")

        for n in ("epochs", "batch_size", "eval_batch_size"):
            pos_int(n)
        if self.max_steps is not None:
            pos_int("max_steps")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0 and math.isfinite(self.lr)):
            bad("lr", "must be a positive number")
        if not (isinstance(self.l2, (int, float)) and self.l2 >= 0):
            bad("l2", "must be >= 0")
        if not (isinstance(self.embedding_l2, (int, float)) and self.embedding_l2 >= 0):
            bad("embedding_l2", "must be >= 0")
        if self.embedding_l2 > 0 and self.sparse_embeddings is True:
            bad("embedding_l2", "a penalty on whole tables needs dense embedding gradients; set sparse_embeddings=False or 'auto'")
        if self.clip_norm is not None and not self.clip_norm > 0:
            bad("clip_norm", "must be > 0 or None")
        if self.ema_decay is not None and not (0.0 < self.ema_decay < 1.0):
            bad("ema_decay", "must be in (0, 1) or None")
        if self.early_stopping is not None and (isinstance(self.early_stopping, bool) or not isinstance(self.early_stopping, int) or self.early_stopping < 1):
            bad("early_stopping", "must be an integer >= 1 or None")
        if self.lr_schedule not in LR_SCHEDULES:
            bad("lr_schedule", f"allowed: {', '.join(LR_SCHEDULES)}")
        if self.dtype not in DTYPES:
            bad("dtype", f"allowed: {', '.join(DTYPES)}")
        if self.amp not in ("auto", True, False):
            bad("amp", "allowed: 'auto', True, False")
        if not isinstance(self.device, str) or not (self.device in ("auto", "cpu", "cuda", "mps") or self.device.startswith("cuda:")):
            bad("device", "allowed: 'auto', 'cpu', 'cuda', 'cuda:N', 'mps'")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            bad("seed", "must be an integer")
        if self.sparse_embeddings not in ("auto", True, False):
            bad("sparse_embeddings", "allowed: 'auto', True, False")
        if self.data_on_device not in ("auto", True, False):
            bad("data_on_device", "allowed: 'auto', True, False")
        if not isinstance(self.compile, (bool, str)):
            bad("compile", "must be True, False or a torch.compile backend name")
        if self.distributed not in ("auto", True, False):
            bad("distributed", "allowed: 'auto', True, False")

    def replace(self, **changes) -> "TrainConfig":
        unknown = sorted(set(changes) - {f.name for f in fields(self)})
        if unknown:
            raise ConfigError(f"TrainConfig has no field(s) {unknown}")
        return replace(self, **changes)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> "TrainConfig":
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ConfigError(f"TrainConfig has no field(s) {unknown}")
        return cls(**dict(d))


@dataclass
class TrainResult:
    """What :func:`fit` returns. ``model`` holds the best (EMA) weights."""

    model: DCNv2
    history: pd.DataFrame
    best_epoch: int
    best_metrics: dict
    train_time_s: float
    steps: int
    device: str
    config: TrainConfig
    stopped_early: bool = False
    checkpoint: str | None = None
    summary: dict = field(default_factory=dict)


@functools.lru_cache(maxsize=1)
def cpu_native_bf16() -> bool:
    """Whether this machine's CPU multiplies bf16 in hardware (x86 ``avx512_bf16`` or ``amx_bf16`` in
    ``/proc/cpuinfo``, Linux; False where that cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def resolve_device(device: str = "auto") -> torch.device:
    """``"auto"`` -> ``cuda`` when a GPU is visible, else ``cpu``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"TrainConfig.device={device!r}: CUDA is not available on this machine (use 'auto' or 'cpu')")
    return dev


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA) and NumPy."""
    import numpy as np

    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def _loss(logits: torch.Tensor, label: torch.Tensor, task: str) -> torch.Tensor:
    if task == "binary":
        return F.binary_cross_entropy_with_logits(logits, label)
    return F.mse_loss(logits, label)


@torch.no_grad()
def predict(model: DCNv2, data: TabularData, batch_size: int = 16384, device: str | torch.device | None = None) -> torch.Tensor:
    """Raw model outputs ``(N,)`` (logits for binary tasks), on the CPU. Full-rank, low-rank and
    deep-only models score through :class:`~dcn_explore.model.scoring.Scorer` (padded, bias-folded
    products, embeddings looked up straight into the padded buffer where the schema allows; equal
    to the forward up to float rounding), the others through their forward. ``batch_size`` rows go
    through the layers at a time; the scorer's lookups take at least 2,048 rows at a time."""
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    dtype = next(model.parameters()).dtype
    scorer = Scorer.build(model)  # None for the models it does not cover
    # the scorer looks up lookup_group(batch_size) rows at a time, the layers run on batch_size rows
    group = Scorer.lookup_group(batch_size) if scorer is not None else batch_size
    outs = []
    try:
        for i in range(0, len(data), group):
            b = data.batch(slice(i, i + group))
            inputs = (b.categorical.to(dev), b.multivalent.to(dev), b.dense.to(dev, dtype))
            outs.append((scorer.score(*inputs, chunk=batch_size) if scorer is not None else model(*inputs)).float())
    finally:
        model.train(was_training)
    return torch.cat(outs).cpu() if outs else torch.empty(0)


def metrics_from_outputs(outputs: torch.Tensor, label: torch.Tensor, task: str) -> dict[str, float]:
    """``{"logloss", "auc"}`` for binary tasks (outputs are logits), ``{"rmse"}`` for regression."""
    from torchmetrics.functional import mean_squared_error
    from torchmetrics.functional.classification import binary_auroc

    outputs, label = outputs.double(), label.double()
    if task == "binary":
        logloss = float(F.binary_cross_entropy_with_logits(outputs, label))
        both = bool((label == 1).any() and (label == 0).any())
        auc = float(binary_auroc(torch.sigmoid(outputs), label.long())) if both else math.nan
        return {"logloss": logloss, "auc": auc}
    return {"rmse": float(mean_squared_error(outputs, label, squared=False))}


def evaluate(model: DCNv2, data: TabularData, batch_size: int = 16384) -> dict[str, float]:
    """Metrics of ``model`` on ``data``: ``{"logloss", "auc"}`` (binary) or ``{"rmse"}`` (regression)."""
    if len(data) == 0:
        raise DataError(f"{data.name}: cannot evaluate on an empty data set")
    return metrics_from_outputs(predict(model, data, batch_size), data.label, data.task)


def _loss_key(task: str) -> str:
    return "logloss" if task == "binary" else "rmse"


def dense_adam(params, lr: float) -> torch.optim.Adam:
    """Adam with one fused kernel per tensor instead of a dozen foreach passes (6 % a step on the
    Criteo-shaped model); the foreach implementation where the device or dtype lacks the fused kernel."""
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except RuntimeError:
        return torch.optim.Adam(params, lr=lr, foreach=True)


def coalesced(g: torch.Tensor) -> torch.Tensor:
    """``g.coalesce()`` without the sort when the rows already are distinct and sorted (the lookups'
    gradients are built that way, but autograd's accumulation drops the tensor's "coalesced" mark):
    checking that the row indices increase strictly costs one comparison per row."""
    if g.is_coalesced():
        return g
    idx = g._indices()
    if idx.shape[0] == 1 and bool((idx[0, 1:] > idx[0, :-1]).all()):
        return torch.sparse_coo_tensor(idx, g._values(), g.shape, is_coalesced=True, check_invariants=False)
    return g.coalesce()


class LazyAdam(torch.optim.Optimizer):
    """Adam for row-sparse gradients: only the rows a batch touched are updated.

    The rule and its arithmetic are ``torch.optim.SparseAdam``'s (moments of untouched rows are
    left as they are; bias correction by the parameter's step count), but the touched rows are
    read with ``index_select`` and written back with ``index_copy_`` on the coalesced rows instead
    of through sparse-tensor masks and additions, which on the CPU cost several milliseconds per
    step for a batch of Criteo-sized lookups (``benchmarks/speed.py``).

    After a step, :attr:`touched` maps each updated parameter to ``(rows, before, after)``: the rows
    the step changed and their values before and after it (what :class:`_EMA` averages, so that it
    need not read them again).
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps))
        self.touched: dict[torch.nn.Parameter, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    @torch.no_grad()
    def step(self, closure=None):
        self.touched = {}
        for group in self.param_groups:
            (b1, b2), lr, eps = group["betas"], group["lr"], group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if not p.grad.is_sparse:
                    raise ConfigError("LazyAdam needs row-sparse gradients (embedding lookups with sparse=True)")
                g = coalesced(p.grad)  # the update is non-linear: each row once
                rows, values = g._indices()[0], g._values()
                if rows.numel() == 0:
                    continue
                st = self.state[p]
                if not st:
                    st["step"] = 0
                    st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                st["step"] += 1
                m_old = st["exp_avg"].index_select(0, rows)
                v_old = st["exp_avg_sq"].index_select(0, rows)
                m = values.sub(m_old).mul_(1 - b1).add_(m_old)  # old + (1 - b1)(new - old)
                v = values.pow(2).sub_(v_old).mul_(1 - b2).add_(v_old)
                st["exp_avg"].index_copy_(0, rows, m)
                st["exp_avg_sq"].index_copy_(0, rows, v)
                step_size = lr * math.sqrt(1 - b2 ** st["step"]) / (1 - b1 ** st["step"])
                before = p.index_select(0, rows)  # rows are distinct: the same sums as index_add_
                after = before + m.div_(v.sqrt_().add_(eps)).mul_(-step_size)
                p.index_copy_(0, rows, after)
                self.touched[p] = (rows, before, after)
        return None


class _EMA:
    """Exponential moving average of the weights (``torch.optim.swa_utils.AveragedModel``) whose
    decay warms up: ``min(decay, (1 + n) / (10 + n))`` at update ``n`` (TensorFlow's ``num_updates`` rule).

    Embedding tables trained by the lazy (sparse) optimizer are averaged lazily but exactly: a row
    that a step does not touch keeps its value ``p``, so after updates ``a+1..b`` its average is
    ``p + (ema_a - p) · Π d_j``; the product is kept as a cumulative sum of ``log d_j`` and applied
    when the row is next touched (:meth:`update`, given the touched rows' values before and after
    the step, as :attr:`LazyAdam.touched` holds them) or before the averaged model is read
    (:meth:`finalize`). Dense parameters are lerped every update with one foreach kernel.
    """

    def __init__(self, model: torch.nn.Module, decay: float, warmup: bool,
                 lazy_tables: list[torch.nn.Parameter] | None = None, max_updates: int = 0):
        self.decay, self.warmup, self.updates = decay, warmup, 0
        self.averaged = AveragedModel(model, multi_avg_fn=self._lerp, use_buffers=False)
        lazy_ids = {id(p) for p in (lazy_tables or [])}
        ema_params = dict(self.averaged.module.named_parameters())
        dev = next(model.parameters()).device
        self.tables = [(p, ema_params[name], torch.zeros(p.shape[0], dtype=torch.long, device=dev))
                       for name, p in model.named_parameters() if id(p) in lazy_ids]
        self._skip = {e.data_ptr() for _, e, _ in self.tables}
        self.log_cum = torch.zeros(max_updates + 2, dtype=torch.float64, device=dev) if self.tables else None
        self._d = 1.0
        self._pairs: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None

    def _lerp(self, ema_params, params, _num_averaged):
        pairs = [(e, p) for e, p in zip(ema_params, params) if e.data_ptr() not in self._skip]
        if pairs:
            torch._foreach_lerp_([e for e, _ in pairs], [p for _, p in pairs], 1.0 - self._d)
        # later updates lerp these lists directly (``update_parameters`` regroups every parameter per call)
        self._pairs = ([e for e, _ in pairs], [p for _, p in pairs])

    def _caught_up(self, e: torch.Tensor, last: torch.Tensor, rows: torch.Tensor, held: torch.Tensor,
                   upto: int) -> torch.Tensor:
        """The averages of ``rows`` of the table average ``e``, brought from each row's last update
        (``last``) to update ``upto``: the row's weights were ``held`` all along, so the average moves
        to ``held + (e - held) · Π d_j``. index_select: several times faster on the CPU than advanced
        indexing."""
        factor = torch.exp(self.log_cum[upto] - self.log_cum[last.index_select(0, rows)]).to(e.dtype).unsqueeze(-1)
        return e.index_select(0, rows).sub_(held).mul_(factor).add_(held)

    @torch.no_grad()
    def update(self, model: torch.nn.Module,
               touched: Mapping[torch.nn.Parameter, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None) -> None:
        """Average the weights after an optimizer step. ``touched``: per lazily averaged table, the rows
        the step changed and their values before and after it (:attr:`LazyAdam.touched`); a table
        absent from it had no row changed."""
        self.updates += 1
        n = self.updates
        self._d = min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay
        if self._pairs is None:  # the first call copies everything, the second builds the lists
            self.averaged.update_parameters(model)
        elif self._pairs[0]:
            torch._foreach_lerp_(*self._pairs, 1.0 - self._d)
        if not self.tables:
            return
        if n == 1:
            for _, _, last in self.tables:
                last.fill_(1)
            return
        self.log_cum[n] = self.log_cum[n - 1] + math.log(self._d)
        for p, e, last in self.tables:
            if not touched or p not in touched:
                continue
            rows, before, after = touched[p]
            # up to the previous update (the weights held ``before`` since), then average in ``after``
            caught = self._caught_up(e, last, rows, before, n - 1)
            e.index_copy_(0, rows, caught.lerp_(after, 1.0 - self._d))
            last.index_fill_(0, rows, n)

    @torch.no_grad()
    def finalize(self) -> None:
        """Bring every lazily averaged row up to date (before evaluating or saving the average)."""
        if not self.tables or self.updates == 0:
            return
        for p, e, last in self.tables:
            # rows averaged at the latest update are current; rows last averaged at update 1 (the copy)
            # and never touched since still equal their weights: only the rows in between need work
            rows = ((last > 1) & (last < self.updates)).nonzero().squeeze(1)
            e.index_copy_(0, rows, self._caught_up(e, last, rows, p.detach().index_select(0, rows), self.updates))
            last.index_fill_(0, rows, self.updates)

    @property
    def module(self) -> torch.nn.Module:
        return self.averaged.module


def _state_copy(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _use_sparse(cfg: "TrainConfig", model: DCNv2) -> bool:
    if cfg.sparse_embeddings == "auto":
        return cfg.embedding_l2 == 0 and model.num_parameters("embedding") >= SPARSE_AUTO_MIN_PARAMS
    return bool(cfg.sparse_embeddings)


def l2_value(kernels: list[torch.Tensor]) -> torch.Tensor:
    """``Σ_k ‖k‖²`` (no gradient): one foreach pass."""
    with torch.no_grad():
        return torch.stack(torch._foreach_norm(kernels)).square().sum()


@torch.no_grad()
def add_l2_gradient(kernels: list[torch.nn.Parameter], l2: float) -> None:
    """Add the gradient ``2 λ k`` of ``λ Σ_k ‖k‖²`` to each kernel's ``.grad`` (after the backward of
    the loss without that term): one foreach pass, where autograd's graph of the term took a
    square, a sum and their backward per kernel and an accumulation into ``.grad``."""
    for k in kernels:
        if k.grad is None:
            k.grad = torch.zeros_like(k)
    torch._foreach_add_([k.grad for k in kernels], list(kernels), alpha=2.0 * l2)


@torch.no_grad()
def clip_gradients(params: list[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
    """Clip by the global 2-norm of all gradients, row-sparse ones included (coalesced in place).

    Same rule as ``torch.nn.utils.clip_grad_norm_``: scale by ``min(1, max_norm / (norm + 1e-6))``.
    """
    dense, norms = [], []
    for p in params:
        if p.grad is None:
            continue
        if p.grad.is_sparse:
            p.grad = coalesced(p.grad)
            norms.append(torch.linalg.vector_norm(p.grad._values()))
        else:
            dense.append(p.grad)
    if dense:
        norms.extend(torch._foreach_norm(dense))
    if not norms:
        return torch.zeros(())
    total = torch.linalg.vector_norm(torch.stack(norms))
    coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
    if total.device.type == "cpu" and float(coef) == 1.0:
        return total  # scaling by 1 changes nothing; on the CPU reading coef costs no synchronisation
    if dense:
        torch._foreach_mul_(dense, coef)
    for p in params:
        if p.grad is not None and p.grad.is_sparse:  # coalesced above: scale its values in place, stay coalesced
            p.grad._values().mul_(coef)
    return total


class _Batches:
    """Mini-batches of one epoch, taken by indexing.

    Data on the training device is indexed there. Data kept on the CPU for a CUDA device
    (too large for device memory, or memory-mapped) is gathered on the CPU, pinned, and
    copied asynchronously while the previous batch trains (one batch of prefetch).
    """

    def __init__(self, data: TabularData, device: torch.device, batch_size: int):
        self.data, self.device, self.batch_size = data, device, batch_size
        self.stream = data.device != device

    def _fetch(self, idx: torch.Tensor):
        b = self.data.batch(idx)
        if not self.stream:
            return b
        tensors = [t.pin_memory() if self.device.type == "cuda" else t for t in (b.categorical, b.multivalent, b.dense, b.label)]
        return type(b)(*(t.to(self.device, non_blocking=True) for t in tensors))

    def epoch(self, perm: torch.Tensor, limit: int | None = None, rank: int = 0, world: int = 1):
        """Batches of ``perm``; with ``world > 1`` this rank's ``1/world`` of each global batch
        (and only whole global batches, so every rank takes the same number of steps)."""
        if world > 1:
            local = self.batch_size // world
            perm = torch.cat([perm[i + rank * local : i + (rank + 1) * local]
                              for i in range(0, len(perm) - self.batch_size + 1, self.batch_size)] or [perm[:0]])
            size = local
        else:
            size = self.batch_size
        starts = list(range(0, len(perm), size))
        if limit is not None:
            starts = starts[:limit]
        if not self.stream:
            for i in starts:
                yield self.data.batch(perm[i : i + size])
            return
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=1) as pool:
            nxt = pool.submit(self._fetch, perm[starts[0] : starts[0] + size]) if starts else None
            for k, _ in enumerate(starts):
                cur = nxt.result()
                if k + 1 < len(starts):
                    j = starts[k + 1]
                    nxt = pool.submit(self._fetch, perm[j : j + size])
                yield cur


def _place_data(data: TabularData, device: torch.device, mode) -> TabularData:
    """Move ``data`` to the device when it fits (``"auto"``: under half of the free device memory)."""
    if device.type == "cpu" or mode is False:
        return data  # CPU training indexes host memory directly; mode False streams batches to the device
    if mode is True:
        return data.to(device)
    free, _total = torch.cuda.mem_get_info(device) if device.type == "cuda" else (float("inf"), 0)
    return data.to(device) if data.nbytes() < 0.5 * free else data


def fit(
    model: DCNv2,
    train: TabularData,
    val: TabularData | None = None,
    config: TrainConfig | None = None,
    callback: Callable[[dict], Any] | None = None,
) -> TrainResult:
    """Train ``model`` on ``train``; early-stop and pick the best weights on ``val``.

    ``callback(event)`` is called after every epoch with a dict holding ``epoch``,
    ``step``, the history row's metrics and ``model`` (the weights being evaluated).
    Raises :class:`~dcn_explore.errors.TrainingDivergedError` when the loss becomes
    NaN/Inf (the model keeps its last good weights and no checkpoint is overwritten).
    """
    cfg = config or TrainConfig()
    if not isinstance(cfg, TrainConfig):
        raise ConfigError(f"config must be a TrainConfig, got {type(cfg).__name__}")
    if not isinstance(model, DCNv2):
        raise ConfigError(f"model must be a DCNv2, got {type(model).__name__}")
    for part, name in ((train, "train"), (val, "val")):
        if part is None:
            continue
        if not isinstance(part, TabularData):
            raise DataError(f"{name} must be a TabularData, got {type(part).__name__}")
        if len(part) == 0:
            raise DataError(f"{part.name}: the {name} set is empty")
        if [(f.name, f.kind, f.vocab_size) for f in part.schema] != [(f.name, f.kind, f.vocab_size) for f in model.schema]:
            raise DataError(f"{part.name}: its schema {part.schema!r} does not match the model's {model.schema!r}")
    if val is not None and val.task != train.task:
        raise DataError(f"val task {val.task!r} differs from train task {train.task!r}")
    task = train.task
    model.task = task
    device = resolve_device(cfg.device)
    from . import distributed as dist_mod

    use_ddp = dist_mod.active() if cfg.distributed == "auto" else bool(cfg.distributed)
    rank, world = 0, 1
    if use_ddp:
        if not dist_mod.active():
            raise ConfigError("TrainConfig.distributed=True: no process group with more than one process; launch with torchrun "
                              "and call dcn_explore.distributed.init() first")
        rank, world = dist_mod.rank(), dist_mod.world_size()
        if cfg.batch_size % world:
            raise ConfigError(f"TrainConfig.batch_size={cfg.batch_size}: the global batch must divide evenly over {world} processes")
        if cfg.sparse_embeddings is True:
            raise ConfigError("TrainConfig.sparse_embeddings=True is not supported with distributed training (DDP syncs dense gradients)")
        if len(train) < cfg.batch_size:
            raise DataError(f"{train.name}: {len(train)} rows are fewer than one global batch ({cfg.batch_size}) for distributed training")
        if device.type == "cuda":
            device = dist_mod.local_device()
    main_process = rank == 0
    dtype = DTYPES[cfg.dtype]
    use_amp = dtype == torch.float32 and (cfg.amp is True or (cfg.amp == "auto" and device.type == "cuda"))
    if use_amp and device.type not in ("cuda", "cpu"):
        raise ConfigError(f"TrainConfig.amp=True: bf16 autocast runs on 'cuda' or 'cpu', not on {device.type!r}; set amp='auto' or False")
    seed_everything(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    model.to(device=device, dtype=dtype)
    tr = _place_data(train, device, cfg.data_on_device)
    va = _place_data(val, device, cfg.data_on_device) if val is not None else None
    batches = _Batches(tr, device, cfg.batch_size)
    sparse = _use_sparse(cfg, model) and not use_ddp
    model.embedding.sparse_grad = sparse
    tables = model.embedding.tables() if sparse else []
    table_ids = {id(p) for p in tables}
    dense_params = [p for p in model.parameters() if id(p) not in table_ids]
    lazy = LazyAdam(tables, lr=cfg.lr) if tables else None
    optimizers = [dense_adam(dense_params, cfg.lr)] + ([lazy] if lazy is not None else [])
    n = len(tr)
    steps_per_epoch = n // cfg.batch_size if use_ddp else math.ceil(n / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs if cfg.max_steps is None else min(cfg.max_steps, steps_per_epoch * cfg.epochs)
    scheds = []
    if cfg.lr_schedule == "cosine":
        scheds = [torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=max(1, total_steps)) for o in optimizers]
    elif cfg.lr_schedule == "plateau":
        scheds = [torch.optim.lr_scheduler.ReduceLROnPlateau(o, mode="min", factor=0.1, patience=1) for o in optimizers]
    ema = _EMA(model, cfg.ema_decay, cfg.ema_warmup, tables, total_steps) if cfg.ema_decay else None
    kernels = model.cross_kernels() if cfg.l2 > 0 else []
    emb_tables = list(model.embedding.tables()) if cfg.embedding_l2 > 0 else []
    key = _loss_key(task)
    train_forward = model
    if use_ddp:
        from torch.nn.parallel import DistributedDataParallel

        train_forward = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        opts = {} if cfg.compile is True else {"backend": cfg.compile}
        if use_ddp:
            train_forward = torch.compile(train_forward, **opts)
        else:
            # the embedding lookup stays eager (inductor cannot trace row-sparse gradients); the
            # cross and deep networks, where the many small element-wise kernels are, get fused
            compiled_head = torch.compile(model.head, **opts)

            def train_forward(categorical, multivalent, dense):
                return compiled_head(model.embed(categorical, multivalent, dense))
    va_shard = va.subset(torch.arange(rank, len(va), world)) if (use_ddp and va is not None) else va
    params = list(model.parameters())

    def eval_model() -> torch.nn.Module:
        if ema is None:
            return model
        ema.finalize()
        return ema.module

    def evaluate_now(part: TabularData) -> dict[str, float]:
        m = eval_model()
        out = predict(m, part, cfg.eval_batch_size, device)
        if use_ddp:  # every rank scored its shard; all ranks compute the metrics of the whole set
            return metrics_from_outputs(dist_mod.gather_cat(out), dist_mod.gather_cat(part.label.cpu()), task)
        return metrics_from_outputs(out, part.label, task)

    bar = None
    if cfg.progress and main_process:
        from tqdm.auto import tqdm

        bar = tqdm(total=total_steps, desc=f"train {model.config.label()}", unit="step", leave=False)
    rows: list[dict] = []
    best = {"value": math.inf, "epoch": 0, "state": None, "metrics": {}}
    last_good: dict = {}
    step, bad_epochs, stopped_early = 0, 0, False
    start = time.perf_counter()
    autocast = torch.autocast(device.type if use_amp else "cpu", dtype=torch.bfloat16, enabled=use_amp)
    try:
        for epoch in range(1, cfg.epochs + 1):
            model.train()
            perm = torch.randperm(n, generator=gen).to(tr.device)
            loss_sum = torch.zeros((), device=device, dtype=torch.float64)
            seen = 0
            limit = None if cfg.max_steps is None else max(0, cfg.max_steps - step)
            for bi, b in enumerate(batches.epoch(perm, limit, rank, world)):
                with autocast:
                    out = train_forward(b.categorical, b.multivalent, b.dense.to(dtype))
                loss = _loss(out.to(dtype), b.label.to(dtype), task)
                total = loss
                if emb_tables:
                    total = total + cfg.embedding_l2 * sum(t.pow(2).sum() for t in emb_tables)
                # the cross kernels' L2 term λ Σ‖W‖² enters the backward as its gradient 2λW, added after
                # it (add_l2_gradient), and the divergence check as its value
                checked = total.detach() + cfg.l2 * l2_value(kernels) if kernels else total
                finite = bool(torch.isfinite(checked))
                if use_ddp:
                    finite = dist_mod.all_true(finite, device)
                if not finite:
                    if best["state"] is not None:
                        model.load_state_dict(best["state"])
                    raise TrainingDivergedError(
                        f"training loss became {float(checked)} at step {step + 1} (epoch {epoch}, batch {bi + 1}); "
                        f"last good metrics: {last_good or 'none (diverged in the first epoch)'}; "
                        + ("the model holds the best weights so far" if best["state"] is not None else "no good weights to restore")
                        + (f"; checkpoint {cfg.checkpoint} was not touched" if cfg.checkpoint else "")
                    )
                for o in optimizers:
                    o.zero_grad(set_to_none=True)
                total.backward()
                if kernels:
                    add_l2_gradient(kernels, cfg.l2)
                if cfg.clip_norm is not None:
                    clip_gradients(params, cfg.clip_norm)
                elif sparse:
                    for p in tables:
                        if p.grad is not None:
                            p.grad = coalesced(p.grad)
                for o in optimizers:
                    o.step()
                if cfg.lr_schedule == "cosine":
                    for sc in scheds:
                        sc.step()
                if ema is not None:
                    ema.update(model, lazy.touched if lazy is not None else None)
                loss_sum += loss.detach().double() * b.label.shape[0]
                seen += b.label.shape[0]
                step += 1
                if bar is not None:
                    bar.update(1)
            if use_ddp:
                totals = dist_mod.all_reduce_sum(torch.stack([loss_sum, torch.tensor(float(seen), device=device, dtype=torch.float64)]))
                loss_sum, seen = totals[0], int(totals[1])
            train_loss = float(loss_sum) / max(seen, 1)
            row = {"epoch": epoch, "step": step, "train_loss": train_loss}
            if va is not None:
                m = evaluate_now(va_shard)
                row["val_loss"] = m[key]
                row.update({f"val_{k}": v for k, v in m.items()})
            else:
                row["val_loss"] = math.nan
            row["lr"] = optimizers[0].param_groups[0]["lr"]
            row["time_s"] = time.perf_counter() - start
            rows.append(row)
            last_good = {k: round(v, 6) if isinstance(v, float) else v for k, v in row.items()}
            monitor = row["val_loss"] if va is not None else train_loss
            if monitor < best["value"]:
                # after the last epoch the weights do not change again: keep the evaluated module itself
                # (read at the end) instead of a copy of its state
                final = epoch == cfg.epochs or (cfg.max_steps is not None and step >= cfg.max_steps)
                best.update(value=monitor, epoch=epoch, state=eval_model() if final else _state_copy(eval_model()),
                            metrics=dict(row))
                bad_epochs = 0
                if cfg.checkpoint and main_process:
                    model_for_ckpt = eval_model()
                    model_for_ckpt.task = task
                    save_checkpoint(cfg.checkpoint, model_for_ckpt, cfg, pd.DataFrame(rows))
            else:
                bad_epochs += 1
            if cfg.lr_schedule == "plateau":
                for sc in scheds:
                    sc.step(monitor)
            if bar is not None:
                bar.set_postfix({k: f"{v:.4f}" for k, v in row.items() if k.startswith("val_") and isinstance(v, float)})
            if callback is not None:
                callback(dict(row, model=eval_model()))
            if cfg.early_stopping is not None and va is not None and bad_epochs >= cfg.early_stopping:
                stopped_early = True
                break
            if cfg.max_steps is not None and step >= cfg.max_steps:
                break
    finally:
        if bar is not None:
            bar.close()
        model.embedding.sparse_grad = False
    state = best["state"]
    if isinstance(state, torch.nn.Module):
        state = None if state is model else state.state_dict()
    if state is not None:
        model.load_state_dict(state)
    model.eval()
    history = pd.DataFrame(rows)
    return TrainResult(
        model=model,
        history=history,
        best_epoch=best["epoch"],
        best_metrics=best["metrics"],
        train_time_s=time.perf_counter() - start,
        steps=step,
        device=str(device),
        config=cfg,
        stopped_early=stopped_early,
        checkpoint=str(Path(cfg.checkpoint)) if cfg.checkpoint else None,
        summary=dict(model.summary(), sparse_embeddings=sparse, processes=world, amp=use_amp),
    )
