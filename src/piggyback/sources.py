"""Where each dataset comes from, and how it becomes ``<out>/{train,test}/<class>/<image>``.

A dataset's ``source`` entry in the config names one route:

- ``authors``: the archives the authors prepared (their Box folder, downloaded by the
  user in a browser, or from the user's own mirror). What their numbers were measured on.
- ``original``: the datasets' own archives, split and cropped here the documented way.
  Closest to the authors' data, not identical (see docs/datasets.md).
- ``digits``: small real tasks from scikit-learn's digits, for the demo and the tests.

Preparation happens in a temporary folder beside ``out`` that is renamed at the end, and
``prepared.json`` is written last, so a half-prepared dataset is never seen.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from piggyback.archives import extract_archive, replace_folder
from piggyback.atomic import atomic_write_json
from piggyback.digits import write_digits_task
from piggyback.downloads import FetchedFile, checksum_from, download, verify_file

AUTHORS_BOX_URL = "https://uofi.box.com/s/ixncr3d85guosajywhf7yridszzg5zsq"
PREPARED_MARKER = "prepared.json"
SPLITS = ("train", "test")
ROUTES = ("authors", "original", "digits")
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
SKETCH_TEST_EVERY = 5  # in each class, sorted by number, every 5th sketch is a test one
_ROUTE_KEYS = {
    "authors": {"route", "archive", "url", "md5", "sha256"},
    "original": {"route", "kind", "files"},
    "digits": {"route", "digits", "view", "per_class", "test_fraction", "seed"},
}
_FILE_KEYS = {"url", "md5", "sha256"}


class SourceError(ValueError):
    """A dataset cannot be fetched or prepared as configured; the message says why and
    what to do."""


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
    return source


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
    fetched = []
    for needed in source_files(dataset, source):
        path = downloads / needed.name
        if not path.is_file() and not needed.url:
            raise SourceError(_missing_file_message(dataset, source, needed.name, downloads))
        fetched.append(
            download(needed.url, path, needed.md5, needed.sha256, progress=progress)
            if needed.url
            else verify_file(path, checksum_from(needed.md5, needed.sha256))
        )
    return fetched


def _missing_file_message(dataset: str, source: dict, name: str, downloads: Path) -> str:
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


def prepare_dataset(
    dataset: str,
    source: dict,
    downloads: Path,
    out: Path,
    classes: int | None = None,
    progress: bool = False,
) -> dict:
    """Build ``out/{train,test}/<class>/<image>`` and ``out/prepared.json`` (last).

    The work happens in temporary folders beside ``out``; ``out`` appears, or is
    replaced, only once everything is written and the class count is as expected.
    """
    downloads, out = Path(downloads), Path(out)
    files = {}
    for needed in source_files(dataset, source):
        path = downloads / needed.name
        if not path.is_file():
            raise SourceError(
                _missing_file_message(dataset, source, needed.name, downloads)
                + " (download.py fetches it)"
            )
        files[needed.name] = path
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.preparing-", dir=out.parent))
    scratch = Path(tempfile.mkdtemp(prefix=f".{out.name}.unpacked-", dir=out.parent))
    try:
        route = source["route"]
        if route == "authors":
            _prepare_authors(files, staging, scratch, progress)
        elif route == "digits":
            _prepare_digits(source, staging)
        else:
            ORIGINAL_ROUTES[source["kind"]](files, staging, scratch, dataset, progress)
        shutil.rmtree(scratch)
        summary = _summarise(dataset, source, staging, out, classes)
        atomic_write_json(summary, staging / PREPARED_MARKER)
        replace_folder(staging, out)
    finally:
        for folder in (staging, scratch):
            if folder.exists():
                shutil.rmtree(folder)
    return summary


def _summarise(dataset: str, source: dict, staging: Path, out: Path, classes: int | None) -> dict:
    """Counts per split, after checking both splits have the registry's classes."""
    found = {}
    images = {}
    for split in SPLITS:
        folder = staging / split
        class_dirs = sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
        found[split] = [p.name for p in class_dirs]
        images[split] = sum(
            1 for d in class_dirs for f in d.iterdir() if f.is_file() and not f.name.startswith(".")
        )
    if found["train"] != found["test"]:
        only_train = sorted(set(found["train"]) - set(found["test"]))
        only_test = sorted(set(found["test"]) - set(found["train"]))
        raise SourceError(
            f"{out}: train/ and test/ would have different classes "
            f"(only in train/: {only_train[:5]}, only in test/: {only_test[:5]})"
        )
    if classes is not None and len(found["train"]) != classes:
        raise SourceError(
            f"{out}: the prepared data has {len(found['train'])} classes, the dataset "
            f"registry says {classes}; check the archive, or `classes:` for {dataset} "
            "in the config"
        )
    summary = {
        "dataset": dataset,
        "route": source["route"],
        "classes": len(found["train"]),
        "images": images,
    }
    if source["route"] == "original":
        summary["kind"] = source["kind"]
    elif source["route"] == "authors":
        summary["archive"] = authors_archive_name(dataset, source)
    return summary


