"""Datasets as uint8 arrays: CelebA (any common layout), an image folder, or synthetic faces.

Each split is decoded once, by worker processes, into an (N, 3, H, W) uint8 array under
`data.cache_dir`; later runs memory-map it in seconds. A cache records the key of the files and
settings it was built from and a checksum of its bytes, so a stale, partial or corrupt cache is
rebuilt rather than used. Training slices batches straight from the array (`Batches`; evaluation
uses `iterate_batches`, in order).
"""

import contextlib
import csv
import errno
import hashlib
import io
import json
import math
import multiprocessing
import os
import shutil
import signal
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image, ImageOps
from tqdm import tqdm

try:
    import fcntl  # POSIX file locks; Windows has none, and then concurrent cache builds are not serialised
except ImportError:
    fcntl = None

from src.config import Config
from src.errors import DataError
from src.utils import atomic_write, to_device

SPLITS = {"train": 0, "val": 1, "test": 2}
CELEBA_WIDTH = 178          # width of the official aligned frame that data.center_crop refers to
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
CACHE_VERSION = 2           # bump when preprocessing changes, so old caches are rebuilt
MAX_IMAGE_BYTES = 64 << 20  # a larger file (or zip member) is no face image: refuse it before reading it
QUICKSTART_HINT = "or try the no-download quickstart: python train.py --config config/quickstart.json"


@dataclass
class ImageSplit:
    images: np.ndarray                  # (N, 3, H, W) uint8, usually memory-mapped
    names: list[str]                    # file name (or synthetic id) of each image
    attributes: np.ndarray | None       # (N, A) float32 labels, NaN where unknown
    attribute_names: list[str]
    data_id: str = ""                   # the files and preprocessing, wherever they live (not the root)

    def __len__(self) -> int:
        return len(self.images)


# --------------------------------------------------------------------------- preprocessing

