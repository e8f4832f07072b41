"""The fashion_mnist route on a miniature release in the real IDX format (same file
names, magic numbers and big-endian dimensions; 6 train and 3 test images per class):
each of its three ways to the files (Debian's installed package, `apt-get download`
through stand-in apt-get scripts, HTTP on 127.0.0.1), the refusal of files that are
not the release's, and the per-class subset that prepare writes."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import socket
import subprocess
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import yaml
from loopback import LoopbackServer
from PIL import Image
from test_workflow import ROOT, job_counts, snakemake

from piggyback.data.fashion_mnist import PACKAGE, RELEASE_URL, chosen_images, read_idx
from piggyback.data.prepare import PREPARED_MARKER, prepare_dataset
from piggyback.data.sources import SourceError, check_source, fetch_source

SCHEMA_FILE = ROOT / "workflow" / "schemas" / "source.schema.yaml"
# Zalando's class names by label, 0 to 9, as folder names
LABELS = [
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
]
TRAIN_PER_CLASS, TEST_PER_CLASS = 6, 3


def idx(array: np.ndarray) -> bytes:
    """``array`` (uint8) as an IDX file: magic 0x0000 08 <dims>, then each dimension as a
    big-endian uint32, then the bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    return header + array.astype(np.uint8).tobytes()


def make_release() -> dict:
    """The four decompressed files of a miniature release, its arrays and digests."""
    rng = np.random.default_rng(7)
    arrays = {}
    for prefix, per_class in (("train", TRAIN_PER_CLASS), ("t10k", TEST_PER_CLASS)):
        labels = rng.permutation(np.repeat(np.arange(10, dtype=np.uint8), per_class))
        arrays[f"{prefix}-images-idx3-ubyte"] = rng.integers(
            0, 256, (len(labels), 28, 28), dtype=np.uint8
        )
        arrays[f"{prefix}-labels-idx1-ubyte"] = labels
    raw = {name: idx(array) for name, array in arrays.items()}
    return {
        "arrays": arrays,
        "raw": raw,
        "gz": {f"{name}.gz": gzip.compress(data, mtime=0) for name, data in raw.items()},
        "sha256": {name: hashlib.sha256(data).hexdigest() for name, data in raw.items()},
    }


RELEASE = make_release()