# --- route: authors ---------------------------------------------------------------------


def _prepare_authors(files: dict[str, Path], staging: Path, scratch: Path, progress: bool) -> None:
    (archive,) = files.values()
    unpacked = extract_archive(archive, scratch / "archive", progress=progress)
    root = _find_split_root(unpacked, archive)
    for split in SPLITS:
        os.replace(root / split, staging / split)


def _find_split_root(unpacked: Path, archive: Path) -> Path:
    """The shallowest folder (at most two levels down) holding both train/ and test/."""
    level = [unpacked]
    for _ in range(3):
        hits = [f for f in level if (f / "train").is_dir() and (f / "test").is_dir()]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            names = [str(h.relative_to(unpacked)) for h in hits]
            raise SourceError(f"{archive} holds several datasets ({names}); expected one")
        level = [c for f in level for c in sorted(f.iterdir()) if _is_content_dir(c)]
    raise SourceError(
        f"{archive} holds no folder with both train/ and test/ "
        "(expected <name>/train/<class>/... and <name>/test/<class>/...)"
    )


def _is_content_dir(path: Path) -> bool:
    return path.is_dir() and not path.name.startswith((".", "__MACOSX"))


# --- route: digits ----------------------------------------------------------------------


def _prepare_digits(source: dict, staging: Path) -> None:
    try:
        write_digits_task(
            staging,
            digits=[int(d) for d in source["digits"]],
            view=source.get("view") or "plain",
            test_fraction=float(source.get("test_fraction", 0.3)),
            per_class=source.get("per_class"),
            seed=int(source.get("seed", 0)),
        )
    except (ValueError, TypeError) as error:
        raise SourceError(f"digits source entry {source}: {error}") from None


# --- route: original --------------------------------------------------------------------


def _prepare_cub200(
    files: dict[str, Path], staging: Path, scratch: Path, dataset: str, progress: bool
) -> None:
    """CUB-200-2011: the official split, each image cropped to its (x, y, w, h) box."""
    unpacked = extract_archive(files["CUB_200_2011.tgz"], scratch / "cub", progress=progress)
    root = _find_folder_holding(unpacked, "images.txt", files["CUB_200_2011.tgz"])
    images = _read_table(root / "images.txt", 1)
    labels = _read_table(root / "image_class_labels.txt", 1)
    is_train = _read_table(root / "train_test_split.txt", 1)
    boxes = _read_table(root / "bounding_boxes.txt", 4)
    class_names = _read_table(root / "classes.txt", 1)
    jobs = []
    for image_id, (relative,) in images.items():
        try:
            (label,), (train_flag,), box = labels[image_id], is_train[image_id], boxes[image_id]
            class_name = class_names[label][0]
        except KeyError as error:
            raise SourceError(
                f"{root}: image id {image_id} ({relative}) has no entry {error} in the "
                "label, split, box or class tables"
            ) from None
        x, y, w, h = (float(v) for v in box)
        split = "train" if train_flag == "1" else "test"
        dest = staging / split / _folder_name(class_name) / Path(relative).name
        jobs.append((root / "images" / relative, (x, y, x + w, y + h), dest))
    _crop_all(jobs, f"{dataset}: cropping", progress)


