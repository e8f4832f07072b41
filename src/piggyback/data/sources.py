"""Where each dataset comes from: the routes, the files each needs, and fetching them.

A dataset's ``source`` entry in the config names one route:

- ``authors``: the archives the authors prepared (their Box folder, downloaded by the
  user in a browser, or from the user's own mirror). What their numbers were measured on.
- ``original``: the datasets' own archives, split and cropped here the documented way.
  Closest to the authors' data, not identical (see docs/datasets.md).
- ``digits``: small real tasks from scikit-learn's digits, for the demo and the tests.
- ``folder``: a dataset already unpacked on disk in the authors' layout, read where it
  is (:mod:`piggyback.data.folders`); nothing to fetch.
- ``fashion_mnist``: Zalando's Fashion-MNIST, from Debian's package or the original
  release (:mod:`piggyback.data.fashion_mnist`): real images to be had offline.

How a route's files become the dataset folder is :mod:`piggyback.data.prepare`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from piggyback.data.download import (
    FetchedFile,
    SourceError,
    checksum_from,
    download,
    verify_file,
)
from piggyback.data.fashion_mnist import FASHION_MNIST_FILES, fetch_fashion_mnist

AUTHORS_BOX_URL = "https://uofi.box.com/s/ixncr3d85guosajywhf7yridszzg5zsq"
ROUTES = ("authors", "original", "digits", "folder", "fashion_mnist")
ORIGINAL_FILES = {
    "cub200": ("CUB_200_2011.tgz",),
    "stanford_cars": (
        "cars_train.tgz",
        "cars_test.tgz",
        "car_devkit.tgz",
        "cars_test_annos_withlabels.mat",
    ),
    "flowers102": ("102flowers.tgz", "imagelabels.mat", "setid.mat"),
    "sketches": ("sketches_png.zip",),
}
NO_ORIGINAL_SOURCE = {
    "wikiart": "no public archive of the authors' 195-artist WikiArt subset is known",
}
_ROUTE_KEYS = {
    "authors": {"route", "archive", "url", "md5", "sha256"},
    "original": {"route", "kind", "files"},
    "digits": {"route", "digits", "view", "per_class", "test_fraction", "seed"},
    "folder": {"route", "path"},
    "fashion_mnist": {"route", "per_class", "seed", "installed", "apt", "url", "sha256"},
}
_FILE_KEYS = {"url", "md5", "sha256"}


@dataclass(frozen=True)
class SourceFile:
    """One file a route needs in the downloads folder, and where to fetch it."""

    name: str
    url: str | None = None
    md5: str | None = None
    sha256: str | None = None


def check_source(dataset: str, source: dict) -> dict:
    """Refuse a source entry with an unknown route, kind or key, naming the key."""
    where = f"dataset {dataset!r} source"
    if not isinstance(source, dict):
        raise SourceError(f"{where}: expected a mapping with a `route:`, got {source!r}")
    route = source.get("route")
    if route not in ROUTES:
        raise SourceError(f"{where}: route {route!r} is not one of {', '.join(ROUTES)}")
    unknown = sorted(set(source) - _ROUTE_KEYS[route])
    if unknown:
        allowed = ", ".join(sorted(_ROUTE_KEYS[route]))
        raise SourceError(
            f"{where}: unknown key(s) {unknown} for route {route}; allowed: {allowed}"
        )
    if route == "original":
        kind = source.get("kind")
        if kind in NO_ORIGINAL_SOURCE:
            raise SourceError(
                f"{where}: {kind} has no `original` route ({NO_ORIGINAL_SOURCE[kind]}); "
                f"use `route: authors` with the authors' archive from {AUTHORS_BOX_URL}"
            )
        if kind not in ORIGINAL_FILES:
            raise SourceError(f"{where}: kind {kind!r} is not one of {', '.join(ORIGINAL_FILES)}")
        files = source.get("files") or {}
        if not isinstance(files, dict):
            raise SourceError(f"{where}: `files:` must map file names to {{url, md5}}")
        missing = [name for name in ORIGINAL_FILES[kind] if name not in files]
        if missing:
            raise SourceError(f"{where}: `files:` lacks {missing}, which {kind} needs")
        for name, entry in files.items():
            if entry is not None and not isinstance(entry, dict):
                raise SourceError(
                    f"{where}: files.{name} must be a mapping like {{url: ..., md5: ...}}"
                )
            bad = sorted(set(entry or {}) - _FILE_KEYS)
            if bad:
                raise SourceError(f"{where}: files.{name} has unknown key(s) {bad}")
    if route == "digits" and not source.get("digits"):
        raise SourceError(f"{where}: route digits needs `digits:`, a list of digits 0-9")
    if route == "folder" and not isinstance(source.get("path"), str):
        raise SourceError(
            f"{where}: route folder needs `path:`, the folder holding train/ and test/"
        )
    if route == "fashion_mnist":
        _check_fashion_mnist(where, source)
    return source


def _check_fashion_mnist(where: str, source: dict) -> None:
    per_class = source.get("per_class")
    if per_class is not None:
        if not isinstance(per_class, dict) or set(per_class) - {"train", "test"}:
            raise SourceError(
                f"{where}: `per_class:` must map train and/or test to a number of images "
                f"per class (null: all), like {{train: 500, test: null}}; got {per_class!r}"
            )
        for split, count in per_class.items():
            if count is not None and (not _is_int(count) or count < 1):
                raise SourceError(
                    f"{where}: per_class.{split} must be a whole number of images of each "
                    f"class, at least 1, or null for all; got {count!r}"
                )
    seed = source.get("seed")
    if seed is not None and (not _is_int(seed) or seed < 0):
        raise SourceError(f"{where}: `seed:` must be a whole number, 0 or more; got {seed!r}")
    for key in ("installed", "url"):
        if source.get(key) is not None and not (isinstance(source[key], str) and source[key]):
            raise SourceError(f"{where}: `{key}:` must be a non-empty string; got {source[key]!r}")
    if source.get("apt") not in (None, True, False):
        raise SourceError(f"{where}: `apt:` must be true or false; got {source['apt']!r}")
    digests = source.get("sha256")
    if digests is None:
        return
    if not isinstance(digests, dict):
        raise SourceError(f"{where}: `sha256:` must map file names to digests; got {digests!r}")
    for name, digest in digests.items():
        if name not in FASHION_MNIST_FILES:
            raise SourceError(
                f"{where}: sha256.{name} names no Fashion-MNIST file; the files are "
                f"{', '.join(FASHION_MNIST_FILES)} (decompressed)"
            )
        if digest is not None and not (isinstance(digest, str) and _SHA256.match(digest)):
            raise SourceError(f"{where}: sha256.{name} must be 64 hex digits; got {digest!r}")


_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def source_from_json(text: str) -> dict:
    """A source entry passed on the command line as JSON."""
    try:
        source = json.loads(text)
    except json.JSONDecodeError as error:
        raise SourceError(f"--source-json is not valid JSON ({error}): {text[:80]!r}") from None
    if not isinstance(source, dict):
        raise SourceError(f"--source-json must be a JSON object with a 'route', got {text[:80]!r}")
    return source


def authors_archive_name(dataset: str, source: dict) -> str:
    return source.get("archive") or f"{dataset}.zip"


def source_files(dataset: str, source: dict) -> list[SourceFile]:
    """The files ``source``'s route needs in the downloads folder."""
    check_source(dataset, source)
    route = source["route"]
    if route == "authors":
        return [
            SourceFile(
                authors_archive_name(dataset, source),
                source.get("url"),
                source.get("md5"),
                source.get("sha256"),
            )
        ]
    if route == "original":
        files = source["files"]
        return [SourceFile(name, **(files[name] or {})) for name in ORIGINAL_FILES[source["kind"]]]
    return []


