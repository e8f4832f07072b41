"""Each dataset route end to end on miniature archives in the real file layout (same
file names, annotation files and formats), served over loopback HTTP: download, prepare,
then check classes, splits and crops."""

from __future__ import annotations

import io
import json
import runpy
import subprocess
import sys
import tarfile
import warnings
import zipfile
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import yaml
from loopback import LoopbackServer, md5_of
from PIL import Image
from scipy.io import savemat

from piggyback.data.download import ChecksumError
from piggyback.data.prepare import PREPARED_MARKER, prepare_dataset
from piggyback.data.sources import AUTHORS_BOX_URL, SourceError, fetch_source
from piggyback.data.transforms import TaskTransform

ROOT = Path(__file__).resolve().parents[1]
SCHEMA_FILE = ROOT / "workflow" / "schemas" / "source.schema.yaml"
SCHEMA = yaml.safe_load(SCHEMA_FILE.read_text())


@pytest.fixture
def server():
    with LoopbackServer() as running:
        yield running


def image_bytes(width: int, height: int, seed: int, format: str = "JPEG") -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=format)
    return buffer.getvalue()


def tgz(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as bundle:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            bundle.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def zipped(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        for name, data in members.items():
            bundle.writestr(name, data)
    return buffer.getvalue()


def mat(variables: dict) -> bytes:
    buffer = io.BytesIO()
    savemat(buffer, variables)
    return buffer.getvalue()


def struct_array(records: list[dict]) -> np.ndarray:
    """A 1xN MATLAB struct array, as Stanford Cars' annotation files hold."""
    array = np.zeros((1, len(records)), dtype=[(key, object) for key in records[0]])
    for index, record in enumerate(records):
        for key, value in record.items():
            array[0, index][key] = value
    return array


def serve_all(server: LoopbackServer, files: dict[str, bytes]) -> dict:
    """Serve each file; the `files:` part of an `original` source entry."""
    return {
        name: {"url": server.serve(name, data), "md5": md5_of(data)} for name, data in files.items()
    }


def run_route(dataset, source, tmp_path, classes):
    downloads, out = tmp_path / "downloads", tmp_path / "data" / dataset
    fetch_source(dataset, source, downloads)
    summary = prepare_dataset(dataset, source, downloads, out, classes)
    return out, summary


def tree(out: Path, split: str) -> dict[str, list[str]]:
    return {c.name: sorted(f.name for f in c.iterdir()) for c in sorted((out / split).iterdir())}


def image_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size


# --- CUB-200-2011 -----------------------------------------------------------------------

CUB_CLASSES = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]
# image id -> (class id, is_train, box x y w h)
CUB_IMAGES = {
    1: (1, 1, (3.0, 4.0, 20.0, 10.0)),
    2: (1, 0, (0.0, 0.0, 40.0, 30.0)),
    3: (2, 1, (10.4, 5.6, 12.0, 8.0)),
    4: (2, 0, (1.0, 2.0, 5.0, 6.0)),
    5: (3, 1, (30.0, 20.0, 25.0, 25.0)),  # runs past the 40x30 image: clipped to 10x10
    6: (3, 0, (2.0, 2.0, 30.0, 20.0)),
}


def cub_archive() -> bytes:
    members = {"attributes.txt": b"1 has_bill_shape::curved\n"}
    lines = {"images": [], "labels": [], "split": [], "boxes": []}
    for image_id, (class_id, is_train, box) in CUB_IMAGES.items():
        relative = f"{CUB_CLASSES[class_id - 1]}/{CUB_CLASSES[class_id - 1][4:]}_{image_id:04d}.jpg"
        members[f"CUB_200_2011/images/{relative}"] = image_bytes(40, 30, image_id)
        lines["images"].append(f"{image_id} {relative}")
        lines["labels"].append(f"{image_id} {class_id}")
        lines["split"].append(f"{image_id} {is_train}")
        lines["boxes"].append(f"{image_id} " + " ".join(f"{v:.1f}" for v in box))
    for key, file_name in [
        ("images", "images.txt"),
        ("labels", "image_class_labels.txt"),
        ("split", "train_test_split.txt"),
        ("boxes", "bounding_boxes.txt"),
    ]:
        members[f"CUB_200_2011/{file_name}"] = ("\n".join(lines[key]) + "\n").encode()
    classes = "".join(f"{i} {name}\n" for i, name in enumerate(CUB_CLASSES, start=1))
    members["CUB_200_2011/classes.txt"] = classes.encode()
    members["CUB_200_2011/README"] = b"CUB-200-2011\n"
    return tgz(members)


def test_cub200_is_split_officially_and_cropped_to_the_boxes(server, tmp_path):
    source = {
        "route": "original",
        "kind": "cub200",
        "files": serve_all(server, {"CUB_200_2011.tgz": cub_archive()}),
    }
    out, summary = run_route("cubs_cropped", source, tmp_path, classes=3)
    assert tree(out, "train") == {
        "001.Black_footed_Albatross": ["Black_footed_Albatross_0001.jpg"],
        "002.Laysan_Albatross": ["Laysan_Albatross_0003.jpg"],
        "003.Sooty_Albatross": ["Sooty_Albatross_0005.jpg"],
    }
    assert [len(v) for v in tree(out, "test").values()] == [1, 1, 1]
    sizes = {p.name: image_size(p) for p in out.rglob("*.jpg")}
    assert sizes["Black_footed_Albatross_0001.jpg"] == (20, 10)
    assert sizes["Black_footed_Albatross_0002.jpg"] == (40, 30)
    assert sizes["Laysan_Albatross_0003.jpg"] == (12, 8)
    assert sizes["Sooty_Albatross_0005.jpg"] == (10, 10)
    assert summary == json.loads((out / PREPARED_MARKER).read_text())
    assert summary["images"] == {"train": 3, "test": 3} and summary["kind"] == "cub200"
    assert sorted(p.name for p in out.parent.iterdir()) == ["cubs_cropped"]


def test_cropped_pixels_are_the_box_of_the_original(server, tmp_path):
    source = {
        "route": "original",
        "kind": "cub200",
        "files": serve_all(server, {"CUB_200_2011.tgz": cub_archive()}),
    }
    out, _ = run_route("cubs_cropped", source, tmp_path, classes=3)
    with Image.open(io.BytesIO(image_bytes(40, 30, 1))) as original:
        expected = np.asarray(original.crop((3, 4, 23, 14)), dtype=float)
    with Image.open(next(out.rglob("Black_footed_Albatross_0001.jpg"))) as cropped:
        assert np.abs(np.asarray(cropped, dtype=float) - expected).mean() < 12  # JPEG noise


# --- Stanford Cars ----------------------------------------------------------------------

CAR_CLASSES = ["AM General Hummer SUV 2000", "Ram C/V Cargo Van Minivan 2012", "smart fortwo"]
# numbered like the official class ids; the '/' of a real class name cannot be in a folder name
CAR_FOLDERS = ["001.AM General Hummer SUV 2000", "002.Ram C-V Cargo Van Minivan 2012"]
CAR_FOLDERS.append("003.smart fortwo")


def cars_annotations(records: list[tuple[int, tuple[int, int, int, int], str]], labels=True):
    rows = []
    for class_id, (x1, y1, x2, y2), fname in records:
        row = {
            "bbox_x1": np.array([[x1]], np.uint16),
            "bbox_y1": np.array([[y1]], np.uint16),
            "bbox_x2": np.array([[x2]], np.uint16),
            "bbox_y2": np.array([[y2]], np.uint16),
        }
        if labels:
            row["class"] = np.array([[class_id]], np.uint8)
        row["fname"] = fname
        rows.append(row)
    return {"annotations": struct_array(rows)}


CARS_TRAIN = [(1, (2, 3, 22, 13), "00001.jpg"), (2, (0, 0, 40, 30), "00002.jpg")]
CARS_TRAIN += [(3, (5, 5, 15, 25), "00003.jpg"), (2, (1, 1, 9, 9), "00004.jpg")]
CARS_TEST = [(1, (4, 4, 14, 14), "00001.jpg"), (2, (0, 10, 30, 20), "00002.jpg")]
CARS_TEST += [(3, (6, 7, 26, 17), "00003.jpg")]


def cars_files() -> dict[str, bytes]:
    meta = {"class_names": np.array(CAR_CLASSES, dtype=object).reshape(1, -1)}
    devkit = {
        "devkit/cars_meta.mat": mat(meta),
        "devkit/cars_train_annos.mat": mat(cars_annotations(CARS_TRAIN)),
        "devkit/cars_test_annos.mat": mat(cars_annotations(CARS_TEST, labels=False)),
        "devkit/README.txt": b"devkit\n",
    }
    return {
        "cars_train.tgz": tgz(
            {f"cars_train/{r[2]}": image_bytes(40, 30, i) for i, r in enumerate(CARS_TRAIN)}
        ),
        "cars_test.tgz": tgz(
            {f"cars_test/{r[2]}": image_bytes(40, 30, 9 + i) for i, r in enumerate(CARS_TEST)}
        ),
        "car_devkit.tgz": tgz(devkit),
        "cars_test_annos_withlabels.mat": mat(cars_annotations(CARS_TEST)),
    }


def test_stanford_cars_is_split_officially_and_cropped_to_the_boxes(server, tmp_path):
    source = {
        "route": "original",
        "kind": "stanford_cars",
        "files": serve_all(server, cars_files()),
    }
    out, summary = run_route("stanford_cars_cropped", source, tmp_path, classes=3)
    hummer, ram, smart = CAR_FOLDERS
    assert tree(out, "train") == {
        hummer: ["00001.jpg"],
        ram: ["00002.jpg", "00004.jpg"],
        smart: ["00003.jpg"],
    }
    assert tree(out, "test") == {hummer: ["00001.jpg"], ram: ["00002.jpg"], smart: ["00003.jpg"]}
    for split, records in (("train", CARS_TRAIN), ("test", CARS_TEST)):
        for class_id, (x1, y1, x2, y2), fname in records:
            assert image_size(out / split / CAR_FOLDERS[class_id - 1] / fname) == (x2 - x1, y2 - y1)
    assert summary["images"] == {"train": 4, "test": 3}


# --- Oxford Flowers 102 -----------------------------------------------------------------

FLOWER_LABELS = [1, 2, 3, 1, 2, 3, 1, 2, 3, 3]  # image_00001 .. image_00010
FLOWER_SETS = {"trnid": [1, 2, 3], "valid": [4, 5, 6], "tstid": [7, 8, 9, 10]}


def flowers_files() -> dict[str, bytes]:
    images = {f"jpg/image_{i:05d}.jpg": image_bytes(20, 16, i) for i in range(1, 11)}
    return {
        "102flowers.tgz": tgz(images),
        "imagelabels.mat": mat({"labels": np.array([FLOWER_LABELS], dtype=np.uint8)}),
        "setid.mat": mat({k: np.array([v], dtype=np.uint16) for k, v in FLOWER_SETS.items()}),
    }


def test_flowers102_trains_on_train_plus_val_and_tests_on_test(server, tmp_path):
    files = flowers_files()
    source = {"route": "original", "kind": "flowers102", "files": serve_all(server, files)}
    out, summary = run_route("flowers", source, tmp_path, classes=3)
    assert tree(out, "train") == {
        "001": ["image_00001.jpg", "image_00004.jpg"],
        "002": ["image_00002.jpg", "image_00005.jpg"],
        "003": ["image_00003.jpg", "image_00006.jpg"],
    }
    assert tree(out, "test") == {
        "001": ["image_00007.jpg"],
        "002": ["image_00008.jpg"],
        "003": ["image_00009.jpg", "image_00010.jpg"],
    }
    with tarfile.open(fileobj=io.BytesIO(files["102flowers.tgz"])) as bundle:
        original = bundle.extractfile("jpg/image_00007.jpg").read()
    assert (out / "test" / "001" / "image_00007.jpg").read_bytes() == original  # not re-encoded
    assert summary["images"] == {"train": 6, "test": 4}


# --- TU-Berlin sketches -----------------------------------------------------------------


def sketches_zip() -> bytes:
    members = {}
    for offset, name in ((0, "airplane"), (10, "alarm clock")):
        for number in range(offset + 1, offset + 11):
            members[f"png/{name}/{number}.png"] = image_bytes(8, 8, number, "PNG")
    members["png/filelist.txt"] = "\n".join(members).encode()
    return zipped(members)


def test_sketches_put_every_fifth_sketch_by_number_in_test(server, tmp_path):
    data = sketches_zip()
    source = {
        "route": "original",
        "kind": "sketches",
        "files": {"sketches_png.zip": {"url": server.serve("sketches_png.zip", data), "md5": None}},
    }
    out, summary = run_route("sketches", source, tmp_path, classes=2)
    assert tree(out, "test") == {
        "airplane": ["10.png", "5.png"],
        "alarm clock": ["15.png", "20.png"],
    }
    assert len(tree(out, "train")["airplane"]) == 8
    assert summary["images"] == {"train": 16, "test": 4}


def test_wikiart_has_no_original_route(tmp_path):
    source = {"route": "original", "kind": "wikiart", "files": {}}
    with pytest.raises(SourceError, match="route: authors"):
        fetch_source("wikiart", source, tmp_path)


# --- the authors' archives --------------------------------------------------------------


def authors_zip(folder: str = "cubs_cropped") -> bytes:
    members = {"__MACOSX/._cubs_cropped": b"junk"}
    for split, count in (("train", 3), ("test", 1)):
        for class_name in ("001.Black_footed_Albatross", "002.Laysan_Albatross"):
            for index in range(count):
                members[f"{folder}/{split}/{class_name}/{index}.jpg"] = image_bytes(6, 6, index)
    return zipped(members)


def test_authors_archive_from_a_mirror_unpacks_even_when_nested(server, tmp_path):
    data = authors_zip()
    source = {
        "route": "authors",
        "archive": "cubs_cropped.zip",
        "url": server.serve("cubs_cropped.zip", data),
        "md5": md5_of(data),
    }
    out, summary = run_route("cubs_cropped", source, tmp_path, classes=2)
    assert sorted(p.name for p in out.iterdir()) == [PREPARED_MARKER, "test", "train"]
    assert summary["images"] == {"train": 6, "test": 2} and summary["route"] == "authors"


def test_authors_archive_placed_by_hand_is_used_without_a_url(tmp_path):
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    (downloads / "flowers.zip").write_bytes(authors_zip("flowers"))
    source = {"route": "authors", "url": None, "md5": None}
    fetched = fetch_source("flowers", source, downloads)
    assert [f.path.name for f in fetched] == ["flowers.zip"] and not fetched[0].downloaded
    summary = prepare_dataset("flowers", source, downloads, tmp_path / "data" / "flowers", 2)
    assert summary["archive"] == "flowers.zip"


def test_missing_authors_archive_says_what_to_put_where(tmp_path):
    source = {"route": "authors", "archive": "cubs_cropped.zip", "url": None, "md5": None}
    with pytest.raises(SourceError) as caught:
        fetch_source("cubs_cropped", source, tmp_path / "downloads")
    message = str(caught.value)
    assert "'cubs_cropped.zip'" in message and AUTHORS_BOX_URL in message
    assert f"{tmp_path / 'downloads'}/" in message


def test_authors_archive_placed_by_hand_with_the_wrong_md5_is_refused(tmp_path):
    (tmp_path / "wikiart.zip").write_bytes(b"something else")
    source = {"route": "authors", "md5": "0" * 32}
    with pytest.raises(ChecksumError, match="wikiart.zip") as caught:
        fetch_source("wikiart", source, tmp_path)
    assert "0" * 32 in str(caught.value) and (tmp_path / "wikiart.zip").exists()


# --- digits, class counts, reruns, the command lines -------------------------------------


def test_digits_route_writes_the_demo_task(tmp_path):
    source = {"route": "digits", "digits": [5, 6, 7], "view": "mirrored", "per_class": 10}
    source |= {"test_fraction": 0.3, "seed": 0}
    assert fetch_source("digits", source, tmp_path / "downloads") == []
    out, summary = run_route("digits", source, tmp_path, classes=3)
    assert summary["images"] == {"train": 21, "test": 9}
    assert sorted(tree(out, "train")) == ["digit_5", "digit_6", "digit_7"]


def test_wrong_class_count_names_the_folder_and_both_numbers(tmp_path):
    source = {"route": "digits", "digits": [1, 2], "per_class": 5}
    out = tmp_path / "data" / "digits"
    with pytest.raises(SourceError) as caught:
        prepare_dataset("digits", source, tmp_path, out, classes=10)
    assert str(out) in str(caught.value) and "2 classes" in str(caught.value)
    assert "says 10" in str(caught.value)
    assert list((tmp_path / "data").iterdir()) == []  # nothing half-prepared is left


def test_digits_entry_with_an_unknown_view_is_refused_by_name(tmp_path):
    source = {"route": "digits", "digits": [1, 2], "view": "upside-down"}
    with pytest.raises(SourceError, match="unknown digits view 'upside-down'"):
        prepare_dataset("digits", source, tmp_path, tmp_path / "data" / "digits")


def test_failed_rerun_keeps_the_earlier_complete_dataset(tmp_path):
    out = tmp_path / "data" / "digits"
    prepare_dataset("digits", {"route": "digits", "digits": [1, 2], "per_class": 5}, tmp_path, out)
    with pytest.raises(SourceError):
        prepare_dataset("digits", {"route": "digits", "digits": [1, 2, 3]}, tmp_path, out, 2)
    assert json.loads((out / PREPARED_MARKER).read_text())["classes"] == 2


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ({"route": "box"}, "route 'box' is not one of"),
        ({"route": "authors", "mirror": "x"}, r"unknown key\(s\) \['mirror'\]"),
        ({"route": "original", "kind": "cub200", "files": {}}, "lacks \\['CUB_200_2011.tgz'\\]"),
        ({"route": "original", "kind": "imagenet", "files": {}}, "kind 'imagenet'"),
    ],
)
def test_bad_source_entries_are_refused_by_name(tmp_path, source, message):
    with pytest.raises(SourceError, match=message):
        fetch_source("x", source, tmp_path)