def _prepare_stanford_cars(
    files: dict[str, Path], staging: Path, scratch: Path, dataset: str, progress: bool
) -> None:
    """Stanford Cars: the official split, each image cropped to its (x1, y1, x2, y2) box."""
    devkit = _find_folder_holding(
        extract_archive(files["car_devkit.tgz"], scratch / "devkit", progress=progress),
        "cars_meta.mat",
        files["car_devkit.tgz"],
    )
    class_names = _mat_strings(devkit / "cars_meta.mat", "class_names")
    splits = {
        "train": (files["cars_train.tgz"], devkit / "cars_train_annos.mat"),
        "test": (files["cars_test.tgz"], files["cars_test_annos_withlabels.mat"]),
    }
    jobs = []
    for split, (archive, annotations_file) in splits.items():
        annotations = _mat_records(
            annotations_file,
            "annotations",
            ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname"),
        )
        unpacked = extract_archive(archive, scratch / split, progress=progress)
        folder = _find_folder_holding(unpacked, annotations[0]["fname"], archive)
        for record in annotations:
            label = int(record["class"])
            if not 1 <= label <= len(class_names):
                raise SourceError(
                    f"{annotations_file}: {record['fname']} has class {label}, outside "
                    f"1..{len(class_names)} of cars_meta.mat"
                )
            class_folder = f"{label:03d}.{_folder_name(class_names[label - 1])}"
            box = tuple(float(record[k]) for k in ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2"))
            dest = staging / split / class_folder / Path(record["fname"]).name
            jobs.append((folder / record["fname"], box, dest))
    _crop_all(jobs, f"{dataset}: cropping", progress)


def _prepare_flowers102(
    files: dict[str, Path], staging: Path, scratch: Path, dataset: str, progress: bool
) -> None:
    """Oxford Flowers 102: train = official train + val, test = official test."""
    labels = np.atleast_1d(_load_mat(files["imagelabels.mat"], ("labels",))["labels"])
    ids = _load_mat(files["setid.mat"], ("trnid", "valid", "tstid"))
    chosen = {
        "train": [*np.atleast_1d(ids["trnid"]), *np.atleast_1d(ids["valid"])],
        "test": list(np.atleast_1d(ids["tstid"])),
    }
    unpacked = extract_archive(files["102flowers.tgz"], scratch / "flowers", progress=progress)
    folder = _find_folder_holding(unpacked, "jpg", files["102flowers.tgz"]) / "jpg"
    moves = []
    for split, image_ids in chosen.items():
        for image_id in (int(i) for i in image_ids):
            if not 1 <= image_id <= len(labels):
                raise SourceError(
                    f"{files['setid.mat']}: image id {image_id} is outside 1..{len(labels)} "
                    "of imagelabels.mat"
                )
            name = _flower_file(image_id)
            label = int(labels[image_id - 1])
            moves.append((folder / name, staging / split / f"{label:03d}" / name))
    _move_all(moves, f"{dataset}: sorting", progress)


def _flower_file(image_id: int) -> str:
    return f"image_{image_id:05d}.jpg"


def _prepare_sketches(
    files: dict[str, Path], staging: Path, scratch: Path, dataset: str, progress: bool
) -> None:
    """TU-Berlin sketches: per class, sorted by number, every 5th to test (64/16 of 80)."""
    archive = files["sketches_png.zip"]
    unpacked = extract_archive(archive, scratch / "sketches", progress=progress)
    png = _find_folder_holding(unpacked, "png", archive) / "png"
    moves = []
    for class_dir in sorted(p for p in png.iterdir() if _is_content_dir(p)):
        sketches = sorted(
            (p for p in class_dir.iterdir() if p.suffix.lower() == ".png"), key=_number_order
        )
        for index, sketch in enumerate(sketches):
            split = "test" if index % SKETCH_TEST_EVERY == SKETCH_TEST_EVERY - 1 else "train"
            moves.append((sketch, staging / split / class_dir.name / sketch.name))
    _move_all(moves, f"{dataset}: sorting", progress)


def _number_order(path: Path) -> tuple:
    """``2.png`` before ``10.png``: by number where the name is one, else by name."""
    return (0, int(path.stem), "") if path.stem.isdigit() else (1, 0, path.name)


ORIGINAL_ROUTES: dict[str, Callable[..., None]] = {
    "cub200": _prepare_cub200,
    "stanford_cars": _prepare_stanford_cars,
    "flowers102": _prepare_flowers102,
    "sketches": _prepare_sketches,
}


# --- shared pieces ----------------------------------------------------------------------


def _folder_name(class_name: str) -> str:
    """A class name usable as one folder name (``Ram C/V Cargo Van`` has a slash)."""
    return class_name.strip().replace("/", "-")


def _find_folder_holding(root: Path, name: str, archive: Path) -> Path:
    """The folder, ``root`` or up to two levels below, that holds ``name``."""
    level = [root]
    for _ in range(3):
        for folder in level:
            if (folder / name).exists():
                return folder
        level = [c for f in level for c in sorted(f.iterdir()) if _is_content_dir(c)]
    raise SourceError(
        f"{archive} has no {name!r} (at most two folders deep); is it the right file?"
    )


def _read_table(path: Path, columns: int) -> dict[str, list[str]]:
    """A CUB-style text table: ``<id> <value>...`` per line, keyed by id."""
    if not path.is_file():
        raise SourceError(f"{path} is missing from the archive")
    table = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1) if columns == 1 else line.split()
        if len(parts) != columns + 1:
            raise SourceError(f"{path}:{number}: expected an id and {columns} value(s): {line!r}")
        table[parts[0]] = [part.strip() for part in parts[1:]]
    return table


