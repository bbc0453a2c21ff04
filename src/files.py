"""Files written safely: atomic replacement, JSON, digests of large files, and writable output folders."""

import hashlib
import json
import os
from pathlib import Path
from typing import BinaryIO, Callable

from src.errors import UserError


def ensure_writable_dir(path: str | Path, key: str) -> Path:
    """Create `path` if needed; a directory we cannot write to is a UserError naming the config key."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create {key} '{path}' ({e.strerror}); choose another with {key}=PATH") from None
    if not os.access(path, os.W_OK):
        raise UserError(f"{key} '{path}' is not writable; fix its permissions or choose another with {key}=PATH")
    return path


class MissingFile(UserError):
    """A file a step needs has not been written yet."""


def read_json(path: Path, missing: UserError, invalid: str, error: type[UserError] = UserError) -> object:
    """The JSON value in `path`. A missing file raises `missing`; invalid JSON raises error(invalid) with
    {line}, {column} and {msg} filled in."""
    if not path.is_file():
        raise missing
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise error(invalid.format(line=e.lineno, column=e.colno, msg=e.msg)) from None


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object]) -> Path:
    """Call write(f) on a temporary file in the same directory, fsync, then rename it over `path`.

    The rename is atomic, so a crash at any moment (even kill -9 mid-write) leaves either the old
    file or the new one, and a concurrent reader never sees half a file.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_json(path: str | Path, value: object, indent: int | None = 2) -> Path:
    """`value` as JSON at `path`, written atomically (see atomic_write)."""
    return atomic_write(path, lambda f: f.write(json.dumps(value, indent=indent).encode()))


def file_digest(path: str | Path, algorithm: str = "sha256", **options) -> str:
    """Hex digest of a file's bytes, read in 16 MB chunks (hashlib's algorithm name and options,
    e.g. "blake2b" with digest_size=16)."""
    digest = hashlib.new(algorithm, **options)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()
