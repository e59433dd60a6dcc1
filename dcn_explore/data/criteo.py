"""Criteo display advertising (Kaggle ``train.txt``, the 1TB ``day_0`` … ``day_23``), streamed into memory-mapped caches.

Input format (both releases): one example a line, 40 tab-separated fields,
``label, I1..I13, C1..C26``; the label is ``0`` or ``1``, ``I*`` are integers
(``-?[0-9]+``, at most 18 digits), ``C*`` are hashed categories written as 8 hex
digits (read as their 32-bit value, so ``DEADBEEF`` = ``deadbeef``); an empty field
is a missing value. ``\\r\\n`` line ends and ``.gz`` files are accepted; blank lines
are ignored (and counted). The Kaggle ``test.txt`` has no label column and is not read.

API: :func:`criteo` -> ``(train, val, test)``; :func:`criteo_dataset` (all rows,
one :class:`TabularData`) and :func:`split_by_day` (its day split, as views);
:func:`criteo_vocabulary` (the hashes behind the ids); :func:`write_criteo_sample`
(a generated file in the exact format); :func:`default_cache_dir`.

Protocol (paper Sec. 7.1) and the choices it leaves open:

- **Split, one file** (Kaggle ``train.txt``: 7 days in time order): the rows are
  cut into 7 equal contiguous days, ``day k = [k*N//7, (k+1)*N//7)``; days 1–6
  train, day 7 split in half: the first ``M//2`` of its ``M`` rows val, the rest
  test. **Several files** (1TB day files, one day each, in the order given; names
  ``day_K`` must come in increasing ``K``): every file but the last trains, the
  last is halved into val (first half) and test. ``N`` counts the rows kept
  (malformed lines are not rows).
- **Vocabularies** are counted on the *training rows only* (val/test never leak
  in): a value seen at least ``min_count`` times gets an id ``1..V``, most
  frequent first (ties: smaller hash first); rare and unseen values get id 0
  (out of vocabulary), as in :mod:`.frame`. **A missing categorical value** (empty
  field) also gets id 0: it is never counted into the vocabulary, so "missing"
  and "rare" share the OOV embedding, the project-wide convention of :mod:`.frame`.
  ``vocab_size = V + 1``.
- **Dense features**: ``log(x + 4)`` for ``I2`` (whose smallest value in the data is
  -3) and ``log(x + 1)`` for the others, no further scaling. Values below that
  domain (``I2 < -3``, another ``I < 0``) are clamped to its floor, so they map to
  ``log 1 = 0``, and are counted per feature in ``meta["dense_clipped"]``. A missing
  dense value is ``0.0`` (the value at the floor), counted in ``meta["dense_missing"]``.
- **Malformed lines** — wrong field count, label other than ``0``/``1``, an ``I``
  field that is not an integer, a ``C`` field that is neither empty nor 8 hex
  digits — are reported as ``FILE, line K: what, and what was expected``. With
  ``on_error="raise"`` the first one raises :class:`~dcn_explore.errors.DataError`;
  with ``"skip"`` they are left out, counted, logged (a warning, on every load) and
  listed in ``meta["malformed"]`` (``count`` and the first 100 ``lines``).

Cache: ``<cache_dir>/criteo-<key>/`` holds ``label.npy`` ``(N,)`` float32,
``dense.npy`` ``(N, 13)`` float32, ``categorical.npy`` ``(N, 26)`` int64 (all rows,
in file order; the splits are contiguous slices), ``vocab.npz`` (each feature's
hashes and training counts in id order, see :func:`criteo_vocabulary`) and
``meta.json``. The key hashes the resolved input paths with their size and
mtime, ``min_count``, ``max_rows`` and the format version, so touching or
replacing an input rebuilds it; ``on_error`` and ``embedding_dim`` are not part of
it (a cache built with ``"skip"`` still raises for ``"raise"``, from the stored
report; widths are applied on load). A build writes into a hidden temporary
folder beside the cache and renames it into place only when complete, so an
interrupted build is never read (stale temporary folders of dead processes on
this host are removed by the next build). The cache takes 264 bytes a row (about
12 GB for the 45.8M Kaggle rows) and a build about twice that on disk while it
runs; its memory is bounded: 16 MiB text blocks, 1M-row output blocks; the largest
structure is one feature's table of distinct training values (measured: 7.9M
distinct hashes in 39M rows, about 0.7 GB). For the whole 1TB release those
tables reach hundreds of millions of values: use ``max_rows`` or fewer days.

Loading maps the arrays copy-on-write (``mmap_mode="c"``): the tensors are
``torch.from_numpy`` views of the files — nothing is read until used, writable
(no read-only warning), and an in-place change stays private to the process,
never reaching the cache. Such tensors are not re-validated on load (the build
checked every value).

>>> import os, tempfile
>>> tmp = tempfile.mkdtemp()
>>> sample = write_criteo_sample(os.path.join(tmp, "train.txt"), n_rows=1400, seed=0)
>>> train, val, test = criteo(sample.path, cache_dir=os.path.join(tmp, "cache"), min_count=2)
>>> len(train), len(val), len(test)
(1200, 100, 100)
>>> train.schema.names[:3], train.schema.names[13:15], tuple(train.categorical.shape)
(['I1', 'I2', 'I3'], ['C1', 'C2'], (1200, 26))
>>> train.meta["cache"]["built"], criteo(sample.path, cache_dir=os.path.join(tmp, "cache"), min_count=2)[0].meta["cache"]["built"]
(True, False)
>>> import shutil; del train, val, test; shutil.rmtree(tmp, ignore_errors=True)
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from .._io import write_json_atomic
from ..errors import ConfigError, DataError
from ..schema import FeatureSpec, Schema
from .dataset import TabularData

log = logging.getLogger(__name__)

DENSE = [f"I{i}" for i in range(1, 14)]
CATEGORICAL = [f"C{i}" for i in range(1, 27)]
N_DENSE, N_CAT = len(DENSE), len(CATEGORICAL)
N_FIELDS = 1 + N_DENSE + N_CAT
LOG_SHIFT = np.array([4.0 if name == "I2" else 1.0 for name in DENSE])  # log(x + shift), Sec. 7.1
ON_ERROR = ("raise", "skip")
FORMAT_VERSION = 1
REPORT_LINES = 100
MAX_DIGITS = 18  # an int64 holds every 18-digit integer
CHUNK_BYTES = 16 << 20  # text block parsed at once (~65k Kaggle lines)
COUNT_ROWS = 4 << 20  # rows per block when counting a vocabulary (32 MB of hashes)
ENCODE_ROWS = 1 << 20  # rows per block when writing the arrays (208 MB of ids)
_DAY = re.compile(r"day_(\d+)(\.gz)?$")

_HEX = np.full(256, -1, dtype=np.int8)
_HEX[np.frombuffer(b"0123456789", np.uint8)] = np.arange(10)
_HEX[np.frombuffer(b"abcdef", np.uint8)] = np.arange(10, 16)
_HEX[np.frombuffer(b"ABCDEF", np.uint8)] = np.arange(10, 16)
_ONES = np.uint64(0xFFFFFFFFFFFFFFFF)
_ZEROS = np.uint64(0x3030303030303030)  # "00000000"
_HIGH_NIBBLES = np.uint64(0xF0F0F0F0F0F0F0F0)
_HIGH_BITS = np.uint64(0x8080808080808080)


def _all_digits(x: np.ndarray) -> np.ndarray:
    """Whether each of the 8 bytes of each uint64 is an ASCII digit."""
    return ((x & _HIGH_NIBBLES) == _ZEROS) & (((x + np.uint64(0x0606060606060606)) & _HIGH_NIBBLES) == _ZEROS)


def _parse_long_ints(buf: np.ndarray, fs: np.ndarray, fe: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integers of more than 8 digits (1-D arrays of field starts/ends): (absolute values, malformed)."""
    L = fe - fs
    W = MAX_DIGITS + 1
    k = np.arange(W)
    lead = (W - L)[:, None]  # window position of the field's first byte
    d = buf[np.maximum(fe[:, None] - W + k, 0)] - np.uint8(48)  # wraps to >= 208 below '0'
    digit = (k >= lead) & ~((k == lead) & neg[:, None])
    bad = (digit & (d > 9)).any(axis=1) | (L - neg > MAX_DIGITS)
    val = (np.where(digit, d, 0).astype(np.int64) * (10 ** (W - 1 - k)).astype(np.int64)).sum(axis=1)
    return val, bad