def _load_mat(path: Path, keys: Iterable[str]) -> dict:
    """Variables of a MATLAB file, squeezed to plain arrays."""
    from scipy.io import loadmat

    if not Path(path).is_file():
        raise SourceError(f"{path} is missing")
    try:
        data = loadmat(path, squeeze_me=True)
    except (ValueError, OSError, NotImplementedError) as error:
        raise SourceError(f"{path} is not a readable MATLAB file ({error})") from None
    missing = [key for key in keys if key not in data]
    if missing:
        raise SourceError(f"{path} has no variable(s) {missing}; is it the right file?")
    return data


def _mat_strings(path: Path, key: str) -> list[str]:
    values = np.atleast_1d(_load_mat(path, (key,))[key])
    return [str(v) for v in values]


def _mat_records(path: Path, key: str, fields: tuple[str, ...]) -> list[dict]:
    """A MATLAB struct array as one dict of plain values per element."""
    records = np.atleast_1d(_load_mat(path, (key,))[key])
    names = records.dtype.names or ()
    missing = [f for f in fields if f not in names]
    if missing:
        raise SourceError(f"{path}: `{key}` has no field(s) {missing}; is it the right file?")
    if records.size == 0:
        raise SourceError(f"{path}: `{key}` is empty")
    return [{f: _plain(record[f]) for f in fields} for record in records]


def _plain(value):
    value = np.asarray(value).squeeze()
    return value.item() if value.ndim == 0 else value.tolist()


def _pixel_box(box: tuple[float, ...], size: tuple[int, int], source: Path) -> tuple[int, ...]:
    """``box`` (left, top, right, bottom) rounded to pixels and clipped to the image."""
    width, height = size
    left, top = max(0, round(box[0])), max(0, round(box[1]))
    right, bottom = min(width, round(box[2])), min(height, round(box[3]))
    if right <= left or bottom <= top:
        raise SourceError(f"{source}: box {box} leaves nothing of the {width}x{height} image")
    return left, top, right, bottom


def _crop_all(jobs: list[tuple[Path, tuple, Path]], description: str, progress: bool) -> None:
    """Save each image cropped to its box; JPEGs re-encoded at quality 95."""
    for source, box, dest in tqdm(jobs, desc=description, unit="img", disable=not progress):
        if not source.is_file():
            raise SourceError(f"{source} is listed in the annotations but not in the archive")
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            with Image.open(source) as image:
                crop = image.crop(_pixel_box(box, image.size, source))
        except OSError as error:
            raise SourceError(f"{source} is not a readable image ({error})") from None
        if dest.suffix.lower() in {".jpg", ".jpeg"}:
            if crop.mode not in {"RGB", "L", "CMYK"}:
                crop = crop.convert("RGB")
            crop.save(dest, quality=95)
        else:
            crop.save(dest)


def _move_all(moves: list[tuple[Path, Path]], description: str, progress: bool) -> None:
    for source, dest in tqdm(moves, desc=description, unit="img", disable=not progress):
        if not source.is_file():
            raise SourceError(f"{source} is listed in the annotations but not in the archive")
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, dest)