def fetch_source(
    dataset: str, source: dict, downloads: Path, progress: bool = False
) -> list[FetchedFile]:
    """Make every file the route needs present and verified in ``downloads``."""
    downloads = Path(downloads)
    if source.get("route") == "fashion_mnist":
        # imported here: it imports this module
        check_source(dataset, source)
        return fetch_fashion_mnist(dataset, source, downloads, progress)
    fetched = []
    for needed in source_files(dataset, source):
        path = downloads / needed.name
        if not path.is_file() and not needed.url:
            raise SourceError(missing_file_message(dataset, source, needed.name, downloads))
        fetched.append(
            download(needed.url, path, needed.md5, needed.sha256, progress=progress)
            if needed.url
            else verify_file(path, checksum_from(needed.md5, needed.sha256))
        )
    return fetched


def missing_file_message(dataset: str, source: dict, name: str, downloads: Path) -> str:
    if source["route"] == "authors":
        return (
            f"{downloads / name} is missing: download {name!r} from the authors' Box folder "
            f"{AUTHORS_BOX_URL} (in a browser: Box links are not plain file URLs) and put it "
            f"in {downloads}/, or set `url:` in the {dataset} source entry to your own mirror"
        )
    return (
        f"{downloads / name} is missing and the {dataset} source entry gives no `url:` "
        f"for it: put the file in {downloads}/, or set files.{name}.url"
    )
