"""Downloads against a loopback server: verified renames, resume, checksum failures,
and weight files checked by the sha256 prefix in their names."""

from __future__ import annotations

import os
import runpy
import socket
import sys
from pathlib import Path

import pytest
from loopback import LoopbackServer, md5_of, sha256_of

from piggyback.data.download import (
    Checksum,
    ChecksumError,
    DownloadError,
    download,
    hash_prefix_in_name,
)
from piggyback.weights import torchvision as fetch_weights
from piggyback.weights.torchvision import fetch_backbone_weights

PAYLOAD = os.urandom(300_000)  # several reads of urllib's buffer, so drops land midway
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def server():
    with LoopbackServer() as running:
        yield running


def test_download_verifies_md5_then_renames(server, tmp_path):
    url = server.serve("data.tgz", PAYLOAD)
    dest = tmp_path / "data.tgz"
    fetched = download(url, dest, md5=md5_of(PAYLOAD), progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert fetched.downloaded and fetched.md5 == md5_of(PAYLOAD)
    assert fetched.sha256 == sha256_of(PAYLOAD)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.tgz"]


@pytest.mark.parametrize("length", [64, 8])
def test_download_verifies_sha256_or_its_prefix(server, tmp_path, length):
    url = server.serve("w.pth", PAYLOAD)
    fetched = download(url, tmp_path / "w.pth", sha256=sha256_of(PAYLOAD)[:length], progress=False)
    assert fetched.downloaded


def test_checksum_mismatch_deletes_only_the_download_and_names_both_sums(server, tmp_path):
    url = server.serve("data.tgz", PAYLOAD)
    neighbour = tmp_path / "other.tgz"
    neighbour.write_bytes(b"keep me")
    wrong = "0" * 32
    with pytest.raises(ChecksumError) as caught:
        download(url, tmp_path / "data.tgz", md5=wrong, progress=False)
    message = str(caught.value)
    assert "data.tgz" in message and wrong in message and md5_of(PAYLOAD) in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.tgz"]


def test_existing_file_that_verifies_is_not_downloaded(server, tmp_path):
    url = server.serve("data.tgz", PAYLOAD)
    dest = tmp_path / "data.tgz"
    download(url, dest, md5=md5_of(PAYLOAD), progress=False)
    again = download(url, dest, md5=md5_of(PAYLOAD), progress=False)
    assert not again.downloaded
    assert len(server.requests) == 1


def test_existing_file_that_does_not_verify_is_kept_and_reported(server, tmp_path):
    dest = tmp_path / "data.tgz"
    dest.write_bytes(b"the user's own file")
    with pytest.raises(ChecksumError, match="delete it to download again"):
        download(server.serve("data.tgz", PAYLOAD), dest, md5=md5_of(PAYLOAD), progress=False)
    assert dest.read_bytes() == b"the user's own file"
    assert server.requests == []


def test_dropped_connection_resumes_with_a_range_request(server, tmp_path):
    url = server.serve("data.tgz", PAYLOAD)
    dest = tmp_path / "data.tgz"
    server.drop_next("data.tgz", after_bytes=100_000)
    with pytest.raises(DownloadError, match="run again to resume"):
        download(url, dest, md5=md5_of(PAYLOAD), progress=False, attempts=1)
    part = tmp_path / "data.tgz.part"
    assert not dest.exists() and 0 < part.stat().st_size < len(PAYLOAD)
    have = part.stat().st_size
    download(url, dest, md5=md5_of(PAYLOAD), progress=False, attempts=1)
    assert dest.read_bytes() == PAYLOAD and not part.exists()
    assert server.requests_for("data.tgz") == [None, f"bytes={have}-"]


def test_dropped_connection_restarts_when_the_server_ignores_ranges(tmp_path):
    with LoopbackServer({"data.tgz": PAYLOAD}, ranges=False) as server:
        server.drop_next("data.tgz", after_bytes=100_000)
        dest = tmp_path / "data.tgz"
        with pytest.raises(DownloadError):
            download(server.url("data.tgz"), dest, md5=md5_of(PAYLOAD), attempts=1)
        download(server.url("data.tgz"), dest, md5=md5_of(PAYLOAD), progress=False)
    assert dest.read_bytes() == PAYLOAD


def test_one_call_retries_a_dropped_connection_by_itself(server, tmp_path):
    url = server.serve("data.tgz", PAYLOAD)
    server.drop_next("data.tgz", after_bytes=1000)
    download(url, tmp_path / "data.tgz", md5=md5_of(PAYLOAD), progress=False)
    assert (tmp_path / "data.tgz").read_bytes() == PAYLOAD
    assert len(server.requests_for("data.tgz")) == 2


def test_stale_part_longer_than_the_file_is_restarted(server, tmp_path):
    url = server.serve("data.tgz", PAYLOAD)
    (tmp_path / "data.tgz.part").write_bytes(os.urandom(len(PAYLOAD) + 10))
    download(url, tmp_path / "data.tgz", md5=md5_of(PAYLOAD), progress=False)
    assert (tmp_path / "data.tgz").read_bytes() == PAYLOAD


def test_complete_part_from_an_earlier_run_is_verified_not_fetched_again(server, tmp_path):
    url = server.serve("data.tgz", PAYLOAD)
    (tmp_path / "data.tgz.part").write_bytes(PAYLOAD)
    download(url, tmp_path / "data.tgz", md5=md5_of(PAYLOAD), progress=False)
    assert (tmp_path / "data.tgz").read_bytes() == PAYLOAD
    assert server.requests_for("data.tgz") == [f"bytes={len(PAYLOAD)}-"]


def test_missing_file_on_the_server_names_the_url_and_is_not_retried(server, tmp_path):
    with pytest.raises(DownloadError, match="nope.tgz answered HTTP 404"):
        download(server.url("nope.tgz"), tmp_path / "nope.tgz", progress=False)
    assert list(tmp_path.iterdir()) == []
    assert len(server.requests) == 1


def test_unreachable_host_says_to_put_the_file_in_place(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens here once closed
    with pytest.raises(DownloadError, match="put it at .*data.tgz"):
        download(f"http://127.0.0.1:{port}/data.tgz", tmp_path / "data.tgz", attempts=1)


def test_local_path_works_as_a_mirror(tmp_path):
    mirror = tmp_path / "mirror" / "data.tgz"
    mirror.parent.mkdir()
    mirror.write_bytes(PAYLOAD)
    download(str(mirror), tmp_path / "data.tgz", md5=md5_of(PAYLOAD), progress=False)
    assert (tmp_path / "data.tgz").read_bytes() == PAYLOAD


def test_malformed_checksum_is_refused_before_downloading(server, tmp_path):
    with pytest.raises(DownloadError, match="32 hex digits"):
        download(server.serve("a", b"a"), tmp_path / "a", md5="abc", progress=False)
    assert server.requests == []


def test_hash_prefix_follows_torch_hub_file_names():
    assert hash_prefix_in_name("resnet50-0676ba61.pth") == "0676ba61"
    assert hash_prefix_in_name("resources/weights/vgg16_bn-6c64b313.pth") == "6c64b313"
    assert hash_prefix_in_name("CUB_200_2011.tgz") is None
    assert Checksum("sha256", "0676BA61").matches("0676ba61" + "f" * 56)


def test_weights_are_fetched_from_a_mirror_and_checked_by_name(server, tmp_path, monkeypatch):
    name = f"tiny-{sha256_of(PAYLOAD)[:8]}.pth"
    monkeypatch.setattr(fetch_weights, "weights_url", lambda b, w: f"https://unreachable/{name}")
    out = tmp_path / "weights" / name
    fetched = fetch_backbone_weights("tiny", "V1", out, url=server.serve(name, PAYLOAD))
    assert fetched.downloaded and out.read_bytes() == PAYLOAD
    again = fetch_backbone_weights("tiny", "V1", out)  # pre-staged: the official URL is unused
    assert not again.downloaded and len(server.requests) == 1


def test_weights_that_do_not_match_their_name_are_refused(server, tmp_path):
    out = tmp_path / "resnet50-0676ba61.pth"
    with pytest.raises(ChecksumError, match="sha256 0676ba61"):
        fetch_backbone_weights(
            "resnet50", "IMAGENET1K_V1", out, url=server.serve("resnet50.pth", PAYLOAD)
        )
    assert list(tmp_path.iterdir()) == []


def test_weights_under_another_name_are_checked_by_torchvision_name(server, tmp_path):
    out = tmp_path / "resnet50.IMAGENET1K_V1.pth"  # the name a workflow may choose
    out.write_bytes(b"not the weights")
    with pytest.raises(ChecksumError, match="expected sha256 0676ba61"):
        fetch_backbone_weights("resnet50", "IMAGENET1K_V1", out)
    assert out.read_bytes() == b"not the weights" and server.requests == []


def test_fetch_weights_cli_verifies_a_pre_staged_file(tmp_path, monkeypatch, capsys):
    name = f"tiny-{sha256_of(PAYLOAD)[:8]}.pth"
    monkeypatch.setattr(fetch_weights, "weights_url", lambda b, w: f"https://unreachable/{name}")
    (tmp_path / name).write_bytes(PAYLOAD)
    argv = ["fetch_weights.py", "--builder", "tiny", "--weights", "V1", "--out"]
    monkeypatch.setattr(sys, "argv", [*argv, str(tmp_path / name), "--no-progress"])
    runpy.run_path(str(ROOT / "src" / "fetch_weights.py"), run_name="__main__")
    assert "already there, verified" in capsys.readouterr().out


def test_fetch_weights_cli_fails_in_one_line(tmp_path, monkeypatch, capsys):
    out = tmp_path / "resnet50-0676ba61.pth"
    out.write_bytes(b"not the weights")
    argv = ["fetch_weights.py", "--builder", "resnet50", "--out", str(out), "--no-progress"]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exited:
        runpy.run_path(str(ROOT / "src" / "fetch_weights.py"), run_name="__main__")
    error = capsys.readouterr().err
    assert exited.value.code == 1
    assert error.startswith("error: ") and error.count("\n") == 1 and "0676ba61" in error
