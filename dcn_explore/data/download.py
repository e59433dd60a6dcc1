"""Checksummed, cached downloads (``pooch``) and where data sets are looked for.

Search order for a data set folder (e.g. ``ml-100k``): the ``root`` argument;
``$DCNX_DATA``; the project's ``data/`` folder (downloads land here, git-ignored);
``../shared/data`` beside the project (the read-only copy on the project's machines).
Only when none holds it, and ``download=True``, is the publisher's archive fetched,
its MD5 checked, and unpacked into the first writable root.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ..errors import DataError

PROJECT_ROOT = Path(__file__).resolve().parents[2]

ARCHIVES = {
    "ml-100k": ("https://files.grouplens.org/datasets/movielens/ml-100k.zip", "md5:0e33842e24a9c977be4e0107933c0723"),
    "ml-1m": ("https://files.grouplens.org/datasets/movielens/ml-1m.zip", "md5:c4d9eecfca2ab87c1945afe126590906"),
}


def search_roots(root: str | os.PathLike | None = None) -> list[Path]:
    roots: list[Path] = []
    if root is not None:
        return [Path(root)]
    if os.environ.get("DCNX_DATA"):
        roots.append(Path(os.environ["DCNX_DATA"]))
    roots.append(PROJECT_ROOT / "data")
    roots.append(PROJECT_ROOT.parent / "shared" / "data")
    return roots


def md5sum(path: str | os.PathLike) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def locate(name: str, required: list[str], root: str | os.PathLike | None = None, download: bool = True) -> Path:
    """A folder ``<root>/<name>`` that holds every file in ``required``, downloading it if allowed."""
    tried = []
    for r in search_roots(root):
        folder = r / name
        tried.append(str(folder))
        if all((folder / f).is_file() for f in required):
            return folder
    if not download:
        raise DataError(f"{name}: not found (looked in {tried}) and download=False")
    if name not in ARCHIVES:
        raise DataError(f"{name}: not found (looked in {tried}) and there is no download for it")
    target = Path(root) if root is not None else search_roots()[1 if os.environ.get("DCNX_DATA") is None else 0]
    return fetch(name, target)


def fetch(name: str, target_root: str | os.PathLike) -> Path:
    """Download ``name``'s archive into ``target_root`` (cached, MD5-checked) and unpack it."""
    import pooch

    url, known_hash = ARCHIVES[name]
    target_root = Path(target_root)
    target_root.mkdir(parents=True, exist_ok=True)
    try:
        pooch.retrieve(url, known_hash=known_hash, fname=f"{name}.zip", path=target_root,
                       processor=pooch.Unzip(extract_dir="."), progressbar=False)
    except ValueError as e:  # pooch raises ValueError on a hash mismatch
        raise DataError(f"{name}: the downloaded archive from {url} failed its checksum ({known_hash}): {e}") from e
    except Exception as e:  # network errors: say what was tried
        raise DataError(f"{name}: could not download {url} into {target_root}: {e}") from e
    folder = target_root / name
    if not folder.is_dir():
        raise DataError(f"{name}: the archive from {url} did not contain a folder {name}/")
    return folder