# ---------------------------------------------------------------------------------------------
# parsing one block of complete lines, vectorised over its lines
# ---------------------------------------------------------------------------------------------
@dataclass
class _Block:
    """The parsed lines of one text block (``n`` good rows, in line order)."""

    label: np.ndarray  # (n,) float32
    ints: np.ndarray  # (n, 13) int64, the raw integers (0 where missing)
    int_missing: np.ndarray  # (n, 13) bool
    keys: np.ndarray  # (26, n) int64, the 32-bit hash value, -1 where missing
    lines: np.ndarray  # (n,) int64, 1-based line number of each row
    bad_lines: np.ndarray  # (b,) int64, line numbers of malformed lines
    reasons: list[str]  # messages for the first few malformed lines
    blank_lines: np.ndarray  # line numbers of blank lines
    n_lines: int

    def head(self, rows: int) -> "_Block":
        """Only the first ``rows`` rows and the lines before the last of them."""
        last = int(self.lines[rows - 1]) if rows else 0
        nb = int(np.searchsorted(self.bad_lines, last))
        return _Block(self.label[:rows], self.ints[:rows], self.int_missing[:rows], self.keys[:, :rows],
                      self.lines[:rows], self.bad_lines[:nb], self.reasons[:nb],
                      self.blank_lines[self.blank_lines < last], self.n_lines)