def test_original_file_without_url_or_copy_names_the_file(tmp_path):
    source = {"route": "original", "kind": "sketches", "files": {"sketches_png.zip": {}}}
    with pytest.raises(SourceError, match="sketches_png.zip is missing .* files.sketches_png.zip"):
        fetch_source("sketches", source, tmp_path)


def run_script(script: str, args: list[str], monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", [script, *args, "--no-progress"])
    runpy.run_path(str(ROOT / "src" / script), run_name="__main__")


def test_command_lines_download_once_then_prepare(server, tmp_path, monkeypatch, capsys):
    data = cub_archive()
    source = {
        "route": "original",
        "kind": "cub200",
        "files": serve_all(server, {"CUB_200_2011.tgz": data}),
    }
    common = ["--dataset", "cubs_cropped", "--source-json", json.dumps(source)]
    common += ["--downloads", str(tmp_path / "downloads")]
    done = tmp_path / "downloads" / "cubs_cropped.downloaded"
    run_script("download.py", [*common, "--done", str(done)], monkeypatch)
    run_script("download.py", [*common, "--done", str(done)], monkeypatch)
    assert len(server.requests) == 1  # the rerun found the verified file and fetched nothing
    marker = json.loads(done.read_text())
    assert marker["files"][0]["name"] == "CUB_200_2011.tgz"
    assert marker["files"][0]["md5"] == md5_of(data)
    out = tmp_path / "data" / "cubs_cropped"
    run_script("prepare.py", [*common, "--classes", "3", "--out", str(out)], monkeypatch)
    assert "3 classes, 3 train and 3 test images" in capsys.readouterr().out
    assert (out / PREPARED_MARKER).is_file()


def test_command_line_failure_is_one_line(tmp_path, monkeypatch, capsys):
    source = json.dumps({"route": "authors", "archive": "sketches.zip"})
    args = ["--dataset", "sketches", "--source-json", source, "--downloads", str(tmp_path)]
    with pytest.raises(SystemExit) as exited:
        run_script("download.py", [*args, "--done", str(tmp_path / "d")], monkeypatch)
    error = capsys.readouterr().err
    assert exited.value.code == 1 and error.count("\n") == 1
    assert error.startswith("error: ") and "sketches.zip" in error
    assert not (tmp_path / "d").exists()


def test_command_line_refuses_bad_json(tmp_path, monkeypatch, capsys):
    args = ["--dataset", "x", "--source-json", "{route: authors}", "--downloads", str(tmp_path)]
    with pytest.raises(SystemExit):
        run_script("prepare.py", [*args, "--out", str(tmp_path / "x")], monkeypatch)
    assert capsys.readouterr().err.startswith("error: --source-json is not valid JSON")


# --- the schema the workflow validates the config with -----------------------------------

SCHEMA_EXAMPLES = [
    {"route": "authors", "archive": "cubs_cropped.zip", "url": None, "md5": None},
    {
        "route": "original",
        "kind": "cub200",
        "files": {
            "CUB_200_2011.tgz": {
                "url": "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz",
                "md5": "97eceeb196236b17998738112f37df78",
            }
        },
    },
    {
        "route": "original",
        "kind": "sketches",
        "files": {"sketches_png.zip": {"url": "u", "md5": None}},
    },
    {"route": "digits", "digits": [5, 6, 7, 8, 9], "view": "mirrored", "per_class": 60}
    | {"test_fraction": 0.3, "seed": 0},
    {"route": "digits", "digits": [0, 1]},
]


@pytest.mark.parametrize("source", SCHEMA_EXAMPLES)
def test_schema_accepts_the_documented_entries_and_leaves_them_unchanged(source):
    from snakemake.utils import validate

    jsonschema.Draft202012Validator(SCHEMA).validate(source)
    entry = json.loads(json.dumps(source))
    validate(entry, str(SCHEMA_FILE))  # as the workflow does, which fills in defaults
    assert entry == source


@pytest.mark.parametrize(
    "source",
    [
        {"route": "original", "kind": "wikiart", "files": {}},
        {"route": "original", "kind": "flowers102", "files": {"setid.mat": {}}},
        {"route": "authors", "md5": "short"},
        {"route": "digits", "digits": [1, 2], "colour": "red"},
    ],
)
def test_schema_refuses_bad_entries(source, tmp_path):
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(SCHEMA).validate(source)


# --- images above Pillow's decompression-bomb limit -------------------------------------


def test_images_above_pillows_limit_stop_neither_prepare_nor_training(tmp_path, monkeypatch):
    """With Pillow's limit set to 1000 pixels, a 40 x 30 image (which Pillow warns about)
    and an 80 x 60 one (which it refuses) are named in prepare's log and its record, and
    decoded whole by training's DataLoader and by the cache, without a warning. (The
    transforms crop only images they have resized, here to 18 pixels on the shorter
    side: their crops stay below the limit, as with real images and the real limit.)"""
    from piggyback.data.cache.format import build_cache
    from piggyback.data.datasets import load_task_data, make_loader

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    members = {}
    for split in ("train", "test"):
        for label in ("a", "b"):
            members[f"flowers/{split}/{label}/small.jpg"] = image_bytes(8, 8, 0)
    members["flowers/train/a/wide.jpg"] = image_bytes(40, 30, 1)
    members["flowers/test/b/large.jpg"] = image_bytes(80, 60, 2)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    (downloads / "flowers.zip").write_bytes(zipped(members))
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(members["flowers/test/b/large.jpg"]))  # as Pillow would
    logged = []
    out = tmp_path / "data" / "flowers"
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        summary = prepare_dataset(
            "flowers", {"route": "authors"}, downloads, out, 2, log=logged.append
        )
        train, test = load_task_data(out, TaskTransform("standard", 16), log=lambda _: None)
        images = [
            batch for loader in (train, test) for batch, _ in make_loader(loader, 3, False, 0)
        ]
        cache = build_cache(out, TaskTransform("standard", 16), workers=2, log=lambda _: None)
    assert summary["large_images"] == [
        {"image": "train/a/wide.jpg", "width": 40, "height": 30},
        {"image": "test/b/large.jpg", "width": 80, "height": 60},
    ]
    assert [line.split(":")[0] for line in logged] == [
        f"{out}/train/a/wide.jpg",
        f"{out}/test/b/large.jpg",
    ]
    assert "above Pillow's limit" in logged[1] and "decoded whole" in logged[1]
    assert sum(len(batch) for batch in images) == 6 and len(cache.splits["test"]) == 3
    assert Image.MAX_IMAGE_PIXELS == 1000  # lifted only while opening


