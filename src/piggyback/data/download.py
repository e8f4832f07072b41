"""Downloading one file to a verified destination.

The file is written to ``<dest>.part`` and renamed only once its checksum matches, so a
file at ``dest`` is always complete and correct. An interrupted download is resumed with
an HTTP Range request where the server allows it (else started again), a destination
that already verifies is never fetched again, and a bad download is deleted, never the
user's own file. Only the standard library's urllib is used.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

CHUNK_BYTES = 1 << 20
USER_AGENT = "piggyback-downloader/0.1 (+python urllib)"
# torch.hub's convention: `resnet50-0676ba61.pth` holds the first hex digits of its sha256.
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.")
_HEX = re.compile(r"^[0-9a-fA-F]+$")


class SourceError(ValueError):
    """A dataset cannot be fetched or prepared as configured; the message says why and
    what to do. (Raised by the routes of :mod:`piggyback.data.sources`, kept here, below
    them all, so that a route's own module can raise it too.)"""


class DownloadError(RuntimeError):
    """A file could not be fetched; the message names it and says what to do."""


class ChecksumError(DownloadError):
    """A file's bytes are not the ones expected; the message gives both checksums."""


class TransferBroken(DownloadError):
    """The connection ended before the whole file arrived; what did arrive is kept in
    ``<dest>.part`` and the next attempt resumes from it."""


@dataclass(frozen=True)
class Checksum:
    """An expected digest. A sha256 may be given as a leading prefix (at least 8 hex
    digits), as torchvision's weight file names carry it."""

    algorithm: str
    expected: str

    def __post_init__(self) -> None:
        value = self.expected
        if self.algorithm == "md5":
            ok = len(value) == 32
        elif self.algorithm == "sha256":
            ok = 8 <= len(value) <= 64
        else:
            raise ValueError(f"unsupported checksum algorithm {self.algorithm!r}")
        if not ok or not _HEX.match(value):
            wanted = "32 hex digits" if self.algorithm == "md5" else "8 to 64 hex digits"
            raise DownloadError(f"{self.algorithm} {value!r} is not a checksum ({wanted})")
        object.__setattr__(self, "expected", value.lower())

    def matches(self, digest: str) -> bool:
        return digest.lower().startswith(self.expected)

    def __str__(self) -> str:
        return f"{self.algorithm} {self.expected}"


@dataclass(frozen=True)
class FetchedFile:
    """A verified file, whether it was downloaded now, and its digests (for records)."""

    path: Path
    downloaded: bool
    size: int
    md5: str
    sha256: str

    def as_record(self) -> dict:
        return {
            "name": self.path.name,
            "path": str(self.path),
            "bytes": self.size,
            "md5": self.md5,
            "sha256": self.sha256,
        }


def checksum_from(md5: str | None = None, sha256: str | None = None) -> Checksum | None:
    """The checksum to verify against: md5 when given, else sha256, else none."""
    if md5:
        return Checksum("md5", md5)
    if sha256:
        return Checksum("sha256", sha256)
    return None


def hash_prefix_in_name(file_name: str) -> str | None:
    """The sha256 prefix in a torch.hub-style file name (``resnet50-0676ba61.pth``)."""
    match = _HASH_IN_NAME.search(Path(file_name).name)
    return match.group(1) if match else None


def file_digests(path: Path) -> tuple[str, str]:
    """md5 and sha256 of a file, read once."""
    md5, sha256 = hashlib.md5(), hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(CHUNK_BYTES):
            md5.update(chunk)
            sha256.update(chunk)
    return md5.hexdigest(), sha256.hexdigest()


def verify_file(path: Path, checksum: Checksum | None, what: str | None = None) -> FetchedFile:
    """Digest ``path`` and raise ChecksumError unless it matches ``checksum``."""
    path = Path(path)
    md5, sha256 = file_digests(path)
    if checksum is not None:
        actual = md5 if checksum.algorithm == "md5" else sha256
        if not checksum.matches(actual):
            raise ChecksumError(
                f"{what or path}: expected {checksum}, got {checksum.algorithm} "
                f"{actual[: len(checksum.expected)]}"
            )
    return FetchedFile(path, False, path.stat().st_size, md5, sha256)


def download(
    url: str | None,
    dest: Path,
    md5: str | None = None,
    sha256: str | None = None,
    progress: bool = True,
    attempts: int = 3,
    timeout: float = 60.0,
    check: Callable[[Path, str], None] | None = None,
) -> FetchedFile:
    """Make ``dest`` hold the verified file at ``url``; fetch nothing if it already does.

    ``url`` may be a local path (a mirror on disk). With no checksum the file is still
    checked to be as long as the server said. An existing ``dest`` that does not verify
    is left alone and reported: it may be a file the user put there by hand. A transfer
    that breaks midway is resumed up to ``attempts`` times; an HTTP error is not retried.
    ``check(path, what)``, if given, is a further test of the whole file where a checksum
    of its bytes cannot say enough (a compressed file whose compression may differ):
    it raises ``ChecksumError``, with the same consequences as a checksum that fails.
    """
    dest = Path(dest)
    checksum = checksum_from(md5, sha256)
    if dest.is_file():
        try:
            verified = verify_file(dest, checksum)
            if check is not None:
                check(dest, str(dest))
            return verified
        except ChecksumError as error:
            raise ChecksumError(
                f"{error}; the file is not the one expected: delete it to download again, "
                "or correct the checksum in the config"
            ) from None
    if not url:
        raise DownloadError(f"{dest} is missing and no URL to download it from is configured")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    source = _as_url(url)
    for attempt in range(1, attempts + 1):
        try:
            _fetch_to_part(source, part, progress, timeout)
            break
        except TransferBroken:
            if attempt == attempts:
                raise
    what = f"downloaded {dest.name} from {url}"
    try:
        fetched = verify_file(part, checksum, what=what)
        if check is not None:
            check(part, what)
    except ChecksumError:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, dest)
    return FetchedFile(dest, True, fetched.size, fetched.md5, fetched.sha256)