def write_files(folder: Path, files: dict[str, bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def entry(tmp_path: Path, **keys) -> dict:
    """A source entry that never reaches this machine's own package or apt-get: the
    installed files are looked for in an empty folder and apt is off, unless given."""
    source = {
        "route": "fashion_mnist",
        "installed": str(tmp_path / "not-installed"),
        "apt": False,
        "url": "http://127.0.0.1:9/",
        "sha256": RELEASE["sha256"],
    }
    return {**source, **keys}


def listing(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
    }


def tree(out: Path, split: str) -> dict[str, list[str]]:
    return {c.name: sorted(f.name for f in c.iterdir()) for c in sorted((out / split).iterdir())}


@pytest.fixture
def server():
    with LoopbackServer() as running:
        yield running


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --- where the files come from ----------------------------------------------------------


def test_the_installed_package_is_read_in_place_and_never_written(tmp_path):
    installed = write_files(tmp_path / "usr-share-datasets", RELEASE["gz"])
    before = listing(installed)
    source = entry(tmp_path, installed=str(installed))
    downloads, out = tmp_path / "downloads", tmp_path / "data" / "fashion"
    fetched = fetch_source("fashion", source, downloads)
    summary = prepare_dataset("fashion", source, downloads, out, classes=10)
    assert [f.path for f in fetched] == [installed / name for name in RELEASE["gz"]]
    assert [f.md5 for f in fetched] == [hashlib.md5(d).hexdigest() for d in RELEASE["gz"].values()]
    assert listing(installed) == before
    assert not downloads.exists(), "nothing fetched, nothing written"
    assert summary["read_from"] == str(installed)
    assert summary["images"] == {"train": 60, "test": 30} and summary["classes"] == 10
    assert summary == json.loads((out / PREPARED_MARKER).read_text())


def test_the_release_comes_over_http_once(server, tmp_path):
    for name, data in RELEASE["gz"].items():
        server.serve(name, data)
    source = entry(tmp_path, url=server.url(""))
    downloads = tmp_path / "downloads"
    fetched = fetch_source("fashion", source, downloads)
    assert [f.path.name for f in fetched] == list(RELEASE["gz"])
    assert all(f.downloaded for f in fetched)
    assert (downloads / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz").is_file()
    again = fetch_source("fashion", source, downloads)
    assert len(server.requests) == 4 and not any(f.downloaded for f in again)
    out = tmp_path / "data" / "fashion"
    summary = prepare_dataset("fashion", source, downloads, out, classes=10)
    assert summary["read_from"] == str(downloads / "fashion-mnist")


def test_a_mirror_that_compressed_the_files_otherwise_is_accepted(server, tmp_path):
    """Debian recompressed the release: only the decompressed bytes are compared."""
    for name, data in RELEASE["raw"].items():
        server.serve(f"{name}.gz", gzip.compress(data, compresslevel=1, mtime=12345))
    fetched = fetch_source("fashion", entry(tmp_path, url=server.url("")), tmp_path / "dl")
    assert [f.sha256 for f in fetched] != [
        hashlib.sha256(d).hexdigest() for d in RELEASE["gz"].values()
    ]


def build_deb(tmp_path: Path) -> Path:
    """A Debian package laid out as dataset-fashion-mnist is, holding the miniature files."""
    root = tmp_path / "package"
    write_files(root / "usr" / "share" / "datasets" / "fashion-mnist", RELEASE["gz"])
    (root / "DEBIAN").mkdir()
    (root / "DEBIAN" / "control").write_text(
        f"Package: {PACKAGE}\nVersion: 0.0~test-1\nArchitecture: all\n"
        "Maintainer: Tests <tests@example.org>\nDescription: miniature Fashion-MNIST\n"
    )
    deb = tmp_path / f"{PACKAGE}_0.0~test-1_all.deb"
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "--build", str(root), str(deb)],
        check=True,
        capture_output=True,
    )
    return deb


def stand_in_apt(tmp_path: Path, monkeypatch, body: str) -> Path:
    """PATH with an apt-get ahead of this machine's: a script logging each call and
    running ``body``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "apt-get.calls"
    script = bin_dir / "apt-get"
    script.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n{body}\n')
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return calls


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb (Debian, Ubuntu)")
def test_the_package_is_fetched_with_apt_get_download_and_kept(tmp_path, monkeypatch):
    deb = build_deb(tmp_path)
    calls = stand_in_apt(
        tmp_path, monkeypatch, f'[ "$1 $2" = "download {PACKAGE}" ] || exit 100\ncp {deb} .'
    )
    source = entry(tmp_path, apt=True)
    downloads = tmp_path / "downloads"
    fetched = fetch_source("fashion", source, downloads)
    folder = downloads / "fashion-mnist"
    assert [f.path for f in fetched] == [folder / name for name in RELEASE["gz"]]
    assert all(f.downloaded for f in fetched)
    assert (folder / deb.name).read_bytes() == deb.read_bytes(), "the .deb is kept"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [".lock", deb.name, *RELEASE["gz"]]
    ), "nothing else is left there"
    for name in RELEASE["gz"]:
        (folder / name).unlink()
    again = fetch_source("fashion", source, downloads)
    assert calls.read_text().splitlines() == [f"download {PACKAGE}"], "no second apt-get"
    assert (
        not any(f.downloaded for f in again) and (folder / "train-images-idx3-ubyte.gz").is_file()
    )


def test_apt_without_its_lists_says_to_run_apt_get_update(tmp_path, monkeypatch):
    stand_in_apt(
        tmp_path, monkeypatch, f'echo "E: Unable to locate package {PACKAGE}" >&2\nexit 100'
    )
    with pytest.raises(SourceError) as refused:
        fetch_source("fashion", entry(tmp_path, apt=True), tmp_path / "downloads")
    message = str(refused.value)
    assert f"apt's package lists do not know {PACKAGE}" in message
    assert "as root, run `apt-get update`" in message
    assert message.count("\n") == 0
    folder = tmp_path / "downloads" / "fashion-mnist"
    assert list(folder.iterdir()) == [folder / ".lock"], "apt-get's scratch folder is removed"


def test_no_way_to_the_files_gives_one_message_with_the_three_ways(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no apt-get
    url = f"http://127.0.0.1:{closed_port()}"
    source = entry(tmp_path, apt=True, url=url)
    with pytest.raises(SourceError) as refused:
        fetch_source("fashion", source, tmp_path / "downloads")
    message = str(refused.value)
    folder = tmp_path / "downloads" / "fashion-mnist"
    assert message.startswith("dataset 'fashion' (route fashion_mnist): Fashion-MNIST's files")
    assert f"{tmp_path / 'not-installed'} does not exist" in message
    assert "apt-get is not on this machine" in message
    assert f"cannot reach {url}/train-images-idx3-ubyte.gz" in message
    assert f"(1) as root, `apt-get update && apt-get install {PACKAGE}`" in message
    assert (
        f"(2) `apt-get download {PACKAGE}`" in message and f"put the .deb in {folder}/" in message
    )
    assert f"(3) download each file above from the original release, {RELEASE_URL}/" in message
    assert message.count("\n") == 0
    assert list(folder.iterdir()) == [folder / ".lock"], "no partial file left"


# --- files that are not the release's ---------------------------------------------------


def altered(name: str) -> bytes:
    """The file with one pixel changed, compressed correctly: only its digest tells."""
    data = bytearray(RELEASE["raw"][name])
    data[-1] ^= 0xFF
    return gzip.compress(bytes(data), mtime=0)


def test_a_truncated_or_altered_download_is_refused_naming_it(server, tmp_path):
    server.serve("train-images-idx3-ubyte.gz", RELEASE["gz"]["train-images-idx3-ubyte.gz"])
    truncated = RELEASE["gz"]["train-labels-idx1-ubyte.gz"][:-20]
    server.serve("train-labels-idx1-ubyte.gz", truncated)
    folder = tmp_path / "downloads" / "fashion-mnist"
    source = entry(tmp_path, url=server.url(""))
    with pytest.raises(SourceError) as refused:
        fetch_source("fashion", source, tmp_path / "downloads")
    assert "downloaded train-labels-idx1-ubyte.gz from http://127.0.0.1" in str(refused.value)
    assert "is not a complete gzip file" in str(refused.value)
    assert sorted(p.name for p in folder.iterdir()) == [".lock", "train-images-idx3-ubyte.gz"]

    server.serve("train-labels-idx1-ubyte.gz", altered("train-labels-idx1-ubyte"))
    with pytest.raises(SourceError) as refused:
        fetch_source("fashion", source, tmp_path / "downloads")
    assert "downloaded train-labels-idx1-ubyte.gz" in str(refused.value)
    assert f"expected sha256 {RELEASE['sha256']['train-labels-idx1-ubyte']}" in str(refused.value)
    assert sorted(p.name for p in folder.iterdir()) == [".lock", "train-images-idx3-ubyte.gz"]
    assert server.requests_for("train-images-idx3-ubyte.gz") == [None], "the good file is kept"


def test_a_file_already_there_that_does_not_verify_is_refused_and_kept(tmp_path):
    folder = write_files(tmp_path / "downloads" / "fashion-mnist", RELEASE["gz"])
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(altered("t10k-images-idx3-ubyte"))
    before = listing(folder)
    with pytest.raises(SourceError) as refused:
        fetch_source("fashion", entry(tmp_path), tmp_path / "downloads")
    assert str(refused.value).startswith(f"{folder / 't10k-images-idx3-ubyte.gz'}: decompressed")
    assert "delete it to fetch it again" in str(refused.value)
    assert {k: v for k, v in listing(folder).items() if k != ".lock"} == before


@pytest.mark.parametrize("damage", ["truncated", "altered"])
def test_prepare_refuses_a_damaged_file_and_leaves_the_last_dataset(tmp_path, damage):
    """A file damaged after the download stage: prepare names it and writes nothing; the
    dataset prepared before stays whole, and the other files stay."""
    folder = write_files(tmp_path / "downloads" / "fashion-mnist", RELEASE["gz"])
    source = entry(tmp_path, per_class={"train": 2})
    out = tmp_path / "data" / "fashion"
    prepare_dataset("fashion", source, tmp_path / "downloads", out, classes=10)
    before = listing(out)
    bad = folder / "t10k-images-idx3-ubyte.gz"
    gz = RELEASE["gz"][bad.name]
    bad.write_bytes(gz[: len(gz) // 2] if damage == "truncated" else altered(bad.name[:-3]))
    with pytest.raises(SourceError) as refused:
        prepare_dataset("fashion", source, tmp_path / "downloads", out, classes=10)
    assert str(refused.value).startswith(f"{bad}: ")
    assert listing(out) == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["fashion"], "no half-written folder"
    assert sorted(p.name for p in folder.iterdir()) == sorted(RELEASE["gz"])


LABELS_IDX = idx(np.arange(10, dtype=np.uint8))


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (LABELS_IDX[:2] + b"\x09" + LABELS_IDX[3:], "IDX magic 00000901, expected 00000801"),
        (LABELS_IDX[:6], "it ends inside its IDX header"),
        (LABELS_IDX[:-1], "it ends after 9 of the 10 bytes its header declares"),
        (LABELS_IDX + b"\0", "it holds more than the 10 bytes its header declares"),
    ],
    ids=["magic", "short header", "short data", "longer"],
)
def test_a_file_that_is_not_idx_is_refused_whatever_its_digest(tmp_path, data, problem):
    """Even with the digest the entry gives (another release's), the IDX structure must
    hold: the file is named, with what is wrong."""
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(data))
    with pytest.raises(SourceError) as refused:
        read_idx(path, hashlib.sha256(data).hexdigest(), 1)
    assert str(refused.value).startswith(f"{path}: {problem}; it is not the Fashion-MNIST file")
    good = tmp_path / "good.gz"
    good.write_bytes(gzip.compress(LABELS_IDX))
    assert read_idx(good, hashlib.sha256(LABELS_IDX).hexdigest(), 1).tolist() == list(range(10))


# --- what prepare writes ----------------------------------------------------------------


def test_prepare_writes_each_class_by_name_with_the_release_pixels(tmp_path):
    write_files(tmp_path / "downloads" / "fashion-mnist", RELEASE["gz"])
    out = tmp_path / "data" / "fashion"
    source = entry(tmp_path, per_class={"train": 4, "test": None}, seed=3)
    summary = prepare_dataset("fashion", source, tmp_path / "downloads", out, classes=10)
    train, test = tree(out, "train"), tree(out, "test")
    assert list(train) == sorted(LABELS) == list(test)
    assert [len(files) for files in train.values()] == [4] * 10
    assert [len(files) for files in test.values()] == [TEST_PER_CLASS] * 10
    assert summary["images"] == {"train": 40, "test": 30}
    assert summary["per_class"] == {"train": 4, "test": None} and summary["seed"] == 3
    assert summary["labels"] == {name: label for label, name in enumerate(LABELS)}
    arrays = RELEASE["arrays"]
    for split, prefix in (("train", "train"), ("test", "t10k")):
        for name, files in tree(out, split).items():
            for file in files:
                index = int(file.removesuffix(".png"))
                assert arrays[f"{prefix}-labels-idx1-ubyte"][index] == LABELS.index(name)
                with Image.open(out / split / name / file) as image:
                    assert image.mode == "L"
                    pixels = np.asarray(image)
                assert np.array_equal(pixels, arrays[f"{prefix}-images-idx3-ubyte"][index])


def test_the_subset_is_fixed_by_the_seed_and_a_smaller_one_is_part_of_a_larger(tmp_path):
    labels = np.arange(100) % 10  # ten images per class

    def draw(per_class, seed=0, split="train"):
        chosen = chosen_images(labels, per_class, seed, split, "test")
        return {label: list(indices) for label, indices in chosen.items()}

    # pinned: any machine and numpy version draws these (PCG64's raw stream is stable)
    assert draw(3)[0] == [10, 20, 30] and draw(3)[9] == [19, 39, 79]
    assert draw(3) == draw(3) and draw(3) != draw(3, seed=1)
    assert draw(3) != draw(3, split="test"), "each split has its own draw"
    assert all(set(draw(3)[c]) <= set(draw(6)[c]) for c in range(10))
    assert draw(None)[4] == list(range(4, 100, 10))
    with pytest.raises(SourceError, match=r"per_class.train is 11, but the train split has 10"):
        draw(11)

    write_files(tmp_path / "downloads" / "fashion-mnist", RELEASE["gz"])
    source = entry(tmp_path, per_class={"train": 2, "test": 1})
    trees = []
    for run in ("a", "b"):
        out = tmp_path / run / "fashion"
        prepare_dataset("fashion", source, tmp_path / "downloads", out, classes=10)
        trees.append((tree(out, "train"), tree(out, "test")))
    assert trees[0] == trees[1]


# --- the entry --------------------------------------------------------------------------

GOOD_ENTRIES = [
    {"route": "fashion_mnist"},
    {"route": "fashion_mnist", "per_class": {"train": 500, "test": None}, "seed": 0},
    {"route": "fashion_mnist", "installed": "/srv/fashion", "apt": False, "url": "http://m/"}
    | {"sha256": {"t10k-labels-idx1-ubyte": "ab" * 32}},
]
BAD_ENTRIES = [
    ({"per_class": {"train": 0}}, "per_class.train must be a whole number"),
    ({"per_class": {"valid": 5}}, "`per_class:` must map train and/or test"),
    ({"per_class": 500}, "`per_class:` must map train and/or test"),
    ({"seed": -1}, "`seed:` must be a whole number, 0 or more"),
    ({"apt": "yes"}, "`apt:` must be true or false"),
    ({"installed": ""}, "`installed:` must be a non-empty string"),
    ({"sha256": {"train-images": "ab" * 32}}, "sha256.train-images names no Fashion-MNIST file"),
    ({"sha256": {"train-labels-idx1-ubyte": "abc"}}, "sha256.train-labels-idx1-ubyte must be 64"),
    ({"files": {}}, "unknown key(s) ['files'] for route fashion_mnist"),
]


@pytest.mark.parametrize("source", GOOD_ENTRIES)
def test_the_schema_and_the_check_accept_good_entries_unchanged(source):
    from snakemake.utils import validate

    schema = yaml.safe_load(SCHEMA_FILE.read_text())
    jsonschema.Draft202012Validator(schema).validate(source)
    written = json.loads(json.dumps(source))
    validate(written, str(SCHEMA_FILE))  # as the workflow does, which fills in defaults
    assert written == source
    assert check_source("fashion", source) == source


@pytest.mark.parametrize(("keys", "named"), BAD_ENTRIES)
def test_the_schema_and_the_check_refuse_bad_entries_naming_the_key(keys, named):
    source = {"route": "fashion_mnist", **keys}
    schema = yaml.safe_load(SCHEMA_FILE.read_text())
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(schema).validate(source)
    with pytest.raises(SourceError) as refused:
        check_source("fashion", source)
    assert str(refused.value).startswith("dataset 'fashion' source: ")
    assert named in str(refused.value)


# --- the workflow -----------------------------------------------------------------------


def fashion_config(tmp_path: Path, source: dict) -> Path:
    """The digits setting with Fashion-MNIST as one of its two new tasks."""
    config = yaml.safe_load((ROOT / "config" / "digits.yaml").read_text())
    config["datasets"]["fashion"] = {"classes": 10, "transform": "cropped", "source": source}
    for ordering in config["orderings"].values():
        ordering[ordering.index("digits_5to9_rotated")] = "fashion"
    del config["datasets"]["digits_5to9_rotated"]
    path = tmp_path / "fashion.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow
def test_the_workflow_plans_then_downloads_and_prepares_fashion_mnist(tmp_path):
    installed = write_files(tmp_path / "installed", RELEASE["gz"])
    source = entry(tmp_path, installed=str(installed), per_class={"train": 3, "test": None})
    config = fashion_config(tmp_path, source)
    planned = snakemake("-n", "--cores", "2", "--configfile", str(config), workdir=tmp_path)
    counts = job_counts(planned.stdout)
    assert counts["download"] == 3 and counts["prepare"] == 3, "fashion's and the digits' two"
    paths = yaml.safe_load(config.read_text())["paths"]
    target = f"{paths['data']}/fashion/prepared.json"
    snakemake(target, "--cores", "2", "--configfile", str(config), workdir=tmp_path)
    prepared = json.loads((tmp_path / target).read_text())
    assert prepared["images"] == {"train": 30, "test": 30}
    assert prepared["read_from"] == str(installed)
    marker = json.loads((tmp_path / paths["downloads"] / "fashion.downloaded").read_text())
    assert [f["path"] for f in marker["files"]] == [str(installed / n) for n in RELEASE["gz"]]


def test_prepare_without_the_files_says_which_stage_fetches_them(tmp_path):
    with pytest.raises(SourceError) as refused:
        prepare_dataset("fashion", entry(tmp_path), tmp_path / "dl", tmp_path / "out", 10)
    assert str(refused.value) == (
        f"Fashion-MNIST's files are neither in {tmp_path / 'not-installed'} nor in "
        f"{tmp_path / 'dl' / 'fashion-mnist'}: the download stage (src/download.py) fetches them"
    )
    assert not (tmp_path / "out").exists()