def test_the_prepare_and_download_stages_import_no_torch():
    """Listing and writing image files needs no torch: a prepare or download job starts
    in a fraction of a second, not the 3.5 s torch's import costs."""
    code = (
        "import sys, runpy\n"
        "for script in ('prepare', 'download'):\n"
        "    sys.argv = [script, '--help']\n"
        "    try: runpy.run_path(f'src/{script}.py', run_name='__main__')\n"
        "    except SystemExit: pass\n"
        "print('torch' in sys.modules, 'torchvision' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert done.stdout.splitlines()[-1] == "False False"


def test_a_split_is_listed_in_image_folders_order_with_its_skipped_files(tmp_path):
    """scan_split lists what torchvision's ImageFolder would, in its order (so the loaders'
    batches are those of the authors' code), and what it skips."""
    from torchvision.datasets import ImageFolder

    from piggyback.data.images import scan_split

    pixels = Image.new("RGB", (4, 4))
    for relative in ["b/2.png", "b/10.JPG", "a/z/1.png", "a/0.jpeg", "a/.hidden/3.png"]:
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        pixels.save(tmp_path / relative, format="PNG")
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    (tmp_path / "b" / ".DS_Store").write_text("")

    def visible_image(path: str) -> bool:
        parts = Path(path).relative_to(tmp_path).parts
        return not any(p.startswith(".") for p in parts) and path.lower().endswith(
            (".jpg", ".jpeg", ".png")
        )

    reference = ImageFolder(str(tmp_path), is_valid_file=visible_image)
    (tmp_path / ".ipynb_checkpoints").mkdir()  # a hidden folder is no class (ImageFolder's is)
    split = scan_split(tmp_path)
    assert split.classes == reference.classes == ["a", "b"]
    assert split.samples == reference.samples
    assert sorted(split.skipped) == ["a/.hidden/3.png", "a/notes.txt", "b/.DS_Store"]