def _parse_block(data: bytes, first_line: int, source: str, n_reasons: int) -> _Block:
    """Parse ``data`` (complete lines, ending in ``\\n``); the first line is number ``first_line``."""
    buf = np.frombuffer(data, dtype=np.uint8)
    nl = np.flatnonzero(buf == 10)
    n_lines = len(nl)
    starts = np.zeros(n_lines, np.int64)
    starts[1:] = nl[:-1] + 1
    ends = nl.astype(np.int64)
    ends -= (ends > starts) & (buf[np.maximum(ends - 1, 0)] == 13)  # drop a '\r' before '\n'
    tabs = np.flatnonzero(buf == 9)
    upto = np.searchsorted(tabs, nl)  # tabs before each line end
    first_tab = np.zeros(n_lines, np.int64)
    first_tab[1:] = upto[:-1]
    n_tabs = upto - first_tab
    blank = ends == starts
    shaped = np.flatnonzero(n_tabs == N_FIELDS - 1)  # lines with 40 fields
    m = len(shaped)

    t = tabs[first_tab[shaped, None] + np.arange(N_FIELDS - 1)]
    fs = np.empty((m, N_FIELDS), np.int64)  # field starts
    fs[:, 0] = starts[shaped]
    fs[:, 1:] = t + 1
    fe = np.empty((m, N_FIELDS), np.int64)  # field ends (exclusive)
    fe[:, :-1] = t
    fe[:, -1] = ends[shaped]
    flen = fe - fs
    del t

    # label: exactly "0" or "1"
    lab = buf[fs[:, 0]]
    label_bad = (flen[:, 0] != 1) | ((lab != 48) & (lab != 49))

    # 8-byte little-endian loads at any byte offset of a copy padded with 8 '0's on both sides
    pad = np.full(len(buf) + 16, 48, np.uint8)
    pad[8:-8] = buf
    load = np.ndarray(shape=(len(pad) - 7,), dtype="<u8", buffer=pad, strides=(1,))

    # integers: an optional '-' then 1..18 digits; up to 8 digits parsed in one uint64 (SWAR)
    D = slice(1, 1 + N_DENSE)
    L = flen[:, D]
    int_missing = L == 0
    neg = (L > 0) & (buf[fs[:, D]] == 45)
    nd = L - neg  # digits
    x = load[fe[:, D]]  # the 8 bytes ending at the field's end; byte 7 = last digit
    fill = np.minimum(8 - np.minimum(nd, 8), 7).astype(np.uint64)  # low bytes to overwrite with '0'
    low = np.where(nd == 0, _ONES, (np.uint64(1) << (np.uint64(8) * fill)) - np.uint64(1))
    x = (x & ~low) | (_ZEROS & low)
    int_bad = (neg & (nd == 0)) | ((nd > 0) & (nd <= 8) & ~_all_digits(x))
    v = x - _ZEROS
    v = (v * np.uint64(10) + (v >> np.uint64(8))) & np.uint64(0x00FF00FF00FF00FF)
    v = (v * np.uint64(100) + (v >> np.uint64(16))) & np.uint64(0x0000FFFF0000FFFF)
    v = (v * np.uint64(10000) + (v >> np.uint64(32))) & np.uint64(0x00000000FFFFFFFF)
    ints = v.astype(np.int64)
    long = np.nonzero(nd > 8)
    if len(long[0]):  # rare: 9 to 18 digits, one window per field
        ints[long], int_bad[long] = _parse_long_ints(buf, fs[:, D][long], fe[:, D][long], neg[long])
    ints = np.where(neg, -ints, ints)

    # categorical: empty, or exactly 8 hex digits -> their 32-bit value
    C = slice(1 + N_DENSE, N_FIELDS)
    L = flen[:, C]
    nib = _HEX[load[fs[:, C] + 8].view(np.uint8)].reshape(m, N_CAT, 8)  # -1 for a byte that is not hex
    hexed = (nib.view("<u8")[..., 0] & _HIGH_BITS) == 0
    good = (L == 8) & hexed
    cat_bad = (L > 0) & ~good
    packed = ((nib[..., 0::2].astype(np.uint8) << 4) | nib[..., 1::2].astype(np.uint8)).view(">u4")[..., 0]
    keys = np.where(good, packed.astype(np.int64), -1).T.copy()  # (26, m)

    row_bad = label_bad | int_bad.any(axis=1) | cat_bad.any(axis=1)
    keep = ~row_bad
    bad_idx = np.union1d(np.flatnonzero(~blank & (n_tabs != N_FIELDS - 1)), shaped[row_bad])

    reasons = []
    for i in bad_idx[:n_reasons]:
        line = first_line + int(i)
        text = data[starts[i] : ends[i]]
        where = f"{source}, line {line}"
        if n_tabs[i] != N_FIELDS - 1:
            reasons.append(f"{where}: expected {N_FIELDS} tab-separated fields (label, I1..I13, C1..C26), "
                           f"found {int(n_tabs[i]) + 1}: {text[:60].decode('utf-8', 'replace')!r}")
            continue
        r = int(np.searchsorted(shaped, i))

        def value(col: int) -> str:
            return data[fs[r, col] : fe[r, col]].decode("utf-8", "replace")

        if label_bad[r]:
            reasons.append(f"{where}: label = {value(0)!r}, expected 0 or 1")
        elif int_bad[r].any():
            j = int(np.argmax(int_bad[r]))
            reasons.append(f"{where}: field {DENSE[j]} = {value(1 + j)!r} is not an integer "
                           f"(expected an optional '-' and 1 to {MAX_DIGITS} digits, or empty for missing)")
        else:
            j = int(np.argmax(cat_bad[r]))
            reasons.append(f"{where}: field {CATEGORICAL[j]} = {value(1 + N_DENSE + j)!r} is not 8 hex digits "
                           f"(expected e.g. '68fd1e64', or empty for missing)")

    return _Block(
        label=(lab[keep] - 48).astype(np.float32),
        ints=ints[keep],
        int_missing=int_missing[keep],
        keys=keys[:, keep],
        lines=first_line + shaped[keep],
        bad_lines=first_line + bad_idx,
        reasons=reasons,
        blank_lines=first_line + np.flatnonzero(blank),
        n_lines=n_lines,
    )


