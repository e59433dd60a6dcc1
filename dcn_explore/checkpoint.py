"""Checkpoints: model weights + DCNConfig + Schema (+ TrainConfig, history), plain data only.

Files are written atomically and loaded with ``torch.load(..., weights_only=True)``,
so loading never unpickles arbitrary objects. A SHA-256 digest over the
configuration and every tensor's bytes is stored inside and checked on load, so
a file altered after it was written is refused, not silently used.

>>> import tempfile, os
>>> from dcn_explore import DCNv2, DCNConfig
>>> from dcn_explore.data import planted_crosses
>>> model = DCNv2(planted_crosses(n_samples=50).schema, DCNConfig(cross_layers=1, deep_layers=(8,)))
>>> path = os.path.join(tempfile.mkdtemp(), "m.pt")
>>> save_checkpoint(path, model)
>>> loaded, info = load_checkpoint(path)
>>> all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
True
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from ._io import atomic_path
from .errors import CheckpointError, ConfigError
from .model.config import DCNConfig
from .model.dcn import DCNv2
from .schema import Schema

FORMAT = "dcn-explore/checkpoint"
VERSION = 1


def _digest(meta: dict, state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(meta, sort_keys=True, default=str).encode())
    for k in sorted(state):
        t = state[k].detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_checkpoint(
    path: str | os.PathLike,
    model: DCNv2,
    train_config: Any = None,
    history: pd.DataFrame | None = None,
    extra: dict | None = None,
) -> None:
    """Write ``model`` (and optionally its TrainConfig, history and plain ``extra`` data) to ``path`` atomically."""
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "dcn_config": model.config.to_dict(),
        "schema": model.schema.to_dict(),
        "task": model.task,
        "train_config": train_config.to_dict() if train_config is not None else None,
        "history": None if history is None else json.loads(history.to_json(orient="split")),
        "extra": extra or {},
    }
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    payload = dict(meta, state_dict=state, digest=_digest(meta, state))
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> tuple[DCNv2, dict]:
    """Rebuild the model saved at ``path``; returns ``(model, info)`` where ``info`` holds
    ``dcn_config``, ``schema``, ``task``, ``train_config`` (dict or None), ``history`` (DataFrame or None), ``extra``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: no such file")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"checkpoint {path} was refused: it holds objects other than tensors and plain data, "
            f"or its pickle stream is damaged (loaded with weights_only=True): {str(e).splitlines()[0]}"
        ) from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} is truncated or not a torch checkpoint: {str(e).splitlines()[0]}") from e
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} is not a dcn-explore checkpoint (format field {payload.get('format') if isinstance(payload, dict) else type(payload).__name__!r})")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {payload.get('version')!r}; this dcn-explore reads version {VERSION}")
    state = payload.get("state_dict")
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path}: state_dict is missing")
    meta = {k: payload.get(k) for k in ("format", "version", "dcn_config", "schema", "task", "train_config", "history", "extra")}
    if _digest(meta, state) != payload.get("digest"):
        raise CheckpointError(f"checkpoint {path} failed its integrity check: the stored SHA-256 digest does not match its contents (the file was altered after it was written)")
    try:
        cfg = DCNConfig.from_dict(meta["dcn_config"])
        schema = Schema.from_dict(meta["schema"])
    except ConfigError as e:
        raise CheckpointError(f"checkpoint {path}: invalid configuration: {e}") from e
    model = DCNv2(schema, cfg, task=meta["task"])
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {path}: weights do not fit the stored configuration: {str(e).splitlines()[0]}") from e
    model.to(map_location)
    hist = meta["history"]
    history = pd.DataFrame(hist["data"], columns=hist["columns"]) if hist else None
    info = dict(meta, dcn_config=cfg, schema=schema, history=history)
    return model, info
