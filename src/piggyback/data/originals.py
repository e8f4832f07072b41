"""The ``original`` route: each dataset's own archives, split and cropped the documented
way (CUB and Cars cropped to their boxes; Flowers: train = train + val; Sketch: every
5th sketch of each class, by number, a test one). Closest to the authors' data, not
identical (docs/datasets.md)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from piggyback.data.archives import extract_archive, is_content_dir
from piggyback.data.images import pillow_limit_lifted
from piggyback.data.sources import SourceError

SKETCH_TEST_EVERY = 5  # in each class, sorted by number, every 5th sketch is a test one


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
    for class_dir in sorted(p for p in png.iterdir() if is_content_dir(p)):
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
        level = [c for f in level for c in sorted(f.iterdir()) if is_content_dir(c)]
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
            with pillow_limit_lifted(), Image.open(source) as image:
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