def _log_transform(ints: np.ndarray, missing: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``log(x + 4)`` for I2, ``log(x + 1)`` otherwise (Sec. 7.1); returns (values float32, clamped mask).

    >>> v, clipped = _log_transform(np.array([[0, -3] + [0] * 11, [-5, 0] + [1] * 11]), np.zeros((2, 13), bool))
    >>> v[:, :3].astype(float).round(4).tolist(), clipped[:, :2].tolist()
    ([[0.0, 0.0, 0.0], [0.0, 1.3863, 0.6931]], [[False, False], [True, False]])
    """
    arg = ints.astype(np.float64) + LOG_SHIFT
    clipped = (arg < 1.0) & ~missing
    out = np.log(np.maximum(arg, 1.0))
    out[missing] = 0.0
    return out.astype(np.float32), clipped


def _blocks(path: Path, chunk_bytes: int) -> Iterator[bytes]:
    """Successive runs of complete lines of ``path`` (each ending in ``\\n``), about ``chunk_bytes`` long."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            carry = b""
            while True:
                block = f.read(chunk_bytes)
                if not block:
                    if carry:
                        yield carry + b"\n"  # the last line had no line end
                    return
                data = carry + block if carry else block
                cut = data.rfind(b"\n")
                if cut < 0:
                    carry = data
                    continue
                carry = data[cut + 1 :]
                yield data[: cut + 1] if carry else data
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"{path}: cannot be read ({e})") from e


# ---------------------------------------------------------------------------------------------
# the build: stream every file into raw column files, then count and encode
# ---------------------------------------------------------------------------------------------
@dataclass
class _Scan:
    rows_per_file: list[int] = field(default_factory=list)
    lines_per_file: list[int] = field(default_factory=list)
    malformed: int = 0
    reports: list[str] = field(default_factory=list)
    blank: int = 0
    dense_missing: np.ndarray = field(default_factory=lambda: np.zeros(N_DENSE, np.int64))
    dense_clipped: np.ndarray = field(default_factory=lambda: np.zeros(N_DENSE, np.int64))
    categorical_missing: np.ndarray = field(default_factory=lambda: np.zeros(N_CAT, np.int64))


def _scan_files(files: list[Path], tmp: Path, on_error: str, max_rows: int | None, chunk_bytes: int, progress: bool) -> _Scan:
    """Phase 1: parse every file, append label/dense/raw hash columns to ``tmp/*.bin``."""
    scan = _Scan()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        total = None if any(p.suffix == ".gz" for p in files) else sum(p.stat().st_size for p in files)
        bar = tqdm(total=total, unit="B", unit_scale=True, desc="criteo: parse")
    outs = {"label": open(tmp / "label.bin", "wb"), "dense": open(tmp / "dense.bin", "wb")}
    outs.update({c: open(tmp / f"{c}.bin", "wb") for c in CATEGORICAL})
    try:
        for path in files:
            log.info("criteo: parsing %s", path)
            rows = lines = 0
            for data in _blocks(path, chunk_bytes):
                b = _parse_block(data, lines + 1, str(path), max(1, REPORT_LINES - len(scan.reports)))
                lines += b.n_lines
                if bar is not None:
                    bar.update(len(data))
                done = max_rows is not None and rows + len(b.label) >= max_rows
                if done:
                    b = b.head(max_rows - rows)
                if len(b.bad_lines):
                    if on_error == "raise":
                        raise DataError(f"{b.reasons[0]} (on_error='skip' leaves such lines out and reports them)")
                    scan.malformed += len(b.bad_lines)
                    scan.reports.extend(b.reasons[: REPORT_LINES - len(scan.reports)])
                dense, clipped = _log_transform(b.ints, b.int_missing)
                scan.dense_missing += b.int_missing.sum(axis=0)
                scan.dense_clipped += clipped.sum(axis=0)
                scan.categorical_missing += (b.keys < 0).sum(axis=1)
                scan.blank += len(b.blank_lines)
                b.label.tofile(outs["label"])
                dense.tofile(outs["dense"])
                for j, c in enumerate(CATEGORICAL):
                    b.keys[j].tofile(outs[c])
                rows += len(b.label)
                if done:
                    lines = int(b.lines[-1]) if len(b.lines) else lines
                    break
            scan.rows_per_file.append(rows)
            scan.lines_per_file.append(lines)
    finally:
        for f in outs.values():
            f.close()
        if bar is not None:
            bar.close()
    return scan


def _merge_counts(k1: np.ndarray, c1: np.ndarray, k2: np.ndarray, c2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sum two (sorted unique keys, counts) tables into one.

    >>> _merge_counts(np.array([1, 5]), np.array([2, 1]), np.array([2, 5]), np.array([1, 4]))
    (array([1, 2, 5]), array([2, 1, 5]))
    """
    if not len(k1):
        return k2, c2
    k = np.concatenate([k1, k2])
    order = np.argsort(k, kind="stable")  # two sorted runs: a merge
    k, c = k[order], np.concatenate([c1, c2])[order]
    first = np.flatnonzero(np.r_[True, k[1:] != k[:-1]])
    return k[first], np.add.reduceat(c, first)


def _count(path: Path, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct hashes among the first ``n_rows`` of a raw column file, with their counts (missing left out)."""
    keys, counts = np.empty(0, np.int64), np.empty(0, np.int64)
    with open(path, "rb") as f:
        left = n_rows
        while left:
            x = np.fromfile(f, dtype=np.int64, count=min(COUNT_ROWS, left))
            if not len(x):
                raise DataError(f"criteo: the build's column file {path} is shorter than its {n_rows} rows")
            left -= len(x)
            k, c = np.unique(x[x >= 0], return_counts=True)
            keys, counts = _merge_counts(keys, counts, k, c.astype(np.int64))
    return keys, counts


def _npy_writer(path: Path, dtype, shape: tuple[int, ...]):
    f = open(path, "wb")
    np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape})
    return f


