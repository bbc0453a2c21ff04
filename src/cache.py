"""Caches: one keyed helper for everything computed once and reused, and the data sets' array cache.

`cached()` is the rule every cache follows (the data sets' arrays, the GMM and attribute directions
of src/latent.py and src/editing.py, the edit judge's weights, the Inception features of real
images): a result is stored with the key (JSON text) of what it was computed from; a file made for
another key, or one that cannot be read (truncated, foreign), is computed again and replaced
atomically. Readers never unpickle: nothing read from a cache runs code.

The data sets' cache (`cached_split`) decodes a split once, by worker processes, into an
(N, 3, H, W) uint8 .npy that later runs memory-map in seconds; its metadata (.json, written last)
holds the key and checksums of the arrays, so a stale, partial or corrupt cache is rebuilt.
"""

import contextlib
import errno
import json
import multiprocessing
import os
import shutil
import signal
from pathlib import Path
from typing import BinaryIO, Callable, TypeVar

import numpy as np
from tqdm import tqdm

try:
    import fcntl  # POSIX file locks; Windows has none, and then concurrent cache builds are not serialised
except ImportError:
    fcntl = None

from src.errors import DataError
from src.files import atomic_json, atomic_write, file_digest

T = TypeVar("T")


class CorruptCache(ValueError):
    """A cache file whose contents fail their own check (a checksum, a shape)."""


def cached(path: Path, key: dict | str, compute: Callable[[], T], read: Callable[[Path], tuple[str, T]],
           write: Callable[[BinaryIO, str, T], object] | None, redo: str = "recomputing") -> T:
    """compute()'s result, or the one stored at `path` when it was stored for the same `key`.

    read(path) -> (the stored key text, the value); write(f, key text, value) stores both (atomically,
    through atomic_write), or None when compute() stores its result itself. `redo` says what happens
    to a stale or unreadable file, in the line printed about it.
    """
    key_text = key if isinstance(key, str) else json.dumps(key, sort_keys=True)
    if path.is_file():
        try:
            stored, value = read(path)
            if stored == key_text:
                return value
            print(f"{path.name} is stale (made for another checkpoint, data or settings): {redo}")
        except CorruptCache as e:
            print(f"{path.name} is corrupt ({e}): {redo}")
        except Exception as e:  # any unreadable file is recomputed, whatever the reason
            print(f"{path.name} is unreadable ({type(e).__name__}: {e}): {redo}")
    value = compute()
    if write is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda f: write(f, key_text, value))
    return value


def _read_npz(path: Path) -> tuple[str, dict[str, np.ndarray]]:
    with np.load(path, allow_pickle=False) as f:
        arrays = {name: f[name] for name in f.files}
    return str(arrays.pop("key")), arrays


def cached_arrays(path: Path, key: dict | str, compute: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """compute()'s arrays, kept in the .npz `path` with their key (see cached())."""
    return cached(path, key, compute, _read_npz, lambda f, key_text, arrays: np.savez(f, key=np.array(key_text),
                                                                                       **arrays))


# --------------------------------------------------------------------------- the data sets' array cache

def _checksum(path: Path) -> str:
    return file_digest(path, "blake2b", digest_size=16)


def cache_paths(stem: Path) -> dict[str, Path]:
    return {"images": stem.with_suffix(".npy"), "labels": stem.with_suffix(".labels.npy"),
            "meta": stem.with_suffix(".json")}


def _read_split(paths: dict[str, Path]) -> tuple[str, tuple[np.ndarray, np.ndarray | None, list[int]]]:
    """(stored key, (images memory-mapped, labels, skipped rows)) of a complete and intact cache."""
    meta = json.loads(paths["meta"].read_text())
    if _checksum(paths["images"]) != meta["checksum"] or \
            (meta["has_labels"] and _checksum(paths["labels"]) != meta["labels_checksum"]):
        raise CorruptCache("checksum mismatch")
    images = np.load(paths["images"], mmap_mode="r")
    labels = np.load(paths["labels"], allow_pickle=False) if meta["has_labels"] else None
    if list(images.shape) != meta["shape"] or images.dtype != np.uint8:
        raise CorruptCache(f"shape {images.shape} != {meta['shape']}")
    return meta.get("key"), (images, labels, meta.get("skipped", []))


def cached_split(stem: Path, meta: dict, jobs: list, worker, num_workers: int, desc: str
                 ) -> tuple[np.ndarray, np.ndarray | None, list[int], bool]:
    """(images, labels, skipped rows, whether it was built now) of the cache `stem`, built from `jobs`
    by `worker` when missing, stale or damaged (see _build_cache). meta: {"key", "shape", "settings"}.
    Concurrent builders of the same cache wait for one build and then reuse it."""
    paths, built = cache_paths(stem), []

    def build():
        built.append(True)
        return _build_cache(paths, dict(meta), jobs, worker, num_workers, desc)

    with _cache_lock(stem):
        if not paths["images"].exists():
            paths["meta"].unlink(missing_ok=True)  # metadata without its arrays: nothing to check
        images, labels, skipped = cached(paths["meta"], meta["key"], build, lambda _: _read_split(paths), None,
                                         redo="rebuilding")
    return images, labels, skipped, bool(built)


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
        atomic_json(paths["meta"], meta, indent=None)
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


