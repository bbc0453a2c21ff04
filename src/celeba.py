"""Where images live: CelebA in any common layout (or its zip, read in place), or a folder of images.

Official (ROOT/img_align_celeba, ROOT/list_eval_partition.txt), torchvision (ROOT/celeba/...),
Google Drive (Img/, Eval/, Anno/), Kaggle (img_align_celeba/img_align_celeba, .csv lists), or an
unextracted img_align_celeba.zip in any of those places; a folder is split 90/5/5 by a hash of
each file's name. See docs/data.md.
"""

import csv
import hashlib
import io
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from src.errors import DataError

SPLITS = {"train": 0, "val": 1, "test": 2}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
MAX_IMAGE_BYTES = 64 << 20  # a larger file (or zip member) is no face image: refuse it before reading it
QUICKSTART_HINT = "or use the synthetic faces that need no download (data.dataset=synthetic, config/quickstart.json)"


@dataclass(frozen=True)
class ImageSource:
    """Where images live: a directory, or a zip archive read in place (`prefix` inside it)."""
    path: Path
    is_zip: bool = False
    prefix: str = ""

    def describe(self, name: str) -> str:
        return f"{self.path}:{self.prefix}{name}" if self.is_zip else str(self.path / name)

    def list_files(self) -> dict[str, int]:
        """File name (relative to the source) -> size in bytes."""
        if self.is_zip:
            with zipfile.ZipFile(self.path) as zf:
                return {i.filename[len(self.prefix):]: i.file_size for i in zf.infolist()
                        if i.filename.startswith(self.prefix) and not i.is_dir()}
        with os.scandir(self.path) as entries:
            return {e.name: e.stat().st_size for e in entries if e.is_file()}


_open_zips: dict[Path, zipfile.ZipFile] = {}  # one handle per worker process


def _read_member(zf: zipfile.ZipFile, member: str) -> bytes:
    """A zip member's bytes, if its uncompressed size is at most MAX_IMAGE_BYTES (zipfile never returns
    more than that declared size: a header that lies fails its CRC check instead)."""
    size = zf.getinfo(member).file_size
    if size > MAX_IMAGE_BYTES:
        raise ValueError(f"its uncompressed size {size} bytes exceeds {MAX_IMAGE_BYTES}")
    return zf.read(member)


def open_image(source: ImageSource, name: str) -> Image.Image:
    if source.is_zip:
        if source.path not in _open_zips:
            _open_zips[source.path] = zipfile.ZipFile(source.path)
        img = Image.open(io.BytesIO(_read_member(_open_zips[source.path], source.prefix + name)))
    else:
        img = Image.open(source.path / name)
    img.load()  # decode now, so a broken file fails here, with its name
    return img


def _first_existing(candidates) -> Path | None:
    return next((p for p in candidates if p.exists()), None)


def _has_images(directory: Path) -> bool:
    if not directory.is_dir():
        return False
    with os.scandir(directory) as entries:
        return any(e.name.lower().endswith(".jpg") for e in entries)


def find_celeba(root: Path) -> tuple[ImageSource, Path, Path | None]:
    """(images, partition file, attribute file or None) for any of the supported layouts.

    Official (ROOT/img_align_celeba, ROOT/list_eval_partition.txt), torchvision (ROOT/celeba/...),
    Google Drive (Img/, Eval/, Anno/), Kaggle (img_align_celeba/img_align_celeba, .csv lists),
    or an unextracted img_align_celeba.zip in any of those places.
    """
    if not root.is_dir():
        raise DataError(f"data.root '{root}' does not exist; put CelebA there (docs/data.md) or set "
                        f"data.root=PATH, {QUICKSTART_HINT}")
    bases = [root, root / "celeba"]
    image_dir = _first_existing(b / d for b in bases for d in
                                ("img_align_celeba/img_align_celeba", "img_align_celeba", "Img/img_align_celeba")
                                if _has_images(b / d))
    image_zip = _first_existing(b / d for b in bases for d in ("img_align_celeba.zip", "Img/img_align_celeba.zip"))
    partition = _first_existing(b / d for b in bases for d in
                                ("list_eval_partition.txt", "Eval/list_eval_partition.txt", "list_eval_partition.csv"))
    attributes = _first_existing(b / d for b in bases for d in
                                 ("list_attr_celeba.txt", "Anno/list_attr_celeba.txt", "list_attr_celeba.csv"))
    missing = []
    if image_dir is None and image_zip is None:
        missing.append("img_align_celeba/ (the aligned JPEGs) or img_align_celeba.zip")
    if partition is None:
        missing.append("list_eval_partition.txt")
    if missing:
        raise DataError(f"CelebA not found in '{root}': missing {' and '.join(missing)}; download "
                        f"'Align&Cropped Images' and the evaluation partition from the CelebA site or "
                        f"Kaggle into {root}/ (docs/data.md), {QUICKSTART_HINT}")
    if image_dir is not None:
        return ImageSource(image_dir), partition, attributes
    try:
        with zipfile.ZipFile(image_zip) as zf:
            first_jpg = next((n for n in zf.namelist() if n.lower().endswith(".jpg")), None)
    except zipfile.BadZipFile:
        raise DataError(f"{image_zip} is not a valid zip archive; re-download it or extract it by hand") from None
    if first_jpg is None:
        raise DataError(f"{image_zip} holds no .jpg images; re-download img_align_celeba.zip")
    prefix = first_jpg[:first_jpg.rfind("/") + 1]  # e.g. "img_align_celeba/"
    return ImageSource(image_zip, is_zip=True, prefix=prefix), partition, attributes