def _sync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # directories cannot be fsync'd everywhere
        pass
    finally:
        os.close(fd)


def _split_rows(rows_per_file: list[int]) -> tuple[str, dict[str, list[int]]]:
    n = sum(rows_per_file)
    if len(rows_per_file) == 1:
        rule = "one file: 7 equal contiguous days; days 1-6 train, day 7 halved into val, test"
        a = 6 * n // 7
    else:
        rule = "day files: all but the last train, the last halved into val, test"
        a = n - rows_per_file[-1]
    b = a + (n - a) // 2
    return rule, {"train": [0, a], "val": [a, b], "test": [b, n]}


def _build(files: list[Path], tmp: Path, ident: dict, on_error: str, max_rows: int | None, chunk_bytes: int, progress: bool) -> None:
    """Write a complete cache into ``tmp`` (``meta.json`` last)."""
    t0 = time.perf_counter()
    scan = _scan_files(files, tmp, on_error, max_rows, chunk_bytes, progress)
    n = sum(scan.rows_per_file)
    rule, splits = _split_rows(scan.rows_per_file)
    empty = [name for name, (a, b) in splits.items() if b <= a]
    if empty:
        per_file = ", ".join(f"{p}: {r}" for p, r in zip(files, scan.rows_per_file))
        raise DataError(f"criteo: the {'/'.join(empty)} part(s) would be empty ({n} rows kept; {per_file}; "
                        f"{scan.malformed} malformed line(s) left out); split rule: {rule}")
    if scan.malformed:
        log.warning("criteo: skipped %d malformed line(s); first: %s", scan.malformed, "; ".join(scan.reports[:3]))

    n_train = splits["train"][1]
    vocab, lookup = {}, []
    for c in CATEGORICAL:
        keys, counts = _count(tmp / f"{c}.bin", n_train)
        kept = counts >= ident["min_count"]
        keys, counts = keys[kept], counts[kept]
        order = np.lexsort((keys, -counts))  # most frequent first, then smaller hash
        vocab[c], vocab[f"{c}_count"] = keys[order], counts[order]
        lookup.append(pd.Index(keys[order]))  # hash -> position = id - 1
    np.savez(tmp / "vocab.npz", **vocab)
    _sync(tmp / "vocab.npz")

    raw = [open(tmp / f"{c}.bin", "rb") for c in CATEGORICAL]
    src = {"label": open(tmp / "label.bin", "rb"), "dense": open(tmp / "dense.bin", "rb")}
    out = {"label": _npy_writer(tmp / "label.npy", np.float32, (n,)),
           "dense": _npy_writer(tmp / "dense.npy", np.float32, (n, N_DENSE)),
           "categorical": _npy_writer(tmp / "categorical.npy", np.int64, (n, N_CAT))}
    try:
        done = 0
        while done < n:
            r = min(ENCODE_ROWS, n - done)
            np.fromfile(src["label"], np.float32, count=r).tofile(out["label"])
            np.fromfile(src["dense"], np.float32, count=r * N_DENSE).tofile(out["dense"])
            cat = np.empty((r, N_CAT), np.int64)
            for j in range(N_CAT):
                cat[:, j] = lookup[j].get_indexer(np.fromfile(raw[j], np.int64, count=r)) + 1  # unknown/missing -> 0
            cat.tofile(out["categorical"])
            done += r
        for f in out.values():
            f.flush()
            os.fsync(f.fileno())
    finally:
        for f in [*raw, *src.values(), *out.values()]:
            f.close()
    for c in ["label", "dense", *CATEGORICAL]:
        (tmp / f"{c}.bin").unlink()

    meta = {
        "source": "criteo",
        "format_version": FORMAT_VERSION,
        "key": ident["key"],
        "complete": True,
        "files": [dict(f, rows=r, lines=ln) for f, r, ln in zip(ident["files"], scan.rows_per_file, scan.lines_per_file)],
        "min_count": ident["min_count"],
        "max_rows": ident["max_rows"],
        "rows": n,
        "split_rule": rule,
        "splits": splits,
        "vocab_sizes": {c: len(lookup[j]) + 1 for j, c in enumerate(CATEGORICAL)},
        "malformed": {"count": scan.malformed, "lines": scan.reports},
        "blank_lines": scan.blank,
        "dense_missing": dict(zip(DENSE, scan.dense_missing.tolist())),
        "dense_clipped": dict(zip(DENSE, scan.dense_clipped.tolist())),
        "categorical_missing": dict(zip(CATEGORICAL, scan.categorical_missing.tolist())),
        "build_seconds": round(time.perf_counter() - t0, 3),
    }
    _write_meta(tmp / "meta.json", meta)


def _write_meta(path: Path, meta: dict) -> None:
    write_json_atomic(path, meta)


# ---------------------------------------------------------------------------------------------
# the cache
# ---------------------------------------------------------------------------------------------
def default_cache_dir() -> Path:
    """``$DCNX_DATA/criteo-cache`` if ``DCNX_DATA`` is set, else the project's ``data/criteo-cache`` (git-ignored)."""
    from .download import PROJECT_ROOT

    root = os.environ.get("DCNX_DATA")
    return (Path(root) if root else PROJECT_ROOT / "data") / "criteo-cache"


