"""Extracting .zip and .tar(.gz) archives without letting any member land outside the
target folder, or reading one member of them without extracting anything.

Archives come from mirrors and browsers, so a member with an absolute path, a ``..``
component, or a link pointing outside is refused rather than trusted. Everything is
extracted into a temporary folder beside the target and renamed into place at the end:
a target folder that exists is always a complete extraction.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath, PureWindowsPath

from tqdm import tqdm

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tgz", ".tar.gz", ".whl", ".tar.bz2")
_TAR_FILTER_ERROR = getattr(tarfile, "FilterError", ())


class ArchiveError(ValueError):
    """An archive is unreadable or unsafe; the message names the archive and member."""


def archive_format(path: Path) -> str:
    """``zip`` or ``tar``, from the file name."""
    name = Path(path).name.lower()
    if name.endswith((".zip", ".whl")):  # a wheel is a zip
        return "zip"
    if name.endswith((".tar", ".tgz", ".tar.gz", ".tar.bz2")):
        return "tar"
    raise ArchiveError(
        f"{path}: cannot tell the archive format from the name; "
        f"expected one of {', '.join(ARCHIVE_SUFFIXES)}"
    )


def extract_archive(archive: Path, target: Path, progress: bool = False) -> Path:
    """Extract ``archive`` so that ``target`` holds its members, replacing any old
    ``target``; an unsafe member stops the extraction before it is written."""
    archive, target = Path(archive), Path(target)
    kind = archive_format(archive)
    if not archive.is_file():
        raise ArchiveError(f"{archive} does not exist")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.extracting-", dir=target.parent))
    try:
        extract = _extract_zip if kind == "zip" else _extract_tar
        try:
            extract(archive, staging, progress)
        except (zipfile.BadZipFile, tarfile.ReadError, EOFError, zlib.error) as error:
            raise ArchiveError(
                f"{archive} is not a readable {kind} archive ({error}); "
                "delete it and download it again"
            ) from None
        replace_folder(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return target


def read_member(archive: Path, name: str, strip_top_folder: bool = False) -> bytes:
    """The bytes of the regular file ``name`` in ``archive``, nothing extracted to disk.

    ``strip_top_folder``: ``name`` is relative to the archive's top folder (a source
    distribution's ``<project>-<version>/``). As for extraction, an archive holding a
    member with an absolute or ``..`` path is refused, and so is a ``name`` that is a
    link or is held twice (which copy would be read?)."""
    archive = Path(archive)
    kind = archive_format(archive)
    read = _read_zip_member if kind == "zip" else _read_tar_member
    try:
        return read(archive, name, strip_top_folder)
    except (zipfile.BadZipFile, tarfile.ReadError, EOFError, zlib.error, OSError) as error:
        raise ArchiveError(f"{archive} is not a readable {kind} archive ({error})") from None


def _read_zip_member(archive: Path, name: str, strip_top_folder: bool) -> bytes:
    with zipfile.ZipFile(archive) as bundle:
        info = _the_member(archive, name, strip_top_folder, bundle.infolist(), "filename")
        if info.is_dir() or stat.S_ISLNK(info.external_attr >> 16):
            raise ArchiveError(f"{archive}: {name} is not a regular file; refusing it")
        return bundle.read(info)


def _read_tar_member(archive: Path, name: str, strip_top_folder: bool) -> bytes:
    with tarfile.open(archive, "r:*") as bundle:
        member = _the_member(archive, name, strip_top_folder, bundle.getmembers(), "name")
        if not member.isfile():
            raise ArchiveError(f"{archive}: {name} is not a regular file; refusing it")
        return bundle.extractfile(member).read()


def _the_member(archive: Path, name: str, strip_top_folder: bool, members: list, field: str):
    """The one member at ``name``; a missing one is reported with what lies beside it."""
    named = [(_relative_name(archive, getattr(m, field), strip_top_folder), m) for m in members]
    matches = [member for relative, member in named if relative == name]
    if len(matches) > 1:
        raise ArchiveError(f"{archive} holds {name} {len(matches)} times; refusing it")
    if not matches:
        folder = posixpath.dirname(name)
        beside = sorted(
            posixpath.basename(r) for r, _ in named if r and posixpath.dirname(r) == folder
        )
        where = f"{folder}/" if folder else "its top level"
        listing = f"{where} holds {', '.join(beside[:8])}" if beside else f"no {where}"
        raise ArchiveError(f"{archive} holds no file {name} ({listing})")
    return matches[0]


def _relative_name(archive: Path, member: str, strip_top_folder: bool) -> str | None:
    relative = _member_path(archive, member)
    if relative is None or (strip_top_folder and len(relative.parts) < 2):
        return None
    return str(PurePosixPath(*relative.parts[1:])) if strip_top_folder else str(relative)


def replace_folder(new: Path, target: Path) -> None:
    """Rename ``new`` to ``target``; an old ``target`` is moved aside first, then deleted."""
    if not target.exists():
        os.replace(new, target)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    os.replace(target, old / target.name)
    os.replace(new, target)
    shutil.rmtree(old)


def is_content_dir(path: Path) -> bool:
    """A folder of an unpacked archive that holds content (not ``.hidden``, not macOS's
    ``__MACOSX`` resource forks)."""
    return path.is_dir() and not path.name.startswith((".", "__MACOSX"))


def _member_path(archive: Path, name: str) -> PurePosixPath | None:
    """The member's path relative to the target, or None for the archive root itself."""
    if name.startswith(("/", "\\")) or PureWindowsPath(name).drive:
        raise ArchiveError(f"{archive}: member {name!r} has an absolute path; refusing it")
    parts = [part for part in PurePosixPath(name).parts if part != "."]
    if ".." in parts:
        raise ArchiveError(f"{archive}: member {name!r} climbs out with '..'; refusing it")
    return PurePosixPath(*parts) if parts else None


