"""MovieLens under the paper's protocol (Sec. 7.1).

Ratings 1–2 -> label 0, 4–5 -> label 1, rating 3 dropped; the 6 non-multivalent
categorical features ``user_id, movie_id, gender, age, occupation, zip_code``
(``genres=True`` adds the multivalent ``genres`` feature, off in the paper).
MovieLens-100K ages are raw years; they are bucketed into MovieLens-1M's seven
age groups (1, 18, 25, 35, 45, 50, 56) so both variants share one schema.
Vocabularies cover the whole file, as in the paper's and the peers' pipelines;
split with ``ds.split((0.8, 0.1, 0.1), seed)`` for the random 80/10/10 split.

Files: 100K ``u.data`` (tab: user, item, rating, time), ``u.user``
(``id|age|gender|occupation|zip``), ``u.item`` (``id|title|...|19 genre flags``);
1M ``ratings.dat`` (``UserID::MovieID::Rating::Timestamp``), ``users.dat``
(``UserID::Gender::Age::Occupation::Zip-code``), ``movies.dat``
(``MovieID::Title::Genres`` with ``|``-separated genres, Latin-1).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import ConfigError, DataError
from .dataset import TabularData
from .download import locate, md5sum
from .frame import from_frame

FEATURES = ["user_id", "movie_id", "gender", "age", "occupation", "zip_code"]
AGE_BUCKETS_1M = (1, 18, 25, 35, 45, 50, 56)
GENRES_100K = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
               "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western"]
MD5_100K = {
    "u.data": "6e47046882bad158b0efbb84cd5cb987",
    "u.user": "1b53539edc13caad0282c8500608a319",
    "u.item": "c9e7f390115d79079537301d5204f3f7",
}


def _read(path: Path, names: list[str], sep: str, dtypes: dict | None = None, encoding: str = "utf-8") -> pd.DataFrame:
    """Read a separator-delimited file strictly: wrong field counts and non-integer ids name the file and line."""
    try:
        text = path.read_bytes().decode(encoding)
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot be read ({e})") from e
    if sep == "::":
        text, sep = text.replace("::", "\x1f"), "\x1f"
    lines = text.splitlines()
    for i, line in enumerate(lines, start=1):
        if line and line.count(sep) != len(names) - 1:
            raise DataError(f"{path}, line {i}: expected {len(names)} fields separated by {sep!r}, found {line.count(sep) + 1}: {line[:80]!r}")
    df = pd.read_csv(io.StringIO(text), sep=sep, header=None, names=names, dtype=str, keep_default_na=False,
                     quoting=3, engine="c", skip_blank_lines=True)
    for col, kind in (dtypes or {}).items():
        num = pd.to_numeric(df[col], errors="coerce")
        bad = num.isna() | (num != np.floor(num))
        if bad.any():
            pos = int(np.flatnonzero(bad.to_numpy())[0])
            raise DataError(f"{path}, line {pos + 1}: field {col!r} = {df[col].iloc[pos]!r} is not an integer")
        df[col] = num.astype(kind)
    return df


def _age_bucket(age: pd.Series) -> pd.Series:
    edges = np.array([18, 25, 35, 45, 50, 56])
    return pd.Series(np.array(AGE_BUCKETS_1M)[np.searchsorted(edges, age.to_numpy(), side="right")], index=age.index)


def load_frame(variant: str = "100k", root: str | os.PathLike | None = None, download: bool = True, verify: bool = True) -> pd.DataFrame:
    """The raw joined frame (one row per rating, all ratings kept) with columns
    ``rating, timestamp`` and ``FEATURES`` and ``genres`` (a ``|``-joined string)."""
    if variant == "100k":
        folder = locate("ml-100k", ["u.data", "u.user", "u.item"], root, download)
        if verify:
            for f, md5 in MD5_100K.items():
                got = md5sum(folder / f)
                if got != md5:
                    raise DataError(f"{folder / f}: MD5 {got} differs from the official file's {md5} (corrupt or modified copy)")
        r = _read(folder / "u.data", ["user_id", "movie_id", "rating", "timestamp"], "\t", {"user_id": int, "movie_id": int, "rating": int, "timestamp": int})
        u = _read(folder / "u.user", ["user_id", "age", "gender", "occupation", "zip_code"], "|", {"user_id": int, "age": int})
        u["age"] = _age_bucket(u["age"])
        item_cols = ["movie_id", "title", "release_date", "video_date", "url"] + GENRES_100K
        m = _read(folder / "u.item", item_cols, "|", {"movie_id": int}, encoding="latin-1")
        flags = m[GENRES_100K].to_numpy() == "1"
        m["genres"] = ["|".join(g for g, on in zip(GENRES_100K, row) if on) for row in flags]
        m = m[["movie_id", "genres"]]
    elif variant == "1m":
        folder = locate("ml-1m", ["ratings.dat", "users.dat", "movies.dat"], root, download)
        r = _read(folder / "ratings.dat", ["user_id", "movie_id", "rating", "timestamp"], "::", {"user_id": int, "movie_id": int, "rating": int, "timestamp": int})
        u = _read(folder / "users.dat", ["user_id", "gender", "age", "occupation", "zip_code"], "::", {"user_id": int, "age": int})
        m = _read(folder / "movies.dat", ["movie_id", "title", "genres"], "::", {"movie_id": int}, encoding="latin-1")[["movie_id", "genres"]]
    else:
        raise ConfigError(f"movielens variant={variant!r}; allowed: 100k, 1m")
    bad = ~r["rating"].between(1, 5)
    if bad.any():
        pos = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(f"MovieLens-{variant} ratings, line {pos + 1}: rating {r['rating'].iloc[pos]} is outside 1..5")
    df = r.merge(u, on="user_id", how="left", validate="many_to_one").merge(m, on="movie_id", how="left", validate="many_to_one")
    for col, src in (("gender", "users"), ("genres", "movies")):
        if df[col].isna().any():
            pos = int(np.flatnonzero(df[col].isna().to_numpy())[0])
            raise DataError(f"MovieLens-{variant}: rating on line {pos + 1} refers to an id missing from the {src} file")
    return df


def movielens(variant: str = "100k", root: str | os.PathLike | None = None, genres: bool = False,
              download: bool = True, embedding_dim="auto") -> TabularData:
    """MovieLens-100K or -1M as a binary :class:`TabularData` (the paper's protocol; see the module docstring)."""
    df = load_frame(variant, root, download)
    df = df[df["rating"] != 3].copy()
    df["label"] = (df["rating"] >= 4).astype(np.float32)
    ds = from_frame(df, label="label", categorical=FEATURES, multivalent=["genres"] if genres else [],
                    task="binary", name=f"movielens-{variant}", embedding_dim=embedding_dim)
    ds.meta.update(variant=variant, n_ratings_kept=len(df), positive_rate=float(df["label"].mean()))
    return ds