def _as_paths(paths) -> list[Path]:
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    try:
        files = [Path(p) for p in paths]
    except TypeError as e:
        raise ConfigError(f"paths must be a path or a list of paths, got {paths!r}") from e
    if not files:
        raise ConfigError("paths is empty; give the Kaggle train.txt or the day files")
    for p in files:
        if not p.is_file():
            raise DataError(f"criteo: no such file {p}")
    days = [_DAY.search(p.name) for p in files]
    if len(files) > 1 and all(days):
        nums = [int(d.group(1)) for d in days]
        if any(b <= a for a, b in zip(nums, nums[1:])):
            raise ConfigError(f"criteo: day files must come in increasing day order (the last one is halved into val/test); "
                              f"got {[p.name for p in files]}")
    return files


def _identity(files: list[Path], min_count: int, max_rows: int | None) -> dict:
    entries = []
    for p in files:
        st = p.stat()
        entries.append({"path": str(p.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    ident = {"format_version": FORMAT_VERSION, "files": entries, "min_count": min_count, "max_rows": max_rows}
    ident["key"] = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
    return ident


def _open(folder: Path, key: str) -> tuple[dict, dict[str, np.ndarray]] | None:
    """The meta and copy-on-write memmaps of a complete cache, or ``None`` if it is absent or not trusted."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
        if meta.get("format_version") != FORMAT_VERSION or meta.get("key") != key or meta.get("complete") is not True:
            return None
        n = int(meta["rows"])
        want = {"label": ((n,), np.float32), "dense": ((n, N_DENSE), np.float32), "categorical": ((n, N_CAT), np.int64)}
        arrays = {}
        for name, (shape, dtype) in want.items():
            a = np.load(folder / f"{name}.npy", mmap_mode="c")
            if a.shape != shape or a.dtype != dtype:
                return None
            arrays[name] = a
        return meta, arrays
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _host_tag() -> str:
    return re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32] or "host"


def _remove_stale(cache_dir: Path) -> None:
    """Delete temporary build folders left by dead processes of this host."""
    pat = re.compile(rf"^\.criteo-[0-9a-f]+\.tmp-{_host_tag()}-(\d+)-")
    for d in cache_dir.glob(".criteo-*.tmp-*"):
        m = pat.match(d.name)
        if not m or not d.is_dir():
            continue
        try:
            os.kill(int(m.group(1)), 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except (PermissionError, OverflowError, OSError):
            continue


def _build_cache(files, folder: Path, ident: dict, on_error: str, max_rows, chunk_bytes: int, progress: bool) -> None:
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-{_host_tag()}-{os.getpid()}-", dir=folder.parent))
    except OSError as e:
        raise ConfigError(f"criteo: cannot write a cache in {folder.parent} ({e}); pass a writable cache_dir") from e
    _remove_stale(folder.parent)
    try:
        _build(files, tmp, ident, on_error, max_rows, chunk_bytes, progress)
        os.chmod(tmp, 0o755)  # mkdtemp made it private
        _sync(tmp)
        if folder.exists():  # an untrusted cache of the same key (e.g. edited by hand): replace it
            trash = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old-", dir=folder.parent))
            try:
                os.replace(folder, trash / "old")
            except OSError:
                pass
            shutil.rmtree(trash, ignore_errors=True)
        try:
            os.rename(tmp, folder)
        except OSError:
            if _open(folder, ident["key"]) is None:  # not another process's complete build
                raise
        _sync(folder.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------------------------
def _check_options(min_count, on_error, max_rows, chunk_bytes) -> None:
    if isinstance(min_count, bool) or not isinstance(min_count, (int, np.integer)) or min_count < 1:
        raise ConfigError(f"min_count must be an integer >= 1, got {min_count!r}")
    if on_error not in ON_ERROR:
        raise ConfigError(f"on_error={on_error!r}; allowed: {', '.join(ON_ERROR)}")
    if max_rows is not None and (isinstance(max_rows, bool) or not isinstance(max_rows, (int, np.integer)) or max_rows < 1):
        raise ConfigError(f"max_rows must be None or an integer >= 1, got {max_rows!r}")
    if isinstance(chunk_bytes, bool) or not isinstance(chunk_bytes, int) or chunk_bytes < 1:
        raise ConfigError(f"chunk_bytes must be an integer >= 1, got {chunk_bytes!r}")


def _schema(vocab_sizes: Mapping[str, int], embedding_dim) -> Schema:
    """I1..I13 (dense, width 1), then C1..C26 (categorical) with the given vocabulary sizes."""
    feats = [FeatureSpec(c, "dense") for c in DENSE]
    feats += [FeatureSpec(c, "categorical", vocab_size=int(vocab_sizes[c])) for c in CATEGORICAL]
    return Schema(feats).with_embedding_dims(embedding_dim)


def criteo_dataset(
    paths: str | os.PathLike | Sequence[str | os.PathLike],
    cache_dir: str | os.PathLike | None = None,
    min_count: int = 10,
    on_error: str = "raise",
    max_rows: int | None = None,
    embedding_dim: int | str | Mapping[str, int] = "auto",
    progress: bool = False,
    chunk_bytes: int = CHUNK_BYTES,
) -> TabularData:
    """All kept rows, in file order, as one memory-mapped :class:`TabularData`.

    ``meta["splits"]`` holds the day split as ``{"train": [start, stop], ...}``
    row ranges (see :func:`split_by_day`); the other ``meta`` keys are described in
    the module docstring. Arguments as for :func:`criteo`.
    """
    _check_options(min_count, on_error, max_rows, chunk_bytes)
    _schema(dict.fromkeys(CATEGORICAL, 1), embedding_dim)  # a bad embedding_dim fails before any work
    files = _as_paths(paths)
    min_count, max_rows = int(min_count), (None if max_rows is None else int(max_rows))
    ident = _identity(files, min_count, max_rows)
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    folder = folder / f"criteo-{ident['key']}"
    t0 = time.perf_counter()
    opened = _open(folder, ident["key"])
    built = opened is None
    if built:
        _build_cache(files, folder, ident, on_error, max_rows, chunk_bytes, progress)
        opened = _open(folder, ident["key"])
        if opened is None:
            raise DataError(f"criteo: the cache just built at {folder} cannot be read back")
    meta, arrays = opened
    bad = meta["malformed"]
    if bad["count"]:
        if on_error == "raise":
            raise DataError(f"{bad['lines'][0]} ({bad['count']} malformed line(s) in all; on_error='skip' leaves them out)")
        if not built:
            log.warning("criteo: %d malformed line(s) were skipped when the cache was built; first: %s",
                        bad["count"], "; ".join(bad["lines"][:3]))
    meta["cache"] = {"dir": str(folder), "built": built, "seconds": round(time.perf_counter() - t0, 3)}
    return TabularData(
        _schema(meta["vocab_sizes"], embedding_dim),
        categorical=torch.from_numpy(arrays["categorical"]),
        dense=torch.from_numpy(arrays["dense"]),
        label=torch.from_numpy(arrays["label"]),
        task="binary",
        name="criteo",
        meta=meta,
        validate=False,  # every value was checked by the build; a full scan would read the whole cache
    )


def split_by_day(data: TabularData) -> tuple[TabularData, TabularData, TabularData]:
    """``(train, val, test)`` views (no copy) of :func:`criteo_dataset`'s rows, by ``meta["splits"]``."""
    if "splits" not in data.meta:
        raise ConfigError(f"{data.name}: no meta['splits']; split_by_day takes what criteo_dataset returns")
    parts = []
    for name in ("train", "val", "test"):
        a, b = data.meta["splits"][name]
        meta = dict(data.meta, split=name)
        parts.append(TabularData(data.schema, data.categorical[a:b], data.multivalent[a:b], data.dense[a:b], data.label[a:b],
                                 task=data.task, name=f"{data.name}/{name}", meta=meta, validate=False))
    return tuple(parts)


def criteo(
    paths: str | os.PathLike | Sequence[str | os.PathLike],
    cache_dir: str | os.PathLike | None = None,
    min_count: int = 10,
    on_error: str = "raise",
    max_rows: int | None = None,
    embedding_dim: int | str | Mapping[str, int] = "auto",
    progress: bool = False,
    chunk_bytes: int = CHUNK_BYTES,
) -> tuple[TabularData, TabularData, TabularData]:
    """Criteo ``(train, val, test)`` under the paper's day split (Sec. 7.1), built once into a memmap cache.

    ``paths``: the Kaggle ``train.txt``, or a list of day files in day order
    (``.gz`` accepted). ``cache_dir``: where ``criteo-<key>/`` goes (default
    :func:`default_cache_dir`). ``min_count``: training-row count a value needs
    for its own id. ``on_error``: ``"raise"`` or ``"skip"`` for malformed lines.
    ``max_rows``: keep only the first ``max_rows`` good rows *of each file* (so
    day files keep their day structure; the same as a total for one file).
    ``embedding_dim``: ``"auto"`` (the paper's ``round(6 * vocab**0.25)`` per
    feature), an int, or ``{feature: width}``. ``progress``: a tqdm bar while parsing.

    Shapes: ``categorical`` ``(n, 26)`` int64 (C1..C26), ``dense`` ``(n, 13)``
    float32 (I1..I13, log-transformed), ``label`` ``(n,)`` float32; the tensors
    share memory with the cache files (copy-on-write).
    """
    return split_by_day(criteo_dataset(paths, cache_dir, min_count, on_error, max_rows, embedding_dim, progress, chunk_bytes))


def criteo_vocabulary(data: TabularData, feature: str) -> list[str]:
    """The hashes (8 hex digits) of ``feature``'s ids 1, 2, … (id 0, OOV/missing, is not listed)."""
    if feature not in CATEGORICAL:
        raise ConfigError(f"feature {feature!r} is not a Criteo categorical feature; use one of C1..C26")
    try:
        folder = Path(data.meta["cache"]["dir"])
    except (KeyError, TypeError) as e:
        raise ConfigError(f"{data.name}: not loaded by dcn_explore.data.criteo (no meta['cache'])") from e
    with np.load(folder / "vocab.npz") as z:
        return [f"{int(k):08x}" for k in z[feature]]


# ---------------------------------------------------------------------------------------------
# a generated file in the exact format (tests, docs, benchmarks)
# ---------------------------------------------------------------------------------------------
MALFORMED_KINDS = ("columns", "integer", "label", "hex")


@dataclass(frozen=True)
class CriteoSample:
    """A file written by :func:`write_criteo_sample`: its path, line count, and the malformed lines (number -> kind)."""

    path: Path
    n_lines: int
    malformed: dict[int, str]


def _join_lines(cols: list[np.ndarray]) -> bytes:
    """Byte-string columns (``S`` dtype, equal lengths) joined with tabs, one ``\n``-ended line a row.

    >>> _join_lines([np.array([b"1", b""]), np.array([b"ab", b"c"])])
    b'1\\tab\\n\\tc\\n'
    """
    n = len(cols[0])
    lens = np.stack([np.strings.str_len(c) for c in cols], axis=1).astype(np.int64)  # (n, fields)
    ends = np.cumsum(lens + 1, axis=1)  # each field and the separator after it
    line_start = np.zeros(n, np.int64)
    line_start[1:] = np.cumsum(ends[:, -1])[:-1]
    field_start = line_start[:, None] + ends - lens - 1
    out = np.full(int(ends[:, -1].sum()), 9, np.uint8)
    out[line_start + ends[:, -1] - 1] = 10
    for j, c in enumerate(cols):
        w = c.dtype.itemsize
        if w:
            inside = np.arange(w) < lens[:, j, None]
            out[(field_start[:, j, None] + np.arange(w))[inside]] = c.view(np.uint8).reshape(n, w)[inside]
    return out.tobytes()


def write_criteo_sample(
    path: str | os.PathLike,
    n_rows: int = 1000,
    seed: int = 0,
    malformed: int = 0,
    missing: float = 0.05,
    block_rows: int = 500_000,
) -> CriteoSample:
    """Write ``n_rows`` lines in the Criteo format, ``malformed`` of them broken (kinds cycle through
    ``MALFORMED_KINDS``: an extra field, ``I3 = 'x7'``, label ``2``, ``C5 = 'zz'``), each
    field missing with probability ``missing``.

    Categories follow skewed per-feature distributions over fixed random hashes
    (cardinalities 3 to 20000, so ``min_count`` matters); integers are
    log-normal, ``I2`` reaching down to -3; the label's log-odds depend on a
    planted cross of ``C1`` and ``C2`` and on ``I1``. A ``.gz`` name writes gzip.
    """
    if not isinstance(n_rows, int) or n_rows < 1:
        raise ConfigError(f"n_rows must be an integer >= 1, got {n_rows!r}")
    if not isinstance(malformed, int) or not 0 <= malformed <= n_rows:
        raise ConfigError(f"malformed must be an integer in [0, n_rows={n_rows}], got {malformed!r}")
    if not 0.0 <= float(missing) < 1.0:
        raise ConfigError(f"missing must be a probability in [0, 1), got {missing!r}")
    path = Path(path)
    rng = np.random.default_rng(seed)
    cards = [20000 if j % 7 == 2 else int(c) for j, c in enumerate(np.geomspace(3, 5000, N_CAT).round()[rng.permutation(N_CAT)])]
    tables = [np.array([b"%08x" % int(k) for k in rng.choice(1 << 32, size=c, replace=False)]) for c in cards]
    mu = rng.uniform(0.5, 4.0, N_DENSE)
    bad_lines = np.sort(rng.choice(n_rows, size=malformed, replace=False)) + 1
    bad = {int(ln): MALFORMED_KINDS[i % len(MALFORMED_KINDS)] for i, ln in enumerate(bad_lines)}
    opener = gzip.open if path.suffix == ".gz" else open
    path.parent.mkdir(parents=True, exist_ok=True)
    with opener(path, "wb") as f:
        for start in range(0, n_rows, block_rows):
            r = min(block_rows, n_rows - start)
            idx = [np.minimum((c * rng.random(r) ** 3).astype(np.int64), c - 1) for c in cards]
            ints = np.floor(np.exp(rng.normal(mu, 1.5, (r, N_DENSE)))).astype(np.int64)
            ints[:, 1] -= 4 * (rng.random(r) < 0.1)  # I2 goes down to -3
            ints[:, 1] = np.maximum(ints[:, 1], -3)
            logit = -1.2 + 1.5 * ((idx[0] + idx[1]) % 2 == 0) - 0.8 * (idx[0] == 0) + 0.25 * np.log1p(np.maximum(ints[:, 0], 0))
            label = (rng.random(r) < 1 / (1 + np.exp(-logit))).astype(np.int64)
            cols = [label.astype("S1")]
            width = max(len(str(int(ints.max()))), len(str(int(ints.min()))))
            cols += [np.where(rng.random(r) < missing, b"", ints[:, j].astype(f"S{width}")) for j in range(N_DENSE)]
            cols += [np.where(rng.random(r) < missing, b"", tables[j][idx[j]]) for j in range(N_CAT)]
            for ln in bad_lines[(bad_lines > start) & (bad_lines <= start + r)]:
                i, kind = int(ln) - 1 - start, bad[int(ln)]
                if kind == "columns":
                    cols[-1] = cols[-1].astype("S20")
                    cols[-1][i] = cols[-1][i] + b"\t1"
                elif kind == "integer":
                    cols[3][i] = b"x7"
                elif kind == "label":
                    cols[0][i] = b"2"
                else:
                    cols[1 + N_DENSE + 4] = cols[1 + N_DENSE + 4].astype("S8")
                    cols[1 + N_DENSE + 4][i] = b"zz"
            f.write(_join_lines(cols))
    return CriteoSample(path, n_rows, bad)