def _check_link(archive: Path, member: PurePosixPath, link: str, hard: bool) -> None:
    """Refuse a link whose target is absolute or leaves the folder. A symlink is
    relative to its own folder, a tar hardlink to the archive root."""
    kind = "hardlink" if hard else "symlink"
    if link.startswith(("/", "\\")) or PureWindowsPath(link).drive:
        raise ArchiveError(
            f"{archive}: {kind} {str(member)!r} points to the absolute path {link!r}; refusing it"
        )
    base = "" if hard else str(member.parent)
    resolved = posixpath.normpath(posixpath.join(base, link))
    if resolved == ".." or resolved.startswith("../"):
        raise ArchiveError(
            f"{archive}: {kind} {str(member)!r} points outside the folder ({link!r}); refusing it"
        )


def _check_inside(archive: Path, root: Path, path: Path, name: str) -> None:
    """Refuse a path that resolves outside ``root`` (through a link extracted earlier)."""
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    if os.path.commonpath([real_root, real]) != real_root:
        raise ArchiveError(f"{archive}: member {name!r} resolves outside the folder; refusing it")


def _extract_zip(archive: Path, root: Path, progress: bool) -> None:
    with zipfile.ZipFile(archive) as bundle:
        members = bundle.infolist()
        for info in tqdm(members, desc=archive.name, unit="file", disable=not progress):
            relative = _member_path(archive, info.filename)
            if relative is None:
                continue
            dest = root / relative
            _check_inside(archive, root, dest.parent, info.filename)
            mode = info.external_attr >> 16
            if info.is_dir():
                dest.mkdir(parents=True, exist_ok=True)
            elif stat.S_ISLNK(mode):
                link = bundle.read(info).decode()
                _check_link(archive, relative, link, hard=False)
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.symlink(link, dest)
                _check_inside(archive, root, dest, info.filename)
            else:
                dest.parent.mkdir(parents=True, exist_ok=True)
                with bundle.open(info) as source, open(dest, "wb") as sink:
                    shutil.copyfileobj(source, sink, 1 << 20)


def _extract_tar(archive: Path, root: Path, progress: bool) -> None:
    # Python's own 'data' filter (3.11.4+) repeats these checks on the real filesystem.
    safety = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
    with tarfile.open(archive, "r:*") as bundle:
        for member in tqdm(bundle, desc=archive.name, unit="file", disable=not progress):
            relative = _member_path(archive, member.name)
            if relative is None:
                continue
            if member.issym() or member.islnk():
                _check_link(archive, relative, member.linkname, hard=member.islnk())
            elif not (member.isfile() or member.isdir()):
                raise ArchiveError(
                    f"{archive}: member {member.name!r} is a device or pipe; refusing it"
                )
            _check_inside(archive, root, (root / relative).parent, member.name)
            try:
                bundle.extract(member, root, set_attrs=member.isfile(), **safety)
            except _TAR_FILTER_ERROR as error:
                raise ArchiveError(f"{archive}: {error}; refusing it") from None
