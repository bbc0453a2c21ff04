"""Data sets as uint8 arrays: CelebA (any common layout), an image folder, or synthetic faces.

Each split is decoded once, by worker processes, into an (N, 3, H, W) uint8 array under
`data.cache_dir` (src/cache.py); later runs memory-map it in seconds. Where the images live is
src/celeba.py's job; src/batches.py slices training and evaluation batches from the array.
"""

import hashlib
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageOps

from src.cache import cached_split
from src.celeba import SPLITS, ImageSource, celeba_split, folder_split, open_image
from src.config import Config
from src.errors import DataError
from src.images import preprocess, to_rgb

CACHE_VERSION = 2           # bump when preprocessing changes, so old caches are rebuilt


@dataclass
class ImageSplit:
    images: np.ndarray                  # (N, 3, H, W) uint8, usually memory-mapped
    names: list[str]                    # file name (or synthetic id) of each image
    attributes: np.ndarray | None       # (N, A) float32 labels, NaN where unknown
    attribute_names: list[str]
    data_id: str = ""                   # the files and preprocessing, wherever they live (not the root)

    def __len__(self) -> int:
        return len(self.images)


# --------------------------------------------------------------------------- what a split is made of

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
                img = open_image(source, name)
                if align:
                    from src.faces import align as align_face  # cv2: only when aligning
                    from src.faces import detect_faces
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


@dataclass
class SplitPlan:
    """How to build a split's cache: its images, what identifies them, and the jobs that make them."""
    settings: dict                      # preprocessing that changes the pixels (part of data_id)
    names: list[str]
    fingerprint: dict                   # the files' sizes (or the synthetic seed and counts)
    jobs: list                          # (first row, the worker's job) pairs
    worker: Callable                    # job -> (images, labels or None, which images were kept or None)
    identity: str                       # part of the cache's file name: the root's hash, or the synthetic seed
    attributes: np.ndarray | None = None
    attribute_names: list[str] = field(default_factory=list)


def synthetic_plan(cfg: Config, split: str, chunk: int = 250) -> SplitPlan:
    from src.synthetic import FACTOR_NAMES
    d = cfg.data
    counts = [d.synthetic_train, d.synthetic_val, d.synthetic_test]
    start, n = sum(counts[:SPLITS[split]]), counts[SPLITS[split]]
    jobs = [(s - start, (s, min(chunk, start + n - s), d.synthetic_seed, d.image_size))
            for s in range(start, start + n, chunk)]
    return SplitPlan(_settings(cfg, split), [f"synthetic_{i:06d}" for i in range(start, start + n)],
                     {"seed": d.synthetic_seed, "counts": counts}, jobs, _generate_chunk,
                     f"seed{d.synthetic_seed}-n{'-'.join(map(str, counts))}", None, list(FACTOR_NAMES))


def files_plan(cfg: Config, split: str, root: Path, chunk: int = 256) -> SplitPlan:
    """CelebA (with its attribute list, if any) or a folder of images."""
    d = cfg.data
    attributes, attribute_names = None, []
    if d.dataset == "celeba":
        source, names, fingerprint, attributes, attribute_names = celeba_split(root, split)
    else:
        source, names, fingerprint = folder_split(root, split)
    jobs = [(i, (source, names[i:i + chunk], d.image_size, d.center_crop, d.align))
            for i in range(0, len(names), chunk)]
    identity = hashlib.md5(str(root).encode(), usedforsecurity=False).hexdigest()[:8]
    return SplitPlan(_settings(cfg, split), names, fingerprint, jobs, _decode_chunk, identity, attributes,
                     attribute_names)


def _settings(cfg: Config, split: str) -> dict:
    d = cfg.data
    settings = {"version": CACHE_VERSION, "dataset": d.dataset, "split": split,
                "image_size": d.image_size, "center_crop": d.center_crop}
    if d.align:  # only then: the data_id (and cache) of every unaligned data set stays as it was
        settings["align"] = True
    return settings


# --------------------------------------------------------------------------- loading

def load_split(cfg: Config, split: str) -> ImageSplit:
    """The split as a cached uint8 array, building the cache on first use."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    d = cfg.data
    root = Path(d.root).expanduser().resolve()
    plan = synthetic_plan(cfg, split) if d.dataset == "synthetic" else files_plan(cfg, split, root)
    # data_id names the images and their preprocessing wherever they live; the cache key adds the root.
    data_id = hashlib.sha256(json.dumps([plan.settings, plan.names, plan.fingerprint],
                                        sort_keys=True).encode()).hexdigest()
    key = hashlib.sha256(json.dumps([data_id, str(root)]).encode()).hexdigest()
    aligned = "-aligned" if d.align else ""
    stem = Path(d.cache_dir) / f"{d.dataset}-{split}-{d.image_size}px-crop{d.center_crop}{aligned}-{plan.identity}"
    meta = {"key": key, "shape": [len(plan.names), 3, d.image_size, d.image_size], "settings": plan.settings}
    images, labels, skipped, built = cached_split(stem, meta, plan.jobs, plan.worker, d.num_workers,
                                                  desc=f"caching {d.dataset} {split}")
    names = plan.names
    if skipped:
        if built:
            _report_skipped(skipped, names, split)
        left_out = set(skipped)
        names = [n for i, n in enumerate(names) if i not in left_out]
    attributes = labels if labels is not None else plan.attributes  # synthetic factors travel with the cache
    return ImageSplit(images, names, attributes, plan.attribute_names, data_id)


def _report_skipped(skipped: list[int], names: list[str], split: str) -> None:
    """Say which images the aligned cache left out (no face found)."""
    first = ", ".join(names[i] for i in skipped[:3]) + (" ..." if len(skipped) > 3 else "")
    print(f"data.align: no face found in {len(skipped)} of {len(names)} {split} images, left out ({first})")