def _as_url(url: str) -> str:
    if urllib.parse.urlsplit(url).scheme in {"http", "https", "ftp", "file"}:
        return url
    return Path(url).expanduser().resolve().as_uri()


def _fetch_to_part(url: str, part: Path, progress: bool, timeout: float) -> None:
    """Append the rest of ``url`` to ``part`` (or restart it); raise DownloadError if the
    transfer ends early, keeping what arrived so the next attempt can resume."""
    have = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and have:
            # Nothing left past what we hold: the part is complete, or stale and longer.
            total = _total_from_content_range(error.headers.get("Content-Range"))
            if total == have:
                return
            part.unlink()
            return _fetch_to_part(url, part, progress, timeout)
        raise DownloadError(f"{url} answered HTTP {error.code} {error.reason}") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise DownloadError(
            f"cannot reach {url} ({reason}); on a machine without internet, download "
            f"the file elsewhere and put it at {part.with_suffix('')}"
        ) from None
    with response:
        status = getattr(response, "status", None)
        resumed = (
            status == 206
            and _start_from_content_range(response.headers.get("Content-Range")) == have
        )
        if status == 206 and not resumed:
            part.unlink()
            raise DownloadError(f"{url} answered with a byte range other than the one asked")
        if not resumed:
            have = 0  # the server sent the whole file: start again
        length = response.headers.get("Content-Length")
        expected_total = have + int(length) if length and length.isdigit() else None
        received = have
        with (
            open(part, "ab" if resumed else "wb") as stream,
            tqdm(
                total=expected_total,
                initial=have,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=part.name.removesuffix(".part"),
                disable=not progress,
                leave=False,
            ) as bar,
        ):
            try:
                while chunk := response.read(CHUNK_BYTES):
                    stream.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            except (http.client.HTTPException, OSError) as error:
                raise TransferBroken(
                    f"{url}: transfer broke after {received} bytes ({error}); run again to resume"
                ) from None
    if expected_total is not None and received < expected_total:
        raise TransferBroken(
            f"{url}: connection closed after {received} of {expected_total} bytes; "
            "run again to resume"
        )


def _start_from_content_range(header: str | None) -> int | None:
    match = re.match(r"bytes (\d+)-\d+/(\d+|\*)", header or "")
    return int(match.group(1)) if match else None


def _total_from_content_range(header: str | None) -> int | None:
    match = re.match(r"bytes (?:\*|\d+-\d+)/(\d+)", header or "")
    return int(match.group(1)) if match else None
