"""Convert a checkpoint of the older format conv-vae/1 (numpy RNG state as arrays) to conv-vae/2, in place.

    python -m tools.convert_checkpoint checkpoints/last_vae.pth      # the original is kept as PATH.v1

A conv-vae/1 file needs numpy arrays beyond weights_only's allowlist; rebuilding an array runs no
code, so this conversion allows them, and only them. Anything else is refused, unrun.
"""

import argparse
import pickle
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from src.checkpoint import (
    CHECKPOINT_FORMAT,
    NUMPY_ARRAY_GLOBALS,
    OLD_FORMAT,
    safe_load,
    save_checkpoint,
    unsafe_globals,
)
from src.errors import CheckpointError, run_cli


def convert_old_checkpoint(path: str | Path) -> Path:
    """Rewrite a conv-vae/1 checkpoint as conv-vae/2 in place; the original is kept as PATH.v1."""
    path = Path(path)
    allowed = [np.ndarray, np.dtype, type(np.dtype(np.uint32))]
    allowed += [(np._core.multiarray._reconstruct, name) for name in NUMPY_ARRAY_GLOBALS if "reconstruct" in name]
    try:
        with torch.serialization.safe_globals(allowed):  # still weights_only: arrays, nothing else
            state = safe_load(path)
    except pickle.UnpicklingError:
        raise _refuse_unsafe_for_conversion(path) from None
    except Exception as e:
        raise CheckpointError(f"checkpoint '{path}' is unreadable or truncated ({type(e).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != OLD_FORMAT:
        raise CheckpointError(f"'{path}' is not a {OLD_FORMAT} checkpoint; nothing to convert")
    rngs = state.get("rng")
    if rngs is not None:
        state["rng"] = [_plain_rng(r) for r in rngs] if isinstance(rngs, list) else _plain_rng(rngs)
    state.pop("format")
    shutil.copy2(path, path.with_name(path.name + ".v1"))
    save_checkpoint(state, path)
    return path


def _refuse_unsafe_for_conversion(path: Path) -> CheckpointError:
    names = ", ".join(unsafe_globals(path)[:3])
    return CheckpointError(f"'{path}' needs unsafe unpickling beyond numpy arrays ({names}); refused, "
                           "nothing in it was run")


def _plain_rng(state: dict) -> dict:
    """A conv-vae/1 RNG state (numpy arrays, tuples) as rng_state() now writes it."""
    version, mt, gauss = state["python"]
    name, keys, pos, has_gauss, cached = state["numpy"]
    plain = {"python": [version, list(mt), gauss],
             "numpy": [name, np.asarray(keys).tolist(), int(pos), int(has_gauss), float(cached)],
             "torch": state["torch"].tolist()}
    if "cuda" in state and state["cuda"]:
        plain["cuda"] = state["cuda"][0].tolist()  # it held every GPU's state; each rank now keeps its own
    return plain


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Convert a checkpoint of an older format (kept as PATH.v1).")
    parser.add_argument("path", metavar="PATH", help=f"a {OLD_FORMAT} checkpoint")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    args = parser.parse_args(argv)
    path = convert_old_checkpoint(args.path)
    print(f"converted {path} to {CHECKPOINT_FORMAT}; the original is kept as {path.name}.v1")


if __name__ == "__main__":
    run_cli(main)
