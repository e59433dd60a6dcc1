"""Criteo loader (dcn_explore.data.criteo) on small generated files: parsing, vocabularies, the log
transform, the day split, malformed lines, the memmap cache (reuse, atomicity, no copy)."""

from __future__ import annotations

import importlib
import json
import logging
import math
import os
import re
import signal
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from dcn_explore.errors import ConfigError, DataError
from dcn_explore.schema import auto_embedding_dim

cm = importlib.import_module("dcn_explore.data.criteo")  # the module (dx.data.criteo is the loader function)

GOOD_INTS = ["1"] * 13
GOOD_CATS = ["01234567"] * 26


def _line(label="0", ints=None, cats=None, **fields) -> str:
    """One line in the format; ``I3="x"`` / ``C5="y"`` override single fields."""
    ints, cats = list(ints or GOOD_INTS), list(cats or GOOD_CATS)
    for name, v in fields.items():
        (ints if name[0] == "I" else cats)[int(name[1:]) - 1] = v
    return "\t".join([label, *ints, *cats])


# A hand-checked file of 14 rows: rows 1-12 train (6 * 14 // 7), row 13 val, row 14 test.
HAND = [
    _line("1", I1="", I2="-3", C1="aaaaaaaa", C2="00000001"),
    _line("0", I1="0", I2="", I13="00042", C1="aaaaaaaa", C2="0000000f"),
    _line("1", I1="5", I2="0", C1="AAAAAAAA", C2="00000001"),  # upper-case hex is the same value
    _line("0", I1="-1", I2="-4", C1="bbbbbbbb", C2="0000000f"),  # both below the log's domain
    _line("0", I1="123456789012", I2="12", C1="", C2="00000001"),  # 12 digits; C1 missing
    _line("0", C1="bbbbbbbb", C2="0000000F"),
    _line("0", C1="cccccccc", C2="00000001"),
    _line("0", C1="", C2="0000000f"),
    _line("0", C1="aaaaaaaa", C2=""),
    _line("0", C1="bbbbbbbb", C2=""),
    _line("0", C1="aaaaaaaa", C2="deadbeef"),
    _line("0", C1="", C2="deadbeef"),
    _line("1", C1="cccccccc", C2="00000001"),  # val
    _line("0", C1="dddddddd", C2="0000000f"),  # test: a value never seen in training
]


def _write_hand(path: Path, lines=HAND, crlf_line: int | None = 12, final_newline: bool = False) -> Path:
    parts = []
    for i, ln in enumerate(lines, start=1):
        parts.append(ln + ("\r\n" if i == crlf_line else "\n"))
    text = "".join(parts)
    path.write_text(text if final_newline else text[:-1], newline="")
    return path


@pytest.fixture
def hand(tmp_path) -> Path:
    return _write_hand(tmp_path / "train.txt")


