"""The `folder` route (piggyback.data.folders): a dataset already on disk is checked and
recorded by prepare, never copied or written to, and a later change in it stops the jobs
that read it, naming the files."""

from __future__ import annotations

import json
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from piggyback.data.folders import check_folder
from piggyback.data.images import DataError
from piggyback.data.prepare import PREPARED_MARKER, prepare_dataset
from piggyback.data.sources import SourceError, fetch_source

SRC = Path(__file__).resolve().parents[1] / "src"
CLASSES = ("daisy", "rose", "tulip")


def make_folder(root: Path) -> Path:
    """The authors' layout: train/<class>/ and test/<class>/, PNGs and a stray README."""
    rng = np.random.default_rng(0)
    for split, count in (("train", 4), ("test", 2)):
        for label in CLASSES:
            folder = root / split / label
            folder.mkdir(parents=True)
            for index in range(count):
                pixels = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{index}.png")
    (root / "train" / "README.txt").write_text("not an image, not a class")
    return root


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under ``root`` with its mode, size and modification time."""
    entries = {}
    for path in sorted(root.rglob("*")):
        status = path.stat()
        entries[str(path.relative_to(root))] = (status.st_mode, status.st_size, status.st_mtime_ns)
    return entries


def read_only(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def writable(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        path.chmod(path.stat().st_mode | stat.S_IWUSR)


@pytest.fixture
def folder(tmp_path):
    root = make_folder(tmp_path / "datasets" / "flowers")
    yield root
    writable(root)  # so that pytest can remove it


def prepare(root: Path, out: Path, classes=3, log=None):
    source = {"route": "folder", "path": str(root)}
    return prepare_dataset("flowers", source, out.parent, out, classes, log=log or print)


def test_a_read_only_folder_is_recorded_not_copied_nor_changed(folder, tmp_path):
    read_only(folder)
    before = snapshot(folder)
    assert fetch_source("flowers", {"route": "folder", "path": str(folder)}, tmp_path) == []
    out = tmp_path / "data" / "flowers"
    summary = prepare(folder, out)
    assert snapshot(folder) == before
    assert [p.name for p in out.iterdir()] == [PREPARED_MARKER]
    record = json.loads((out / PREPARED_MARKER).read_text())
    assert record == summary
    assert record["route"] == "folder" and record["path"] == str(folder)
    assert record["classes"] == 3 and record["images"] == {"train": 12, "test": 6}
    assert record["files"]["test"] == {
        f"test/{label}/{index}.png": (folder / "test" / label / f"{index}.png").stat().st_size
        for label in CLASSES
        for index in range(2)
    }
    check_folder(folder, out / PREPARED_MARKER)  # unchanged: accepted


def remove_split(root):
    shutil.rmtree(root / "test")


def empty_class(root):
    for image in (root / "train" / "rose").iterdir():
        image.unlink()


def other_classes(root):
    (root / "test" / "tulip").rename(root / "test" / "lily")


def unreadable_image(root):
    (root / "train" / "daisy" / "1.png").write_bytes(b"\x89PNG broken")


@pytest.mark.parametrize(
    ("damage", "classes", "message"),
    [
        (remove_split, 3, "test does not exist"),
        (empty_class, 3, "train/rose has no images"),
        (other_classes, 3, "only in train/: ['tulip'], only in test/: ['lily']"),
        (None, 5, "has 3 classes, the dataset registry says 5"),
        (unreadable_image, 3, "cannot read image"),
    ],
    ids=["missing_split", "empty_class", "other_classes", "class_count", "unreadable_image"],
)
def test_a_folder_that_is_not_the_dataset_is_refused_naming_it(
    folder, tmp_path, damage, classes, message
):
    if damage is not None:
        damage(folder)
    out = tmp_path / "data" / "flowers"
    with pytest.raises(SourceError, match=re.escape(message)) as refused:
        prepare(folder, out, classes)
    assert str(folder) in str(refused.value) and "route folder" in str(refused.value)
    assert not out.exists()


def test_a_missing_folder_and_the_pipelines_own_data_folder_are_refused(folder, tmp_path):
    with pytest.raises(SourceError, match="is not a folder"):
        prepare(tmp_path / "nowhere", tmp_path / "data" / "flowers")
    before = snapshot(folder)
    with pytest.raises(SourceError, match="overlaps the pipeline's data folder"):
        prepare(folder, folder)  # prepare would replace it
    assert snapshot(folder) == before


def change(root: Path, kind: str) -> None:
    if kind == "added":
        shutil.copyfile(root / "train" / "rose" / "0.png", root / "train" / "rose" / "9.png")
    elif kind == "removed":
        (root / "test" / "tulip" / "1.png").unlink()
    else:
        with open(root / "train" / "daisy" / "2.png", "ab") as handle:
            handle.write(b"\0")


@pytest.mark.parametrize(
    ("kind", "named"),
    [
        ("added", "1 file(s) added (train/rose/9.png)"),
        ("removed", "1 file(s) removed (test/tulip/1.png)"),
        ("resized", "1 file(s) changed in size (train/daisy/2.png)"),
    ],
)
def test_a_change_after_prepare_is_reported_not_used(folder, tmp_path, kind, named):
    out = tmp_path / "data" / "flowers"
    prepare(folder, out)
    change(folder, kind)
    with pytest.raises(DataError, match=r"changed since it was prepared") as refused:
        check_folder(folder, out / PREPARED_MARKER)
    assert named in str(refused.value)
    assert f"delete {out / PREPARED_MARKER}" in str(refused.value)


def test_the_jobs_that_read_a_changed_folder_stop_in_one_line(folder, tmp_path):
    """train.py, cache.py and evaluate.py check --data against the record first."""
    out = tmp_path / "data" / "flowers"
    prepare(folder, out)
    change(folder, "added")
    record = out / PREPARED_MARKER
    data = ["--data", str(folder), "--transform", "standard", "--image-size", "16"]
    data += ["--workers", "0", "--prepared", str(record)]
    tasks = {"flowers": {"data": str(folder), "transform": "standard", "prepared": str(record)}}
    commands = {
        "train.py": [
            *("--arch", "resnet18", "--weights", "random", "--dataset", "flowers", *data),
            *("--crop", "2017", "--eval-batch-size", "8", "--resume-every", "0"),
            *("--device", "cpu", "--out", str(tmp_path / "t.pt")),
            *("--metrics", str(tmp_path / "t.tsv")),
        ],
        "cache.py": [*data, "--out", str(tmp_path / "c.safetensors")],
        "evaluate.py": [
            *(str(tmp_path / "packed.safetensors"), "--arch", "resnet18"),
            *("--tasks-json", json.dumps(tasks), "--image-size", "16", "--batch-size", "8"),
            *("--workers", "0", "--out", str(tmp_path / "e.json")),
        ],
    }
    for script, arguments in commands.items():
        done = subprocess.run(
            [sys.executable, str(SRC / script), *arguments], capture_output=True, text=True
        )
        assert done.returncode == 1, (script, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (script, done.stderr)
        assert "train/rose/9.png" in lines[0], script
    assert not any((tmp_path / name).exists() for name in ("t.pt", "c.safetensors", "e.json"))


def test_prepare_script_names_the_folder(folder, tmp_path):
    out = tmp_path / "data" / "flowers"
    source = json.dumps({"route": "folder", "path": str(folder)})
    done = subprocess.run(
        [sys.executable, str(SRC / "prepare.py"), "--dataset", "flowers", "--source-json"]
        + [source, "--downloads", str(tmp_path), "--classes", "3", "--out", str(out)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip().endswith(f"12 train and 6 test images in {folder}")