def _read_rows(path: Path) -> list[list[str]]:
    """Rows of a CelebA list, whitespace-separated (.txt) or comma-separated with a header (.csv)."""
    if path.suffix == ".csv":
        with open(path, newline="") as f:
            return [row for row in csv.reader(f) if row]
    return [line.split() for line in path.read_text().splitlines() if line.strip()]


def read_partition(path: Path) -> dict[str, int]:
    """image name -> 0 (train), 1 (val) or 2 (test)."""
    rows = _read_rows(path)
    if path.suffix == ".csv":
        rows = rows[1:]  # header: image_id,partition
    partition: dict[str, int] = {}
    for line_no, row in enumerate(rows, start=2 if path.suffix == ".csv" else 1):
        if len(row) != 2 or row[1] not in ("0", "1", "2"):
            raise DataError(f"{path}, line {line_no}: expected 'IMAGE.jpg LABEL' with LABEL 0, 1 or 2, "
                            f"got {' '.join(row)!r}; re-download the partition file")
        if row[0] in partition:
            raise DataError(f"{path}, line {line_no}: {row[0]} is listed twice; re-download the partition file")
        partition[row[0]] = int(row[1])
    return partition


def read_attributes(path: Path) -> tuple[list[str], dict[str, list[float]]]:
    """(attribute names, image name -> 1.0/0.0 per attribute); images may be missing."""
    rows = _read_rows(path)
    if path.suffix == ".csv":
        header, body = rows[0][1:], rows[1:]
    else:
        header, body = rows[1], rows[2:]  # first line is the image count
    table = {}
    for line_no, row in enumerate(body):
        if len(row) != len(header) + 1:
            raise DataError(f"{path}: row {line_no + 1} has {len(row) - 1} values for {len(header)} "
                            "attributes; re-download the attribute file")
        table[row[0]] = [1.0 if v == "1" else 0.0 for v in row[1:]]
    return header, table


def celeba_split(root: Path, split: str) -> tuple[ImageSource, list[str], dict, np.ndarray | None, list[str]]:
    source, partition_path, attr_path = find_celeba(root)
    names = sorted(n for n, label in read_partition(partition_path).items() if label == SPLITS[split])
    if not names:
        raise DataError(f"{partition_path} lists no {split} images (label {SPLITS[split]}); "
                        "check the partition file")
    files = source.list_files()
    absent = [n for n in names if n not in files]
    if absent:
        raise DataError(f"{partition_path} lists {len(absent)} {split} images that are not in "
                        f"{source.path} (first: {', '.join(absent[:3])}); extract all images or fix the list")
    attributes, attribute_names = None, []
    if attr_path is not None:
        attribute_names, table = read_attributes(attr_path)
        unknown = [float("nan")] * len(attribute_names)
        attributes = np.array([table.get(n, unknown) for n in names], dtype=np.float32)
    fingerprint = {n: files[n] for n in names}
    if attr_path is not None:
        fingerprint["__attributes__"] = attr_path.stat().st_size
    return source, names, fingerprint, attributes, attribute_names


def folder_split(root: Path, split: str) -> tuple[ImageSource, list[str], dict]:
    if not root.is_dir():
        raise DataError(f"data.root '{root}' does not exist; point data.root at a folder of images")
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise DataError(f"no images (.jpg, .png, .webp) under '{root}'; point data.root at a folder of images")

    def bucket(rel: str) -> str:  # 90/5/5 by a hash of the name: stable when files are added
        h = int(hashlib.md5(rel.encode(), usedforsecurity=False).hexdigest(), 16) % 100
        return "train" if h < 90 else "val" if h < 95 else "test"

    names = [p.relative_to(root).as_posix() for p in paths]
    names = [n for n in names if bucket(n) == split]
    if not names:
        raise DataError(f"the {split} split of '{root}' is empty ({len(paths)} images, split 90/5/5 by "
                        "file name); add more images")
    return ImageSource(root), names, {n: (root / n).stat().st_size for n in names}