def _no_caches(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


# -- parsing and encoding ------------------------------------------------------------------------
def test_hand_checked_file_is_parsed_and_encoded_exactly(hand, tmp_path):
    ds = cm.criteo_dataset(hand, cache_dir=tmp_path / "cache", min_count=2)
    assert len(ds) == 14 and ds.meta["rows"] == 14
    assert ds.schema.names == [f"I{i}" for i in range(1, 14)] + [f"C{i}" for i in range(1, 27)]
    assert ds.label.tolist() == [1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]
    # C1, training counts: aaaaaaaa 5 (one written AAAAAAAA), bbbbbbbb 3, cccccccc 1 (< min_count), missing 3
    assert ds.categorical[:, 0].tolist() == [1, 1, 1, 2, 0, 2, 0, 0, 1, 2, 1, 0, 0, 0]
    # C2: 00000001 and 0000000f tie at 4 -> the smaller hash gets id 1; deadbeef 2; missing -> 0
    assert ds.categorical[:, 1].tolist() == [1, 2, 1, 2, 1, 2, 1, 2, 0, 0, 3, 3, 1, 2]
    assert ds.categorical[:, 2:].unique().tolist() == [1]
    assert ds.meta["vocab_sizes"]["C1"] == 3 and ds.meta["vocab_sizes"]["C2"] == 4 and ds.meta["vocab_sizes"]["C3"] == 2
    assert [ds.schema[c].vocab_size for c in ("C1", "C2", "C3")] == [3, 4, 2]
    assert cm.criteo_vocabulary(ds, "C2") == ["00000001", "0000000f", "deadbeef"]
    assert ds.meta["categorical_missing"]["C1"] == 3 and ds.meta["categorical_missing"]["C2"] == 2
    assert ds.meta["categorical_missing"]["C3"] == 0


def test_integer_and_hex_fields_parse_exactly():
    ints = ["-123456789012", "-12345678", "99999999", "000000000000000001", "-0", "7", "", "123456789", "-1", "0", "10", "-99999999", "1"]
    cats = ["ffffffff", "00000000", "DEADBEEF", ""] + ["0000000a"] * 22
    text = (_line("1", ints=ints, cats=cats) + "\n").encode()
    b = cm._parse_block(text, 1, "x", 5)
    assert b.ints[0].tolist() == [-123456789012, -12345678, 99999999, 1, 0, 7, 0, 123456789, -1, 0, 10, -99999999, 1]
    assert b.int_missing[0].tolist() == [False] * 6 + [True] + [False] * 6
    assert b.keys[:5, 0].tolist() == [0xFFFFFFFF, 0, 0xDEADBEEF, -1, 10]
    assert b.label.tolist() == [1.0] and b.lines.tolist() == [1] and len(b.bad_lines) == 0


def test_a_block_without_a_good_line():
    b = cm._parse_block(b"1\t2\n\n\r\n" + (_line("5") + "\n").encode(), 10, "f.txt", 5)
    assert len(b.label) == 0 and b.keys.shape == (26, 0) and b.ints.shape == (0, 13)
    assert b.bad_lines.tolist() == [10, 13] and b.blank_lines.tolist() == [11, 12]
    assert b.reasons == ["f.txt, line 10: expected 40 tab-separated fields (label, I1..I13, C1..C26), found 2: '1\\t2'",
                         "f.txt, line 13: label = '5', expected 0 or 1"]


def test_log_transform_missing_and_out_of_domain_values(hand, tmp_path):
    ds = cm.criteo_dataset(hand, cache_dir=tmp_path / "cache", min_count=2)
    d = ds.dense.double()
    f32 = lambda x: float(np.float32(x))  # noqa: E731
    # I1 = log(x + 1): missing -> 0, 0 -> 0, 5 -> log 6, -1 (below the domain) -> clamped to 0, 12 digits
    assert d[:5, 0].tolist() == [0.0, 0.0, f32(math.log(6)), 0.0, f32(math.log(123456789013))]
    # I2 = log(x + 4): -3 -> 0, missing -> 0, 0 -> log 4, -4 (below) -> 0, 12 -> log 16, 1 -> log 5
    assert d[:6, 1].tolist() == [0.0, 0.0, f32(math.log(4)), 0.0, f32(math.log(16)), f32(math.log(5))]
    assert d[1, 12].item() == f32(math.log(43))  # "00042"
    assert d[6:, 2:].eq(f32(math.log(2))).all()
    assert ds.dense.dtype == torch.float32
    assert ds.meta["dense_missing"] == {**{f"I{i}": 0 for i in range(1, 14)}, "I1": 1, "I2": 1}
    assert ds.meta["dense_clipped"] == {**{f"I{i}": 0 for i in range(1, 14)}, "I1": 1, "I2": 1}


def test_min_count_threshold(hand, tmp_path):
    one = cm.criteo_dataset(hand, cache_dir=tmp_path / "cache", min_count=1)
    assert one.categorical[:, 0].tolist() == [1, 1, 1, 2, 0, 2, 3, 0, 1, 2, 1, 0, 3, 0]  # cccccccc kept; dddddddd unseen
    assert one.meta["vocab_sizes"]["C1"] == 4
    four = cm.criteo_dataset(hand, cache_dir=tmp_path / "cache", min_count=4)
    assert four.categorical[:, 0].tolist() == [1, 1, 1, 0, 0, 0, 0, 0, 1, 0, 1, 0, 0, 0]
    assert four.categorical[:, 1].tolist() == [1, 2, 1, 2, 1, 2, 1, 2, 0, 0, 0, 0, 1, 2]
    huge = cm.criteo_dataset(hand, cache_dir=tmp_path / "cache", min_count=1000)
    assert huge.categorical.eq(0).all() and set(huge.meta["vocab_sizes"].values()) == {1}


def test_vocabulary_counts_training_rows_only(tmp_path):
    # a value frequent in val/test only must not get an id
    lines = [_line(C1="11111111")] * 12 + [_line(C1="22222222")] * 8
    path = tmp_path / "t.txt"
    path.write_text("\n".join(lines) + "\n")  # 20 rows: 17 train, val 1, test 2
    train, val, test = cm.criteo(path, cache_dir=tmp_path / "cache", min_count=1)
    assert (len(train), len(val), len(test)) == (17, 1, 2)
    assert train.schema["C1"].vocab_size == 3  # 11111111 and the 5 training rows of 22222222
    ds = cm.criteo_dataset(path, cache_dir=tmp_path / "cache", min_count=6)
    assert ds.categorical[:, 0].tolist() == [1] * 12 + [0] * 8  # 22222222 has 5 < 6 training rows


def test_schema_names_and_embedding_widths(hand, tmp_path):
    train, val, test = cm.criteo(hand, cache_dir=tmp_path / "cache", min_count=2)
    assert train.schema is val.schema is test.schema
    assert [f.kind for f in train.schema][:13] == ["dense"] * 13 and [f.kind for f in train.schema][13:] == ["categorical"] * 26
    assert train.schema["C2"].embedding_dim == auto_embedding_dim(4)
    wide = cm.criteo(hand, cache_dir=tmp_path / "cache", min_count=2, embedding_dim=8)[0]
    assert {wide.schema[c].embedding_dim for c in cm.CATEGORICAL} == {8} and wide.schema["I1"].embedding_dim == 1
    some = cm.criteo(hand, cache_dir=tmp_path / "cache", min_count=2, embedding_dim={"C1": 3})[0]
    assert some.schema["C1"].embedding_dim == 3 and some.schema["C2"].embedding_dim == auto_embedding_dim(4)
    assert not wide.meta["cache"]["built"]  # widths are applied on load, not part of the cache key


def test_model_runs_on_a_batch(hand, tmp_path):
    import dcn_explore as dx

    train, _, _ = cm.criteo(hand, cache_dir=tmp_path / "cache", min_count=2)
    model = dx.DCNv2(train.schema, dx.DCNConfig(cross_layers=1, deep_layers=(8,)))
    out = model(*train.batch(slice(0, 5)).inputs())
    assert out.shape[0] == 5 and torch.isfinite(out).all()


def test_block_boundaries_do_not_matter(tmp_path):
    sample = cm.write_criteo_sample(tmp_path / "s.txt", n_rows=300, seed=1, malformed=6)
    big = cm.criteo_dataset(sample.path, cache_dir=tmp_path / "a", min_count=2, on_error="skip")
    tiny = cm.criteo_dataset(sample.path, cache_dir=tmp_path / "b", min_count=2, on_error="skip", chunk_bytes=97)
    for name in ("categorical", "dense", "label"):
        assert torch.equal(getattr(big, name), getattr(tiny, name)), name
    assert big.meta["malformed"] == tiny.meta["malformed"]
    assert big.meta["malformed"]["count"] == 6


def test_gzip_input_reads_like_plain_text(tmp_path):
    plain = cm.write_criteo_sample(tmp_path / "day_0", n_rows=140, seed=3)
    gz = cm.write_criteo_sample(tmp_path / "day_0.gz", n_rows=140, seed=3)
    a = cm.criteo_dataset(plain.path, cache_dir=tmp_path / "cache", min_count=1)
    b = cm.criteo_dataset(gz.path, cache_dir=tmp_path / "cache", min_count=1)
    assert a.meta["key"] != b.meta["key"]
    assert torch.equal(a.categorical, b.categorical) and torch.equal(a.dense, b.dense) and torch.equal(a.label, b.label)


def test_blank_lines_are_ignored_and_counted_with_line_numbers_kept(tmp_path):
    lines = HAND[:2] + [""] + HAND[2:] + [""]
    path = tmp_path / "blank.txt"
    path.write_text("\n".join(lines[:5]) + "\n" + _line("7") + "\n" + "\n".join(lines[5:]) + "\n")
    with pytest.raises(DataError, match=r"blank\.txt, line 6: label = '7'"):
        cm.criteo(path, cache_dir=tmp_path / "cache")
    ds = cm.criteo_dataset(path, cache_dir=tmp_path / "cache", on_error="skip", min_count=2)
    assert len(ds) == 14 and ds.meta["blank_lines"] == 2 and ds.meta["malformed"]["count"] == 1


# -- the day split ---------------------------------------------------------------------------------
@pytest.mark.parametrize("n, sizes", [(14, (12, 1, 1)), (703, (602, 50, 51)), (700, (600, 50, 50))])
def test_one_file_is_seven_days(tmp_path, n, sizes):
    sample = cm.write_criteo_sample(tmp_path / "train.txt", n_rows=n, seed=n)
    train, val, test = cm.criteo(sample.path, cache_dir=tmp_path / "cache", min_count=1)
    assert (len(train), len(val), len(test)) == sizes
    # contiguous, in file order: the labels are the file's first column
    labels = [int(ln.split("\t", 1)[0]) for ln in sample.path.read_text().splitlines()]
    assert torch.cat([train.label, val.label, test.label]).tolist() == labels
    assert train.meta["splits"] == {"train": [0, sizes[0]], "val": [sizes[0], sizes[0] + sizes[1]], "test": [sizes[0] + sizes[1], n]}
    assert (train.name, val.name, test.name) == ("criteo/train", "criteo/val", "criteo/test")


def test_day_files_last_one_halved(tmp_path):
    days = [cm.write_criteo_sample(tmp_path / f"day_{d}", n_rows=n, seed=d).path for d, n in [(0, 30), (1, 40), (2, 21)]]
    train, val, test = cm.criteo(days, cache_dir=tmp_path / "cache", min_count=1)
    assert (len(train), len(val), len(test)) == (70, 10, 11)
    assert [f["rows"] for f in train.meta["files"]] == [30, 40, 21]
    last = [int(ln.split("\t", 1)[0]) for ln in days[2].read_text().splitlines()]
    assert torch.cat([val.label, test.label]).tolist() == last
    # max_rows is per file, so every day keeps its place
    small = cm.criteo(days, cache_dir=tmp_path / "cache", min_count=1, max_rows=8)
    assert [len(p) for p in small] == [16, 4, 4]
    assert [f["rows"] for f in small[0].meta["files"]] == [8, 8, 8]
    with pytest.raises(ConfigError, match="increasing day order"):
        cm.criteo([days[1], days[0], days[2]], cache_dir=tmp_path / "cache")


def test_max_rows_on_one_file(hand, tmp_path):
    lines = HAND + [_line("9")] + HAND  # a malformed line after the rows kept is not read
    path = tmp_path / "long.txt"
    path.write_text("\n".join(lines) + "\n")
    train, val, test = cm.criteo(path, cache_dir=tmp_path / "cache", max_rows=14, min_count=2)
    assert (len(train), len(val), len(test)) == (12, 1, 1) and train.meta["files"][0]["lines"] == 14
    with pytest.raises(DataError, match="line 15"):
        cm.criteo(path, cache_dir=tmp_path / "cache", max_rows=15)


def test_too_few_rows_for_the_split(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text("\n".join(HAND[:5]) + "\n")
    with pytest.raises(DataError, match=r"val.* would be empty \(5 rows kept"):
        cm.criteo(path, cache_dir=tmp_path / "cache")
    assert not any(p.name.startswith("criteo-") for p in (tmp_path / "cache").iterdir())


# -- malformed lines -------------------------------------------------------------------------------
BAD = [
    ("1\t2\t3", r"expected 40 tab-separated fields \(label, I1..I13, C1..C26\), found 3"),
    (_line("0") + "\textra", r"expected 40 tab-separated fields .*found 41"),
    (_line("2"), r"label = '2', expected 0 or 1"),
    (_line(""), r"label = '', expected 0 or 1"),
    (_line("1", I3="1.5"), r"field I3 = '1.5' is not an integer \(expected an optional '-' and 1 to 18 digits"),
    (_line("1", I3="-"), r"field I3 = '-' is not an integer"),
    (_line("1", I3="12a"), r"field I3 = '12a' is not an integer"),
    (_line("1", I13="1234567890123456789"), r"field I13 = '1234567890123456789' is not an integer"),
    (_line("1", I1=" 7"), r"field I1 = ' 7' is not an integer"),
    (_line("1", C5="abc"), r"field C5 = 'abc' is not 8 hex digits \(expected e.g. '68fd1e64', or empty for missing\)"),
    (_line("1", C5="xyz12345"), r"field C5 = 'xyz12345' is not 8 hex digits"),
    (_line("1", C26="123456789"), r"field C26 = '123456789' is not 8 hex digits"),
]


@pytest.mark.parametrize("bad, message", BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_malformed_line_raise_and_skip(tmp_path, bad, message):
    path = tmp_path / "train.txt"
    path.write_text("\n".join(HAND[:2] + [bad] + HAND[2:]) + "\n")
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}, line 3: {message}"):
        cm.criteo(path, cache_dir=cache)
    assert not any(p.name.startswith("criteo-") for p in cache.iterdir())  # nothing trusted was left
    assert _no_caches(cache) == []  # and no temporary folder either
    ds = cm.criteo_dataset(path, cache_dir=cache, on_error="skip", min_count=2)
    assert len(ds) == 14 and ds.meta["malformed"]["count"] == 1
    assert ds.meta["malformed"]["lines"][0].startswith(f"{path}, line 3: ")
    assert ds.categorical[:, 0].tolist() == [1, 1, 1, 2, 0, 2, 0, 0, 1, 2, 1, 0, 0, 0]  # the same rows as without it


def test_malformed_lines_of_a_sample_reported_under_both_options(tmp_path, caplog):
    sample = cm.write_criteo_sample(tmp_path / "train.txt", n_rows=500, seed=2, malformed=8)
    expected = sorted(sample.malformed)
    with pytest.raises(DataError, match=rf"train\.txt, line {expected[0]}: .*on_error='skip'"):
        cm.criteo(sample.path, cache_dir=tmp_path / "cache")
    with caplog.at_level(logging.WARNING, logger="dcn_explore.data.criteo"):
        train, val, test = cm.criteo(sample.path, cache_dir=tmp_path / "cache", on_error="skip", min_count=1)
    assert "skipped 8 malformed line(s)" in caplog.text and f"line {expected[0]}:" in caplog.text
    report = train.meta["malformed"]
    assert report["count"] == 8 and len(train) + len(val) + len(test) == 492
    assert [int(s.split(", line ")[1].split(":")[0]) for s in report["lines"]] == expected
    kinds = {"columns": "tab-separated fields", "integer": "field I3 = 'x7'", "label": "label = '2'", "hex": "field C5 = 'zz'"}
    for line, text in zip(expected, report["lines"]):
        assert kinds[sample.malformed[line]] in text
    # the cache built with "skip" still refuses "raise", from the stored report, without re-parsing
    with pytest.raises(DataError, match=rf"line {expected[0]}: .*8 malformed line\(s\) in all"):
        cm.criteo(sample.path, cache_dir=tmp_path / "cache", min_count=1)


# -- the cache -------------------------------------------------------------------------------------
def test_second_call_reuses_the_cache_without_parsing(hand, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = cm.criteo(hand, cache_dir=cache, min_count=2)
    folder = Path(first[0].meta["cache"]["dir"])
    assert first[0].meta["cache"]["built"] and folder.parent == cache and folder.name.startswith("criteo-")
    stamp = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}

    def no_parsing(*a, **k):
        raise AssertionError("the cache was not reused")

    monkeypatch.setattr(cm, "_build", no_parsing)
    monkeypatch.setattr(cm, "_parse_block", no_parsing)
    second = cm.criteo(hand, cache_dir=cache, min_count=2, on_error="skip")
    assert not second[0].meta["cache"]["built"]
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == stamp
    for a, b in zip(first, second):
        assert torch.equal(a.categorical, b.categorical) and torch.equal(a.dense, b.dense) and torch.equal(a.label, b.label)
    # other options or a changed input make another key (and so would build)
    with pytest.raises(AssertionError, match="not reused"):
        cm.criteo(hand, cache_dir=cache, min_count=3)
    os.utime(hand, ns=(hand.stat().st_atime_ns, hand.stat().st_mtime_ns + 10**9))
    with pytest.raises(AssertionError, match="not reused"):
        cm.criteo(hand, cache_dir=cache, min_count=2)


def test_an_exception_during_the_build_leaves_nothing(hand, tmp_path, monkeypatch):
    cache = tmp_path / "cache"

    def boom(path, meta):
        raise RuntimeError("disk full")

    monkeypatch.setattr(cm, "_write_meta", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        cm.criteo(hand, cache_dir=cache)
    assert _no_caches(cache) == []
    monkeypatch.undo()
    assert cm.criteo(hand, cache_dir=cache, min_count=2)[0].meta["cache"]["built"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork to kill a build mid-way")
def test_a_killed_build_is_never_trusted(hand, tmp_path):
    cache = tmp_path / "cache"
    pid = os.fork()
    if pid == 0:  # child: die by SIGKILL just before the cache would be completed (no cleanup runs)
        try:
            cm._write_meta = lambda path, meta: os.kill(os.getpid(), signal.SIGKILL)
            cm.criteo(hand, cache_dir=cache, min_count=2)
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    left = _no_caches(cache)
    assert len(left) == 1 and left[0].startswith(".criteo-") and ".tmp-" in left[0]  # a half build, hidden
    assert (cache / left[0] / "categorical.npy").exists() and not (cache / left[0] / "meta.json").exists()
    train = cm.criteo(hand, cache_dir=cache, min_count=2)[0]
    assert train.meta["cache"]["built"]  # rebuilt, not read from the half build
    assert _no_caches(cache) == [Path(train.meta["cache"]["dir"]).name]  # and the dead build's folder was removed


def test_a_damaged_cache_is_rebuilt(hand, tmp_path):
    train = cm.criteo(hand, cache_dir=tmp_path / "cache", min_count=2)[0]
    folder = Path(train.meta["cache"]["dir"])
    del train
    with open(folder / "categorical.npy", "r+b") as f:
        f.truncate(200)
    again = cm.criteo(hand, cache_dir=tmp_path / "cache", min_count=2)[0]
    assert again.meta["cache"]["built"] and again.categorical[:, 0].tolist()[:12] == [1, 1, 1, 2, 0, 2, 0, 0, 1, 2, 1, 0]
    meta = json.loads((folder / "meta.json").read_text())
    meta["format_version"] = -1
    (folder / "meta.json").write_text(json.dumps(meta))
    assert cm.criteo(hand, cache_dir=tmp_path / "cache", min_count=2)[0].meta["cache"]["built"]


def _mapping_of(address: int) -> str | None:
    for row in Path("/proc/self/maps").read_text().splitlines():
        parts = row.split(maxsplit=5)
        lo, hi = (int(x, 16) for x in parts[0].split("-"))
        if lo <= address < hi:
            return parts[5] if len(parts) == 6 else ""
    return None


def test_tensors_are_views_of_the_cache_files(hand, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # in particular no "non-writable NumPy array" warning
        train, val, test = cm.criteo(hand, cache_dir=tmp_path / "cache", min_count=2)
        train, val, test = cm.criteo(hand, cache_dir=tmp_path / "cache", min_count=2)
    folder = Path(train.meta["cache"]["dir"])
    # one buffer for the three parts, not copies
    assert val.categorical.data_ptr() == train.categorical.data_ptr() + len(train) * 26 * 8
    assert test.dense.data_ptr() == val.dense.data_ptr() + len(val) * 13 * 4
    assert test.label.data_ptr() == train.label.data_ptr() + (len(train) + len(val)) * 4
    if Path("/proc/self/maps").exists():
        real = Path(os.path.realpath(folder))
        assert _mapping_of(train.categorical.data_ptr()) == str(real / "categorical.npy")
        assert _mapping_of(val.dense.data_ptr()) == str(real / "dense.npy")
        assert _mapping_of(test.label.data_ptr()) == str(real / "label.npy")
    # copy-on-write: an in-place change stays in this process, the file keeps its value
    train.categorical[0, 0] = 99
    assert int(train.categorical[0, 0]) == 99
    assert int(np.load(folder / "categorical.npy")[0, 0]) == 1
    assert int(cm.criteo(hand, cache_dir=tmp_path / "cache", min_count=2)[0].categorical[0, 0]) == 1


# -- arguments -------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, message", [
    ({"on_error": "ignore"}, r"on_error='ignore'; allowed: raise, skip"),
    ({"min_count": 0}, r"min_count must be an integer >= 1, got 0"),
    ({"max_rows": 0}, r"max_rows must be None or an integer >= 1, got 0"),
    ({"embedding_dim": "wide"}, r"embedding_dim must be 'auto', an int"),
])
def test_bad_arguments(hand, tmp_path, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        cm.criteo(hand, cache_dir=tmp_path / "cache", **kwargs)


def test_missing_or_no_input(tmp_path):
    with pytest.raises(DataError, match=r"no such file .*nope\.txt"):
        cm.criteo(tmp_path / "nope.txt", cache_dir=tmp_path / "cache")
    with pytest.raises(ConfigError, match="paths is empty"):
        cm.criteo([], cache_dir=tmp_path / "cache")


def test_sample_writer_format(tmp_path):
    sample = cm.write_criteo_sample(tmp_path / "s.txt", n_rows=50, seed=0, malformed=4, missing=0.2)
    lines = sample.path.read_text().splitlines()
    assert len(lines) == sample.n_lines == 50 and len(sample.malformed) == 4
    good = [ln.split("\t") for i, ln in enumerate(lines, 1) if i not in sample.malformed]
    assert {len(f) for f in good} == {40} and {f[0] for f in good} <= {"0", "1"}
    assert all(c == "" or (len(c) == 8 and int(c, 16) >= 0) for f in good for c in f[14:])
    assert any(c == "" for f in good for c in f[1:])
    assert [sample.malformed[k] for k in sorted(sample.malformed)] == ["columns", "integer", "label", "hex"]