def to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB: transparent pixels white (not their hidden colour), 16-bit grey scaled (not clipped)."""
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")  # transparent pixels become white, not their hidden colour
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba)
    if img.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N"):  # 16-bit grey: scale, don't clip at 255
        img = Image.fromarray((np.asarray(img, dtype=np.float64) / 257).round().clip(0, 255).astype(np.uint8))
    return img.convert("RGB")       # L, P, CMYK ... all end as 8-bit RGB


def preprocess(img: Image.Image, image_size: int, center_crop: int) -> np.ndarray:
    """Centre crop (scaled to the image's size) and antialiased resize; (3, S, S) uint8 RGB.

    `center_crop` is in pixels of the 178-px-wide aligned CelebA frame, so a downscaled copy gets
    the same field of view; 0 takes the largest centred square.
    """
    img = to_rgb(img)
    w, h = img.size
    side = min(w, h) if center_crop == 0 else min(w, h, center_crop * w / CELEBA_WIDTH)
    left, top = (w - side) / 2, (h - side) / 2  # fractional: a half-size copy sees the same region
    img = img.resize((image_size, image_size), Image.BILINEAR, box=(left, top, left + side, top + side))
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)


# --------------------------------------------------------------------------- image sources

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


def _open_image(source: ImageSource, name: str) -> Image.Image:
    if source.is_zip:
        if source.path not in _open_zips:
            _open_zips[source.path] = zipfile.ZipFile(source.path)
        img = Image.open(io.BytesIO(_read_member(_open_zips[source.path], source.prefix + name)))
    else:
        img = Image.open(source.path / name)
    img.load()  # decode now, so a broken file fails here, with its name
    return img


def _decode_chunk(job: tuple[ImageSource, list[str], int, int, bool]) -> tuple[np.ndarray, None, np.ndarray]:
    """(images, no labels, which images were kept): with `align`, an image without a face is left
    out (its row stays zero and is dropped when the cache is finished)."""
    source, names, image_size, center_crop, align = job
    out = np.zeros((len(names), 3, image_size, image_size), dtype=np.uint8)
    kept = np.ones(len(names), dtype=bool)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)  # huge images are errors
        for i, name in enumerate(names):
            try:
                img = _open_image(source, name)
                if align:
                    from src.faces import align as align_face, detect_faces
                    img = ImageOps.exif_transpose(to_rgb(img))
                    faces = detect_faces(img)
                    kept[i] = bool(faces)
                    img = align_face(img, faces[0]) if faces else None
                if img is not None:
                    out[i] = preprocess(img, image_size, center_crop)
            except Exception as e:  # any decoder failure, reported with the file it came from
                raise DataError(f"cannot read image {source.describe(name)}: {e}; "
                                "replace or delete that file") from None
    return out, None, kept


def _generate_chunk(job: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray, None]:
    from src.synthetic import generate_faces
    start, n, seed, image_size = job
    return *generate_faces(n, seed, image_size, start=start), None


# --------------------------------------------------------------------------- CelebA layouts

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
        raise DataError(f"data.root '{root}' does not exist; put CelebA there (see README, "
                        f"'Getting CelebA') or pass data.root=PATH, {QUICKSTART_HINT}")
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
                        f"Kaggle into {root}/ (see README), {QUICKSTART_HINT}")
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


def _celeba_split(root: Path, split: str) -> tuple[ImageSource, list[str], dict, np.ndarray | None, list[str]]:
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


def _folder_split(root: Path, split: str) -> tuple[ImageSource, list[str], dict]:
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


# --------------------------------------------------------------------------- cache

def _checksum(path: Path) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def _load_cache(paths: dict[str, Path], key: str) -> tuple[np.ndarray, np.ndarray | None, list[int]] | None:
    """(images, labels, skipped rows) if the cache is complete, current and intact; else None (and why,
    printed). Skipped rows: images left out of the cache (no face found when aligning)."""
    if not paths["images"].exists() or not paths["meta"].exists():
        return None
    name = paths["images"].name
    try:
        meta = json.loads(paths["meta"].read_text())
        if meta.get("key") != key:
            print(f"cache {name} is stale (data or settings changed): rebuilding")
            return None
        if _checksum(paths["images"]) != meta["checksum"] or \
                (meta["has_labels"] and _checksum(paths["labels"]) != meta["labels_checksum"]):
            print(f"cache {name} is corrupt (checksum mismatch): rebuilding")
            return None
        images = np.load(paths["images"], mmap_mode="r")
        labels = np.load(paths["labels"], allow_pickle=False) if meta["has_labels"] else None
        if list(images.shape) != meta["shape"] or images.dtype != np.uint8:
            raise ValueError(f"shape {images.shape} != {meta['shape']}")
        return images, labels, meta.get("skipped", [])
    except (ValueError, KeyError, OSError) as e:
        print(f"cache {name} is unreadable ({e}): rebuilding")
        return None


@contextlib.contextmanager
def _cache_lock(stem: Path):
    """Hold an exclusive lock on the cache `stem`: concurrent builders (two runs, or DDP ranks on
    several nodes sharing a disk) wait for one build and then reuse it. No-op where fcntl is missing."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    with open(stem.with_name(stem.name + ".lock"), "a+") as f:
        if fcntl is not None:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                print(f"waiting for another process that is building {stem.name} ...")
                fcntl.flock(f, fcntl.LOCK_EX)
        yield  # the lock is released when the file closes


NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _no_space(directory: Path, nbytes: int) -> DataError:
    free = shutil.disk_usage(directory).free
    return DataError(f"not enough space in data.cache_dir '{directory}' for the cache: it needs "
                     f"{nbytes / 2**20:.1f} MB, {free / 2**20:.1f} MB are free; free some space or set "
                     "data.cache_dir=PATH")


def _reserve(path: Path) -> None:
    """Allocate the blocks of the (sparse) file open_memmap just created: a full disk is then an
    OSError here, not a SIGBUS later when the memory map is written."""
    nbytes = path.stat().st_size
    if nbytes > shutil.disk_usage(path.parent).free + path.stat().st_blocks * 512:
        raise OSError(errno.ENOSPC, "no space left on device")
    if hasattr(os, "posix_fallocate"):  # Linux; elsewhere the free-space check above has to do
        fd = os.open(path, os.O_RDWR)
        try:
            os.posix_fallocate(fd, 0, nbytes)
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # some filesystems lack fallocate: fine
                raise
        finally:
            os.close(fd)


def _worker_init() -> None:
    """Decoder processes leave interrupts to the main process: Ctrl-C reaches the whole process group,
    and the main process ends the pool with SIGTERM, which must simply stop them."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _write_rows(task: tuple) -> tuple[int, np.ndarray | None, np.ndarray | None]:
    """Run one job and write its images straight into the cache file at their offset. Only the count
    and the (small) labels go back through the pool's pipe: image-sized results can fill it while
    the pool is terminated on Ctrl-C, leaving a worker blocked mid-write and Pool.terminate() hung.
    A plain write (not a memory map): a full disk is an OSError here, never a SIGBUS."""
    worker, job, path, offset = task
    images, labels, kept = worker(job)
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(np.ascontiguousarray(images, dtype=np.uint8).tobytes())
    return len(images), labels, kept


def _drop_rows(path: Path, kept: np.ndarray) -> None:
    """Rewrite the .npy at `path` with only the `kept` rows (in chunks: no full copy in memory)."""
    old = np.load(path, mmap_mode="r")
    tmp = path.with_suffix(".kept.npy")
    new = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(int(kept.sum()), *old.shape[1:]))
    rows = np.flatnonzero(kept)
    for start in range(0, len(rows), 4096):
        new[start:start + 4096] = old[rows[start:start + 4096]]
    new.flush()
    del old, new
    os.replace(tmp, path)


def _build_cache(paths: dict[str, Path], meta: dict, jobs: list, worker, num_workers: int,
                 desc: str) -> tuple[np.ndarray, np.ndarray | None, list[int]]:
    """Run `worker` over `jobs` ((first row, job) pairs; each job gives a chunk of images, labels and
    which images to keep) into a new cache."""
    for stale in paths["images"].parent.glob(paths["images"].stem + ".tmp*.npy"):
        stale.unlink(missing_ok=True)  # left by a killed build (we hold the lock: nobody else is writing)
    shape = tuple(meta["shape"])
    tmp_path = paths["images"].with_suffix(f".tmp{os.getpid()}.npy")
    pool = None
    try:
        out = np.lib.format.open_memmap(tmp_path, mode="w+", dtype=np.uint8, shape=shape)  # header + size
        start, row_bytes = out.offset, out[0].nbytes
        del out
        _reserve(tmp_path)
        tasks = [(worker, job, tmp_path, start + row * row_bytes) for row, job in jobs]
        pool = multiprocessing.Pool(num_workers, initializer=_worker_init) if num_workers > 0 else None
        labels, kept = [], []
        with tqdm(total=shape[0], desc=desc, unit="img") as bar:
            for count, chunk_labels, chunk_kept in (pool.imap(_write_rows, tasks) if pool else map(_write_rows, tasks)):
                if chunk_labels is not None:
                    labels.append(chunk_labels)
                kept.append(np.ones(count, dtype=bool) if chunk_kept is None else chunk_kept)
                bar.update(count)
        kept = np.concatenate(kept)
        meta["skipped"] = np.flatnonzero(~kept).tolist()
        if not kept.any():
            raise DataError(f"data.align: no face found in any of the {len(kept)} images ({desc}); use photos "
                            "with clear frontal faces, or data.align=false to use them as they are")
        if not kept.all():
            _drop_rows(tmp_path, kept)
            meta["shape"][0] = int(kept.sum())
        with open(tmp_path, "r+b") as f:
            os.fsync(f.fileno())
        meta["checksum"] = _checksum(tmp_path)
        meta["has_labels"] = bool(labels)
        if labels:
            atomic_write(paths["labels"], lambda f: np.save(f, np.concatenate(labels)))
            meta["labels_checksum"] = _checksum(paths["labels"])
        os.replace(tmp_path, paths["images"])
        # The metadata goes last: an interrupted build leaves no (matching) meta, so no usable cache.
        atomic_write(paths["meta"], lambda f: f.write(json.dumps(meta).encode()))
    except OSError as e:
        if e.errno in NO_SPACE:
            raise _no_space(paths["images"].parent, int(np.prod(shape)) + 4096) from None
        raise
    finally:
        if pool:
            pool.terminate()
            pool.join()
        tmp_path.unlink(missing_ok=True)
    return np.load(paths["images"], mmap_mode="r"), (np.concatenate(labels) if labels else None), meta["skipped"]


def _sources(cfg: Config, split: str, root: Path) -> tuple[dict, list[str], dict, list, object, np.ndarray | None,
                                                            list[str], str]:
    """What a split is made of: (settings, names, fingerprint, jobs as (first row, worker's job), worker,
    attributes, attribute names, identity for the cache file name)."""
    d = cfg.data
    attributes, attribute_names = None, []
    if d.dataset == "synthetic":
        from src.synthetic import FACTOR_NAMES
        counts = [d.synthetic_train, d.synthetic_val, d.synthetic_test]
        start, n = sum(counts[:SPLITS[split]]), counts[SPLITS[split]]
        names = [f"synthetic_{i:06d}" for i in range(start, start + n)]
        identity = f"seed{d.synthetic_seed}-n{'-'.join(map(str, counts))}"
        fingerprint = {"seed": d.synthetic_seed, "counts": counts}
        chunk = 250
        jobs = [(s - start, (s, min(chunk, start + n - s), d.synthetic_seed, d.image_size))
                for s in range(start, start + n, chunk)]
        worker = _generate_chunk
        attribute_names = list(FACTOR_NAMES)
    else:
        if d.dataset == "celeba":
            source, names, fingerprint, attributes, attribute_names = _celeba_split(root, split)
        else:
            source, names, fingerprint = _folder_split(root, split)
        identity = hashlib.md5(str(root).encode(), usedforsecurity=False).hexdigest()[:8]
        chunk = 256
        jobs = [(i, (source, names[i:i + chunk], d.image_size, d.center_crop, d.align))
                for i in range(0, len(names), chunk)]
        worker = _decode_chunk
    settings = {"version": CACHE_VERSION, "dataset": d.dataset, "split": split,
                "image_size": d.image_size, "center_crop": d.center_crop}
    if d.align:  # only then: the data_id (and cache) of every unaligned data set stays as it was
        settings["align"] = True
    return settings, names, fingerprint, jobs, worker, attributes, attribute_names, identity


def load_split(cfg: Config, split: str) -> ImageSplit:
    """The split as a cached uint8 array, building the cache on first use."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    d = cfg.data
    root = Path(d.root).expanduser().resolve()
    settings, names, fingerprint, jobs, worker, attributes, attribute_names, identity = _sources(cfg, split, root)
    # data_id names the images and their preprocessing wherever they live; the cache key adds the root.
    data_id = hashlib.sha256(json.dumps([settings, names, fingerprint], sort_keys=True).encode()).hexdigest()
    key = hashlib.sha256(json.dumps([data_id, str(root)]).encode()).hexdigest()
    aligned = "-aligned" if d.align else ""
    stem = Path(d.cache_dir) / f"{d.dataset}-{split}-{d.image_size}px-crop{d.center_crop}{aligned}-{identity}"
    paths = {"images": stem.with_suffix(".npy"), "labels": stem.with_suffix(".labels.npy"),
             "meta": stem.with_suffix(".json")}
    with _cache_lock(stem):
        cached = _load_cache(paths, key)
        if cached is None:
            meta = {"key": key, "shape": [len(names), 3, d.image_size, d.image_size], "settings": settings}
            cached = _build_cache(paths, meta, jobs, worker, d.num_workers, desc=f"caching {d.dataset} {split}")
            _report_skipped(cached[2], names, root, split)
    images, labels, skipped = cached
    if skipped:
        left_out = set(skipped)
        names = [n for i, n in enumerate(names) if i not in left_out]
    if labels is not None:  # synthetic factors travel with the cache; CelebA's come from its list
        attributes = labels
    return ImageSplit(images, names, attributes, attribute_names, data_id)


def _report_skipped(skipped: list[int], names: list[str], root: Path, split: str) -> None:
    """Say which images the aligned cache left out (no face found)."""
    if not skipped:
        return
    first = ", ".join(names[i] for i in skipped[:3]) + (" ..." if len(skipped) > 3 else "")
    print(f"data.align: no face found in {len(skipped)} of {len(names)} {split} images, left out ({first})")


# --------------------------------------------------------------------------- batches

class Batches:
    """Float batches in [0, 1] sliced from a split's uint8 array, in a seeded order per epoch.

    On CUDA the whole array moves to the GPU when it fits in a quarter of the free memory (full
    CelebA at 64x64 is 2.4 GB), so a batch is one index_select there; otherwise batches are
    gathered on the host and copied from pinned memory without blocking. Conversion to float and
    the optional horizontal flip run on the device. Under DDP each rank takes every
    world_size-th image of the epoch's order (the order is cut to a multiple of world_size when
    shuffling, so every rank runs the same number of steps). A shuffled (training) epoch never ends
    in a batch of one image, which BatchNorm cannot normalise at a 1x1 bottleneck: that image sits
    the epoch out.
    """

    def __init__(self, images: np.ndarray, batch_size: int, device: torch.device, shuffle: bool = False,
                 seed: int = 0, rank: int = 0, world_size: int = 1, hflip: bool = False,
                 channels_last: bool = False):
        self.images, self.batch_size, self.device = images, batch_size, device
        self.shuffle, self.seed, self.rank, self.world_size, self.hflip = shuffle, seed, rank, world_size, hflip
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.on_device = None
        if device.type == "cuda" and images.nbytes < torch.cuda.mem_get_info(device)[0] // 4:
            self.on_device = torch.empty(images.shape, dtype=torch.uint8, device=device)
            for start in range(0, len(images), 8192):  # chunked: no second full copy in host memory
                chunk = torch.from_numpy(np.ascontiguousarray(images[start:start + 8192]))
                self.on_device[start:start + len(chunk)].copy_(chunk)

    def _order(self, epoch: int) -> torch.Tensor:
        n = len(self.images)
        if not self.shuffle:
            return torch.arange(n)[self.rank::self.world_size]
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 1000 + epoch))
        order = order[:n - n % self.world_size][self.rank::self.world_size]
        return order[:self._per_rank()]

    def _per_rank(self) -> int:
        n = len(self.images)
        if not self.shuffle:
            return len(range(self.rank, n, self.world_size))
        per_rank = (n - n % self.world_size) // self.world_size
        return per_rank - 1 if per_rank % self.batch_size == 1 and per_rank > 1 else per_rank

    def __len__(self) -> int:
        return math.ceil(self._per_rank() / self.batch_size)

    def epoch(self, epoch: int = 0, start_step: int = 0) -> Iterator[torch.Tensor]:
        """The batches of one epoch, from step `start_step` on (to resume mid-epoch)."""
        order = self._order(epoch)
        if self.on_device is not None:
            order = order.to(self.device)
        for start in range(start_step * self.batch_size, len(order), self.batch_size):
            index = order[start:start + self.batch_size]
            if self.on_device is not None:
                x = self.on_device.index_select(0, index)
            else:  # sorted reads are faster on a memory map; the order within a batch does not matter
                x = torch.from_numpy(self.images[np.sort(index.numpy())])
                x = to_device(x.pin_memory() if self.device.type == "cuda" else x, self.device)
            x = x.float().div_(255)
            if self.hflip:
                flip = torch.rand(len(x), device=x.device) < 0.5
                x = torch.where(flip[:, None, None, None], x.flip(3), x)
            yield x.contiguous(memory_format=self.memory_format)


def iterate_batches(images: np.ndarray, batch_size: int, device: torch.device,
                    uint8: bool = False) -> Iterator[torch.Tensor]:
    """The images in order, in batches on `device`: float in [0, 1], or uint8 as stored; for evaluation."""
    for start in range(0, len(images), batch_size):
        x = to_device(torch.from_numpy(np.array(images[start:start + batch_size])), device)  # a copy: memmaps are read-only
        yield x if uint8 else x.float().div_(255)
